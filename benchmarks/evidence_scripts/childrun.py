"""One measurement configuration per fresh interpreter, for the evidence scripts that time framework code
(zero3_host_overhead.py, fsdp1_unit_overhead.py): a second configuration in the same process would inherit the
first's process group, caches and warmed-up allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def out_refusal(out: Path) -> str | None:
    """Why ``--out`` cannot take the result, checked before any run (a measurement takes minutes, and a bad
    path found at the end would lose it): its folder missing, or the path itself a folder. None when it can."""
    if out.is_dir():
        return f"--out {out} is a folder; give the JSON file to write"
    if not out.parent.is_dir():
        return f"--out {out}: folder {out.parent} does not exist"
    return None


def run_json_child(script: str | Path, args: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """Run ``python script --child *args`` and return the JSON object of its last ``{``-line; a failed child is a
    one-line ``RuntimeError`` naming ``what`` and the child's last stderr line."""
    p = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True, text=True, timeout=600,
                       check=False, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{what} failed: {tail}")
    return json.loads(lines[-1])
