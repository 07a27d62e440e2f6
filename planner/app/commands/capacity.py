"""``plan capacity``: what fits where. Tables on the terminal, JSON for scripts, a Markdown or HTML report
with figures under ``--out``.

The answers come from :mod:`planner.search.capacity` (pure); this module parses flags, shows progress, formats the
answers as rows once, and renders those rows as a rich table, Markdown or HTML.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import html
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, get_args

from planner.app.commands.common import positive_float, positive_int
from planner.app.errors import CliError

NAME = "capacity"
HELP = "what fits where: longest sequence, largest micro-batch, fewest GPUs; reports with figures"
DESCRIPTION = """What fits where. With --gpus: for each model and method, whether it fits at --seq on that
cluster, the longest sequence (multiples of 256, micro-batch 1) and the largest micro-batch (at --seq) that
fit, and the fewest GPUs of that kind that fit it. With --model and no --gpus: how many of which GPU the model
needs, across the whole GPU catalogue. Any plan the planner would accept counts as a fit (any sharding,
offload, checkpointing, optimizer), with the same headroom and global batch as `plan`.

examples:
  plan capacity --gpus 8xA800
  plan capacity --gpus 4090 --models qwen2.5-7b,llama3.1-8b --method lora,qlora
  plan capacity --gpus h100 --format json
  plan capacity --gpus 8xH100 --out reports/h100 --format html
  plan capacity --model llama3.1-70b
"""

FORMATS = ("table", "md", "html", "json")
GIB = 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to answer")
    g.add_argument("--gpus", metavar="SPEC",
                   help="cluster: 8xA800, 2x8xH100, 4090 (omit with --model: every GPU in the catalogue)")
    g.add_argument("--models", metavar="LIST",
                   help="comma list of models (default: llama3.2-1b, llama3.2-3b, qwen2.5-7b, llama3.1-8b, "
                        "qwen3-14b, qwen2.5-32b, llama3.1-70b)")
    g.add_argument("--model", metavar="MODEL",
                   help="one model; without --gpus: how many of which GPU it needs, across the catalogue")
    g.add_argument("--method", action="append", metavar="LIST",
                   help="full, lora, qlora, freeze; repeat or comma-separate (default: full,lora,qlora)")
    g.add_argument("--seq", type=positive_int, default=2048, metavar="N",
                   help="sequence length for 'fits', the micro-batch and the GPU count (default: 2048)")
    g.add_argument("--headroom", type=float, default=0.10, metavar="F",
                   help="fraction of GPU memory kept free, in (0, 0.9) (default: 0.10)")
    g.add_argument("--host-ram-gib", type=positive_float, metavar="GIB",
                   help="host RAM per node (default: each GPU profile's typical server)")
    g.add_argument("--inter-node-gb-s", type=positive_float, metavar="GB_S",
                   help="inter-node bandwidth per node, GB/s (default: each GPU profile's)")
    o = parser.add_argument_group("output")
    o.add_argument("--format", default="table", metavar="FMT",
                   help="table | md | html | json on stdout; with --out, md or html picks the report's format "
                        "(default: table; the report is Markdown unless --format html)")
    o.add_argument("--out", metavar="DIR",
                   help="write report.md or report.html, its PNG figures and capacity.json into DIR "
                        "(needs matplotlib: pip install 'tuneplan[reports]')")
    o.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")


# ---- argument checks ---------------------------------------------------------------------------------------


def _hint(value: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_methods(values: list[str] | None) -> tuple[str, ...]:
    from planner.search.capacity import DEFAULT_METHODS
    from planner.engine.setup import Method

    if values is None:
        return DEFAULT_METHODS
    valid = get_args(Method)
    out: list[str] = []
    for v in values:
        for m in _split(v):
            if m not in valid:
                raise CliError(f"unknown --method {m!r}{_hint(m, valid)} (valid: {', '.join(valid)})")
            if m not in out:
                out.append(m)
    if not out:
        raise CliError(f"empty --method list; give one or more of {', '.join(valid)}, e.g. --method lora,qlora")
    return tuple(out)


def parse_models(text: str | None) -> list:
    from planner.search.capacity import DEFAULT_MODELS
    from profiles.registry import get_model

    if text is None:
        names = list(DEFAULT_MODELS)
    else:
        names = _split(text)
        if not names:
            raise CliError("empty --models list; give a comma list, e.g. --models llama3.1-8b,qwen2.5-7b")
    models, seen = [], set()
    for n in names:
        m = get_model(n)  # unknown names raise ProfileError with did-you-mean
        if m.name not in seen:
            seen.add(m.name)
            models.append(m)
    return models


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise CliError(f"unknown --format {fmt!r}{_hint(fmt, FORMATS)} (valid: {', '.join(FORMATS)})")
    return fmt


def check_out(out: str | None, force: bool) -> Path | None:
    """The report folder: refuse a non-empty one without --force, and a path that is a file."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CliError(f"--out {out!r} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise CliError(f"--out {out!r} exists and is not empty; pass --force to replace it or pick a new folder")
    return path


# ---- rows: the one place answers become text ---------------------------------------------------------------


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / GIB:,.1f}"


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
        peak = _gib(p.memory.peak_bytes) if p else (f"({_gib(c.min_peak_bytes)})" if c.min_peak_bytes else "-")
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
                m, r.gpu.name, f"{r.gpu.memory_bytes / GIB:,.0f}",
                _count(n.cluster) if n else "no fit",
                _gib(n.plan.memory.peak_bytes if n else None),
                _tok(n.plan.speed.tokens_per_s if n else None),
                _tok(n.plan.speed.tokens_per_s_per_gpu if n else None),
                n.plan.setup.short() if n else (r.note or "-"),
            ])
    return head, rows


def _title(result: Any) -> str:
    if result.kind == "cluster":
        c = result.cluster
        return f"Capacity on {c.label()} ({c.gpu.memory_bytes / GIB:,.1f} GiB per GPU)"
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
    return out


# ---- renderers ---------------------------------------------------------------------------------------------


def render_table(result: Any) -> None:
    """Two rich tables: the numbers (one line per row), then the fastest plan of each row."""
    from rich.console import Console
    from rich.table import Table

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
    plans.add_column(head[-1])
    for i, r in enumerate(rows):
        last = i + 1 == len(rows) or rows[i + 1][0] != r[0]
        nums.add_row(*r[:-1], end_section=last)
        plans.add_row(r[0], r[1], r[-1], end_section=last)
    console.print(nums)
    console.print()
    console.print(plans)


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


def command_line(args: argparse.Namespace) -> list[str]:
    """The flags this run was given, in a canonical order (for the report's provenance line)."""
    out: list[str] = []
    for flag in ("gpus", "model", "models", "seq", "headroom", "host_ram_gib", "inter_node_gb_s", "format"):
        v = getattr(args, flag, None)
        if v is None or (flag == "seq" and v == 2048) or (flag == "headroom" and v == 0.10) or (flag == "format" and v == "table"):
            continue
        out += [f"--{flag.replace('_', '-')}", str(v)]
    if args.method:
        out += ["--method", ",".join(parse_methods(args.method))]
    return out


def _provenance(argv: list[str] | None) -> str:
    try:
        from importlib.metadata import version

        v = version("tuneplan")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        v = "unknown"
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
    """Write report, figures and capacity.json into a temporary folder beside ``folder``, then move it into
    place, so a failure never leaves a half-written report."""
    folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the report folder gets the usual mode
    try:
        figs = make_figures(result, tmp)
        name = "report.html" if fmt == "html" else "report.md"
        text = render_html(result, figs, argv) if fmt == "html" else render_markdown(result, figs, argv)
        (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "capacity.json").write_text(json.dumps(_json(result), indent=2) + "\n", encoding="utf-8")
        old = None
        if folder.exists():
            if any(folder.iterdir()) and not force:
                raise CliError(f"--out {str(folder)!r} exists and is not empty; pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / "x")
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / name


def _json(result: Any) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    d = result.to_json()
    try:
        d["tuneplan_version"] = version("tuneplan")
    except PackageNotFoundError:
        d["tuneplan_version"] = None
    return d


# ---- run ---------------------------------------------------------------------------------------------------


def _progress_runner(total: int, description: str) -> tuple[Any, Callable[[str], None] | None]:
    """A rich progress bar on stderr when stderr is a terminal (a no-op context otherwise)."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        return nullcontext(), None
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[item]}"), TimeElapsedColumn(), console=console, transient=True)
    task = prog.add_task(description, total=total, item="")

    def step(label: str) -> None:
        prog.update(task, advance=1, item=label)

    return prog, step


def run(args: argparse.Namespace) -> int:
    from planner.search import capacity as C
    from planner.search.rank import SearchError
    from profiles.cluster import parse_cluster
    from profiles.registry import all_gpus, get_model

    fmt = check_format(args.format)
    methods = parse_methods(args.method)
    if not 0 < args.headroom < 0.9:
        raise CliError(f"--headroom {args.headroom} is outside (0, 0.9); e.g. --headroom 0.1 keeps 10 % free")
    if args.model and args.models:
        raise CliError("give --model M or --models LIST, not both")
    if not args.gpus and not args.model:
        raise CliError("give --gpus SPEC (what fits on it) or --model M without --gpus (which GPUs fit it)")
    out = check_out(args.out, args.force)
    if out is not None:
        from planner.app.render.figures import MissingMatplotlib, require_matplotlib

        try:
            require_matplotlib()
        except MissingMatplotlib as e:
            raise CliError(str(e)) from None

    try:
        if args.gpus:
            cluster = parse_cluster(args.gpus, args.host_ram_gib, args.inter_node_gb_s)
            models = parse_models(args.model or args.models)
            ctx, step = _progress_runner(len(models) * len(methods), "capacity")
            with ctx:
                result = C.capacity_for_cluster(models, cluster, methods, args.seq, args.headroom,
                                                curves=out is not None, progress=step)
        else:
            model = get_model(args.model)
            gpus = all_gpus()
            ctx, step = _progress_runner(len(gpus) * len(methods), f"{model.name} across {len(gpus)} GPUs")
            with ctx:
                result = C.capacity_across_gpus(model, gpus, methods, args.seq, args.headroom,
                                                host_ram_gib=args.host_ram_gib,
                                                inter_node_gb_s=args.inter_node_gb_s, progress=step)
    except SearchError as e:
        raise CliError(str(e)) from None

    argv = command_line(args)
    if fmt == "json":
        json.dump(_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif fmt == "md" and out is None:
        sys.stdout.write(render_markdown(result, [], argv))
    elif fmt == "html" and out is None:
        sys.stdout.write(render_html(result, [], argv))
    elif fmt == "table":
        render_table(result)
    if out is not None:
        path = write_report(result, out, fmt, args.force, argv)
        print(f"wrote {path} and its figures", file=sys.stderr if fmt == "json" else sys.stdout)
    return 0
