"""Reading Hugging Face config.json files into profiles, writing them back, finding them, and the one-line errors.

Pure JSON: nothing here imports transformers (``test_params_meta.py`` builds the models).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.errors import ProfileError
from profiles.hf_config import (
    SUPPORTED_MODEL_TYPES,
    find_config,
    profile_from_config_file,
    profile_from_hf_config,
    to_hf_config,
)
from profiles.params import linear_layers, param_counts
from profiles.registry import get_model, handwritten_models
from profiles.schema import ModelProfile

# fields that describe where a profile came from, not the architecture
PROVENANCE = {"name", "source", "hf_id", "aliases", "notes", "unverified", "not_buildable_reason", "card",
              "defaults_used"}


def arch(p: ModelProfile) -> dict:
    return p.model_dump(exclude=PROVENANCE)


@pytest.mark.parametrize("m", handwritten_models(), ids=lambda m: m.name)
def test_round_trip_through_hf_config(m: ModelProfile):
    cfg = json.loads(json.dumps(to_hf_config(m)))  # what a config.json file would hold
    back = profile_from_hf_config(cfg, source=m.source, name=m.name, hf_id=m.hf_id)
    assert arch(back) == arch(m)
    assert param_counts(back) == param_counts(m)
    assert linear_layers(back) == linear_layers(m)


def test_every_mapped_model_type_has_a_writer_and_reader():
    assert list(SUPPORTED_MODEL_TYPES) == sorted(SUPPORTED_MODEL_TYPES)
    assert {m.model_type for m in handwritten_models()} <= set(SUPPORTED_MODEL_TYPES)


@settings(max_examples=60, deadline=None)
@given(
    t=st.sampled_from(["llama", "qwen2", "qwen3", "mistral", "gemma2", "olmo2", "phi3", "glm", "internlm2", "chatglm"]),
    kv=st.sampled_from([1, 2, 4, 8]),
    group=st.integers(1, 8),
    head_dim=st.sampled_from([32, 64, 128, 256]),
    layers=st.integers(1, 200),
    inter=st.integers(1, 60_000),
    vocab=st.integers(1, 300_000),
    tie=st.booleans(),
)
def test_round_trip_property(t, kv, group, head_dim, layers, inter, vocab, tie):
    heads = kv * group
    template = next((m for m in handwritten_models() if m.model_type == t), None)
    base = dict(template.model_dump()) if template else dict(_TEMPLATES[t])
    base.update(
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim, hidden_size=heads * head_dim, num_layers=layers,
        intermediate_size=inter, vocab_size=vocab, tie_embeddings=tie, aliases=(), name="x", source="https://x.org/c",
    )
    p = ModelProfile(**base)
    back = profile_from_hf_config(json.loads(json.dumps(to_hf_config(p))), "https://x.org/c", "x")
    assert arch(back) == arch(p)


_COMMON = dict(name="t", source="https://example.org/config.json", hidden_size=64, intermediate_size=128,
               num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=100, tie_embeddings=False,
               max_positions=128)
_TEMPLATES = {
    "olmo2": _COMMON | dict(model_type="olmo2", qk_norm=True, qk_norm_scope="projection"),
    "phi3": _COMMON | dict(model_type="phi3", fused_qkv=True, fused_gate_up=True),
    "chatglm": _COMMON | dict(model_type="chatglm", fused_qkv=True, fused_gate_up=True, qkv_bias=True,
                              transformers_buildable=False, not_buildable_reason="remote code"),
}


def test_to_hf_config_refuses_what_the_type_cannot_express():
    p = get_model("llama3-8b").model_copy(update={"qk_norm": True})
    with pytest.raises(ProfileError) as e:
        to_hf_config(p)
    assert str(e.value) == "Llama-3-8B: model_type 'llama' cannot express q/k norms"


# ---------------------------------------------------------------------------------------------------------------
# reading real-looking configs


LLAMA_3_1_8B = {  # keys and values as in meta-llama/Llama-3.1-8B config.json (shared/reference/models.md)
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "rope_type": "llama3", "original_max_position_embeddings": 8192},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def write(tmp_path: Path, cfg, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg), encoding="utf-8")
    return path


def test_a_config_file_reads_to_the_shipped_profile(tmp_path: Path):
    p = profile_from_config_file(write(tmp_path, LLAMA_3_1_8B))
    assert arch(p) == arch(get_model("llama3.1-8b"))
    assert param_counts(p).total == 8_030_261_248
    assert p.name == tmp_path.name and p.source == str(tmp_path / "config.json")


def test_deepseek_v2_lite_config_reads_to_the_shipped_profile(tmp_path: Path):
    cfg = {  # keys as in deepseek-ai/DeepSeek-V2-Lite config.json (mlc `deepseek_v2_lite` = the HF config)
        "model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
        "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
        "n_routed_experts": 64, "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
        "v_head_dim": 128, "vocab_size": 102400, "max_position_embeddings": 163840, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False, "topk_method": "greedy", "torch_dtype": "bfloat16",
    }
    assert arch(profile_from_config_file(write(tmp_path, cfg))) == arch(get_model("deepseek-v2-lite"))


def test_nested_text_config(tmp_path: Path):
    outer = {"model_type": "llava", "text_config": dict(LLAMA_3_1_8B), "vision_config": {"hidden_size": 1024}}
    del outer["text_config"]["model_type"]
    with pytest.raises(ProfileError, match="model_type 'llava' has no hand-written mapping"):
        profile_from_config_file(write(tmp_path, outer))
    outer["text_config"]["model_type"] = "llama"
    assert param_counts(profile_from_config_file(write(tmp_path, outer))).total == 8_030_261_248


def test_defaults_follow_transformers_for_omitted_switches(tmp_path: Path):
    cfg = {k: v for k, v in LLAMA_3_1_8B.items() if k not in ("tie_word_embeddings", "attention_bias", "mlp_bias",
                                                                "num_key_value_heads")}
    p = profile_from_hf_config(cfg, "https://example.org/config.json", "x")
    assert (p.tie_embeddings, p.qkv_bias, p.mlp_bias, p.num_kv_heads) == (False, False, False, 32)
    gemma = {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
             "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
             "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh"}
    g = profile_from_hf_config(gemma, "https://example.org/config.json", "g")
    assert arch(g) == arch(get_model("gemma2-2b"))  # tied, sliding window 4096, softcaps 50 / 30 by default


MISTRAL_NO_KV = {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "vocab_size": 32000, "max_position_embeddings": 32768}


@pytest.mark.parametrize("with_transformers", [True, False], ids=["config class", "table"])
def test_omitted_keys_take_the_class_default_and_say_so(with_transformers, monkeypatch: pytest.MonkeyPatch):
    """Issue 13: a key the config.json omits takes transformers' default for the model type (MistralConfig's
    num_key_value_heads is 8, sliding_window 4096; hidden_act silu), as from_pretrained does, read from the
    installed class or, without transformers, from the table; either way the profile records it."""
    if not with_transformers:
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    p = profile_from_hf_config(MISTRAL_NO_KV, "/m/config.json", "m")
    assert (p.num_kv_heads, p.sliding_window, p.mlp_kind, p.tie_embeddings) == (8, 4096, "gated-silu", False)
    keys = [d.split("=")[0] for d in p.defaults_used]
    assert keys == ["num_key_value_heads", "head_dim", "tie_word_embeddings", "hidden_act", "sliding_window"]
    assert all("MistralConfig" in d for d in p.defaults_used)


def test_a_minimal_llama_config_without_hidden_act_is_read(tmp_path: Path):
    """Issue 13's example: a minimal but valid config.json that omits hidden_act (LlamaConfig default 'silu')."""
    cfg = {k: v for k, v in LLAMA_3_1_8B.items() if k != "hidden_act"}
    p = profile_from_config_file(write(tmp_path, cfg))
    assert param_counts(p).total == 8_030_261_248
    assert any(d.startswith("hidden_act='silu' (LlamaConfig") for d in p.defaults_used)


def test_the_default_tables_are_the_config_classes_defaults():
    """Without transformers the tables answer; they must say what the classes say (transformers 5.24.0)."""
    transformers = pytest.importorskip("transformers")
    from profiles.hf_config import FAMILIES

    for t, fam in FAMILIES.items():
        if fam.remote_code:
            continue
        cls = transformers.CONFIG_MAPPING[t]
        assert cls.__name__ == fam.config_class
        for key, value in fam.defaults.items():
            assert getattr(cls, key) == value, f"{t}.{key}: {cls.__name__} says {getattr(cls, key)!r}, table {value!r}"


# ---------------------------------------------------------------------------------------------------------------
# one-line errors, pinned


def error_of(path: Path) -> str:
    with pytest.raises(ProfileError) as e:
        profile_from_config_file(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_not_json(tmp_path: Path):
    path = write(tmp_path, '{"model_type": "llama",,}')
    assert error_of(path) == f"{path}: not JSON (Expecting property name enclosed in double quotes at line 1 column 24)"


def test_not_an_object(tmp_path: Path):
    path = write(tmp_path, "[1, 2]")
    assert error_of(path) == f"{path}: expected a JSON object at the top level, got list"


def test_missing_key_without_a_default(tmp_path: Path):
    """A remote-code family has no config class to ask: its shape keys are required."""
    cfg = {"model_type": "chatglm", "num_layers": 40, "hidden_size": 4096, "num_attention_heads": 32,
           "kv_channels": 128, "padded_vocab_size": 151552, "seq_length": 131072}
    path = write(tmp_path, cfg)
    assert error_of(path) == f"{path}: missing key 'ffn_hidden_size' (model_type 'chatglm' has no default for it)"


def test_missing_model_type(tmp_path: Path):
    cfg = dict(LLAMA_3_1_8B)
    del cfg["model_type"]
    path = write(tmp_path, cfg)
    assert error_of(path) == f"{path}: missing key 'model_type'"


def test_hidden_not_divisible_by_heads(tmp_path: Path):
    path = write(tmp_path, LLAMA_3_1_8B | {"num_attention_heads": 30, "num_key_value_heads": 10})
    assert error_of(path) == (
        f"{path}: hidden_size 4096 is not divisible by num_attention_heads 30 and there is no head_dim"
    )


def test_explicit_head_dim_needs_no_divisibility(tmp_path: Path):
    p = profile_from_config_file(write(tmp_path, LLAMA_3_1_8B | {"num_attention_heads": 30, "num_key_value_heads": 10,
                                                                  "head_dim": 128}))
    assert p.q_width == 30 * 128


def test_kv_heads_not_dividing_heads(tmp_path: Path):
    path = write(tmp_path, LLAMA_3_1_8B | {"num_key_value_heads": 5})
    assert error_of(path) == f"{path}: num_key_value_heads 5 does not divide num_attention_heads 32"


def test_unknown_model_type(tmp_path: Path):
    path = write(tmp_path, LLAMA_3_1_8B | {"model_type": "gpt_neox"})
    assert error_of(path) == (
        f"{path}: model_type 'gpt_neox' has no hand-written mapping (those: chatglm, deepseek_v2, deepseek_v3, "
        "gemma, gemma2, glm, internlm2, llama, mistral, mixtral, olmo, olmo2, phi3, qwen2, qwen2_moe, qwen3, "
        f"qwen3_moe); derive its profile from transformers' model code once with `plan profiles add {path}` (needs "
        "torch and transformers), then plan uses it"
    )


def test_bad_value(tmp_path: Path):
    path = write(tmp_path, LLAMA_3_1_8B | {"hidden_size": "4096"})
    assert error_of(path) == f"{path}: hidden_size must be a positive integer, got '4096'"


def test_unsupported_layer_pattern(tmp_path: Path):
    cfg = {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
           "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 151936, "max_position_embeddings": 40960,
           "hidden_act": "silu", "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
           "decoder_sparse_step": 2}
    path = write(tmp_path, cfg)
    assert error_of(path) == f"{path}: decoder_sparse_step 2 is not supported (only every layer MoE, step 1)"


def test_remote_code_types_read_but_say_they_cannot_be_built(tmp_path: Path):
    p = get_model("internlm2.5-7b")
    back = profile_from_config_file(write(tmp_path, to_hf_config(p)))
    assert not back.transformers_buildable and "trust_remote_code" in (back.not_buildable_reason or "")


def test_get_model_reports_config_errors(tmp_path: Path):
    path = write(tmp_path, LLAMA_3_1_8B | {"num_key_value_heads": 5})
    with pytest.raises(ProfileError) as e:
        get_model(str(path))
    assert str(e.value) == f"{path}: num_key_value_heads 5 does not divide num_attention_heads 32"


# ---------------------------------------------------------------------------------------------------------------
# finding config.json


def test_find_config_file_and_folder(tmp_path: Path):
    path = write(tmp_path, LLAMA_3_1_8B)
    assert find_config(str(path)) == path
    assert find_config(str(tmp_path)) == path
    assert find_config(str(tmp_path / "nope")) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_config(str(empty)) is None
    assert get_model(str(tmp_path)).hidden_size == 4096


def _snapshot(cache: Path, hub_id: str, rev: str, cfg: dict) -> Path:
    snap = cache / ("models--" + hub_id.replace("/", "--")) / "snapshots" / rev
    snap.mkdir(parents=True)
    blob = cache / ("models--" + hub_id.replace("/", "--")) / "blobs" / f"blob-{rev}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_text(json.dumps(cfg), encoding="utf-8")
    (snap / "config.json").symlink_to(blob)  # the cache's layout: snapshots link into blobs/
    return snap / "config.json"


def test_find_config_in_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert find_config("my-org/My-Model-7B") is None
    old = _snapshot(cache, "my-org/My-Model-7B", "aaa", LLAMA_3_1_8B | {"num_hidden_layers": 2})
    new = _snapshot(cache, "my-org/My-Model-7B", "bbb", LLAMA_3_1_8B)
    os.utime(old.parent, (time.time() - 100, time.time() - 100))
    assert find_config("my-org/My-Model-7B") == new  # newest snapshot
    refs = cache / "models--my-org--My-Model-7B" / "refs"
    refs.mkdir()
    (refs / "main").write_text("aaa\n")
    assert find_config("my-org/My-Model-7B") == old  # refs/main wins
    p = get_model("my-org/My-Model-7B")
    assert (p.name, p.hf_id, p.num_layers) == ("My-Model-7B", "my-org/My-Model-7B", 2)


def test_hf_home_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    path = _snapshot(tmp_path / "hub", "org/name", "r1", LLAMA_3_1_8B)
    assert find_config("org/name") == path


def test_not_a_hub_id_and_not_a_path():
    assert find_config("llama-3-8b-not-a-thing") is None
    with pytest.raises(ProfileError, match=r"^unknown model 'nobody/nothing-here'"):
        get_model("nobody/nothing-here")
