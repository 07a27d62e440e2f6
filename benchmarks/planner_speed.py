"""Wall time of the plan search, cold start included (a fresh interpreter per run).

    python benchmarks/planner_speed.py [--runs 5]

Prints the median and worst wall time of ``plan --model M --gpus G --json`` for a few model/cluster pairs.
Speed is measured here, not asserted in unit tests.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("llama3-8b", "8xA800"),
    ("qwen2.5-7b", "4090"),
    ("llama3-70b", "2x8xH100"),
    ("qwen3-30b-a3b", "8xH100"),
    # derived from the model code (issue 13): parsed on use, planned from their traced inventories
    ("gemma-3-27b", "8xA800"),
    ("gpt-oss-20b", "8xH100"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"{'model':<16} {'gpus':<10} {'median s':>9} {'max s':>7}")
    for model, gpus in CASES:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "planner", "--model", model, "--gpus", gpus, "--json"],
                           stdout=subprocess.DEVNULL, check=False)
            times.append(time.perf_counter() - t0)
        print(f"{model:<16} {gpus:<10} {statistics.median(times):>9.3f} {max(times):>7.3f}")


if __name__ == "__main__":
    main()
