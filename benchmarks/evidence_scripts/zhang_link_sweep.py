"""Can a slower link explain Zhang et al. 2023 (arXiv 2311.03687)? Each of the source's throughput records
predicted by the shipped speed fit with only the achieved link fraction changed (docs/speed.md eq. S23).

    python benchmarks/evidence_scripts/zhang_link_sweep.py [--efficiency E ...]   (default: shipped, 0.25, 0.15, 0.12, 0.10)

Prints one row per record: measured tokens/s and the prediction at each link efficiency (the A800's NVLink
figure is 200 GB/s per direction, so 0.12 is 24 GB/s, a PCIe-class link). docs/speed.md (S23) quotes the
result: no single link speed gives both of the source's ZeRO-2 / ZeRO-3 orderings (7B and 13B).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "zhang2023-dissecting"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficiency", type=float, nargs="+", default=None,
                    help="achieved fractions of the link bandwidth to try, each in (0, 1] (default: the shipped "
                    "fit's, 0.25, 0.15, 0.12, 0.10)")
    args = ap.parse_args(argv)
    bad = [e for e in args.efficiency or () if not 0 < e <= 1]
    if bad:
        ap.error(f"--efficiency {bad[0]:g} is not a fraction in (0, 1]")
    sys.path.insert(0, str(ROOT))
    from planner.app.calibration_io import CALIBRATION_DIR, SPEED_FILE, read_speed_fit
    from validation.corpus import load
    from validation.corpus_fit import predict

    shipped = read_speed_fit(CALIBRATION_DIR / SPEED_FILE)
    if args.efficiency is None:
        args.efficiency = [shipped.link_efficiency, 0.25, 0.15, 0.12, 0.10]
    print(f"shipped link efficiency {shipped.link_efficiency:g}; tokens/s of the whole job")
    print("| record | measured | " + " | ".join(f"link {e:g}" for e in args.efficiency) + " |")
    print("|---|---:|" + "---:|" * len(args.efficiency))
    for case in (c for c in load().speed if c.source == SOURCE):
        preds = [predict(case, shipped.model_copy(update={"link_efficiency": e})) for e in args.efficiency]
        print(f"| {case.id.split('/', 1)[1]} | {case.tokens_per_s:,.0f} | "
              + " | ".join(f"{p:,.0f}" for p in preds) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
