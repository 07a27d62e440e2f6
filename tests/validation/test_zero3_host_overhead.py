"""benchmarks/evidence_scripts/zero3_host_overhead.py: the arithmetic and the refusals (the DeepSpeed runs themselves
take minutes and are a measurement, not a test; docs/speed.md S23 quotes them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "evidence_scripts" / "zero3_host_overhead.py"


def _module():  # noqa: ANN202
    return load_script("benchmarks/evidence_scripts/zero3_host_overhead.py")


def test_per_block_time_is_the_slope_between_the_depths():
    mod = _module()
    lo, hi = mod.DEPTHS
    runs = [{"stage": 3, "layers": lo, "median_s": 0.050}, {"stage": 3, "layers": hi, "median_s": 0.170},
            {"stage": 3, "layers": lo, "median_s": 0.900},  # an outlier repeat: the median of three ignores it
            {"stage": 3, "layers": lo, "median_s": 0.052}, {"stage": 3, "layers": hi, "median_s": 0.168},
            {"stage": 3, "layers": hi, "median_s": 0.172}]
    assert mod.per_block_s(runs, 3) == pytest.approx((0.170 - 0.052) / (hi - lo))


@pytest.mark.parametrize("argv, needle", [(["--repeats", "0"], "--repeats 0"),
                                           (["--out", "/nonexistent-dir/x.json"], "does not exist"),
                                           (["--out", "."], "is a folder")])
def test_bad_arguments_are_one_line_exit_2(argv, needle, tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("script", ["zero3_host_overhead", "fsdp1_unit_overhead"])
def test_a_failed_run_is_one_line_and_writes_nothing(script, tmp_path, monkeypatch, capsys):
    mod = load_script(f"benchmarks/evidence_scripts/{script}.py")

    def fail(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("ZeRO-2 at 4 blocks failed: No module named 'deepspeed'")

    monkeypatch.setattr(mod, "run_child", fail)
    out = tmp_path / "r.json"
    assert mod.main(["--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == "error: ZeRO-2 at 4 blocks failed: No module named 'deepspeed'"
    assert not out.exists()


FSDP1_SCRIPT = ROOT / "benchmarks" / "evidence_scripts" / "fsdp1_unit_overhead.py"


def test_fsdp1_unit_time_is_the_difference_over_the_extra_units():
    mod = load_script("benchmarks/evidence_scripts/fsdp1_unit_overhead.py")
    runs = [{"mode": "wrap", "units": 193, "mean_s": 0.200}, {"mode": "ignore", "units": 65, "mean_s": 0.040},
            {"mode": "wrap", "units": 193, "mean_s": 0.210}, {"mode": "ignore", "units": 65, "mean_s": 0.044},
            {"mode": "wrap", "units": 193, "mean_s": 0.900}, {"mode": "ignore", "units": 65, "mean_s": 0.042}]
    assert mod.per_unit_s(runs) == pytest.approx((0.210 - 0.042) / 128)


@pytest.mark.parametrize("argv, needle", [(["--blocks", "0"], "--blocks 0"), (["--out", "."], "is a folder")])
def test_fsdp1_script_refuses_bad_arguments(argv, needle, tmp_path):
    p = subprocess.run([sys.executable, str(FSDP1_SCRIPT), *argv], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


def test_s26c_prior_is_the_shipped_measurement():
    """Eq. S26c's prior (params.py) is the ZeRO-3 minus ZeRO-2 host time per block this script measured and shipped,
    so the two cannot drift apart."""
    import json

    from planner.engine.speed.params import SpeedParams

    shipped = json.loads((ROOT / "benchmarks" / "results" / "zero3_host_overhead.json").read_text(encoding="utf-8"))
    prior = SpeedParams.model_fields["zero3_block_host_s"].default
    assert prior == pytest.approx(shipped["zero3_extra_s_per_block"], rel=0.01)
