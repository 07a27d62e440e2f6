"""The H100 script and its matrix, checked without a GPU: the matrix is valid and fits, and the script's
dry run (tiny configs on the CPU) goes through the whole flow and leaves what the device tool brings back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "validation" / "gpu" / "run_h100.sh"


def test_h100_matrix_is_valid_and_every_run_fits():
    from planner.engine.evaluate import evaluate
    from profiles.cluster import parse_cluster
    from validation.spec import load_matrix

    specs = load_matrix(ROOT / "validation" / "gpu" / "matrix_h100.yaml")
    oom = [s for s in specs if s.label.endswith("-oom")]
    specs = [s for s in specs if not s.label.endswith("-oom")]
    assert len(specs) == 27 and len(oom) == 1
    for s in oom:  # meant to go out of memory on an H100 and an H200 alike (the report reads torch's message)
        for gpu in ("H100", "H200"):
            assert not evaluate(s.model, parse_cluster(gpu), s.setup).memory.fits
    combos = {(s.model.name, s.setup.method, s.setup.seq_len, s.setup.checkpointing) for s in specs}
    for model in ("Qwen2.5-0.5B", "Qwen2.5-1.5B"):
        for method in ("full", "lora", "qlora"):
            for seq in (512, 2048):
                for ck in ("none", "full"):
                    assert (model, method, seq, ck) in combos
    assert {("Qwen2.5-7B", m) for m in ("lora", "qlora")} <= {(s.model.name, s.setup.method) for s in specs}
    assert sum(s.timeline for s in specs) == 3 and all(s.device == "cuda" and s.cluster.world_size == 1 for s in specs)
    for s in specs:
        assert evaluate(s.model, s.cluster, s.setup).memory.fits, s.label
    assert [s.model.name for s in specs][-3:] == ["Qwen2.5-7B"] * 3  # the slowest last: the budget cuts them first


def test_long_context_probe_straddles_the_r3b_cap_and_tells_the_laws_apart(monkeypatch):
    """validation/gpu/matrix_long_context.yaml (docs/validation.md): three one-GPU runs that fit an H100, whose residual
    tensors lie below, at and above eq. R3b's cap, so that the measured reserved - allocated either stays flat past the
    cap (R3b) or keeps doubling (eq. R3 alone); the two laws agree on the first two runs and differ on the third."""
    import planner.engine.runtime_memory as rm
    from planner.engine.evaluate import evaluate
    from validation.spec import load_matrix

    specs = load_matrix(ROOT / "validation" / "gpu" / "matrix_long_context.yaml")
    cap = rm.FRAGMENTATION_TENSOR_CAP_BYTES

    def gaps() -> list[int]:
        out = []
        for s in specs:
            m = evaluate(s.model, s.cluster, s.setup).memory
            assert m.fits and s.device == "cuda" and s.cluster.world_size == 1, s.label
            out.append(m.reserved_peak_bytes - m.allocated_peak_bytes)
        return out

    sizes = [evaluate(s.model, s.cluster, s.setup).memory.residual_tensor_bytes for s in specs]
    assert sizes[0] < cap == sizes[1] < sizes[2]
    r3b = gaps()
    monkeypatch.setattr(rm, "FRAGMENTATION_TENSOR_CAP_BYTES", 2**62)
    r3 = gaps()
    assert r3b[:2] == r3[:2] and r3[2] > 1.8 * r3b[2]


@pytest.mark.slow  # ~27 s on the 2-core CPU (pytest --durations)
def test_script_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "TUNEPLAN_WORK": str(work), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["calibration.tar.gz", "figures.tar.gz", "measurements.jsonl", "report.md", "run.log"]
    assert len(names) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    records = [json.loads(x) for x in (out / "measurements.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "not_runnable"]
    with tarfile.open(out / "figures.tar.gz") as t:
        members = t.getnames()
    assert any(m.endswith("-memory.png") for m in members) and any(m.endswith("memory_timeline.html") for m in members)
    log = (out / "run.log").read_text()
    assert "planner validate --matrix validation/gpu/matrix_dryrun.yaml --device cpu" in log
    assert "no usable runs" in log  # CPU records do not calibrate a GPU
