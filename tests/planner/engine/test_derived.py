"""The engine's branch for derived profiles (planner/engine/derived.py, docs/memory.md eq. D4-D5), torch-free.

The profiles are the committed small ones (tests/profiles/data/derived, derived by benchmarks/derive_configs.py) and
a shipped one; their agreement with the trace is tested in tests/profiles/test_derived_profiles.py (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.engine.derived import attention_core_flops, inventory, unsupported
from planner.engine.dtypes import recipe_bytes
from planner.engine.evaluate import evaluate
from planner.engine.facts import model_facts
from planner.engine.lora_targets import resolve_lora_targets
from planner.engine.memory import activation_bytes
from planner.engine.setup import Setup, SetupError
from profiles.cache import load_file
from profiles.cluster import parse_cluster

DATA = Path(__file__).parents[2] / "profiles" / "data" / "derived"


def profile(arch: str):  # noqa: ANN201
    return load_file(DATA / f"{arch}.yaml")


@pytest.mark.parametrize("update, word", [
    ({"tp": 2}, "tensor parallelism"),
    ({"cp": 2}, "context parallelism"),
    ({"compile": True}, "torch.compile"),
])
def test_techniques_the_inventory_does_not_cover_are_refused(update, word):
    p = profile("cohere")
    setup = Setup(method="full", recipe="bf16", fsdp="full-shard", **update)
    assert word in unsupported(setup)
    with pytest.raises(SetupError, match=f"derived profile.*{word}"):
        evaluate(p, parse_cluster("2xA800"), setup)


def test_lora_never_targets_what_peft_refuses_or_routers():
    """Falcon-H1's Mamba out_proj is an nn.Linear peft refuses (role 'excluded'); routers are never targets."""
    names = resolve_lora_targets(profile("falcon_h1"), "all-linear")
    assert "out_proj" not in names and "in_proj" in names
    with pytest.raises(SetupError, match="out_proj"):
        evaluate(profile("falcon_h1"), parse_cluster("A800"), Setup(method="lora", lora_targets="out_proj"))
    assert "gate" not in resolve_lora_targets(profile("olmoe"), "all-linear")


@pytest.mark.parametrize("arch", ["cohere", "gemma3_text", "qwen3_next", "falcon_h1", "gpt_oss"])
def test_checkpointing_keeps_less_and_longer_sequences_more(arch):
    p = profile(arch)
    base = Setup(method="full", recipe="hf-amp", seq_len=512, micro_batch=2)
    rb = recipe_bytes(base)

    def saved(s: Setup) -> int:
        return activation_bytes(model_facts(p, s), s, rb).saved

    plain = saved(base)
    assert saved(base.model_copy(update={"checkpointing": "full"})) < plain
    assert saved(base.model_copy(update={"checkpointing": "selective"})) <= plain
    assert saved(base.model_copy(update={"seq_len": 1024})) > plain
    assert saved(base.model_copy(update={"micro_batch": 4})) > plain


def test_the_estimate_names_the_traced_inventory():
    p = profile("granite")
    plan = evaluate(p, parse_cluster("A800"), Setup(method="lora", recipe="bf16", seq_len=512))
    line = next(a for a in plan.memory.assumptions if a.startswith("activations:"))
    assert "GraniteForCausalLM" in line and "lora-half" in line
    assert not any("MoE routing buffers modelled coarsely" in a for a in plan.memory.assumptions)


def test_sliding_windows_cut_the_attention_flops():
    """gemma3_text: 5 of 6 layers see at most their window; beyond it the mean over layers grows less than s/2."""
    p = profile("gemma3_text")
    window = min(b.window for b in p.derived.blocks if b.attention == "sliding")
    short, long_ = attention_core_flops(p, window, False), attention_core_flops(p, 8 * window, False)
    assert long_ < 8 * short


def test_freeze_saves_only_the_trained_blocks():
    p = profile("cohere")
    full = Setup(method="full", recipe="bf16", seq_len=512)
    frozen = Setup(method="freeze", freeze_layers=1, recipe="bf16", seq_len=512)
    rb = recipe_bytes(full)
    a_full = activation_bytes(model_facts(p, full), full, rb)
    a_frozen = activation_bytes(model_facts(p, frozen), frozen, rb)
    assert a_frozen.trainable_layers == 1 < a_full.trainable_layers == p.num_layers
    assert a_frozen.saved < a_full.saved
    assert inventory(p, frozen, rb).setup_class == "full-half"


def test_experts_that_autocast_casts_get_a_copy_each_like_a_linear():
    """Llama 4's experts multiply with torch.bmm, which autocast casts (MoE.experts_autocast, docs/memory.md
    eq. A7a): under AMP full fine-tuning each fp32 expert stack gets a bf16 copy, so the cast parameters are the
    grouped_mm model's plus every routed expert's, and the estimate grows by 2 bytes per expert parameter."""
    p = profile("llama4_text")
    assert p.moe is not None and p.moe.experts_autocast
    grouped = p.model_copy(update={"moe": p.moe.model_copy(update={"experts_autocast": False})})
    setup = Setup(method="full", recipe="hf-amp", seq_len=512)
    experts = sum(x.params for x in model_facts(p, setup).linears if x.name.startswith("experts."))
    assert experts > 0
    cast, plain = model_facts(p, setup).trainable, model_facts(grouped, setup).trainable
    assert cast.trainable_linear - plain.trainable_linear == experts
    a = evaluate(p, parse_cluster("A800"), setup).memory
    b = evaluate(grouped, parse_cluster("A800"), setup).memory
    assert a.phase_tensors["forward_peak"] - b.phase_tensors["forward_peak"] == 2 * experts
    lora = Setup(method="lora", recipe="hf-amp", seq_len=512)  # frozen bf16 experts: nothing to cast
    assert model_facts(p, lora).trainable.trainable_linear == model_facts(grouped, lora).trainable.trainable_linear


def test_a_stale_derived_profile_is_named_in_the_estimate():
    p = profile("granite")
    old = p.model_copy(update={"derived": p.derived.model_copy(update={"derivation": 1})})
    plan = evaluate(old, parse_cluster("A800"), Setup(method="lora", recipe="bf16", seq_len=512))
    line = next(a for a in plan.memory.assumptions if a.startswith("activations:"))
    assert "STALE" in line and "plan profiles add" in line
    fresh = evaluate(p, parse_cluster("A800"), Setup(method="lora", recipe="bf16", seq_len=512))
    assert not any("STALE" in a for a in fresh.memory.assumptions)
