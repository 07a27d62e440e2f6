"""Eq. S26b (docs/speed.md): FSDP1's per-unit host work. Unit counts follow the trainers' wrapping policies; the
cost is host time, so it competes with the GPU's (max of the two, eq. S18) instead of adding to it."""

from __future__ import annotations

import pytest

from planner.engine.facts import model_facts
from planner.engine.setup import Setup
from planner.engine.speed.kernels import fsdp1_units
from planner.engine.speed.params import PRIORS
from planner.engine.speed.step import estimate_speed
from profiles.cluster import parse_cluster
from profiles.registry import get_model

QKVO = "q_proj,k_proj,v_proj,o_proj"


def _units(**kw) -> int:
    setup = Setup(**kw)
    return fsdp1_units(model_facts(get_model("mistral-7b-v0.1"), setup), setup)


def test_units_follow_the_wrapping_policy():
    """Mistral-7B, 32 blocks: peft's fsdp_auto_wrap_policy makes each LoRA A and B its own unit (fms-acceleration's
    OrcaMath runs: 32 x 4 targets x 2 = 256 adapter units beside the blocks), plus the root."""
    base = dict(method="qlora", lora_rank=16, lora_targets=QKVO, fsdp="full-shard", fsdp_version=1)
    assert _units(**base) == 32 + 1 + 256
    assert _units(**base, framework="torchtune") == 32 + 1 + 256  # torchtune 0.1's lora_fsdp_wrap_policy
    assert _units(**base, framework="litgpt") == 32 + 1  # Lightning wraps whole blocks
    assert _units(**base, dora=True) == 32 + 1 + 3 * 128  # DoRA's magnitude is a trainable leaf too
    assert _units(method="full", fsdp="full-shard", fsdp_version=1) == 33
    assert _units(**{**base, "fsdp_version": 2}) == 0  # FSDP2's per-unit work is not priced (S26 covers it)
    assert _units(method="qlora", lora_rank=16, lora_targets=QKVO) == 0  # DDP / one GPU


def _step(micro_batch: int, seq: int, unit_s: float) -> tuple[float, float, float]:
    setup = Setup(method="qlora", lora_rank=16, lora_targets=QKVO, fsdp="full-shard", fsdp_version=1,
                  checkpointing="full", micro_batch=micro_batch, seq_len=seq, grad_accum=2)
    model = get_model("mistral-7b-v0.1")
    params = PRIORS.model_copy(update={"fsdp1_unit_s": unit_s})
    est = estimate_speed(model_facts(model, setup), parse_cluster("2xA100"), setup, None, params, explain=False)
    return est.step_s, est.breakdown_s["host_overhead"], fsdp1_units(model_facts(model, setup), setup)


def test_unit_cost_is_host_time_that_the_gpu_can_hide():
    # short rows (OrcaMath's 289 tokens): host-bound, each unit's extra millisecond shows in full, per micro-step
    t1, _, units = _step(2, 289, 1e-3)
    t2, _, _ = _step(2, 289, 2e-3)
    assert t2 - t1 == pytest.approx(2 * units * 1e-3, rel=1e-6)
    # long rows: the GPU's micro-step outlasts the hooks, which then cost nothing
    long1, host1, _ = _step(4, 4096, 1e-3)
    long2, host2, _ = _step(4, 4096, 2e-3)
    assert long2 == pytest.approx(long1) and host1 == pytest.approx(host2)


def test_estimates_say_how_many_units_they_priced():
    setup = Setup(method="lora", lora_rank=16, lora_targets=QKVO, fsdp="full-shard", fsdp_version=1)
    model = get_model("mistral-7b-v0.1")
    lines = estimate_speed(model_facts(model, setup), parse_cluster("2xA100"), setup, None, PRIORS).assumptions
    assert any(line.startswith("FSDP1: 289 units per micro-step") and "S26b" in line for line in lines), lines
