"""Wall time of ``plan`` (the search), cold start included: a fresh interpreter per run.

    python benchmarks/planner_speed.py [--runs 5] [--json] [--bytecode both|cached|none] [--cases all|issue]

Run it from the repository root: it times ``python -m planner --model M --gpus G`` (the table, or ``--json``),
output sent to /dev/null, for a few model/cluster pairs, in two interpreter settings:

- ``cached``: this checkout's bytecode caches exist (one untimed warm-up run writes them), as after any install;
- ``none``: no bytecode cache of this checkout's own modules (``planner``, ``profiles``): their ``__pycache__``
  folders are removed and ``PYTHONDONTWRITEBYTECODE=1`` is set, so every run compiles them from source, as in a
  fresh checkout under that setting. The standard library's and site-packages' caches stay as installed.

Prints the median and worst wall time per case and setting. Speed is measured here, not asserted in unit tests
(docs/planner.md quotes the numbers with the date and machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ISSUE_CASES = [
    # the issues' bar (issues 10 and 13): under 1 s on a 2-core machine, also on a derived profile
    ("llama3-8b", "8xA800"),
    ("gemma-3-12b", "8xA800"),
    ("qwen3-30b-a3b", "8xH100"),
]
MORE_CASES = [
    ("qwen2.5-7b", "4090"),
    ("llama3-70b", "2x8xH100"),
    ("gemma-3-27b", "8xA800"),
    ("gpt-oss-20b", "8xH100"),
]

OWN_PACKAGES = ("planner", "profiles")


def _remove_own_caches() -> None:
    for pkg in OWN_PACKAGES:
        for d in (ROOT / pkg).rglob("__pycache__"):
            shutil.rmtree(d, ignore_errors=True)


def _env(bytecode: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _time_once(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="time --json instead of the rich tables")
    ap.add_argument("--bytecode", choices=("both", "cached", "none"), default="both")
    ap.add_argument("--cases", choices=("issue", "all"), default="all")
    args = ap.parse_args()
    cases = ISSUE_CASES + (MORE_CASES if args.cases == "all" else [])
    modes = ("cached", "none") if args.bytecode == "both" else (args.bytecode,)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs each, "
          f"output {'--json' if args.json else 'tables'}, checkout {ROOT}")
    print(f"{'model':<16} {'gpus':<10} {'bytecode':<8} {'median s':>9} {'max s':>7}")
    for mode in modes:
        env = _env(mode)
        _remove_own_caches()
        for model, gpus in cases:
            cmd = [sys.executable, "-m", "planner", "--model", model, "--gpus", gpus] + (["--json"] if args.json else [])
            if mode == "cached":
                _time_once(cmd, env)  # writes the caches; not timed
            else:
                _remove_own_caches()
            times = [_time_once(cmd, env) for _ in range(args.runs)]
            print(f"{model:<16} {gpus:<10} {mode:<8} {statistics.median(times):>9.3f} {max(times):>7.3f}", flush=True)


if __name__ == "__main__":
    main()
