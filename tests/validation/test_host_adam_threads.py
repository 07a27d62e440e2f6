"""benchmarks/evidence_scripts/host_adam_threads.py: a group of processes is timed together and its throughput is the
sum, in S15's 30 B per parameter; bad arguments are refused (the full measurement takes a minute and is evidence,
not a test: docs/speed.md S15 quotes benchmarks/results/host_adam_threads.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "evidence_scripts" / "host_adam_threads.py"


def _module():  # noqa: ANN202
    return load_script("benchmarks/evidence_scripts/host_adam_threads.py")


def test_processes_step_together_and_their_throughput_adds_up():
    mod = _module()
    group = mod.run_group("torch-adamw", 2, 1, 1, 2)  # two one-thread processes of 1M parameters, torch's AdamW
    assert group["processes"] == 2 and len(group["step_s"]) == 2 and all(t > 0 for t in group["step_s"])
    # the sum of each process's parameters per second (the step times are rounded to 0.1 ms in the record)
    assert group["params_per_s"] == pytest.approx(sum(1_000_000 / t for t in group["step_s"]), rel=0.05)
    assert group["gb_per_s"] == pytest.approx(group["params_per_s"] * mod.BYTES_PER_PARAM / 1e9, abs=0.01)


def test_the_unit_is_the_engine_s():
    """30 B per parameter: fp32 parameter, gradient, two moments read, three written, and the bf16 copy (S8b, S15)."""
    assert _module().BYTES_PER_PARAM == 4 * 7 + 2


@pytest.mark.parametrize("argv, needle", [(["--params", "0"], "--params 0"), (["--steps", "0"], "--steps 0"),
                                           (["--out", "{tmp}"], "is a folder")])
def test_bad_arguments_are_one_line_exit_2(argv, needle, tmp_path):
    out = tmp_path / "x.json"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *argv], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr and not out.exists()
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_failed_measurement_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    mod = _module()

    def fail(*a):  # noqa: ANN002
        raise RuntimeError("deepspeed-cpu-adam with 1 x 1 threads failed: CPU Adam did not build")
    monkeypatch.setattr(mod, "run_group", fail)
    out = tmp_path / "x.json"
    assert mod.main(["--out", str(out)]) == 1 and not out.exists()
    assert capsys.readouterr().err.strip() == "error: deepspeed-cpu-adam with 1 x 1 threads failed: CPU Adam did not build"


def test_the_shipped_measurement_names_its_machine_and_versions():
    doc = json.loads((ROOT / "benchmarks" / "results" / "host_adam_threads.json").read_text())
    assert doc["versions"]["deepspeed"] and doc["versions"]["torch"] and "CPUs" in doc["machine"]
    one = [r for r in doc["runs"] if r["impl"] == "deepspeed-cpu-adam" and r["processes"] == 1
           and r["threads_per_process"] == 1]
    assert len(one) == 1 and one[0]["gb_per_s"] > 0
    # docs/speed.md S15 quotes this file: every DeepSpeed and torch figure it gives is one of the runs'
    speed_md = (ROOT / "docs" / "speed.md").read_text()
    s15 = speed_md[speed_md.index("host_adam_threads.py"):speed_md.index("### S16")]
    for r in doc["runs"]:
        assert f"{r['gb_per_s']:.1f}" in s15, r
