"""``plan validate`` on a CUDA device (skipped without one, see tests/conftest.py): allocator figures per phase,
the allocator snapshot, the driver's view, QLoRA through bitsandbytes, and a calibration fitted from the runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "validation" / "data" / "tiny-qwen2.yaml")

pytestmark = pytest.mark.gpu


def _spec(**kw):
    from validation.spec import spec_from_mapping

    return spec_from_mapping({"model": TINY, "gpus": "H100", "device": "cuda", "seq": 128, "micro_batch": 2,
                              "steps": 2, "warmup": 1, **kw}, {}, 0)


def test_cuda_run_records_allocator_figures_and_snapshot(tmp_path):
    from validation.runner import run_one

    m = run_one(_spec(label="tiny-cuda-full"), tmp_path)
    assert m.status == "ok", m.error
    for name in ("after_load", "first_forward", "first_backward", "first_optimizer_step", "forward", "backward",
                 "optimizer_step", "steady_state"):
        p = m.phases[name]
        assert p.source == "cuda" and p.allocated_bytes is not None and p.reserved_bytes >= p.allocated_bytes
        assert p.peak_allocated_bytes >= p.allocated_bytes and p.peak_active_bytes is not None
    assert m.peak_reserved_bytes >= m.peak_allocated_bytes > 0
    assert m.device_used_bytes > m.phases["steady_state"].reserved_bytes  # the CUDA context lives outside
    assert m.versions["cuda"] and m.versions["driver"]
    assert m.profiled and m.profiled.snapshot and (tmp_path / m.profiled.snapshot).stat().st_size > 1000
    assert (tmp_path / m.profiled.timeline_html).exists()
    assert m.tokens_per_s and m.tokens_per_s > 0


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_quantises_the_base(tmp_path):
    from validation.runner import run_one

    m = run_one(_spec(label="tiny-cuda-qlora", method="qlora", timeline=False), tmp_path)
    assert m.status == "ok", m.error
    lora = run_one(_spec(label="tiny-cuda-lora", method="lora", timeline=False), tmp_path)
    # NF4 holds the linear layers in about a quarter of bf16's bytes (embeddings stay bf16)
    assert m.inventory["weights_frozen"] < lora.inventory["weights_frozen"]


def test_injected_oom_on_cuda_is_a_result(tmp_path, monkeypatch):
    from validation.faults import OOM_ENV
    from validation.runner import run_one

    monkeypatch.setenv(OOM_ENV, "optimizer")
    m = run_one(_spec(label="tiny-cuda-oom", timeline=False), tmp_path)
    assert m.status == "oom" and m.reached == "first_backward"


def test_calibrate_from_cuda_runs(tmp_path):
    from planner.app.cli import main
    from planner.app.calibration_io import load_calibration
    from validation.measurement import append_measurement
    from validation.runner import run_one

    out = tmp_path / "runs"
    for seq in (64, 128, 256):
        append_measurement(out, run_one(_spec(label=f"s{seq}", seq=seq, timeline=False), out))
    assert main(["calibrate", str(out), "--gpu", "H100", "--out", str(tmp_path / "cal")]) == 0
    c = load_calibration("H100 80GB SXM", "hf-amp", tmp_path / "cal")
    assert c is not None and c.n_runs == 3 and c.allocator_factor >= 1 and c.fixed_overhead_bytes > 0
    assert c.holdout_error["allocator_factor"].n == 3
