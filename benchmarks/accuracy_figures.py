"""The two pictures of docs/accuracy.md: estimate against measurement for every published run the corpus maps, speed
(held out by source) and memory (held out where a term is fitted), on log axes with the targets of issues 10 and 11
shaded. They draw what the sections' scripts computed (benchmarks/results/speed_loso.json and memory_rows.json); they
never recompute it.

    python benchmarks/accuracy_figures.py        # (benchmarks/accuracy.py calls it when it assembles the report)

Writes docs/figures/accuracy_speed.png and docs/figures/accuracy_memory.png, each atomically.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
SPEED_PNG = FIGURES / "accuracy_speed.png"
MEMORY_PNG = FIGURES / "accuracy_memory.png"
SPEED_BAND = 0.15
"""issue 10: held-out median |error| <= 15 %"""
MEMORY_BANDS = (0.08, 0.25)
"""issue 11: median |error| <= 8 %, max <= 25 %"""
MARKERS = "osD^v<>pPX*h"


def _write_png(fig: Any, path: Path) -> Path:
    """Render to memory, then replace ``path`` in one step (a reader never sees half a file)."""
    from profiles.atomic import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    write_atomic(path, buf.getvalue())
    return path


def estimate_vs_measured(points: list[dict], path: Path, *, title: str, unit: str, bands: tuple[float, ...],
                         group_label: str) -> Path:
    """Log-log scatter of ``points`` (``measured``, ``estimated``, ``group``, ``counted``): one marker per group,
    records not counted (anomalies) as grey crosses, the diagonal and +-``bands`` shaded."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 6.4))
    values = [p[k] for p in points for k in ("measured", "estimated") if p[k] and p[k] > 0]
    lo, hi = min(values) / 1.3, max(values) * 1.3
    xs = [lo, hi]
    for band, alpha in zip(sorted(bands, reverse=True), (0.12, 0.24) if len(bands) > 1 else (0.22,)):
        ax.fill_between(xs, [x * (1 - band) for x in xs], [x * (1 + band) for x in xs], color="#2ca02c", alpha=alpha,
                        lw=0, label=f"within {band:.0%}")
    ax.plot(xs, xs, color="#222222", lw=0.8)
    groups = sorted({p["group"] for p in points if p["counted"]})
    cmap = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        sel = [p for p in points if p["counted"] and p["group"] == g]
        med = statistics.median(p["estimated"] / p["measured"] - 1 for p in sel)
        ax.scatter([p["measured"] for p in sel], [p["estimated"] for p in sel], s=22, marker=MARKERS[i % len(MARKERS)],
                   color=cmap(i % 10), edgecolors="none", alpha=0.85, label=f"{g} ({len(sel)}, median {med:+.0%})")
    flagged = [p for p in points if not p["counted"]]
    if flagged:
        ax.scatter([p["measured"] for p in flagged], [p["estimated"] for p in flagged], s=26, marker="x",
                   color="#999999", label=f"anomaly, not counted ({len(flagged)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured {unit}")
    ax.set_ylabel(f"estimated {unit}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", title=group_label, title_fontsize=7, frameon=False)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    try:
        return _write_png(fig, path)
    finally:
        plt.close(fig)


def speed_points(data: dict, flagged: dict[str, str]) -> list[dict]:
    """Every throughput record of the speed fit (benchmarks/results/speed_loso.json): held-out estimate against
    measured tokens/s of the whole job, grouped by GPU family."""
    return [{"measured": r["measured"], "estimated": r["held_out"], "group": r["gpu_family"],
             "counted": r["id"] not in flagged} for r in data["rows"]]


def memory_points(rows: list[dict]) -> list[dict]:
    """Every memory record with a measured peak (benchmarks/results/memory_rows.json), in GiB, grouped by the kind
    of memory the source reports."""
    from planner.units import GiB

    return [{"measured": r["measured_bytes"] / GiB, "estimated": r["estimated_bytes"] / GiB, "group": r["kind"],
             "counted": r["counted"]} for r in rows if r["measured_bytes"] and r["estimated_bytes"]]


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    written = []
    loso = RESULTS / "speed_loso.json"
    if loso.exists():
        from benchmarks.accuracy_vs_corpus import anomalies, speed_summary

        data = json.loads(loso.read_text(encoding="utf-8"))
        flagged = anomalies()
        s = speed_summary(data, flagged)
        written.append(estimate_vs_measured(
            speed_points(data, flagged), SPEED_PNG, unit="tokens/s (whole job)", bands=(SPEED_BAND,),
            group_label="GPU family (records, held-out median)",
            title=f"Speed, held out by source: {s['n']} published runs, median |error| "
                  f"{s['held_median_abs'] * 100:.1f} %"))
    rows_file = RESULTS / "memory_rows.json"
    if rows_file.exists():
        rows = json.loads(rows_file.read_text(encoding="utf-8"))["rows"]
        pts = memory_points(rows)
        counted = [abs(p["estimated"] / p["measured"] - 1) for p in pts if p["counted"]]
        written.append(estimate_vs_measured(
            pts, MEMORY_PNG, unit="peak per GPU (GiB)", bands=MEMORY_BANDS, group_label="memory the source reports",
            title=f"Memory: {len(counted)} published peaks, median |error| {statistics.median(counted) * 100:.1f} %, "
                  f"max {max(counted) * 100:.0f} %"))
    for p in written:
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
