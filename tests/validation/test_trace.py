"""validation.trace: fake-tensor traces equal real CPU runs byte for byte, and behave as memory should.

Tiny configs (2 blocks, hidden 64, vocabulary 512) keep every trace well under a second on a 2-core CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.engine.evaluate import evaluate
from planner.engine.results import CATEGORIES, PHASES
from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model
from validation.trace import TraceUnavailable, plan_trace, require_torch
from validation.trace.plan import shard_divisors

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from validation.trace import trace_memory  # noqa: E402
from validation.trace.runner import run_trace  # noqa: E402

ONE = parse_cluster("A800")
EIGHT = parse_cluster("8xA800")


def tiny(name: str = "llama-3.1-8b", **kw):
    """A shipped profile shrunk to 2 blocks of width 64 (same model_type, same switches)."""
    m = get_model(name)
    upd = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
               vocab_size=512, max_positions=8192)
    if m.moe is not None:
        upd["moe"] = m.moe.model_copy(update=dict(num_experts=4, experts_per_token=2, expert_intermediate_size=32))
        if m.model_type == "mixtral":
            upd["intermediate_size"] = 32
    if m.sliding_window:
        upd["sliding_window"] = 64
    upd.update(kw)
    return m.model_copy(update=upd)


def setup(**kw) -> Setup:
    base = dict(recipe="bf16", seq_len=128, micro_batch=2)
    base.update(kw)
    return Setup(**base)


def records(result):
    return [(r.phase, r.step, r.peak_bytes, r.end_bytes) for r in result.records]


def phase(result, name: str, step: int):
    return max((r for r in result.records if r.phase == name and r.step == step), key=lambda r: r.peak_bytes)


# ---- no torch needed ---------------------------------------------------------------------------------------
def test_substitutions_are_named_never_silent():
    m = get_model("llama-3.1-8b")
    p = plan_trace(m, ONE, Setup(attention="flash", loss="liger", method="qlora", optimizer="adamw-8bit",
                                 recipe="hf-amp"))
    wanted = {s.wanted for s in p.substitutions}
    assert wanted == {"FlashAttention-2", "Liger fused linear cross-entropy", "QLoRA (bitsandbytes NF4 base)",
                      "bitsandbytes adamw-8bit"}
    assert (p.attention, p.loss, p.method, p.eight_bit_states) == ("sdpa", "chunked", "lora", True)
    gemma = plan_trace(get_model("gemma-2-2b"), ONE, Setup(attention="sdpa"))
    assert gemma.attention == "eager" and "refuses SDPA" in gemma.substitutions[0].why
    fused = plan_trace(m, ONE, Setup(fused_kernels=True))
    assert "Liger's fused RMSNorm / SwiGLU / RoPE" in [s.wanted for s in fused.substitutions]


def test_recipe_dtypes():
    m = get_model("llama-3.1-8b")
    amp = plan_trace(m, ONE, Setup(recipe="hf-amp"))
    assert (amp.weight_dtype, amp.trainable_dtype, amp.autocast_dtype, amp.deepspeed) == (
        "float32", "float32", "bfloat16", False)
    lora = plan_trace(m, ONE, Setup(recipe="hf-amp", method="lora"))
    assert (lora.weight_dtype, lora.trainable_dtype) == ("bfloat16", "float32")
    ds = plan_trace(m, ONE, Setup(recipe="deepspeed-bf16"))
    assert (ds.weight_dtype, ds.trainable_dtype, ds.autocast_dtype, ds.deepspeed) == (
        "bfloat16", "bfloat16", None, True)
    assert plan_trace(m, ONE, Setup(recipe="bf16")).weight_dtype == "bfloat16"


@pytest.mark.parametrize(
    "kw, sharded",
    [
        (dict(zero=0), set()),
        # ZeRO-1 at grad_accum 1 keeps only its gradient partition (eq. M5d); under accumulation the full gradients
        (dict(zero=1), {"optimizer_states", "master_weights", "grad_fp32", "optimizer_temp", "gradients"}),
        (dict(zero=1, grad_accum=2), {"optimizer_states", "master_weights", "grad_fp32", "optimizer_temp"}),
        (dict(zero=2), {"optimizer_states", "master_weights", "grad_fp32", "optimizer_temp", "gradients"}),
        (dict(zero=3), {"optimizer_states", "master_weights", "grad_fp32", "optimizer_temp", "ds_grad_partition",
                        "weights_trainable", "weights_frozen"}),
        (dict(fsdp="shard-grad-op", recipe="hf-amp"), set()),  # FSDP2 runs for real: nothing to divide
    ],
)
def test_shard_divisors_follow_the_stage_rules(kw, sharded):
    d, host = shard_divisors(Setup(**kw), 8)
    assert {k for k, v in d.items() if v == 8} == sharded
    assert d["activations"] == d["logits_loss"] == 1
    assert host == {"offloaded_activations": 1, "paged_optimizer": 1}


def test_offload_moves_states_to_the_host():
    d, host = shard_divisors(Setup(zero=2, offload="optimizer"), 8)
    assert d["optimizer_states"] == 0 and host["optimizer_states"] == 8
    assert d["gradients"] == 8 and "gradients" not in host


# ---- fake trace == real CPU run ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kw",
    [
        ("llama-3.1-8b", dict(recipe="hf-amp")),
        ("llama-3.1-8b", dict(recipe="deepspeed-bf16", checkpointing="full", loss="chunked")),
        ("qwen2.5-0.5b", dict(recipe="hf-amp", method="lora", dora=True, lora_dropout=0.1)),
        ("qwen3-8b", dict(attention="eager", optimizer="adafactor")),
        ("mistral-7b-v0.1", dict(method="freeze", freeze_layers=1, grad_accum=2)),
        ("qwen3-30b-a3b", dict(recipe="hf-amp", checkpointing="full")),
        ("gemma-2-2b", dict(recipe="hf-amp", method="lora")),
    ],
)
def test_fake_trace_equals_real_cpu_run(name, kw):
    s = setup(**kw)
    fake = run_trace(tiny(name), ONE, s, fake=True)
    real = run_trace(tiny(name), ONE, s, fake=False)
    assert records(fake) == records(real)
    assert fake.estimate.categories == real.estimate.categories


def test_tracker_agrees_with_the_torch_profiler():
    """An independent count: the CPU allocator's own events under torch.profiler (real tensors)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        r = run_trace(tiny(), ONE, setup(recipe="hf-amp"), fake=False, steps=1)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    assert peak == r.estimate.peak_bytes


# ---- behaviour ------------------------------------------------------------------------------------------------
def _model_states(est) -> int:
    c = est.categories
    return c["weights_trainable"] + c["gradients"] + c["optimizer_states"] + c["master_weights"]


def test_json_has_the_estimate_shape():
    r = trace_memory(tiny(), ONE, setup())

    engine = evaluate(tiny(), ONE, setup()).memory.to_json()
    out = r.to_json()
    assert set(out) == set(engine)
    assert set(out["per_gpu"]) == set(engine["per_gpu"])
    assert set(out["per_gpu"]["categories"]) == set(CATEGORIES)
    assert set(out["per_gpu"]["phases"]) == set(PHASES)
    assert out["per_gpu"]["categories"]["framework_overhead"] == 0
    assert out["per_gpu"]["categories"]["allocator_margin"] == 0
    assert sum(out["per_gpu"]["categories"].values()) == out["per_gpu"]["peak_bytes"]
    assert any("framework_overhead and allocator_margin are 0" in a for a in out["assumptions"])
    assert "trace" in r.to_json(detail=True)
    json.dumps(r.to_json(detail=True))


def test_optimizer_states_appear_in_step_two_after_load():
    r = trace_memory(tiny(), ONE, setup())
    first, second = phase(r, "after_load", 1), phase(r, "after_load", 2)
    assert first.categories["optimizer_states"] == 0
    n = sum(p for p in [first.categories["weights_trainable"]])
    assert second.categories["optimizer_states"] >= 2 * n  # m and v in bf16 (+ step counters)
    assert second.peak_bytes > first.peak_bytes


def test_after_load_is_the_weights():
    from profiles.params import param_counts

    m = tiny()
    r = trace_memory(m, ONE, setup(recipe="hf-amp"))
    assert phase(r, "after_load", 1).categories["weights_trainable"] == 4 * param_counts(m).total


def test_lora_holds_far_less_model_state_than_full():
    full = trace_memory(tiny(), ONE, setup(recipe="hf-amp")).estimate
    lora = trace_memory(tiny(), ONE, setup(recipe="hf-amp", method="lora")).estimate
    assert _model_states(lora) < _model_states(full) / 3
    assert lora.categories["weights_frozen"] > 0


def test_checkpointing_reduces_activations():
    s = dict(seq_len=512)
    plain = trace_memory(tiny(), ONE, setup(**s)).estimate
    ckpt = trace_memory(tiny(), ONE, setup(checkpointing="full", **s)).estimate
    assert ckpt.categories["activations"] < plain.categories["activations"] / 2
    assert ckpt.peak_bytes < plain.peak_bytes


def test_eager_attention_costs_more_than_sdpa_at_long_sequence():
    s = dict(seq_len=1024)
    sdpa = trace_memory(tiny(), ONE, setup(**s)).estimate
    eager = trace_memory(tiny(), ONE, setup(attention="eager", **s)).estimate
    # eager keeps heads x s x s scores; at s=1024, 4 heads, that dwarfs the tiny model's other tensors
    assert eager.categories["activations"] > 3 * sdpa.categories["activations"]


def test_chunked_loss_reduces_logits_memory():
    plain = trace_memory(tiny(), ONE, setup(seq_len=512)).estimate
    chunked = trace_memory(tiny(), ONE, setup(seq_len=512, loss="chunked")).estimate
    assert chunked.categories["logits_loss"] < plain.categories["logits_loss"]


def test_zero3_divides_model_states_by_world_size():
    s1 = trace_memory(tiny(), ONE, setup(recipe="deepspeed-bf16", zero=3)).estimate
    s8 = trace_memory(tiny(), EIGHT, setup(recipe="deepspeed-bf16", zero=3)).estimate
    a1 = s1.phases["after_load"]
    a8 = s8.phases["after_load"]
    assert a8 == pytest.approx(a1 / 8, rel=0.01)
    assert any("ZeRO-3 over 8 GPUs" in a for a in s8.assumptions)


def test_deepspeed_without_zero_keeps_a_persistent_fp32_gradient_buffer():
    from profiles.params import param_counts

    m = tiny()
    r = trace_memory(m, ONE, setup(recipe="deepspeed-bf16"))
    n = param_counts(m).total
    first = phase(r, "after_load", 1).categories
    assert first["gradients"] == 4 * n  # BF16_Optimizer.fp32_groups_gradients_flat
    assert first["master_weights"] == 4 * n
    z2 = trace_memory(m, ONE, setup(recipe="deepspeed-bf16", zero=2))
    assert phase(z2, "after_load", 2).categories["gradients"] == 0  # stage_1_and_2: only inside step()
    assert phase(z2, "optimizer", 2).categories["gradients"] >= 6 * n  # bf16 + fp32 partition


def test_foreach_adamw_materialises_temporaries_fused_does_not():
    fused = trace_memory(tiny(), ONE, setup(), adam_impl="fused")
    foreach = trace_memory(tiny(), ONE, setup(), adam_impl="foreach")
    assert phase(fused, "optimizer", 2).categories["temporaries"] < 1024
    assert phase(foreach, "optimizer", 2).categories["temporaries"] > phase(fused, "optimizer", 2).peak_bytes / 10


def test_eight_bit_states_are_a_quarter_of_fp32():
    fp32 = trace_memory(tiny(), ONE, setup(recipe="hf-amp")).estimate.categories["optimizer_states"]
    r = trace_memory(tiny(), ONE, setup(recipe="hf-amp", optimizer="adamw-8bit"))
    eight = r.estimate.categories["optimizer_states"]
    assert fp32 / 5 < eight < fp32 / 3  # uint8 m and v + absmax; small tensors keep fp32 states
    assert any(a.startswith("not traceable: bitsandbytes adamw-8bit") for a in r.estimate.assumptions)


def test_optimizer_in_backward_never_holds_all_gradients():
    r = trace_memory(tiny(), ONE, setup(optimizer_in_backward=True))
    assert phase(r, "backward", 2).end_categories["gradients"] == 0
    assert phase(r, "after_load", 2).categories["optimizer_states"] > 0


def test_qlora_is_traced_as_lora_and_says_so():
    r = trace_memory(tiny(), ONE, setup(recipe="hf-amp", method="qlora"))
    assert any(a.startswith("not traceable: QLoRA") for a in r.estimate.assumptions)


def test_truncated_model_says_so():
    r = trace_memory(tiny("qwen3-30b-a3b", num_layers=4), ONE, setup(), num_layers=2)
    assert r.layers_traced == 2
    assert "traced with 2 of 4 layers" in r.estimate.assumptions[0]


# ---- the command ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_config(tmp_path):
    from profiles.hf_config import to_hf_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_hf_config(tiny())))
    return str(path)


def test_cli_json(tiny_config, capsys):
    from planner.app.cli import main

    assert main(["trace", "--model", tiny_config, "--gpus", "A800", "--seq", "64", "--recipe", "bf16",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["per_gpu"]["peak_bytes"] > 0
    assert out["calibration"].startswith("trace (FakeTensorMode")


def test_cli_table(tiny_config, capsys):
    from planner.app.cli import main

    assert main(["trace", "--model", tiny_config, "--gpus", "A800", "--seq", "64", "--detail"]) == 0
    out = capsys.readouterr().out
    assert "peak of each phase" in out and "optimizer_states" in out


def test_cli_without_torch_says_how_to_install(tiny_config, capsys, monkeypatch):
    import importlib.util

    from planner.app.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(TraceUnavailable):
        require_torch()
    assert main(["trace", "--model", tiny_config, "--gpus", "A800"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'tuneplan[validate]'" in err


def test_command_module_does_not_import_torch():
    code = "import sys, planner.app.commands.trace, validation.trace; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_per_layer_fit_matches_the_engine_inventory():
    """benchmarks/accuracy_vs_trace.py --per-layer: one block's saved bytes per token, traced as the difference of 1
    and 2 blocks, against the engine's layer inventory (it used to crash on the engine's facts argument)."""
    from validation.trace.compare import per_layer_fit

    fit = per_layer_fit(tiny(), ONE, setup(), seqs=(64, 128))
    assert fit.engine_per_token > 0
    assert fit.traced_per_token == pytest.approx(fit.engine_per_token, rel=0.02)
