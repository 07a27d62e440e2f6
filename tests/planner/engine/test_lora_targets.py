"""peft's resolution of LoRA targets on MoE models, FSDP mixed precision bytes and gradient lifetimes (issue 11).

The rules come from the libraries' code (planner/engine/lora_targets.py, planner/engine/dtypes.py, planner/engine/memory.py
docstrings); the byte counts they imply are checked against real peft / FSDP2 runs in
tests/validation/test_engine_vs_trace_regressions.py.
"""

from __future__ import annotations

import pytest

from planner.engine.evaluate import evaluate
from planner.engine.facts import model_facts
from planner.engine.dtypes import recipe_bytes
from planner.engine.lora_targets import expert_adapter_params, lora_targets
from planner.engine.memory import gradients_persist
from planner.engine.setup import Setup, SetupError
from profiles.cluster import parse_cluster
from profiles.registry import get_model


def test_all_linear_on_deepseek_adapts_routed_experts_not_dense_or_shared_mlps():
    m = get_model("deepseek-v2-lite")
    t = lora_targets(m, "all-linear")
    assert t.modules == {"q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}
    assert t.expert_gate_up and t.expert_down
    assert t.passed_to_peft() == sorted(t.modules | {"gate_proj", "up_proj", "down_proj"})


def test_all_linear_on_qwen3_moe_names_only_the_linear_modules():
    """Qwen3-MoE has no nn.Linear MLP in transformers 5 (all experts are 3-D): `all-linear` is attention only."""
    t = lora_targets(get_model("qwen3-30b-a3b"), "all-linear")
    assert t.modules == {"q_proj", "k_proj", "v_proj", "o_proj"} and not t.experts


def test_naming_expert_projections_on_qwen3_moe_adapts_the_experts():
    t = lora_targets(get_model("qwen3-30b-a3b"), "q_proj,gate_proj,up_proj")
    assert t.modules == {"q_proj"} and t.expert_gate_up and not t.expert_down


def test_gate_without_up_is_refused_as_peft_refuses_it():
    with pytest.raises(SetupError, match="gate_proj and up_proj"):
        lora_targets(get_model("deepseek-v2-lite"), "gate_proj")


def test_dense_models_and_mixtral_are_untouched():
    for name in ("llama-3.1-8b", "mixtral-8x7b"):
        t = lora_targets(get_model(name), "all-linear")
        assert not t.experts


def test_deepseek_adapter_count():
    """Per expert: gate/up at rank 2r is 2r(h + 2F), down at rank r is r(F + h); h 2048, F 1408, 26 x 64 experts.
    Attention: r(in + out) for q (2048->3072), kv_a (2048->576), kv_b (512->4096), o (2048->2048) on 27 layers.
    (peft 0.21.2 on the transformers 5.24 model, built on fake tensors, holds 179,058,176 trainable parameters.)"""
    m = get_model("deepseek-v2-lite")
    s = Setup(method="lora", lora_rank=8)
    experts = 26 * 64 * (16 * (2048 + 2 * 1408) + 8 * (1408 + 2048))
    attention = 27 * 8 * ((2048 + 3072) + (2048 + 576) + (512 + 4096) + (2048 + 2048))
    assert expert_adapter_params(m, lora_targets(m, s.lora_targets), 8) == experts
    assert model_facts(m, s).trainable.adapter == experts + attention == 179_058_176


def test_fsdp_amp_gathers_bf16_weights():
    """accelerate's bf16 MixedPrecisionPolicy: fp32 shards, bf16 compute, no autocast copies, bf16 residual."""
    rb = recipe_bytes(Setup(recipe="hf-amp", fsdp="full-shard"))
    assert (rb.trainable_weight, rb.grad32, rb.state, rb.residual, rb.autocast, rb.gathered) == (4, 4, 4, 2, False, True)
    m = get_model("qwen2.5-14b")
    est = evaluate(m, parse_cluster("8xH100"), Setup(recipe="hf-amp", fsdp="full-shard")).memory
    assert est.categories["temporaries"] == 0
    plain_setup = Setup(recipe="hf-amp")
    plain = evaluate(m, parse_cluster("H100"), plain_setup).memory
    # plain AMP: autocast's bf16 copy of every trainable linear weight is alive through the forward
    copies = recipe_bytes(plain_setup).compute * model_facts(m, plain_setup).trainable.trainable_linear
    assert plain.phases["forward_peak"] - plain.phases["after_load"] > copies


@pytest.mark.parametrize("kw, persists", [
    (dict(), False), (dict(zero=1), False), (dict(zero=2), False), (dict(zero=3), True), (dict(grad_accum=2), True),
    (dict(fsdp="full-shard", recipe="hf-amp"), False),
])
def test_gradient_lifetimes(kw, persists):
    s = Setup(**{"recipe": "deepspeed-bf16", **kw})
    assert gradients_persist(s) is persists
    est = evaluate(get_model("llama-3.1-8b"), parse_cluster("8xA800"), s).memory
    after_load = est.phases["after_load"]
    with_grads = evaluate(get_model("llama-3.1-8b"), parse_cluster("8xA800"), s.model_copy(update={"grad_accum": 2})).memory
    assert (with_grads.phases["after_load"] > after_load) is (not persists)
