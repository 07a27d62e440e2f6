"""Write the shipped profiles of architectures no hand-written family covers, derived from their config.json.

    python benchmarks/derive_catalogue.py                 # every entry -> profiles/models/derived/<slug>.yaml
    python benchmarks/derive_catalogue.py --only gemma-3-1b

Gemma 3 (gemma3 / gemma3_text: 5 sliding-window layers per global one, q/k norms), Llama 4 Scout (llama4: chunked
attention, NoPE every 4th layer, 16 experts + a shared expert), gpt-oss (attention sinks, alternating 128-token
windows, MoE with biases), Qwen3-Next (Gated DeltaNet linear attention in 3 of 4 layers, 512 experts) and GLM-4.5
(glm4_moe) are profiled from transformers' own model code (``validation.derive``, the derivation behind ``plan
profiles add``). Each entry below holds the architecture keys of the model's config.json on the Hugging Face Hub
(the URL is the profile's source) and where they were cross-checked; keys a config.json sets that change no
tensor (token ids, rope frequencies) are left out. The parameter counts are those of transformers' model on the
meta device (tests/profiles/test_params_meta.py rebuilds each one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HF = "https://huggingface.co/{}/blob/main/config.json"


def _gemma3(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, window: int, qpas: int,
            max_pos: int) -> dict:
    return {"model_type": "gemma3_text", "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": head_dim, "sliding_window": window, "query_pre_attn_scalar": qpas,
            "max_position_embeddings": max_pos, "hidden_activation": "gelu_pytorch_tanh",
            "attn_logit_softcapping": None, "final_logit_softcapping": None, "torch_dtype": "bfloat16"}


def _multimodal(model_type: str, text: dict) -> dict:
    return {"model_type": model_type, "text_config": text, "torch_dtype": "bfloat16"}


CATALOGUE: list[dict] = [
    dict(slug="gemma-3-1b", name="Gemma-3-1B", hf_id="google/gemma-3-1b-pt",
         aliases=("gemma-3-1b-it", "google/gemma-3-1b-it"),
         cross="keras-team/keras-hub keras_hub/src/models/gemma3/gemma3_presets.py `gemma3_1b` (999,885,952 "
               "parameters) and copies of this config (1152 hidden, 26 layers, 4/1 heads of 256, 6912, vocab 262144, "
               "window 512)",
         config=_gemma3(1152, 6912, 26, 4, 1, 256, 512, 256, 32768) | {"vocab_size": 262144},
         notes="Text-only Gemma 3: 5 local layers (512-token sliding window) per global layer, q/k RMSNorm, 4 norms "
               "per layer, tied embeddings, vocabulary 262144."),
    dict(slug="gemma-3-4b", name="Gemma-3-4B", hf_id="google/gemma-3-4b-pt",
         aliases=("gemma-3-4b-it", "google/gemma-3-4b-it"),
         cross="copies of this config's text_config (2560 hidden, 34 layers, 8/4 heads of 256, 10240, window 1024, "
               "vocab 262208); keras-hub `gemma3_4b_text` (3,880,099,328 text parameters)",
         config=_multimodal("gemma3", _gemma3(2560, 10240, 34, 8, 4, 256, 1024, 256, 131072)),
         notes="The language model of Gemma 3 4B (Gemma3ForConditionalGeneration's text_config, vocabulary 262208); the "
               "SigLIP vision tower and projector (about 0.42B) are not counted: text fine-tuning leaves them frozen "
               "or absent. 5 local (1024-token window) layers per global layer."),
    dict(slug="gemma-3-12b", name="Gemma-3-12B", hf_id="google/gemma-3-12b-pt",
         aliases=("gemma-3-12b-it", "google/gemma-3-12b-it"),
         cross="a verbatim copy of google/gemma-3-12b-it's config (unsloth, transformers 4.51.3): text_config 3840 "
               "hidden, 48 layers, 16/8 heads of 256, 15360, window 1024, vocab 262208; keras-hub `gemma3_12b_text` "
               "(11,765,788,416)",
         config=_multimodal("gemma3", _gemma3(3840, 15360, 48, 16, 8, 256, 1024, 256, 131072)),
         notes="The language model of Gemma 3 12B (vision tower not counted)."),
    dict(slug="gemma-3-27b", name="Gemma-3-27B", hf_id="google/gemma-3-27b-pt",
         aliases=("gemma-3-27b-it", "google/gemma-3-27b-it"),
         cross="copies of google/gemma-3-27b-it's config: text_config 5376 hidden, 62 layers, 32/16 heads of 128, "
               "21504, query_pre_attn_scalar 168, window 1024",
         config=_multimodal("gemma3", _gemma3(5376, 21504, 62, 32, 16, 128, 1024, 168, 131072)),
         notes="The language model of Gemma 3 27B (vision tower not counted); head_dim 128 with 32 heads, "
               "query_pre_attn_scalar 168."),
    dict(slug="llama-4-scout", name="Llama-4-Scout", hf_id="meta-llama/Llama-4-Scout-17B-16E",
         # the hub id's last part (Llama-4-Scout-17B-16E) resolves too; the long hub id last, out of the table's three
         aliases=("Llama-4-Scout-17B-16E-Instruct", "llama4-scout-17b", "llama4-scout-instruct",
                  "meta-llama/Llama-4-Scout-17B-16E-Instruct"),
         cross="transformers' Llama4TextConfig, whose defaults are Scout's text model (5120 hidden, 48 layers, 40/8 "
               "heads of 128, 16 experts of 8192 + a shared MLP of 16384, top-1, chunk 8192, vocab 202048)",
         config=_multimodal("llama4", {
             "model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
             "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 202048, "num_local_experts": 16,
             "num_experts_per_tok": 1, "interleave_moe_layer_step": 1, "attention_chunk_size": 8192,
             "use_qk_norm": True, "max_position_embeddings": 10485760, "torch_dtype": "bfloat16"}),
         notes="The language model of Llama 4 Scout (vision encoder not counted): every layer MoE (16 routed experts, "
               "top-1, plus a shared expert), chunked attention (8192-token chunks) in 3 of 4 layers, the 4th global "
               "without RoPE; L2 q/k norm on the RoPE layers. Card: 109B total with vision, 17B active."),
    dict(slug="gpt-oss-20b", name="gpt-oss-20b", hf_id="openai/gpt-oss-20b", aliases=(),
         cross="copies of this config (2880 hidden, 24 layers, 64/8 heads of 64, 32 experts, top-4, window 128, "
               "vocab 201088, attention_bias true) and its expert tensor shapes [32, 2880, 5760] / [32, 2880, 2880] "
               "with biases; card: 20.9B parameters",
         config={"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 32,
                 "num_experts_per_tok": 4, "vocab_size": 201088, "sliding_window": 128,
                 "max_position_embeddings": 131072, "attention_bias": True, "tie_word_embeddings": False,
                 "torch_dtype": "bfloat16"},
         notes="Attention sinks (one learned logit per head), alternating 128-token sliding-window and full layers, "
               "every layer MoE (32 experts with biases, top-4); transformers runs it with eager attention (no SDPA: "
               "the sinks), so plans count the s^2 scores. The checkpoint's experts are MXFP4; trained in bf16 here."),
    dict(slug="gpt-oss-120b", name="gpt-oss-120b", hf_id="openai/gpt-oss-120b", aliases=(),
         cross="transformers' GptOssConfig, whose defaults are this model (36 layers, 128 experts, top-4)",
         config={"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 36,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 128,
                 "num_experts_per_tok": 4, "vocab_size": 201088, "sliding_window": 128,
                 "max_position_embeddings": 131072, "attention_bias": True, "tie_word_embeddings": False,
                 "torch_dtype": "bfloat16"},
         notes="gpt-oss-20b's design with 36 layers and 128 experts (top-4). Card: 117B total, 5.1B active."),
    dict(slug="qwen3-next-80b-a3b", name="Qwen3-Next-80B-A3B", hf_id="Qwen/Qwen3-Next-80B-A3B-Instruct",
         aliases=("Qwen/Qwen3-Next-80B-A3B-Thinking", "qwen3-next"),  # the hub id resolves with and without its owner
         cross="copies of this config (2048 hidden, 48 layers, full attention every 4th, 16/2 heads of 256, 512 "
               "experts of 512 + a shared one, top-10, 262144 positions) and transformers' Qwen3NextConfig defaults",
         config={"model_type": "qwen3_next", "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 48,
                 "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "num_experts": 512,
                 "num_experts_per_tok": 10, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
                 "vocab_size": 151936, "max_position_embeddings": 262144, "linear_num_key_heads": 16,
                 "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                 "linear_conv_kernel_dim": 4, "full_attention_interval": 4, "decoder_sparse_step": 1,
                 "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
         notes="Hybrid: Gated DeltaNet linear attention in 3 of 4 layers (its state per sequence, no s^2 term), gated "
               "full attention in the 4th; every layer MoE (512 experts of 512, top-10, one gated shared expert). "
               "Training runs transformers' torch implementation of the delta rule (chunks of 64)."),
    dict(slug="glm-4.5", name="GLM-4.5", hf_id="zai-org/GLM-4.5", aliases=("THUDM/GLM-4.5",),
         cross="copies of this config (5120 hidden, 92 layers, 96/8 heads of 128, 160 routed experts of 1536 + 1 "
               "shared, top-8, first_k_dense_replace 3, vocab 151552)",
         config={"model_type": "glm4_moe", "hidden_size": 5120, "intermediate_size": 12288,
                 "moe_intermediate_size": 1536, "num_hidden_layers": 92, "num_attention_heads": 96,
                 "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 160, "n_shared_experts": 1,
                 "num_experts_per_tok": 8, "first_k_dense_replace": 3, "vocab_size": 151552,
                 "max_position_embeddings": 131072, "attention_bias": True, "use_qk_norm": True,
                 "partial_rotary_factor": 0.5, "n_group": 1, "topk_group": 1, "tie_word_embeddings": False,
                 "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16"},
         notes="Layers 0-2 dense (12288), 3-91 MoE (160 experts of 1536, top-8, one shared expert); q/k norms, "
               "Q/K/V biases, partial RoPE. The multi-token-prediction layer is not built by transformers and not "
               "counted. Card: 355B total, 32B active."),
    dict(slug="glm-4.5-air", name="GLM-4.5-Air", hf_id="zai-org/GLM-4.5-Air", aliases=("THUDM/GLM-4.5-Air",),
         cross="copies of this config (4096 hidden, 46 layers, 96/8 heads of 128, 128 routed experts of 1408 + 1 "
               "shared, top-8, first_k_dense_replace 1)",
         config={"model_type": "glm4_moe", "hidden_size": 4096, "intermediate_size": 10944,
                 "moe_intermediate_size": 1408, "num_hidden_layers": 46, "num_attention_heads": 96,
                 "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 128, "n_shared_experts": 1,
                 "num_experts_per_tok": 8, "first_k_dense_replace": 1, "vocab_size": 151552,
                 "max_position_embeddings": 131072, "attention_bias": True, "use_qk_norm": False,
                 "partial_rotary_factor": 0.5, "n_group": 1, "topk_group": 1, "tie_word_embeddings": False,
                 "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16"},
         notes="Layer 0 dense (10944), 1-45 MoE (128 experts of 1408, top-8, one shared expert); Q/K/V biases, partial "
               "RoPE, no q/k norm. Card: 106B total, 12B active."),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma list of slugs")
    ap.add_argument("--out", type=Path, default=ROOT / "profiles" / "models" / "derived")
    args = ap.parse_args(argv)
    import textwrap

    from profiles.cache import profile_yaml, write_atomic
    from validation.derive import RawConfig, derive_from_raw

    for entry in CATALOGUE:
        if args.only and entry["slug"] not in args.only.split(","):
            continue
        t0 = time.perf_counter()
        src = HF.format(entry["hf_id"])
        raw = RawConfig(entry["config"], None, entry["name"], entry["hf_id"])
        prof = derive_from_raw(raw, name=entry["name"], aliases=tuple(entry["aliases"]))
        prof = prof.model_copy(update={"source": src, "notes": entry["notes"] + " " + prof.notes})
        cross = textwrap.wrap(f"cross-checked against {entry['cross']}", 116)
        header = (f"# {entry['name']}: {src}\n" + "".join(f"# {line}\n" for line in cross)
                  + f"# derived by benchmarks/derive_catalogue.py (transformers {prof.derived.transformers_version}, "
                    "torch {}); regenerate, do not edit\n".format(prof.derived.torch_version))
        write_atomic(args.out / f"{entry['slug']}.yaml", profile_yaml(prof, header))
        print(f"{entry['slug']}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
