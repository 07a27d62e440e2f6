"""Which law of fragmentation the published runs support (docs/memory.md R3b): the shipped one against the alternatives,
each refitted and scored exactly as ``benchmarks/memory_vs_corpus.py`` scores the shipped one.

Eq. R3 keeps a fraction of a step's churn (the memory freed and re-allocated within it) fragmented. Linear in the
churn, it gives ml-engineering's 8xH200 / 8xB200 ZeRO-3 runs at 64K-256K tokens 16-62 GiB of fragments where they
hold 5.3-5.7 GiB (their reserved figures +28 to +43 %). The laws tried, each with per-class fractions refitted on the
same rows, each source held out:

* linear: eq. R3 alone (the engine before eq. R3b);
* residual-size (eq. R3b, shipped at 256 MiB): the activations' and logits' share counts at ``min(1, S0 / residual)``,
  ``residual`` one bf16 residual-stream tensor of the micro-batch: past ``S0`` the fragments follow the number of
  activation tensors, not their size. ``S0`` is not fitted: the table tries several;
* power: ``f x R x (churn / R)^a`` over the whole churn, ``R`` = 16 GiB;
* saturating: ``f x K x (1 - exp(-churn / K))`` over the whole churn: linear for small churn, at most ``f x K``.

Written: benchmarks/results/fragmentation_forms.md (the table docs/memory.md R3b quotes) and
fragmentation_forms.json. The engine is not changed by this script.

    python benchmarks/fragmentation_forms.py     # a few seconds
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
GiB = 2**30
REF_BYTES = 16 * GiB


def power_law(a: float):
    def form(churn_bytes: int, fraction: float, token_churn_bytes: int = 0, residual_bytes: int = 0) -> int:
        c = max(churn_bytes, 0)
        return 0 if c == 0 else int(fraction * REF_BYTES * (c / REF_BYTES) ** a)
    return form


def saturating(k_bytes: int):
    def form(churn_bytes: int, fraction: float, token_churn_bytes: int = 0, residual_bytes: int = 0) -> int:
        return int(fraction * k_bytes * -math.expm1(-max(churn_bytes, 0) / k_bytes))
    return form


MiB = 2**20
LINEAR_CAP = 2**62
"""A tensor-size cap no run reaches: eq. R3b off, the linear law."""


def forms() -> list[tuple[str, object, int]]:
    """(name, the law of the fragmented bytes, eq. R3b's tensor-size cap it runs with)."""
    import planner.engine.runtime_memory as rm

    shipped = rm.FRAGMENTATION_TENSOR_CAP_BYTES
    out: list[tuple[str, object, int]] = [("linear (eq. R3 alone)", rm.fragmented_bytes, LINEAR_CAP)]
    for m in (128, 256, 384, 512):
        tag = " (shipped)" if m * MiB == shipped else ""
        out.append((f"residual-size S0={m} MiB{tag}", rm.fragmented_bytes, m * MiB))
    out += [(f"power a={a}", power_law(a), LINEAR_CAP) for a in (0.8, 0.6, 0.5)]
    out += [(f"saturating K={k} GiB", saturating(k * GiB), LINEAR_CAP) for k in (16, 32)]
    return out


def score(rows, refused) -> dict:  # noqa: ANN001
    """The report of :func:`validation.corpus_memory.evaluate_corpus` for already-evaluated rows, under whichever
    law is installed."""
    import statistics

    import validation.corpus_memory as cm

    fit = cm.fit_fractions(rows)
    held = {src: cm.fit_fractions([r for r in rows if r.source != src]) for src in cm.gap_sources(rows)}
    stranded = cm.fit_stranded(rows, fit)
    stranded_held = {src: cm.fit_stranded([r for r in rows if r.source != src], held.get(src, fit))
                     for src in sorted({r.source for r in rows})}
    rep = cm.MemoryReport(rows=rows, fit=fit, held_out=held, refused=refused, stranded=stranded,
                          stranded_held_out=stranded_held)
    s = cm.summary(rep)
    pairs = [r for r in rows if r.fit and r.measured_gap_bytes is not None]
    mle = [r for r in rows if r.fit and r.measured_bytes and r.source.startswith("ml-engineering")
           and "z3" in r.id]
    return {
        "fit": fit, "stranded": stranded,
        "pair_gap_median_abs": statistics.median(abs(r.gap_error(fit)) for r in pairs),
        "n": s["n"], "median_abs": s["median_abs"], "max_abs": s["max_abs"], "worst": s["worst"],
        "within_25": s["within_25"],
        "ml_engineering_z3_max_abs": max(abs(rep.error(r)) for r in mle) if mle else None,
        "oom_total": s["oom_total"], "oom_predicted_to_fit": s["oom_predicted_to_fit"],
        "ran_total": s["ran_total"], "ran_predicted_not_to_fit": s["ran_predicted_not_to_fit"],
    }


def main() -> int:
    import planner.engine.runtime_memory as rm
    import validation.corpus_memory as cm
    from planner.fileio import atomic_write_text
    from validation.corpus import load

    rows, refused = cm.rows_from(load())
    shipped, cap, grid = rm.fragmented_bytes, rm.FRAGMENTATION_TENSOR_CAP_BYTES, cm.FRACTION_GRID
    cm.FRACTION_GRID = tuple(i / 100 for i in range(0, 101))  # the saturating laws fit fractions above 0.6
    results = {}
    try:
        for name, form, law_cap in forms():
            rm.fragmented_bytes, rm.FRAGMENTATION_TENSOR_CAP_BYTES = form, law_cap
            results[name] = score(rows, refused)
    finally:
        rm.fragmented_bytes, rm.FRAGMENTATION_TENSOR_CAP_BYTES, cm.FRACTION_GRID = shipped, cap, grid
    lines = [
        "# Fragmentation laws against the published runs",
        "",
        f"_Generated {_dt.date.today()} by `python benchmarks/fragmentation_forms.py`; every law refitted on the same "
        "rows, each source held out (fractions and stranded shares), as benchmarks/memory_vs_corpus.py does._",
        "",
        "| law | fractions (static, dynamic, sharded, fsdp2) | stranded sharded | fms gap median | median | max (worst) "
        "| within 25 % | ml-eng ZeRO-3 max | OOMs predicted to fit | fitted runs predicted not to |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        fr = ", ".join(f"{v:.2f}" for v in r["fit"].values())
        lines.append(
            f"| {name} | {fr} | {r['stranded']['sharded']:.3f} | {r['pair_gap_median_abs'] * 100:.1f} % "
            f"| {r['median_abs'] * 100:.1f} % | {r['max_abs'] * 100:.1f} % ({r['worst'].split('/')[-1]}) "
            f"| {r['within_25']}/{r['n']} | {r['ml_engineering_z3_max_abs'] * 100:.1f} % "
            f"| {len(r['oom_predicted_to_fit'])}/{r['oom_total']} | {len(r['ran_predicted_not_to_fit'])}/{r['ran_total']} |")
    lines += ["", "Out-of-memory runs each law predicts to fit:", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + (", ".join(f"`{x}`" for x in r["oom_predicted_to_fit"]) or "none"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "fragmentation_forms.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / "fragmentation_forms.json",
                      json.dumps({"generated": str(_dt.date.today()), "laws": results}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
