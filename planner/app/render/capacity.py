"""Rendering of capacity answers (:mod:`planner.search.capacity`): rows once, then a rich table, Markdown,
HTML, figures and the report folder (written by :func:`planner.fileio.write_files`, the one atomic writer).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import tempfile
from pathlib import Path
from typing import Any

from planner.fileio import write_files
from planner.units import gib, gib_num

# ---- rows: the one place answers become text ---------------------------------------------------------------


def _tok(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _seq(n: int | None, capped: bool = False) -> str:
    if n is None:
        return "none"
    return f"{n:,}" + ("*" if capped else "")


def _count(cluster: Any) -> str:
    """GPUs of a cluster, compact: ``8`` within a node, ``4x8`` for 4 nodes of 8."""
    return str(cluster.gpus_per_node) if cluster.nodes == 1 else f"{cluster.nodes}x{cluster.gpus_per_node}"


def cluster_rows(result: Any) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a cluster capacity; the last column is the fastest plan."""
    from planner.search.capacity import MAX_NODES, node_size

    head = ["model", "method", "fits", "peak GiB", "tokens/s", "max seq", "max mb", "GPUs",
            "fastest plan (or why nothing fits)"]
    rows = []
    for c in result.cells:
        p = c.plan
        fits = "yes" if p is not None else "no"
        peak = gib_num(p.memory.peak_bytes) if p else (f"({gib_num(c.min_peak_bytes)})" if c.min_peak_bytes else "-")
        mb = "-" if c.max_micro_batch is None else (f">= {c.max_micro_batch}" if c.max_micro_batch_capped else str(c.max_micro_batch))
        need = _count(c.needed.cluster) if c.needed else f"> {MAX_NODES}x{node_size(c.cluster)}"
        rows.append([
            c.model.name, c.method, fits, peak,
            _tok(p.speed.tokens_per_s if p else None), _seq(c.max_seq, c.max_seq_capped), mb, need,
            p.setup.short() if p else (c.note or "-"),
        ])
    return head, rows


def catalogue_rows(result: Any) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a catalogue capacity; the last column is the fastest plan."""
    head = ["method", "GPU", "GiB", "GPUs", "peak GiB", "tokens/s", "per GPU", "fastest plan (or why nothing fits)"]
    rows = []
    for m in result.methods:
        for r in result.ranked(m):
            n = r.needed
            rows.append([
                m, r.gpu.name, gib_num(r.gpu.memory_bytes, 0),
                _count(n.cluster) if n else "no fit",
                gib_num(n.plan.memory.peak_bytes if n else None),
                _tok(n.plan.speed.tokens_per_s if n else None),
                _tok(n.plan.speed.tokens_per_s_per_gpu if n else None),
                n.plan.setup.short() if n else (r.note or "-"),
            ])
    return head, rows


def _title(result: Any) -> str:
    if result.kind == "cluster":
        c = result.cluster
        return f"Capacity on {c.label()} ({gib(c.gpu.memory_bytes)} per GPU)"
    return f"GPUs needed for {result.model.name}"


def _notes(result: Any) -> list[str]:
    from planner.search.capacity import MAX_NODES, SEQ_STEP, node_size

    out = [
        f"sequence {result.seq_len} tokens; headroom {result.headroom:.0%} of each GPU's memory kept free; global "
        "batch 64 sequences (rounded to the data-parallel size), as `plan` uses",
        "fits: the planner accepts some plan (any sharding, offload, checkpointing, optimizer, loss kernel) "
        f"at {result.seq_len} tokens",
    ]
    if result.kind == "cluster":
        out += [
            "peak GiB, tokens/s (whole cluster), fastest plan: the plan `plan --method M` ranks first; "
            "(x) = the smallest peak per GPU when nothing fits",
            f"max seq: the longest multiple of {SEQ_STEP} tokens that fits with micro-batch 1 "
            "(* = the model's max positions stopped it, not memory)",
            f"max mb: the largest micro-batch that fits at {result.seq_len} tokens (searched up to 64)",
            f"GPUs: the fewest {result.cluster.gpu.name} that fit: 1, 2, 4, ... within a node of "
            f"{node_size(result.cluster)}, then whole nodes up to {MAX_NODES} (4x8 = 4 nodes of 8)",
        ]
    else:
        out += [
            f"GPUs: the fewest of each kind that fit: 1, 2, 4, ... within its typical node, then whole nodes up "
            f"to {MAX_NODES} (4x8 = 4 nodes of 8); peak GiB and tokens/s (whole cluster) of the fastest plan there",
            "rows of one method: fewest GPUs first, then fastest",
        ]
    from planner.app.track_record import track_record_line

    line = track_record_line(*_track_record_args(result))
    return out + ([line] if line else [])


def _track_record_args(result: Any) -> tuple:
    """The track record, the GPU family (one cluster; none when the report compares GPU kinds) and the headroom."""
    from planner.app.track_record import read_track_record

    return read_track_record(), result.cluster.gpu.family if result.kind == "cluster" else None, result.headroom


# ---- renderers ---------------------------------------------------------------------------------------------


def render_table(result: Any) -> None:
    """Two rich tables: the numbers (one line per row), then the fastest plan of each row."""
    from rich.console import Console
    from rich.table import Table

    from planner.app.render.fit import print_table

    head, rows = cluster_rows(result) if result.kind == "cluster" else catalogue_rows(result)
    console = Console()
    console.print(f"[bold]{_title(result)}[/]")
    for n in _notes(result):
        console.print(f"[dim]- {n}[/]")
    console.print()
    nums = Table(show_edge=False, pad_edge=False, header_style="bold")
    plans = Table(show_edge=False, pad_edge=False, header_style="bold", title="fastest plans",
                  title_justify="left")
    for i, h in enumerate(head[:-1]):
        nums.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
    plans.add_column(head[0], no_wrap=True)
    plans.add_column(head[1], no_wrap=True)
    plans.add_column(head[-1], overflow="fold")
    for i, r in enumerate(rows):
        last = i + 1 == len(rows) or rows[i + 1][0] != r[0]
        nums.add_row(*r[:-1], end_section=last)
        plans.add_row(r[0], r[1], r[-1], end_section=last)
    print_table(console, nums, keep=2)  # too wide for the figures: parts that repeat model and method
    console.print()
    print_table(console, plans, keep=2)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _provenance(argv: list[str] | None) -> str:
    from planner.app.version import tuneplan_version

    v = tuneplan_version()
    cmd = "plan capacity " + " ".join(argv or [])
    return f"tuneplan {v}, {_dt.date.today().isoformat()}: `{cmd.strip()}`"


def render_markdown(result: Any, figures: list[tuple[str, str]], argv: list[str] | None = None) -> str:
    head, rows = cluster_rows(result) if result.kind == "cluster" else catalogue_rows(result)
    parts = [f"# {_title(result)}", "", f"Generated by {_provenance(argv)}.", ""]
    parts += [f"- {n}" for n in _notes(result)] + [""]
    parts += [_md_table(head, rows), ""]
    for caption, name in figures:
        parts += [f"## {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(parts)


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}tr:hover td{background:#fafafa}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f4f4f4;padding:1px 4px}li{margin:.2em 0}"""


def render_html(result: Any, figures: list[tuple[str, str]], argv: list[str] | None = None) -> str:
    head, rows = cluster_rows(result) if result.kind == "cluster" else catalogue_rows(result)
    title = html.escape(_title(result))
    prov = html.escape(_provenance(argv)).replace("`", "")
    notes = "\n".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in _notes(result))
    figs = "\n".join(
        f'<h2>{html.escape(c)}</h2>\n<img src="{html.escape(n)}" alt="{html.escape(c)}">' for c, n in figures
    )
    return (
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>{HTML_STYLE}</style>"
        f"</head>\n<body>\n<h1>{title}</h1>\n<p>Generated by {prov}.</p>\n<ul>\n{notes}\n</ul>\n"
        f"{_html_table(head, rows)}\n{figs}\n</body></html>\n"
    )


# ---- figures -----------------------------------------------------------------------------------------------


def make_figures(result: Any, folder: Path) -> list[tuple[str, str]]:
    """Render the report's PNGs into ``folder``; returns (caption, file name) in report order."""
    from planner.app.render import figures as F
    from planner.search.capacity import MAX_NODES

    out: list[tuple[str, str]] = []
    if result.kind == "cluster":
        c = result.cluster
        frac = 1 - result.headroom
        cells = [x for x in result.cells if x.plan is not None]
        if cells:
            F.memory_breakdown(
                [(f"{x.model.name} · {x.method}", x.plan.memory.categories, c.gpu.memory_bytes) for x in cells],
                folder / "memory_breakdown.png",
                f"Memory per GPU of the fastest plan at {result.seq_len} tokens on {c.label()}", frac,
                groups=[x.model.name for x in cells],
            )
            out.append(("Memory per GPU by category (fastest plan of each model and method)", "memory_breakdown.png"))
        if result.curves:
            panels: dict[str, dict[str, list]] = {}
            for cv in result.curves:
                panels.setdefault(cv.model.name, {})[cv.method] = list(cv.points)
            F.memory_vs_seq(list(panels.items()), c.gpu.memory_bytes, result.usable_bytes,
                            folder / "memory_vs_seq.png",
                            f"Smallest peak per GPU versus sequence length (micro-batch 1) on {c.label()}")
            out.append(("Memory versus sequence length per method", "memory_vs_seq.png"))
        models = list(dict.fromkeys(x.model.name for x in result.cells))
        series = {m: [next((x.plan.speed.tokens_per_s for x in result.cells
                            if x.model.name == name and x.method == m and x.plan), None) for name in models]
                  for m in result.methods}
        F.grouped_barh(models, series, folder / "tokens_per_s.png",
                       f"Throughput of the fastest plan at {result.seq_len} tokens on {c.label()}",
                       "tokens/s, whole cluster (log scale)")
        out.append(("Tokens per second of each plan", "tokens_per_s.png"))
    else:
        gpus = [g.name for g in sorted({r.gpu.name: r.gpu for r in result.rows}.values(),
                                        key=lambda g: -g.memory_bytes)]
        by = {(r.gpu.name, r.method): r for r in result.rows}
        needed = {m: [by[(g, m)].needed.gpus if by[(g, m)].needed else None for g in gpus] for m in result.methods}
        F.grouped_barh(gpus, needed, folder / "gpus_needed.png",
                       f"Fewest GPUs that fit {result.model.name} at {result.seq_len} tokens",
                       "GPUs (log scale)", fmt="{:,.0f}", missing=f"> {MAX_NODES} nodes", log_base=2)
        out.append(("Fewest GPUs of each kind", "gpus_needed.png"))
        tps = {m: [by[(g, m)].needed.plan.speed.tokens_per_s if by[(g, m)].needed else None for g in gpus]
               for m in result.methods}
        F.grouped_barh(gpus, tps, folder / "tokens_per_s.png",
                       f"Throughput of the fastest plan on the fewest GPUs, {result.model.name}",
                       "tokens/s, whole cluster (log scale)", missing="does not fit")
        out.append(("Tokens per second on the fewest GPUs", "tokens_per_s.png"))
        for m in result.methods:
            rows = [r for r in result.ranked(m) if r.needed]
            if not rows:
                continue
            name = f"memory_breakdown_{m}.png"
            F.memory_breakdown(
                [(r.needed.cluster.label(), r.needed.plan.memory.categories, r.gpu.memory_bytes) for r in rows],
                folder / name, f"{result.model.name} · {m}: memory per GPU of the fastest plan on the fewest GPUs",
                1 - result.headroom,
            )
            out.append((f"Memory per GPU by category, {m}", name))
    return out


def write_report(result: Any, folder: Path, fmt: str, force: bool, argv: list[str] | None) -> Path:
    """The report, its figures and capacity.json, written atomically by :func:`planner.fileio.write_files`
    (a failure never leaves a half-written report). Figures are drawn into a scratch folder first."""
    with tempfile.TemporaryDirectory(prefix="tuneplan-figures-") as scratch:
        figs = make_figures(result, Path(scratch))
        files: dict[str, str | bytes] = {f: (Path(scratch) / f).read_bytes() for _, f in figs}
    name = "report.html" if fmt == "html" else "report.md"
    files[name] = render_html(result, figs, argv) if fmt == "html" else render_markdown(result, figs, argv)
    files["capacity.json"] = json.dumps(report_json(result), indent=2) + "\n"
    write_files(files, folder, force=force)
    return folder / name


def report_json(result: Any) -> dict:
    from planner.app.version import tuneplan_version

    from planner.app.track_record import track_record_json

    d = result.to_json()
    v = tuneplan_version()
    d["tuneplan_version"] = None if v == "unknown" else v
    d["track_record"] = track_record_json(*_track_record_args(result))
    return d


