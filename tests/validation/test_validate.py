"""The whole ``plan validate`` path on the CPU with tiny configs (2 layers, hidden 64, vocabulary 256):
real training steps, per-phase memory from the profiler, the report and its figures, OOM as a result,
interruption, appending, and the setups the builder supports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.app.cli import main
from validation.faults import INTERRUPT_ENV, OOM_ENV
from validation.measurement import read_measurements
from validation.runner import run_one
from validation.spec import spec_from_mapping

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "validation" / "data" / "tiny-qwen2.yaml")
TINY_LLAMA = str(ROOT / "validation" / "data" / "tiny-llama.yaml")
FAST = ["--device", "cpu", "--seq", "32", "--micro-batch", "2", "--quiet"]


def png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_cli_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["validate", "--model", TINY, "--gpus", "H100", *FAST, "--steps", "2", "--warmup", "1",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr()
    [m] = read_measurements(out)
    assert m.status == "ok" and m.reached == "steady_state" and m.device == "cpu"
    assert set(m.phases) == {"after_load", "first_forward", "first_backward", "first_optimizer_step", "forward",
                             "backward", "optimizer_step", "steady_state"}
    fwd = m.phases["forward"]
    assert fwd.source == "profiler" and fwd.peak_tensor_bytes >= fwd.tensor_bytes > 0
    assert fwd.allocated_bytes is None and fwd.reserved_bytes is None and m.peak_reserved_bytes is None  # CUDA only
    assert m.peak_rss_bytes and m.peak_rss_bytes > 10 * 2**20
    assert len(m.step_times_s) == 2 and m.tokens_per_s and m.tokens_per_step == 64
    assert m.inventory["weights_trainable"] == 4 * 90_688 and m.inventory["optimizer_states"] >= 2 * 4 * 90_688
    assert m.versions["torch"] and m.versions["transformers"]
    # the estimate for the plan's GPU, compared on tensor bytes
    assert m.estimate is not None and m.estimate["cluster"]["gpu"] == "H100 80GB SXM"
    from validation.compare import est_allocated, est_tensors

    assert 0.5 < est_tensors(m.estimate) / m.peak_tensor_bytes < 2
    assert est_allocated(m.estimate) > est_tensors(m.estimate)  # + the cuBLAS workspaces a CUDA run allocates
    # a CPU run has no cuBLAS workspace: the report holds its live tensors against the estimate's tensor bytes
    from validation.compare import peak_rows, phase_rows

    assert [(r.name, r.estimated) for r in peak_rows(m)] == [("peak tensors", est_tensors(m.estimate))]
    tensors = m.estimate["per_gpu"]["phase_tensor_bytes"]
    assert {r.estimated for r in phase_rows(m)} <= set(tensors.values())
    # the profiled step: timeline HTML + data, categories at the peak
    assert m.profiled is not None and m.profiled.step == 3
    assert (out / m.profiled.timeline_html).stat().st_size > 1000
    assert m.profiled.categories_at_peak["PARAMETER"] == 4 * 90_688
    report = (out / "report.md").read_text()
    for text in ("# Validation report", "| peak tensors |", "By category at the peak", "| weights |",
                 "| optimizer_states |", "step start (vs after_load)", "Model states (exact tensor inventory"):
        assert text in report
    figs = sorted((out / "figures").glob("*.png"))
    assert {p.name.rsplit("-", 1)[-1] for p in figs} == {"memory.png", "categories.png", "summary.png"}
    assert all(png(p) for p in figs)
    assert f"figures/{m.run_id}-r0-memory.png" in report
    assert "appended to" in capsys.readouterr().out


def test_injected_oom_is_recorded_not_raised(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(OOM_ENV, "backward")
    out = tmp_path / "oom"
    code = main(["validate", "--model", TINY, "--gpus", "H100", *FAST, "--steps", "1", "--warmup", "1",
                 "--no-timeline", "--out", str(out)])
    assert code == 1
    [m] = read_measurements(out)
    assert m.status == "oom" and m.reached == "first_forward" and "injected" in m.error
    assert list(m.phases) == ["after_load", "first_forward"]
    assert m.step_times_s == [] and m.tokens_per_s is None
    report = (out / "report.md").read_text()
    assert "| oom |" in report and "reached `first_forward`" in report
    assert "oom after first_forward" in capsys.readouterr().out


def test_interrupted_matrix_keeps_finished_runs_and_appends(tmp_path, monkeypatch):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "defaults: {gpus: H100, device: cpu, steps: 1, warmup: 0, timeline: false, seq: 32}\n"
        "grids:\n  - {label: 'r-{method}', model: " + TINY + ", method: [full, lora, freeze]}\n"
    )
    out = tmp_path / "out"
    monkeypatch.setenv(INTERRUPT_ENV, "1")  # Ctrl-C after the first finished run
    assert main(["validate", "--matrix", str(matrix), "--out", str(out), "--quiet"]) == 130
    assert [m.label for m in read_measurements(out)] == ["r-full"]
    assert "r-full" in (out / "report.md").read_text()
    monkeypatch.delenv(INTERRUPT_ENV)
    assert main(["validate", "--matrix", str(matrix), "--out", str(out), "--quiet"]) == 0
    ms = read_measurements(out)
    assert [m.label for m in ms] == ["r-full", "r-full", "r-lora", "r-freeze"]
    assert all(m.status == "ok" for m in ms) and len({m.run_id for m in ms}) == 4
    report = (out / "report.md").read_text()
    assert report.count("### r-full") == 2 and "4 run record(s)" in report


@pytest.mark.parametrize("setup", [
    {"model": TINY_LLAMA, "method": "lora", "checkpointing": "full", "lora_targets": "q_proj,v_proj"},
    {"model": TINY, "method": "lora", "dora": True, "checkpointing": "selective", "loss": "chunked",
     "attention": "eager", "lora_dropout": 0.1},
    {"model": TINY_LLAMA, "method": "freeze", "freeze_layers": 1, "recipe": "bf16", "optimizer": "sgd-momentum"},
    {"model": TINY, "recipe": "fp16-amp", "optimizer": "adafactor", "grad_accum": 2},
    {"model": TINY, "recipe": "bf16", "optimizer_in_backward": True, "checkpointing": "full", "checkpoint_every": 2},
], ids=["lora-ckpt", "dora-selective-chunked-eager", "freeze-bf16-sgd", "fp16-adafactor-accum", "opt-in-backward"])
def test_setups_train_on_cpu(tmp_path, setup):
    spec = spec_from_mapping({"gpus": "H100", "device": "cpu", "seq": 32, "micro_batch": 2, "steps": 1, "warmup": 1,
                              "timeline": False, **setup}, {}, 0)
    m = run_one(spec, tmp_path)
    assert m.status == "ok", m.error + "\n" + "\n".join(m.notes)
    assert m.phases["first_optimizer_step"].tensor_bytes > 0 and m.step_times_s  # CPU: profiled steps only
    inv = m.inventory
    if spec.setup.method in ("lora", "freeze"):
        assert 0 < inv["weights_trainable"] < inv["weights_frozen"]
    if spec.setup.optimizer_in_backward:
        assert "in backward" in m.implementation["optimizer"]
    if spec.setup.recipe == "fp16-amp":
        assert "GradScaler" in m.implementation["loss_scaling"]
    assert m.estimate is not None


def test_local_checkpoint_and_jsonl_dataset(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from profiles.hf_config import to_hf_config
    from validation.spec import resolve_model

    cfg = dict(to_hf_config(resolve_model(TINY)))
    cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 20))}) for i in range(6)))
    spec = spec_from_mapping({"model": TINY, "gpus": "H100", "device": "cpu", "seq": 32, "micro_batch": 2,
                              "method": "lora", "packing": False, "steps": 1, "warmup": 0, "timeline": False,
                              "weights": str(tmp_path / "ckpt"), "dataset": str(data)}, {}, 0)
    m = run_one(spec, tmp_path / "out")
    assert m.status == "ok", m.error
    assert m.weights.endswith("ckpt") and m.data.endswith(":padded")
    assert m.tokens_per_step == 64 and m.real_tokens_per_step == 40


def test_qlora_on_the_cpu_is_not_runnable_not_a_crash(tmp_path):
    spec = spec_from_mapping({"model": TINY, "gpus": "H100", "device": "cpu", "seq": 32, "method": "qlora"}, {}, 0)
    m = run_one(spec, tmp_path)
    assert m.status == "not_runnable" and "needs a CUDA device" in m.error and m.reached == "start"
    assert m.estimate is not None  # the estimate still exists: QLoRA is modelled analytically


def test_deepspeed_zero1_in_process_on_cpu(tmp_path):
    spec = spec_from_mapping({"model": TINY, "gpus": "H100", "device": "cpu", "seq": 32, "zero": 1, "steps": 1,
                              "warmup": 1, "timeline": False}, {}, 0)
    m = run_one(spec, tmp_path)
    assert m.status == "ok", m.error
    assert "DeepSpeed" in m.implementation["optimizer"] and m.implementation["deepspeed_config"].startswith("planner.emit")
    assert m.inventory["master_weights"] == 4 * 90_688  # fp32 master copy inside DeepSpeed's optimizer
    assert m.inventory["weights_trainable"] == 2 * 90_688  # bf16 module


@pytest.mark.slow  # ~32 s on the 2-core CPU (pytest --durations): torchrun starts two processes
def test_two_ranks_via_torchrun_on_cpu(tmp_path):
    """The multi-GPU path for real: torchrun starts two gloo ranks running DDP, each writes its record."""
    out = tmp_path / "ddp"
    code = main(["validate", "--model", TINY, "--gpus", "2xH100", "--device", "cpu", "--seq", "32", "--steps", "1",
                 "--warmup", "1", "--no-timeline", "--quiet", "--out", str(out)])
    ms = read_measurements(out)
    assert code == 0, [m.error for m in ms]
    assert sorted(m.rank for m in ms) == [0, 1]
    assert all(m.world_size == 2 and m.launcher == "torchrun" and m.status == "ok" for m in ms)
    assert all("DDP" in m.implementation["sharding"] for m in ms)
    assert "(rank 1)" in (out / "report.md").read_text()


@pytest.mark.parametrize("setup", [{}, {"method": "lora"}, {"zero": 1},
                                   {"optimizer_in_backward": True}])
def test_model_state_table_compares_like_with_like(setup, tmp_path):
    """The inventory is taken between phases; the estimate's categories are those of its peak phase, where
    gradients may not exist. Each row compares with the engine's model states for the same moment, or says
    why it cannot ("not comparable"), never a -100 % from comparing two moments."""
    from validation.compare import inventory_rows

    spec = spec_from_mapping({"model": TINY, "gpus": "H100", "device": "cpu", "seq": 32, "steps": 1, "warmup": 1,
                              "timeline": False, **setup}, {}, 0)
    m = run_one(spec, tmp_path)
    assert m.status == "ok", m.error
    rows = {r.name: r for r in inventory_rows(m)}
    for r in rows.values():
        if r.rel_error is not None:
            assert abs(r.rel_error) < 0.01, (r.name, r.estimated, r.measured)
        elif r.measured and r.name != "buffers":
            assert r.estimated is None and r.source.startswith("not comparable"), r
    assert rows["buffers"].estimated is None and rows["buffers"].source.startswith("not estimated")
    comparable = rows["gradients"].rel_error is not None
    assert comparable == (not setup.get("zero") and not setup.get("optimizer_in_backward"))
