"""Calibration: the data type and its reader (planner.engine.calibration), and the fit from measurements
(validation.calibrate, ``plan calibrate``) on synthetic runs whose true terms are known."""

from __future__ import annotations

import json
import random

import pytest

from planner.app.calibration_io import load_calibration, load_calibration_book
from planner.engine.calibration import (
    Calibration,
    CalibrationBook,
    CalibrationError,
    HoldoutError,
    calibration_filename,
    calibration_label,
    gpu_slug,
)
from planner.engine.evaluate import evaluate
from planner.engine.speed.params import PRIORS

H100 = "H100 80GB SXM"
MiB = 2**20
TRUE_OVERHEAD = 600 * MiB
TRUE_FACTOR = 1.10
TRUE_EFFICIENCY = 0.42


def cal(**kw) -> Calibration:
    base = dict(gpu=H100, recipe="hf-amp", fixed_overhead_bytes=TRUE_OVERHEAD, allocator_factor=TRUE_FACTOR,
                mfu=TRUE_EFFICIENCY, n_runs=3, runs=("a#1", "a#2", "a#3"))
    base.update(kw)
    return Calibration(**base)


def test_label_slug_and_filename():
    assert calibration_label(None) == "uncalibrated"
    assert calibration_label(cal()) == "calibrated from 3 runs on H100 80GB SXM" == cal().label
    assert calibration_label(cal(n_runs=1, runs=("a#1",))) == "calibrated from 1 run on H100 80GB SXM"
    assert gpu_slug("H100 80GB SXM") == "h100-80gb-sxm" and gpu_slug("RTX 4090") == "rtx-4090"
    assert calibration_filename(H100, "hf-amp") == "h100-80gb-sxm__hf-amp.json"


def test_values_are_validated():
    with pytest.raises(ValueError):
        cal(allocator_factor=0.9)  # reserved can never be below allocated
    with pytest.raises(ValueError):
        cal(mfu=1.5)
    with pytest.raises(ValueError):
        cal(runs=())
    with pytest.raises(ValueError):
        Calibration.model_validate({**cal().model_dump(), "surprise": 1})


def test_load_round_trip_missing_and_broken(tmp_path):
    assert load_calibration(H100, "hf-amp", tmp_path) is None
    c = cal(holdout_error={"mfu": HoldoutError(quantity="tokens/s", n=3, mean_abs_rel=0.01, max_abs_rel=0.02)})
    (tmp_path / calibration_filename(H100, "hf-amp")).write_text(c.model_dump_json())
    assert load_calibration(H100, "hf-amp", tmp_path) == c
    assert load_calibration(H100, "bf16", tmp_path) is None
    (tmp_path / calibration_filename(H100, "bf16")).write_text("{not json")
    with pytest.raises(CalibrationError, match="cannot read calibration file .*rerun plan calibrate"):
        load_calibration(H100, "bf16", tmp_path)
    (tmp_path / calibration_filename(H100, "bf16")).write_text(json.dumps({"gpu": H100}))
    with pytest.raises(CalibrationError, match="invalid calibration file"):
        load_calibration(H100, "bf16", tmp_path)


def test_book_reads_a_folder_and_looks_up_by_gpu_and_recipe(tmp_path):
    assert not load_calibration_book(tmp_path / "absent").entries
    (tmp_path / calibration_filename(H100, "hf-amp")).write_text(cal().model_dump_json())
    book = load_calibration_book(tmp_path)
    assert book.lookup(H100, "hf-amp") == cal() and book.lookup("h100-80gb-sxm", "hf-amp") == cal()
    assert book.lookup(H100, "bf16") is None and book.lookup("A800 80GB SXM", "hf-amp") is None


def test_engine_uses_the_calibration():
    from planner.engine.setup import Setup
    from profiles.cluster import parse_cluster
    from profiles.registry import get_model

    model, cluster, setup = get_model("qwen2.5-0.5b"), parse_cluster("H100"), Setup(recipe="hf-amp", seq_len=1024)
    plan = evaluate(model, cluster, setup, CalibrationBook((cal(),)))
    est = plan.memory
    assert est.categories["framework_overhead"] == TRUE_OVERHEAD
    from planner.engine.runtime_memory import cublas_workspace_bytes

    tensors = est.peak_bytes - TRUE_OVERHEAD - est.categories["allocator_margin"]
    # allocated = tensors + cuBLAS workspaces (eq. R2); reserved = the calibrated factor x allocated
    assert est.allocated_peak_bytes == tensors + cublas_workspace_bytes(cluster.gpu.name)
    assert est.reserved_peak_bytes == pytest.approx(TRUE_FACTOR * est.allocated_peak_bytes, abs=2)
    assert est.categories["allocator_margin"] == est.reserved_peak_bytes - tensors
    assert est.calibration == plan.speed.calibration == "calibrated from 3 runs on H100 80GB SXM"
    rows = setup.micro_batch * setup.seq_len  # the fitted efficiency is the GEMM ceiling (docs/speed.md S20)
    assert plan.speed.efficiency == pytest.approx(TRUE_EFFICIENCY * rows / (rows + PRIORS.gemm_half_rows))
    # another recipe on the same GPU is not calibrated by this file
    other = evaluate(model, cluster, Setup(recipe="bf16", seq_len=1024), CalibrationBook((cal(),)))
    assert other.memory.calibration == "uncalibrated" and other.speed.calibration == PRIORS.source
    assert other.speed.efficiency == pytest.approx(PRIORS.matmul(cluster.gpu.arch) * rows / (rows + PRIORS.gemm_half_rows))


# ---- fitting -----------------------------------------------------------------------------------------------

SETUPS = [  # big enough micro-batches that the GPU, not the host's launches, sets the pace (docs/speed.md S26)
    {"method": "full", "seq_len": 512, "micro_batch": 16}, {"method": "full", "seq_len": 1024, "checkpointing": "full",
                                                           "micro_batch": 8},
    {"method": "lora", "seq_len": 2048, "micro_batch": 8}, {"method": "lora", "seq_len": 512, "micro_batch": 32},
    {"method": "freeze", "seq_len": 1024, "micro_batch": 16},
]


def synthetic_runs(noise: float = 0.0, seed: int = 0):
    """Measurements as a GPU would record them, generated from known overhead, factor and efficiency."""
    from planner.engine.memory import allocated_bytes
    from planner.engine.setup import Setup
    from profiles.cluster import parse_cluster
    from profiles.registry import get_model
    from validation.measurement import Measurement, PhaseMemory

    rng = random.Random(seed)
    model, cluster = get_model("qwen2.5-0.5b"), parse_cluster("H100")
    out = []
    for i, fields in enumerate(SETUPS):
        setup = Setup(recipe="hf-amp", **fields)
        allocated = int(allocated_bytes(evaluate(model, cluster, setup).memory) * (1 + rng.uniform(-0.03, 0.03)))
        reserved = int(allocated * TRUE_FACTOR * (1 + rng.uniform(-noise, noise)))
        used = reserved + int(TRUE_OVERHEAD * (1 + rng.uniform(-noise, noise)))
        step = evaluate(model, cluster, setup, efficiency=TRUE_EFFICIENCY).speed.step_s * (1 + rng.uniform(-noise, noise))
        steady = PhaseMemory(tensor_bytes=allocated // 2, peak_tensor_bytes=allocated, allocated_bytes=allocated // 2,
                             peak_allocated_bytes=allocated, reserved_bytes=reserved, peak_reserved_bytes=reserved,
                             source="cuda")
        out.append(Measurement(
            run_id=f"run{i}", label=f"q05-{fields['method']}-{fields['seq_len']}", started_at="t", finished_at="t",
            status="ok", reached="steady_state", model=model.name, model_profile=model.model_dump(mode="json"),
            cluster={"gpu": H100, "gpus_per_node": 1, "nodes": 1}, setup=setup.model_dump(mode="json"),
            device="cuda", device_name="NVIDIA H100 80GB HBM3", device_gpu=H100, steps=3, warmup=2,
            data="synthetic", weights="random", phases={"steady_state": steady}, peak_tensor_bytes=allocated,
            peak_allocated_bytes=allocated, peak_reserved_bytes=reserved, device_used_bytes=used,
            step_times_s=[step] * 3, step_time_s=step, tokens_per_step=setup.micro_batch * setup.seq_len,
            versions={"torch": "2.13.0", "cuda": "12.8"}))
    return out


def write_runs(tmp_path, runs, name="h100"):
    from validation.measurement import append_measurement

    d = tmp_path / name
    for r in runs:
        append_measurement(d, r)
    return d


def test_fit_recovers_known_terms_exactly_without_noise(tmp_path):
    from validation.calibrate import fit

    d = write_runs(tmp_path, synthetic_runs(noise=0.0))
    [r], skipped = fit([d])
    c = r.calibration
    assert skipped == [] and (c.gpu, c.recipe, c.n_runs) == (H100, "hf-amp", 5)
    assert c.fixed_overhead_bytes == pytest.approx(TRUE_OVERHEAD, rel=1e-6)
    assert c.allocator_factor == pytest.approx(TRUE_FACTOR, rel=1e-6)
    assert c.mfu == pytest.approx(TRUE_EFFICIENCY, rel=1e-6)
    for term in ("allocator_factor", "fixed_overhead", "mfu"):
        h = c.holdout_error[term]
        assert h.n == 5 and h.max_abs_rel < 1e-5, (term, h)
    # end to end through the engine: what is left is the tensor estimate's own error (+-3 % made up above)
    peak = c.holdout_error["peak_total"]
    assert peak.n == 5 and 0 < peak.max_abs_rel < 0.03
    assert c.runs[0].endswith("measurements.jsonl#run0") and c.devices == ("NVIDIA H100 80GB HBM3",)


def test_fit_with_noise_reports_honest_holdout_error(tmp_path):
    from validation.calibrate import fit

    d = write_runs(tmp_path, synthetic_runs(noise=0.05, seed=3))
    [r], _ = fit([d])
    c = r.calibration
    assert c.allocator_factor == pytest.approx(TRUE_FACTOR, rel=0.05)
    assert c.fixed_overhead_bytes == pytest.approx(TRUE_OVERHEAD, rel=0.05)
    assert c.mfu == pytest.approx(TRUE_EFFICIENCY, rel=0.06)
    h = c.holdout_error["mfu"]
    assert 0 < h.mean_abs_rel <= h.max_abs_rel < 0.15
    assert 0 < c.holdout_error["allocator_factor"].mean_abs_rel < 0.1
    assert [p["run"].split("#")[1] for p in r.per_run] == [f"run{i}" for i in range(5)]


def test_cli_writes_the_file_that_plan_reads(tmp_path, capsys):
    from planner.app.cli import main

    runs = synthetic_runs()
    d = write_runs(tmp_path, runs)
    cpu = runs[0].model_copy(update={"run_id": "cpu1", "device": "cpu", "device_gpu": None})
    oom = runs[1].model_copy(update={"run_id": "oom1", "status": "oom"})
    write_runs(tmp_path, [cpu, oom])
    out = tmp_path / "cal"
    assert main(["calibrate", str(d), "--out", str(out), "--verbose"]) == 0
    text = capsys.readouterr().out
    assert "calibrated from 5 runs on H100 80GB SXM" in text and "2 records skipped" in text
    assert "measured on the CPU" in text and "status oom" in text
    c = load_calibration(H100, "hf-amp", out)
    assert c is not None and c.n_runs == 5 and c.label == "calibrated from 5 runs on H100 80GB SXM"
    assert load_calibration_book(out).lookup(H100, "bf16") is None  # only the fitted recipe
    assert main(["calibrate", str(d), "--out", str(tmp_path / "dry"), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibrations"][0]["n_runs"] == 5
    assert not (tmp_path / "dry").exists()


def test_cli_with_nothing_usable(tmp_path, capsys):
    from planner.app.cli import main

    run = synthetic_runs()[0].model_copy(update={"device": "cpu", "device_gpu": None})
    d = write_runs(tmp_path, [run])
    assert main(["calibrate", str(d), "--out", str(tmp_path / "cal")]) == 1
    assert "no usable runs" in capsys.readouterr().out
    assert main(["calibrate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_single_run_fits_but_has_no_holdout(tmp_path):
    from validation.calibrate import fit

    [r], _ = fit([write_runs(tmp_path, synthetic_runs()[:1])])
    assert r.calibration.holdout_error["allocator_factor"].n == 0
    assert any("one run only" in n for n in r.calibration.notes)


def test_cli_counts_records_not_folders(tmp_path, capsys):
    """An empty folder holds no records: it is named, never counted as "1 record skipped"."""
    from planner.app.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["calibrate", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plan calibrate: error: no measurements.jsonl in") and "skipped" not in err
    run = synthetic_runs()[0].model_copy(update={"device": "cpu", "device_gpu": None})
    d = write_runs(tmp_path, [run])
    assert main(["calibrate", str(d), str(empty), "--out", str(tmp_path / "cal")]) == 1
    out = capsys.readouterr().out
    assert f"no measurements.jsonl in {empty}" in out and "(1 record skipped)" in out
    assert main(["calibrate", str(d), str(empty), "--json", "--dry-run"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert len(d["skipped"]) == 1 and d["no_measurements"] == [str(empty)]
