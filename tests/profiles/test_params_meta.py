"""Exact parameter counts, checked against transformers on the meta device (no memory, no download).

Every shipped profile that transformers can build is turned into a config with ``profiles.hf_config.to_hf_config``,
built with ``AutoModelForCausalLM.from_config`` under ``torch.device("meta")`` at full size (the 405B model builds in
about a second: meta tensors hold no data), and compared with ``profiles.params.param_counts`` for exact equality:
the total, the active count (MoE: top-k of the routed experts) and every group, with transformers' parameter names
mapped to groups by :func:`hf_groups`. Random small configs of every mapped ``model_type`` (hypothesis) check the
reading side: ``profile_from_hf_config`` of a config dict counts what transformers builds from the same dict.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from profiles.hf_config import NOT_BUILDABLE, SUPPORTED_MODEL_TYPES, profile_from_hf_config, to_hf_config  # noqa: E402
from profiles.params import GROUPS, param_counts  # noqa: E402
from profiles.registry import all_models, get_model  # noqa: E402
from profiles.schema import ModelProfile  # noqa: E402

transformers.logging.set_verbosity_error()

BUILDABLE = [m for m in all_models() if m.transformers_buildable and m.derived is None]
DERIVED = [m for m in all_models() if m.derived is not None]
"""Shipped profiles derived from the model code (profiles/models/derived, benchmarks/derive_catalogue.py)."""

# Shipped profiles transformers cannot build, and why (the same reason is in each profile).
NOT_CHECKED = {
    "InternLM2.5-7B": "model_type 'internlm2' is remote code only (trust_remote_code); no native transformers class",
}


def build_meta(cfg: dict):
    """``AutoModelForCausalLM.from_config`` on the meta device: shapes only, no memory."""
    config = transformers.AutoConfig.for_model(**cfg)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_config(config)


def hf_groups(model) -> dict[str, int]:
    """Parameters by :data:`profiles.params.GROUPS` from transformers' module names, plus total and active.

    ``embed_tokens`` -> embedding, ``lm_head`` -> lm_head (absent when tied: named_parameters counts a shared
    tensor once), any ``*norm*`` module -> norms (including q/k norms and MLA's latent norms), ``self_attn`` ->
    attention, ``mlp`` -> moe in layers whose MLP holds ``experts`` (router, experts, shared experts, shared-expert
    gate), else mlp. Any other name fails the test, so a new kind of parameter cannot slip into a wrong group.
    Active = total minus the routed experts a token does not use, from the expert tensors' own leading dimension.
    """
    layers = model.model.layers
    moe_layers = {i for i, layer in enumerate(layers) if hasattr(layer.mlp, "experts")}
    out = dict.fromkeys(GROUPS, 0)
    inactive = 0
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "lm_head":
            group = "lm_head"
        elif "embed_tokens" in parts:
            group = "embedding"
        elif any("norm" in part for part in parts[:-1]):
            group = "norms"
        elif "self_attn" in parts:
            group = "attention"
        elif "mlp" in parts:
            layer = int(parts[parts.index("layers") + 1])
            group = "moe" if layer in moe_layers else "mlp"
            if "experts" in parts and group == "moe":
                experts = layers[layer].mlp.experts
                n = p.shape[0]
                k = model.config.num_experts_per_tok
                assert n == getattr(experts, "num_experts", n)
                inactive += p.numel() * (n - k) // n
        else:
            raise AssertionError(f"parameter {name} has no group")
        out[group] += p.numel()
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(out.values())
    return out | {"total": total, "active": total - inactive}


def test_the_not_buildable_list_is_complete():
    shipped = {m.name: m for m in all_models() if not m.transformers_buildable}
    assert set(shipped) == set(NOT_CHECKED)
    for name, m in shipped.items():
        assert m.not_buildable_reason == NOT_BUILDABLE[m.model_type]
    assert len(BUILDABLE) >= 34


@pytest.mark.parametrize("m", BUILDABLE, ids=lambda m: m.name)
def test_counts_equal_transformers_on_meta(m: ModelProfile):
    model = build_meta(to_hf_config(m))
    assert param_counts(m).as_dict() == hf_groups(model)


@pytest.mark.parametrize("m", DERIVED, ids=lambda m: m.name)
def test_derived_counts_equal_transformers_on_meta(m: ModelProfile):
    """Issue 13's catalogue (Gemma 3, Llama 4 Scout, gpt-oss, Qwen3-Next, GLM-4.5): the model transformers builds
    from the profile's own config (its text decoder for multimodal configs) on the meta device, parameter for
    parameter, and the active count from the expert tensors' leading dimension."""
    import json

    from validation.derive.config import RawConfig, build, to_config

    cfg = to_config(RawConfig(json.loads(m.derived.config_json), None, m.name, m.hf_id))
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = build(cfg)
    named = dict(model.named_parameters())  # a tied head appears once
    assert param_counts(m).total == sum(p.numel() for p in named.values())
    k = getattr(cfg, "num_experts_per_tok", None)
    experts = {n: p for n, p in named.items() if ".experts." in n}  # routed experts and their biases
    if experts:
        e = next(p for p in experts.values() if p.dim() == 3).shape[0]
        inactive = sum(p.numel() * (e - k) // e for p in experts.values())
        assert param_counts(m).active == param_counts(m).total - inactive
    assert m.source == f"https://huggingface.co/{m.hf_id}/blob/main/config.json"


def test_llama_3_1_8b_total_from_transformers():
    # issue 2 / shared/reference/models.md: Llama-3.1-8B has 8,030,261,248 parameters
    model = build_meta(to_hf_config(get_model("llama3.1-8b")))
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248


def test_qwen2_5_0_5b_total_from_transformers():
    # issue 2 / shared/reference/models.md: Qwen2.5-0.5B has 494,032,768 parameters (tied embeddings)
    model = build_meta(to_hf_config(get_model("qwen2.5-0.5b")))
    assert sum(p.numel() for p in model.parameters()) == 494_032_768


def test_glm_4_9b_chatglm_config_counts_what_native_glm_builds():
    """THUDM/glm-4-9b-chat's original chatglm config (keys as in that config.json, numbers from
    shared/reference/models.md) reads to the same counts as the native 'glm' profile transformers builds."""
    chatglm = {
        "model_type": "chatglm",
        "num_layers": 40,
        "hidden_size": 4096,
        "ffn_hidden_size": 13_696,
        "num_attention_heads": 32,
        "kv_channels": 128,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "padded_vocab_size": 151_552,
        "seq_length": 131_072,
        "add_qkv_bias": True,
        "add_bias_linear": False,
        "rmsnorm": True,
        "post_layer_norm": True,
        "torch_dtype": "bfloat16",
    }
    p = profile_from_hf_config(chatglm, "https://huggingface.co/THUDM/glm-4-9b-chat/blob/main/config.json", "glm4")
    assert not p.transformers_buildable and p.fused_qkv
    native = get_model("glm-4-9b")
    assert param_counts(p) == param_counts(native)
    assert param_counts(native).as_dict() == hf_groups(build_meta(to_hf_config(native)))


# ---------------------------------------------------------------------------------------------------------------
# random small configs of every native model_type, read and built from the same dict


@st.composite
def small_config(draw, model_type: str) -> dict:
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    # a multiple of heads: transformers' llama / gemma2 / deepseek_v2 configs reject anything else even with head_dim
    hidden = heads * (head_dim if model_type == "internlm2" else draw(st.sampled_from([8, 16, 24])))
    layers = draw(st.integers(1, 3))
    d = {
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": draw(st.sampled_from([16, 40, 64])),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": draw(st.integers(40, 300)),
        "tie_word_embeddings": draw(st.booleans()),
        "max_position_embeddings": 256,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "pad_token_id": 0,  # class defaults such as GLM's 151329 exceed a small vocabulary
    }
    if model_type in ("llama", "qwen3", "qwen3_moe", "gemma", "gemma2", "olmo", "olmo2", "glm", "deepseek_v2",
                      "deepseek_v3"):
        d["attention_bias"] = draw(st.booleans())
    if model_type == "llama":
        d["mlp_bias"] = draw(st.booleans())
    if model_type in ("gemma", "gemma2"):
        d["hidden_activation"] = "gelu_pytorch_tanh"
    if model_type == "qwen2_moe":
        d["qkv_bias"] = draw(st.booleans())
        d["shared_expert_intermediate_size"] = draw(st.sampled_from([0, 24]))
    if model_type in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3"):
        experts = draw(st.integers(1, 6))
        d["num_experts_per_tok"] = draw(st.integers(1, experts))
        key = {"mixtral": "num_local_experts", "deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts"}
        d[key.get(model_type, "num_experts")] = experts
        if model_type != "mixtral":
            d["moe_intermediate_size"] = draw(st.sampled_from([8, 24]))
        dense = draw(st.integers(0, layers))
        if model_type in ("qwen2_moe", "qwen3_moe"):
            d["mlp_only_layers"] = list(range(dense))
        if model_type.startswith("deepseek"):
            d["first_k_dense_replace"] = dense
            d["n_shared_experts"] = draw(st.integers(0, 2))
            d["q_lora_rank"] = draw(st.sampled_from([None, 16]))
            d["kv_lora_rank"] = draw(st.sampled_from([8, 16]))
            d["qk_rope_head_dim"] = draw(st.sampled_from([4, 8]))
            d["qk_nope_head_dim"] = draw(st.sampled_from([8, 16]))
            d["v_head_dim"] = draw(st.sampled_from([8, 16]))
            d["n_group"] = d["topk_group"] = 1
            if model_type == "deepseek_v2" and d["n_shared_experts"] == 0:
                d["n_shared_experts"] = 1  # transformers' DeepseekV2Moe always builds a shared MLP
    if model_type == "internlm2":
        d["bias"] = draw(st.booleans())
        del d["head_dim"]
    return d


NATIVE = [t for t in SUPPORTED_MODEL_TYPES if t not in NOT_BUILDABLE]


@pytest.mark.parametrize("model_type", NATIVE)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reading_a_config_counts_what_transformers_builds(model_type: str, data):
    cfg = data.draw(small_config(model_type))
    p = profile_from_hf_config(cfg, "https://example.org/config.json", "random")
    assert param_counts(p).as_dict() == hf_groups(build_meta(cfg))
