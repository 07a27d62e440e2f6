"""Regressions for the setups where the engine and the trace disagreed (issue 11), on small models.

Each test shows the mechanism the framework's code implies and holds the engine to the trace on it:
FSDP mixed precision (accelerate + FSDP2), DeepSpeed ZeRO-1 gradient lifetime, peft 0.21's LoRA on fused MoE
experts (DeepSeek-V2), fp32 experts under AMP (Qwen3-MoE). Full-size numbers are in docs/accuracy.md.
"""

from __future__ import annotations

import pytest

from planner.engine.facts import model_facts
from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from validation.trace import trace_memory  # noqa: E402
from validation.trace.compare import compare, traced_block_inventory  # noqa: E402
from tests.helpers import proportioned  # noqa: E402


def small_moe(name: str, **kw):
    m = get_model(name)
    upd = dict(hidden_size=256, intermediate_size=704, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
               vocab_size=2048,
               moe=m.moe.model_copy(update=dict(num_experts=8, experts_per_token=2, expert_intermediate_size=128)))
    upd.update(kw)
    return m.model_copy(update=upd)


def small_deepseek():
    m = get_model("deepseek-v2-lite")
    return small_moe("deepseek-v2-lite", num_layers=3, num_kv_heads=4,
                     moe=m.moe.model_copy(update=dict(num_experts=8, experts_per_token=2, expert_intermediate_size=128,
                                                      shared_expert_intermediate_size=m.moe.shared_experts * 128)),
                     mla=m.mla.model_copy(update=dict(kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=48,
                                                       v_head_dim=32)))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_amp_engine_matches_real_fsdp2(method):
    """Was engine 52.0 / trace 74.9 GiB on Qwen2.5-14B (8xH100): the trace kept plain AMP's autocast copies and
    divided by 8, the engine divided the copies by 8 and kept an fp32 residual stream. Real FSDP2 with
    accelerate's bf16 policy keeps neither; both now agree (docs/memory.md eq. M1b, C4)."""
    s = Setup(method=method, recipe="hf-amp", fsdp="full-shard", seq_len=512)
    c = compare("fsdp", proportioned("qwen2.5-14b"), parse_cluster("8xH100"), s)
    assert c.traced_categories["temporaries"] == 0
    assert abs(c.error) < 0.01, c
    assert all(abs(e) < 0.01 for e in c.phase_errors.values()), c.phase_errors


def test_zero1_gradients_live_only_from_backward_to_step():
    """Was engine +16 % on Yi-1.5-9B ZeRO-1: DeepSpeed frees the 16-bit gradients inside step()
    (stage_1_and_2.py free_grad_in_param_list), so none exist before the next backward."""
    m = proportioned("yi-1.5-9b")
    s = Setup(recipe="deepspeed-bf16", zero=1, checkpointing="selective", seq_len=512, micro_batch=2)
    r = trace_memory(m, parse_cluster("2xA800"), s)
    assert [x for x in r.records if x.phase == "after_load" and x.step == 2][0].categories["gradients"] == 0
    c = compare("zero1", m, parse_cluster("2xA800"), s)
    assert abs(c.phase_errors["after_load"]) < 0.005 and abs(c.error) < 0.01, c


def test_peft_moves_mlp_targets_onto_deepseek_experts():
    """Was engine -6 % on DeepSeek-V2-Lite LoRA: peft 0.21 turns gate_proj/up_proj/down_proj into adapters on
    every routed expert (rank 2r on the fused gate/up) and drops them from the dense and shared MLPs."""
    from planner.engine.dtypes import recipe_bytes
    from planner.engine.memory import model_states

    m = small_deepseek()
    s = Setup(method="lora", recipe="hf-amp", attention="eager", checkpointing="full", seq_len=256)
    r = trace_memory(m, parse_cluster("A800"), s)
    traced = [x for x in r.records if x.phase == "after_load"][0].categories["weights_trainable"]
    engine = model_states(model_facts(m, s), parse_cluster("A800"), s, recipe_bytes(s)).weights_trainable
    assert traced == engine  # fp32 adapters, counted exactly


def test_peft_merged_expert_stacks_are_saved_for_backward():
    """peft's ParamWrapper folds W + BA into a full expert stack each forward (baddbmm); grouped_mm saves it."""
    from planner.engine.activations import expert_lora_merged_bytes
    from planner.engine.lora_targets import lora_targets

    m = small_deepseek()
    s = Setup(method="lora", recipe="hf-amp", seq_len=256)
    inv = traced_block_inventory(m, parse_cluster("A800"), s, block=1)
    tokens = s.micro_batch * s.seq_len
    merged = sum(b for _, what, b in inv if what.startswith("baddbmm")) * tokens
    assert merged == expert_lora_merged_bytes(m, lora_targets(m, s.lora_targets), 2)[0]


def test_amp_experts_compute_in_fp32_and_the_engine_counts_it():
    """Was -28 % on Qwen3-30B-A3B's activations under hf-amp: transformers runs experts with grouped_mm on
    input.to(weight.dtype), and grouped_mm is not autocast, so fp32 experts keep fp32 activations."""
    from planner.engine.activations import layer_inventory
    from planner.engine.dtypes import recipe_bytes

    m = small_moe("qwen3-30b-a3b")
    s = Setup(recipe="hf-amp", seq_len=256)
    inv = traced_block_inventory(m, parse_cluster("A800"), s, block=1)
    assert all("float32" in what for _, what, _ in inv if "grouped_mm" in what)
    traced = sum(b for tag, _, b in inv if tag != "autocast_copy")  # autocast copies are weights, not activations
    engine = layer_inventory(model_facts(m, s), s, recipe_bytes(s), True).per_token
    assert engine == pytest.approx(traced, rel=0.01)
