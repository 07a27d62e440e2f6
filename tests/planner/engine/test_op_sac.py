"""torchtitan's per-op selective activation checkpointing (``--checkpointing op``, docs/memory.md eq. A12,
docs/speed.md S6b): which matmuls it saves, its memory against no / full checkpointing, its recompute, its rules.
The cross-check against the policy itself, run on the real model code, is tests/validation/test_trace_op_sac.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.engine.dtypes import recipe_bytes
from planner.engine.evaluate import evaluate
from planner.engine.facts import model_facts
from planner.engine.memory import activation_bytes
from planner.engine.op_sac import block_matmuls, op_sac_saved_per_token, recomputed_matmuls
from planner.engine.rules import validate_setup
from planner.engine.setup import Setup, SetupError
from planner.engine.speed.flops import flops_per_token
from profiles.cluster import parse_cluster
from profiles.registry import get_model

TT = dict(framework="torchtitan", fsdp="full-shard", recipe="hf-amp")


def _saved(model: str, setup: Setup) -> list[tuple[str, str]]:
    return [(mm.layer.name, mm.kind) for mm in block_matmuls(model_facts(get_model(model), setup), setup) if mm.saved]


def test_llama_saves_q_v_gate_down_by_the_mm_counter():
    """torchtitan's block order wq, wk, wv, wo, w1, w3, w2 (= transformers' q, k, v, o, gate, up, down): the 1st,
    3rd, 5th and 7th ``aten.mm`` are saved (``mm_count % 2 == 0`` recomputes the 2nd, 4th, 6th)."""
    s = Setup(checkpointing="op", **TT)
    assert _saved("llama3-8b", s) == [("q_proj", "base"), ("v_proj", "base"), ("gate_proj", "base"),
                                      ("down_proj", "base")]
    assert recomputed_matmuls(model_facts(get_model("llama3-8b"), s), s) == {
        ("k_proj", "base"), ("o_proj", "base"), ("up_proj", "base")}


def test_biased_projections_are_addmm_and_shift_the_parity():
    """Qwen2's q/k/v have a bias: ``F.linear`` on a 3-D input runs ``addmm``, which the counter never sees, so
    o_proj is the first mm (checked on the real op stream in tests/validation/test_trace_op_sac.py)."""
    s = Setup(checkpointing="op", **TT)
    assert _saved("qwen2.5-7b", s) == [("o_proj", "base"), ("up_proj", "base")]
    assert {("q_proj", "base"), ("k_proj", "base"), ("v_proj", "base")} <= recomputed_matmuls(
        model_facts(get_model("qwen2.5-7b"), s), s)


def test_lora_adapters_are_three_mms_per_layer():
    s = Setup(method="lora", lora_targets="q_proj,v_proj", checkpointing="op", framework="other")
    # q: base 1, A 2, B 3; k: 4; v: base 5, A 6, B 7; o 8; gate 9; up 10; down 11
    assert _saved("llama3-8b", s) == [("q_proj", "base"), ("q_proj", "lora_b"), ("v_proj", "base"),
                                      ("v_proj", "lora_b"), ("gate_proj", "base"), ("down_proj", "base")]


def test_llama_3_8b_bytes_per_token_by_hand():
    """Eq. A12 for Llama 3 8B under FSDP2's bf16 compute: input 2h + saved outputs 2(q_w + kv_w + F + h) + SDPA
    output 2 q_w + fp32 log-sum-exp 4a = 2*4096 + 2*(4096 + 1024 + 14336 + 4096) + 2*4096 + 4*32 B."""
    s = Setup(checkpointing="op", **TT)
    m = get_model("llama3-8b")
    assert op_sac_saved_per_token(model_facts(m, s), s, recipe_bytes(s)) == (
        2 * 4096 + 2 * (4096 + 1024 + 14336 + 4096) + 2 * 4096 + 4 * 32)


MODELS = ["llama3-8b", "qwen2.5-7b", "qwen3-8b", "mistral-7b", "gemma-2-9b", "qwen3-30b-a3b", "deepseek-v2-lite"]


@settings(max_examples=40, deadline=None)
@given(model=st.sampled_from(MODELS), seq=st.sampled_from([512, 2048, 8192]), mb=st.sampled_from([1, 2, 4]),
       recipe=st.sampled_from(["hf-amp", "bf16"]), attention=st.sampled_from(["sdpa", "eager"]),
       fsdp=st.sampled_from([None, "full-shard"]), method=st.sampled_from(["full", "lora"]))
def test_op_sac_keeps_between_full_and_no_checkpointing(model, seq, mb, recipe, attention, fsdp, method):
    """op-SAC keeps at least what full checkpointing keeps (the block inputs, which it keeps too) and at most what
    no checkpointing keeps (about half the matmul outputs and the attention output, against the norms' fp32
    copies, the MLP intermediates and every linear input), and grows with the sequence."""
    m = get_model(model)

    def saved(ck: str, s_len: int = seq) -> int:
        s = Setup(checkpointing=ck, seq_len=s_len, micro_batch=mb, recipe=recipe, attention=attention, fsdp=fsdp,
                  method=method, framework="torchtitan")
        return activation_bytes(model_facts(m, s), s, recipe_bytes(s)).saved

    assert saved("full") <= saved("op") <= saved("none")
    assert saved("op", seq // 2) < saved("op")


def test_memory_and_speed_sit_between_none_and_full_on_8xh100():
    m, c = get_model("llama3-8b"), parse_cluster("8xH100")
    plans = {ck: evaluate(m, c, Setup(checkpointing=ck, seq_len=8192, compile=True, **TT))
             for ck in ("none", "op", "full")}
    peak = {k: p.memory.peak_bytes for k, p in plans.items()}
    step = {k: p.speed.step_s for k, p in plans.items()}
    assert peak["full"] < peak["op"] < peak["none"]
    assert step["none"] < step["op"] < step["full"]


def test_recompute_flops_are_the_unsaved_matmuls():
    """Eq. S6b on Llama 3 8B with SDPA: k_proj, o_proj and up_proj re-run, 2 x (h x kv_w + q_w x h + h x F) FLOPs
    per token per block; the attention core is saved, not recomputed."""
    m = get_model("llama3-8b")
    s = Setup(checkpointing="op", seq_len=4096, **TT)
    f = flops_per_token(model_facts(m, s), s)
    h, kv, F, L = 4096, 1024, 14336, 32
    assert f.recompute.get("attention", 0) == pytest.approx(2 * (h * kv + h * h) * L)
    assert f.recompute.get("mlp", 0) == pytest.approx(2 * h * F * L)
    assert f.recompute.get("attention_core", 0) == 0
    eager = s.model_copy(update={"attention": "eager"})
    assert flops_per_token(model_facts(m, eager), eager).recompute["attention_core"] > 0


@pytest.mark.parametrize("fields, why", [
    (dict(framework="hf"), "--framework hf cannot run it"),
    (dict(framework="torchtune"), "--framework torchtune cannot run it"),
    (dict(framework="torchtitan", dora=True, method="lora"), "DoRA"),
    (dict(framework="torchtitan", fp8="te"), "TransformerEngine"),
    (dict(framework="torchtitan", activation_offload=True), "needs --checkpointing full"),
])
def test_rules_refuse_what_does_not_run_per_op_sac(fields, why):
    s = Setup(checkpointing="op", **fields)
    with pytest.raises(SetupError) as e:
        validate_setup(s, get_model("llama3-8b"), parse_cluster("H100"))
    assert why in str(e.value) and "\n" not in str(e.value)
