"""Eq. S26c (docs/speed.md): DeepSpeed ZeRO-3's module hooks, host time added to every micro-step (DeepSpeed waits
on its fetch events, so they do not hide under the GPU's queue); and eq. M5d (docs/memory.md): ZeRO-1 at grad_accum 1
holds its gradients as ZeRO-2 does."""

from __future__ import annotations

import pytest

from planner.engine.evaluate import evaluate
from planner.engine.facts import model_facts
from planner.engine.memory import deepspeed_grads_partitioned
from planner.engine.setup import Setup
from planner.engine.speed.params import PRIORS
from planner.engine.speed.step import ZERO3_RECOMPUTE_HOOKS, estimate_speed, zero3_hook_seconds
from profiles.cluster import parse_cluster
from profiles.registry import get_model

BASE = dict(method="full", recipe="deepspeed-bf16", seq_len=2048, micro_batch=1)


def _est(zero: int, hook_s: float, **kw):
    setup = Setup(**{**BASE, "zero": zero, **kw})
    params = PRIORS.model_copy(update={"zero3_block_host_s": hook_s})
    model = get_model("llama-3-8b")
    return estimate_speed(model_facts(model, setup), parse_cluster("4xgh200"), setup, None, params, explain=False)


def test_hooks_add_per_block_per_micro_step_under_zero3_only():
    layers = get_model("llama-3-8b").num_layers
    for ga in (1, 3):
        a, b = _est(3, 1e-3, grad_accum=ga), _est(3, 3e-3, grad_accum=ga)
        # serialised with the GPU: every millisecond shows, whatever the row length
        assert b.step_s - a.step_s == pytest.approx(ga * layers * 2e-3, rel=1e-9)
        assert b.breakdown_s["host_overhead"] - a.breakdown_s["host_overhead"] == pytest.approx(ga * layers * 2e-3)
    for zero in (0, 1, 2):
        assert _est(zero, 1e-3).step_s == pytest.approx(_est(zero, 9e-3).step_s)


def test_recompute_runs_the_forward_hooks_again():
    setup = Setup(**{**BASE, "zero": 3, "checkpointing": "full"})
    facts = model_facts(get_model("llama-3-8b"), setup)
    plain = Setup(**{**BASE, "zero": 3})
    assert ZERO3_RECOMPUTE_HOOKS > 1  # the recompute adds hooks, never removes them
    assert zero3_hook_seconds(facts, setup, PRIORS) == pytest.approx(
        ZERO3_RECOMPUTE_HOOKS * zero3_hook_seconds(facts, plain, PRIORS))
    assert zero3_hook_seconds(facts, plain, PRIORS) == pytest.approx(32 * PRIORS.zero3_block_host_s)  # 32 blocks
    assert zero3_hook_seconds(facts, Setup(**{**BASE, "zero": 2}), PRIORS) == 0.0


def test_estimate_says_what_the_hooks_cost():
    setup = Setup(**{**BASE, "zero": 3})
    model = get_model("llama-3-8b")
    lines = estimate_speed(model_facts(model, setup), parse_cluster("4xgh200"), setup, None, PRIORS).assumptions
    assert any("ZeRO-3's module hooks" in line and "S26c" in line for line in lines), lines


def test_offload_explains_the_grace_host_link():
    setup = Setup(**{**BASE, "zero": 3, "offload": "optimizer"})
    model = get_model("llama-3-8b")
    gh = estimate_speed(model_facts(model, setup), parse_cluster("4xgh200"), setup, None, PRIORS).assumptions
    h100 = estimate_speed(model_facts(model, setup), parse_cluster("8xh100"), setup, None, PRIORS).assumptions
    assert any(line.startswith("NVLink-C2C 450 GB/s") for line in gh), gh
    assert any(line.startswith("PCIe 50 GB/s") for line in h100), h100


@pytest.mark.parametrize("ga, same", [(1, True), (4, False)])
def test_zero1_gradients_follow_zero2_at_one_micro_step(ga, same):
    """ZeRO-1 at grad_accum 1 frees each full gradient into the reduce bucket (deepspeed stage_1_and_2.py); under
    accumulation the micro-steps before the boundary keep them whole."""
    cluster = parse_cluster("4xgh200")
    model = get_model("llama-3-8b")
    z1 = evaluate(model, cluster, Setup(**{**BASE, "zero": 1, "grad_accum": ga})).memory
    z2 = evaluate(model, cluster, Setup(**{**BASE, "zero": 2, "grad_accum": ga})).memory
    assert deepspeed_grads_partitioned(Setup(**{**BASE, "zero": 1, "grad_accum": ga})) is same
    if same:  # lsaie-deepspeed-gh200-2025-12 measured the same per-rank max_memory_allocated under both
        assert z1.peak_bytes == z2.peak_bytes
    else:
        assert z1.peak_bytes > z2.peak_bytes
