"""``plan capacity``: what fits where. Tables on the terminal, JSON for scripts, a Markdown or HTML report
with figures under ``--out``.

The answers come from :mod:`planner.search.capacity` (pure); this module parses flags, shows progress, formats the
answers as rows once, and renders those rows as a rich table, Markdown or HTML.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, get_args

from planner.app.commands.common import add_headroom_arg, positive_float, positive_int
from planner.app.errors import CliError
from planner.app.render.capacity import render_html, render_markdown, render_table, report_json, write_report
from planner.engine.evaluate import DEFAULT_HEADROOM
from planner.fileio import check_output_folder
from profiles.errors import unknown_choice_message

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
    add_headroom_arg(g)
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
                raise CliError(unknown_choice_message("--method", m, valid))
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
        raise CliError(unknown_choice_message("--format", fmt, FORMATS))
    return fmt


def check_out(out: str | None, force: bool) -> Path | None:
    """The report folder: refuse a non-empty one without --force, and a path that is a file."""
    if out is None:
        return None
    return check_output_folder(out, force)


def command_line(args: argparse.Namespace) -> list[str]:
    """The flags this run was given, in a canonical order (for the report's provenance line)."""
    out: list[str] = []
    for flag in ("gpus", "model", "models", "seq", "headroom", "host_ram_gib", "inter_node_gb_s", "format"):
        v = getattr(args, flag, None)
        if v is None or (flag == "seq" and v == 2048) or (flag == "headroom" and v == DEFAULT_HEADROOM) or (flag == "format" and v == "table"):
            continue
        out += [f"--{flag.replace('_', '-')}", str(v)]
    if args.method:
        out += ["--method", ",".join(parse_methods(args.method))]
    return out


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
    from planner.app.calibration_io import load_calibration_book
    from planner.search import capacity as C
    from planner.search.rank import SearchError
    from profiles.cluster import parse_cluster
    from profiles.registry import all_gpus, get_model

    fmt = check_format(args.format)
    methods = parse_methods(args.method)
    if args.model is not None and args.models is not None:
        raise CliError("give --model M or --models LIST, not both")
    if args.gpus is None and args.model is None:
        raise CliError("give --gpus SPEC (what fits on it) or --model M without --gpus (which GPUs fit it)")
    out = check_out(args.out, args.force)
    if out is not None:
        from planner.app.render.figures import MissingMatplotlib, require_matplotlib

        try:
            require_matplotlib()
        except MissingMatplotlib as e:
            raise CliError(str(e)) from None

    book = load_calibration_book()
    try:
        if args.gpus is not None:
            cluster = parse_cluster(args.gpus, args.host_ram_gib, args.inter_node_gb_s)
            models = parse_models(args.model if args.model is not None else args.models)
            ctx, step = _progress_runner(len(models) * len(methods), "capacity")
            with ctx:
                result = C.capacity_for_cluster(models, cluster, methods, args.seq, args.headroom,
                                                calibration=book, curves=out is not None, progress=step)
        else:
            model = get_model(args.model)
            gpus = all_gpus()
            ctx, step = _progress_runner(len(gpus) * len(methods), f"{model.name} across {len(gpus)} GPUs")
            with ctx:
                result = C.capacity_across_gpus(model, gpus, methods, args.seq, args.headroom, calibration=book,
                                                host_ram_gib=args.host_ram_gib,
                                                inter_node_gb_s=args.inter_node_gb_s, progress=step)
    except SearchError as e:
        raise CliError(str(e)) from None

    argv = command_line(args)
    if fmt == "json":
        json.dump(report_json(result), sys.stdout, indent=2)
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
