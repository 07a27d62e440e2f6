"""Write the config.json files of the 17 architectures of issue 13, saved from transformers' own config classes.

Twelve are the ``model_type`` values the hand-written mapper refused (``profiles.hf_config`` before issue 13);
five more were chosen to cover layer kinds the twelve do not: OLMo 3 (sliding windows every 3 of 4 layers,
projection-wide q/k norms, post-norms only), SmolLM3 (no RoPE on every 4th layer), LFM2 (short-convolution
blocks), Granite 4.0-H (``granitemoehybrid``: Mamba-2 blocks, attention blocks, MoE with a shared MLP) and OLMoE
(64 experts, q/k norms).

* ``benchmarks/arch_configs/<type>.json``: the class defaults (``CONFIG_MAPPING[type]()``), the full-size model
  the class describes, for ``benchmarks/accuracy_vs_trace.py --derived``; overrides only where the default
  does not build or builds one layer kind only (listed in :data:`REAL_OVERRIDES` with the reason);
* ``tests/profiles/data/arch_configs/<type>.json``: the same class with small shapes (:data:`SMALL`), for CI.

Each file is ``config.to_dict()``: every key the class knows, as ``save_pretrained`` would write with
``use_diff=False``. Regenerate with ``python benchmarks/arch_configs.py`` (needs transformers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT / "benchmarks" / "arch_configs"
SMALL_DIR = ROOT / "tests" / "profiles" / "data" / "arch_configs"

REFUSED = ["gemma3_text", "gpt_oss", "llama4_text", "qwen3_next", "glm4_moe", "granite", "cohere", "starcoder2",
           "ernie4_5", "hunyuan_v1_dense", "seed_oss", "falcon_h1"]
"""The twelve model types issue 13 found refused with "unknown model_type"."""
CHOSEN = ["olmo3", "smollm3", "lfm2", "granitemoehybrid", "olmoe"]
"""Five more, each with a layer kind or pattern the twelve lack."""
ARCHITECTURES = REFUSED + CHOSEN

REAL_OVERRIDES: dict[str, tuple[dict, str]] = {
    "hunyuan_v1_dense": ({"head_dim": 128}, "the class default head_dim None does not build "
                         "(modeling_hunyuan_v1_dense.py: self.head_dim**-0.5); Hunyuan-7B's config says 128"),
    "lfm2": ({"layer_types": ["full_attention" if i % 3 == 2 else "conv" for i in range(32)]},
             "the class default builds attention blocks only; LFM2 interleaves short-convolution blocks "
             "(transformers docs/source/en/model_doc/lfm2.md: 10 convolution and 6 attention blocks of 16)"),
    "granitemoehybrid": ({"layer_types": ["attention" if i % 8 == 5 else "linear_attention" for i in range(32)]},
                         "the class default builds Mamba-2 blocks only; Granite 4.0-H interleaves attention blocks"),
}

_DENSE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              vocab_size=1000, max_position_embeddings=4096, num_hidden_layers=2)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
SMALL: dict[str, dict] = {
    "gemma3_text": _DENSE | dict(num_hidden_layers=6, sliding_window=64, query_pre_attn_scalar=16),
    "gpt_oss": _DENSE | dict(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=64,
                             intermediate_size=64),
    "llama4_text": _DENSE | dict(num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=1,
                                 intermediate_size=64, intermediate_size_mlp=128, attention_chunk_size=128,
                                 interleave_moe_layer_step=2),
    "qwen3_next": _DENSE | _MOE | dict(num_hidden_layers=4, num_experts=4, shared_expert_intermediate_size=32,
                                       linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                                       linear_num_value_heads=4, head_dim=16),
    "glm4_moe": _DENSE | _MOE | dict(num_hidden_layers=3, n_routed_experts=4, n_shared_experts=1,
                                     first_k_dense_replace=1, n_group=1, topk_group=1, pad_token_id=0),
    "granite": _DENSE,
    "cohere": _DENSE | dict(pad_token_id=0),
    "starcoder2": _DENSE | dict(sliding_window=64),
    "ernie4_5": _DENSE,
    "hunyuan_v1_dense": _DENSE,
    "seed_oss": _DENSE,
    "falcon_h1": _DENSE | dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
                               mamba_d_state=16, mamba_chunk_size=64),
    "olmo3": _DENSE | dict(num_hidden_layers=4, sliding_window=64),
    "smollm3": _DENSE | dict(num_hidden_layers=4, pad_token_id=0),  # the class default 128004 exceeds the vocabulary
    "lfm2": _DENSE | dict(num_hidden_layers=3, layer_types=["conv", "full_attention", "conv"], block_dim=64,
                          block_ff_dim=128, block_auto_adjust_ff_dim=False, conv_L_cache=3),
    "granitemoehybrid": _DENSE | dict(num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=2,
                                      shared_intermediate_size=64, mamba_n_heads=4, mamba_d_head=32,
                                      mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=64,
                                      layer_types=["linear_attention", "attention", "linear_attention"]),
    "olmoe": _DENSE | dict(num_experts=4, num_experts_per_tok=2),
}
"""Small shapes for CI: hidden 64, 4 heads, vocabulary 1000 (no sequence point equals it: the trace tags tensors whose last dimension is the vocabulary as logits), enough layers for every layer kind and pattern,
windows and chunks of 64-128 tokens so every sequence regime is cheap to trace."""


def config_dict(model_type: str, overrides: dict) -> dict:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[model_type](**overrides)
    d = cfg.to_dict()
    d.pop("transformers_version", None)
    return d


def main() -> int:
    import transformers

    REAL_DIR.mkdir(parents=True, exist_ok=True)
    SMALL_DIR.mkdir(parents=True, exist_ok=True)
    for t in ARCHITECTURES:
        over, _why = REAL_OVERRIDES.get(t, ({}, ""))
        (REAL_DIR / f"{t}.json").write_text(json.dumps(config_dict(t, over), indent=1, sort_keys=True) + "\n")
        (SMALL_DIR / f"{t}.json").write_text(json.dumps(config_dict(t, SMALL[t]), indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(ARCHITECTURES)} real and {len(ARCHITECTURES)} small configs (transformers "
          f"{transformers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
