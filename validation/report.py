"""``DIR/report.md`` and its figures, from every record in ``DIR/measurements.jsonl``.

Formats what :mod:`validation.compare` computed; recomputes nothing. Figures (matplotlib, Agg backend, PNG
in ``DIR/figures/``):

* ``<run>-memory.png``: memory over time. With a profiled step: the step's live tensor bytes stacked by
  profiler category; otherwise the per-phase peaks over the run. The estimate's allocated peak is drawn as a
  dashed line, the measured peak as a dotted one.
* ``<run>-categories.png``: estimated vs measured bytes per category group.
* ``summary.png``: estimated vs measured peak per run.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from validation.compare import (
    GROUPS,
    Row,
    category_rows,
    est_allocated,
    inventory_rows,
    peak_rows,
    phase_rows,
    speed_row,
)
from planner.fileio import atomic_write_text
from validation.measurement import Measurement, cuda_oom_figures, read_measurements

REPORT_FILE = "report.md"
FIG_DIR = "figures"
CATEGORY_COLORS = {
    "PARAMETER": "#4e79a7", "OPTIMIZER_STATE": "#f28e2b", "INPUT": "#bab0ac", "TEMPORARY": "#e15759",
    "ACTIVATION": "#59a14f", "GRADIENT": "#edc948", "AUTOGRAD_DETAIL": "#b07aa1", "UNKNOWN": "#9c755f",
}


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    a = abs(n)
    if a >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if a >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if a >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{int(n)} B"


def fmt_err(r: Row) -> str:
    e = r.rel_error
    return "n/a" if e is None else f"{e * 100:+.1f} %"


def _unit(max_bytes: float) -> tuple[float, str]:
    if max_bytes >= 2**30:
        return 2**30, "GiB"
    if max_bytes >= 2**20:
        return 2**20, "MiB"
    return 2**10, "KiB"


def _table(rows: list[Row], fmt=fmt_bytes, what: str = "quantity") -> list[str]:  # type: ignore[no-untyped-def]
    out = [f"| {what} | estimated | measured | estimate error | measured by |", "|---|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r.name} | {fmt(r.estimated)} | {fmt(r.measured)} | {fmt_err(r)} | {r.source} |")
    return out


def _setup_short(m: Measurement) -> str:
    from planner.engine.setup import Setup

    try:
        return Setup.model_validate(m.setup).short() + f" · seq {m.setup.get('seq_len')} · {m.setup.get('recipe')}"
    except ValueError:
        return str(m.setup)


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def memory_figure(m: Measurement, out_dir: Path, path: Path) -> bool:
    """Memory over time with the estimate's peak as a line. False when there is nothing to draw."""
    plt = _plt()
    est = est_allocated(m.estimate) if m.estimate else None
    fig, ax = plt.subplots(figsize=(10.5, 4.8), dpi=110)
    drawn = False
    if m.profiled and m.profiled.timeline_json and (out_dir / m.profiled.timeline_json).exists():
        data = json.loads((out_dir / m.profiled.timeline_json).read_text(encoding="utf-8"))
        cats = data["categories"]
        pts = data["points"]
        if pts:
            top = max([sum(p[1]) for p in pts] + [est or 0])
            scale, unit = _unit(top)
            t = [p[0] for p in pts]
            ys = [[p[1][i] / scale for p in pts] for i in range(len(cats))]
            ax.stackplot(t, ys, labels=[c.lower().replace("_", " ") for c in cats],
                         colors=[CATEGORY_COLORS.get(c, "#999999") for c in cats], step="post", alpha=0.85)
            tot = [sum(p[1]) for p in pts]
            ipk = max(range(len(tot)), key=tot.__getitem__)
            ax.plot([t[ipk]], [tot[ipk] / scale], marker="v", color="black", ms=6, ls="none")
            for name, tm in data.get("marks", []):
                ax.axvline(tm, color="#555555", lw=0.6, alpha=0.5)
                ax.text(tm, top / scale * 1.02, name.replace("_", " "), rotation=90, fontsize=7, va="bottom",
                        ha="right", color="#555555")
            ax.set_xlabel(f"time in profiled step {m.profiled.step} (s)")
            ax.set_title(f"{m.label}: live tensors by profiler category ({m.device})", fontsize=10)
            drawn = True
    if not drawn:
        pts2 = [(p.t_s, p.peak_tensor_bytes if p.peak_tensor_bytes is not None else p.tensor_bytes, name)
                for name, p in m.phases.items() if name != "steady_state" and p.t_s is not None]
        pts2 = [x for x in pts2 if x[1] is not None]
        pts2.sort()
        if not pts2:
            plt.close(fig)
            return False
        top = max([x[1] for x in pts2] + [est or 0])
        scale, unit = _unit(top)
        ax.plot([x[0] for x in pts2], [x[1] / scale for x in pts2], marker="o", color="#4e79a7",
                label="measured phase peak")
        for x in pts2:
            ax.annotate(x[2].replace("_", " "), (x[0], x[1] / scale), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("time since the run started (s)")
        ax.set_title(f"{m.label}: peak tensor bytes per phase ({m.device})", fontsize=10)
    if est is not None:
        ax.axhline(est / scale, color="#d62728", ls="--", lw=1.6, label=f"estimated peak {fmt_bytes(est)}")
    if m.peak_tensor_bytes is not None:
        ax.axhline(m.peak_tensor_bytes / scale, color="black", ls=":", lw=1.4,
                   label=f"measured peak {fmt_bytes(m.peak_tensor_bytes)}")
    ax.set_ylabel(f"memory ({unit})")
    ax.set_ylim(0, top / scale * 1.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def category_figure(m: Measurement, path: Path) -> bool:
    # only groups this device measured (the CPU has no framework overhead or allocator margin to compare)
    rows = [r for r in category_rows(m) if r.measured is not None]
    rows = [r for r in rows if (r.estimated or 0) > 0 or (r.measured or 0) > 0]
    if not rows:
        return False
    plt = _plt()
    top = max(max(r.estimated or 0, r.measured or 0) for r in rows)
    scale, unit = _unit(top)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    x = list(range(len(rows)))
    w = 0.38
    ax.bar([i - w / 2 for i in x], [(r.estimated or 0) / scale for r in rows], w, label="estimated", color="#d62728",
           alpha=0.8)
    ax.bar([i + w / 2 for i in x], [(r.measured or 0) / scale for r in rows], w, label="measured", color="#4e79a7",
           alpha=0.9)
    for i, r in enumerate(rows):
        e = r.rel_error
        label = "n/a" if e is None else f"{e * 100:+.0f}%"
        ax.text(i, max(r.estimated or 0, r.measured or 0) / scale * 1.02, label, ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, top / scale * 1.15)
    ax.set_xticks(x)
    ax.set_xticklabels([r.name.replace("_", "\n") for r in rows], fontsize=8)
    ax.set_ylabel(f"bytes at the peak ({unit})")
    ax.set_title(f"{m.label}: estimated vs measured by category", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def summary_figure(ms: list[Measurement], path: Path) -> bool:
    pairs = [(m.label, est_allocated(m.estimate), m.peak_allocated_bytes if m.device == "cuda" else m.peak_tensor_bytes)
             for m in ms if m.estimate and m.status == "ok"]
    pairs = [p for p in pairs if p[2]]
    if not pairs:
        return False
    plt = _plt()
    top = max(max(p[1], p[2]) for p in pairs)
    scale, unit = _unit(top)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(pairs) + 3), 4.5), dpi=110)
    x = list(range(len(pairs)))
    w = 0.38
    ax.bar([i - w / 2 for i in x], [p[1] / scale for p in pairs], w, label="estimated", color="#d62728", alpha=0.8)
    ax.bar([i + w / 2 for i in x], [p[2] / scale for p in pairs], w, label="measured", color="#4e79a7", alpha=0.9)
    for i, p in enumerate(pairs):
        ax.text(i, max(p[1], p[2]) / scale * 1.02, f"{(p[1] / p[2] - 1) * 100:+.0f}%", ha="center", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([p[0] for p in pairs], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel(f"peak allocated / live tensors ({unit})")
    ax.set_title("estimated vs measured peak per run", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def oom_stranded_line(m: Measurement) -> str | None:
    """For a run that went out of memory on CUDA: what the allocator's retry could not give back, from torch's own
    message (:func:`validation.measurement.cuda_oom_figures`), against eq. R3c's stranded share for the run's
    fragmentation class (docs/memory.md). None for other runs or a message without those figures."""
    from planner.engine.memory import run_fragmentation_class
    from planner.engine.runtime_memory import STRANDED
    from planner.engine.setup import Setup
    from validation.spec import cluster_from_json

    f = cuda_oom_figures(m.error) if m.status == "oom" else None
    if not f or "reserved_unallocated_bytes" not in f or not f.get("capacity_bytes"):
        return None
    share = f["reserved_unallocated_bytes"] / f["capacity_bytes"]
    try:
        cls = run_fragmentation_class(cluster_from_json(m.cluster), Setup.model_validate(m.setup))
    except (ValueError, KeyError, TypeError):  # a record whose plan no longer parses: the figures alone
        return (f"at the failure (torch's message): {fmt_bytes(f['reserved_unallocated_bytes'])} reserved but "
                f"unallocated after the allocator's retry, {share:.1%} of the card")
    alloc = f" with {fmt_bytes(f['allocated_bytes'])} allocated" if "allocated_bytes" in f else ""
    return (f"at the failure (torch's message){alloc}: {fmt_bytes(f['reserved_unallocated_bytes'])} reserved but "
            f"unallocated after the allocator's retry, {share:.1%} of the card; eq. R3c's stranded share for the "
            f"{cls} class is at most {STRANDED[cls]:.1%}")


def _run_section(m: Measurement, out_dir: Path) -> list[str]:
    lines = [f"### {m.label}", ""]
    lines.append(f"- run `{m.run_id}`, rank {m.rank} of {m.world_size} ({m.launcher}), {m.started_at}")
    lines.append(f"- status **{m.status}**, reached `{m.reached}`" + (f": {m.error}" if m.error else ""))
    stranded = oom_stranded_line(m)
    if stranded:
        lines.append(f"- {stranded}")
    lines.append(f"- model {m.model}; plan for {m.cluster.get('gpus_per_node')}x{m.cluster.get('gpu')}"
                 f" ({m.cluster.get('nodes')} node(s)); setup: {_setup_short(m)}")
    lines.append(f"- device {m.device_name}" + (f" (profile {m.device_gpu})" if m.device_gpu else "")
                 + f"; data {m.data}; weights {m.weights}; {m.steps} timed steps after {m.warmup} warm-up")
    v = m.versions
    lines.append("- versions: " + ", ".join(f"{k} {v[k]}" for k in ("torch", "cuda", "driver", "transformers",
                                                                     "peft", "deepspeed", "bitsandbytes")
                                            if v.get(k)))
    if m.implementation:
        lines.append("- ran: " + "; ".join(f"{k}: {x}" for k, x in m.implementation.items()))
    if m.estimate is None:
        lines.append(f"- no estimate: {m.estimate_error}")
    else:
        lines.append(f"- estimate: peak phase {m.estimate['per_gpu']['peak_phase']}, {m.estimate['calibration']}")
    lines.append("")
    if m.status in ("ok", "oom"):
        lines += ["Peaks:", ""] + _table(peak_rows(m)) + [""]
        lines += ["Phases (tensor bytes; the estimate less framework overhead and allocator margin):", ""]
        lines += _table(phase_rows(m), what="phase") + [""]
        lines += ["By category at the peak (groups both sides can measure):", ""]
        lines += _table(category_rows(m), what="category") + [""]
        if m.inventory:
            lines += ["Model states (exact tensor inventory against the engine's model states at the same moment):", ""]
            lines += _table(inventory_rows(m), what="category") + [""]
        sr = speed_row(m)
        if sr.measured is not None:
            lines += _table([sr], fmt=lambda x: "n/a" if x is None else f"{x:,.0f}", what="speed") + [""]
        if m.step_times_s:
            lines.append("Step times (s): " + ", ".join(f"{t:.3f}" for t in m.step_times_s)
                         + f"; tokens per step {m.tokens_per_step:,} processed, {m.real_tokens_per_step or 0:,} real")
            lines.append("")
    figs = []
    for suffix, title in (("memory", "memory over time"), ("categories", "categories")):
        p = out_dir / FIG_DIR / f"{m.run_id}-r{m.rank}-{suffix}.png"
        if p.exists():
            figs.append(f"![{m.label} {title}]({FIG_DIR}/{p.name})")
    lines += figs + ([""] if figs else [])
    if m.profiled:
        files = [f"[memory timeline]({m.profiled.timeline_html})" if m.profiled.timeline_html else None,
                 f"[timeline data]({m.profiled.timeline_json})" if m.profiled.timeline_json else None,
                 f"[allocator snapshot]({m.profiled.snapshot}) (open in https://pytorch.org/memory_viz)"
                 if m.profiled.snapshot else None]
        lines.append("Files: " + ", ".join(f for f in files if f))
        lines.append("")
    for n in m.notes:
        if not n.startswith("traceback"):
            lines.append(f"> {n}")
    lines.append("")
    return lines


def render_report(ms: list[Measurement], out_dir: Path) -> str:
    counts: dict[str, int] = {}
    for m in ms:
        counts[m.status] = counts.get(m.status, 0) + 1
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = ["# Validation report", "",
             f"{len(ms)} run record(s) in `measurements.jsonl` ("
             + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f"); written {now} by `plan validate`.",
             "",
             "Estimated peaks are the engine's (uncalibrated) total less framework overhead and allocator margin, "
             "i.e. what `torch.cuda.max_memory_allocated` shows; on the CPU the measured figure is the peak of "
             "live tensor bytes seen by torch.profiler. Error = estimate / measured - 1.", "",
             "| run | device | status | est. peak | measured peak | error | est. tokens/s/GPU | tokens/s | error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in ms:
        pr = peak_rows(m)[0] if m.status in ("ok", "oom") else Row("", None, None)
        sr = speed_row(m)

        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:,.0f}"

        lines.append(f"| {m.label}{'' if m.rank == 0 else f' (rank {m.rank})'} | {m.device} | {m.status} | "
                     f"{fmt_bytes(pr.estimated)} | {fmt_bytes(pr.measured)} | {fmt_err(pr)} | {f(sr.estimated)} | "
                     f"{f(sr.measured)} | {fmt_err(sr)} |")
    lines.append("")
    if (out_dir / FIG_DIR / "summary.png").exists():
        lines += [f"![estimated vs measured peaks]({FIG_DIR}/summary.png)", ""]
    lines += ["Category groups: " + "; ".join(f"**{g}** = {' + '.join(e)}" + (f" (profiler: {', '.join(p)})" if p else "")
                                              for g, (e, p) in GROUPS.items()), ""]
    lines += ["## Runs", ""]
    for m in ms:
        lines += _run_section(m, out_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_report(out_dir: str | Path) -> Path:
    """Figures for every record, then ``report.md`` (written atomically)."""
    out = Path(out_dir)
    ms = read_measurements(out)
    figs = out / FIG_DIR
    for m in ms:
        if m.status not in ("ok", "oom"):
            continue
        memory_figure(m, out, figs / f"{m.run_id}-r{m.rank}-memory.png")
        category_figure(m, figs / f"{m.run_id}-r{m.rank}-categories.png")
    if ms:
        figs.mkdir(parents=True, exist_ok=True)
        summary_figure(ms, figs / "summary.png")
    path = out / REPORT_FILE
    atomic_write_text(path, render_report(ms, out))
    return path
