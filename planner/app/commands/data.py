"""``plan data FILE --model M``: token counts, lengths, truncation, padding vs packing, from the user's data."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from planner.app.commands.common import positive_int, print_json
from planner.app.errors import CliError

NAME = "data"
HELP = "token counts, lengths, truncation, padding and packing of your training file"
DESCRIPTION = """Read a training file (JSONL, JSON or Parquet; alpaca, sharegpt, OpenAI messages or plain text),
tokenise it with the model's own tokenizer and chat template (offline: a local folder or the local Hugging Face
cache) and report what planning needs: rows, prompt and response tokens (the labels that train, with
train_on_prompt false and true), lengths with the --seq cut-off, rows it truncates, padding efficiency per
micro-batch under dynamic padding, packing efficiency and rows per pack, and the longest batch.

The counts are cached by the file's SHA-256, the tokenizer and the format ($TUNEPLAN_CACHE, else
$XDG_CACHE_HOME/tuneplan, else ~/.cache/tuneplan). `plan --dataset FILE` (and `plan estimate`, `plan configs`)
plan with these numbers.

examples:
  plan data train.jsonl --model qwen2.5-7b
  plan data train.jsonl --model llama3-8b --tokenizer ~/models/Meta-Llama-3-8B-Instruct --seq 4096
  plan data chats.parquet --model qwen2.5-7b --format sharegpt --micro-batch 1,4,16 --json
  plan data train.jsonl --model qwen2.5-7b --plot lengths.png
  plan data train.jsonl --model qwen2.5-7b --out reports/data --force
"""
DEFAULT_MICRO_BATCHES = (1, 2, 4, 8, 16)
"""Powers of two, the micro-batches the plan search tries first."""


def micro_batch_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers >= 1, e.g. 1,2,4, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers >= 1, e.g. 1,2,4, got {text!r}")
    return tuple(sorted(set(vals)))


def add_dataset_args(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """``--dataset`` (or the FILE argument), ``--tokenizer``, ``--format``, ``--chat-template``, ``--no-cache``."""
    g = parser.add_argument_group("dataset" if not positional else "tokenizer and format")
    if positional:
        parser.add_argument("file", metavar="FILE", help="training file: .jsonl, .json or .parquet")
    else:
        g.add_argument("--dataset", metavar="FILE",
                       help="your training file (.jsonl/.json/.parquet): plan with its measured token counts, padding "
                            "and packing (see plan data --help)")
    g.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer folder or hub id in the local HF cache (default: the model's hub id)")
    g.add_argument("--format", dest="data_format", default="auto", metavar="FMT",
                   help="auto | alpaca | sharegpt | openai | text (default: auto, from the first row's keys)")
    g.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the tokenizer's")
    g.add_argument("--no-cache", action="store_true", help="recount instead of reading the cached counts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_args(parser, positional=True)
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="model name or alias, config.json or folder: whose tokenizer counts (list: plan profiles models)")
    s = parser.add_argument_group("what to report")
    s.add_argument("--seq", type=positive_int, default=2048, metavar="N",
                   help="cut-off (sequence length) in tokens (default: 2048)")
    s.add_argument("--micro-batch", type=micro_batch_list, default=DEFAULT_MICRO_BATCHES, metavar="LIST",
                   help="micro-batch sizes for the padding table (default: 1,2,4,8,16)")
    s.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                   help="accumulation steps, for group_by_length's mega-batches (default: 1)")
    s.add_argument("--pad-multiple", type=positive_int, default=1, metavar="N",
                   help="collator pad_to_multiple_of (default: 1; LLaMA-Factory trains with 8)")
    o = parser.add_argument_group("output")
    o.add_argument("--plot", metavar="PNG", help="write the length histogram with the cut-off to this PNG file")
    o.add_argument("--out", metavar="DIR", help="write report.json, report.md and lengths.png into DIR")
    o.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    o.add_argument("--json", action="store_true", help="print the report as JSON")


def progress_callback(enabled: bool) -> tuple[Any, Any]:
    """A rich progress bar on stderr when it is a terminal: (context manager, callback) or (None, None)."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("tokenising"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
    task = prog.add_task("rows", total=None)

    def step(done: int, total: int | None) -> None:
        prog.update(task, completed=done, total=total)

    return prog, step


def read_counts(args: argparse.Namespace, model: Any, path: str, show_progress: bool = True):  # noqa: ANN201
    """Tokenise (or read the cached counts of) ``path`` for ``model``."""
    from planner.app.data_io import load_counts

    prog, step = progress_callback(show_progress)
    kw = dict(tokenizer=args.tokenizer, fmt=args.data_format, chat_template=args.chat_template,
              use_cache=not args.no_cache, progress=step)
    if prog is None:
        return load_counts(path, model, **kw)
    with prog:
        return load_counts(path, model, **kw)


def build_report(counts: Any, seq: int, micro_batches: tuple[int, ...], grad_accum: int = 1,
                 pad_multiple: int = 1) -> dict[str, Any]:
    """Every number ``plan data`` shows, as JSON-ready data (schema_version 1)."""
    from planner.engine import datastats as ds

    p, r = counts.prompt, counts.response
    full = [a + b for a, b in zip(p, r)]
    srt = sorted(full)
    kept = ds.kept_lengths(p, r, seq)
    tr = ds.truncation(p, r, seq)
    hist = ds.length_histogram(full, seq)
    padding = []
    for b in micro_batches:
        for pad in (ds.padding_random(kept, b, pad_multiple),
                    ds.padding_group_by_length(kept, b, grad_accum, pad_multiple)):
            padding.append({
                "micro_batch": b, "ordering": pad.ordering, "efficiency": pad.efficiency,
                "mean_padded_length": pad.mean_padded_length, "attention_length": pad.attention_length,
                "processed_tokens": pad.processed_tokens, "longest_batch_tokens": b * pad.longest_batch,
            })
    packing = []
    for packer in ds.PACKERS:
        pk = ds.pack(full, seq, packer)
        packing.append({"packer": packer, "capacity": pk.capacity, "packs": pk.packs, "rows": pk.rows,
                        "tokens": pk.tokens, "dropped_rows": pk.dropped, "efficiency": pk.efficiency,
                        "rows_per_pack": pk.rows_per_pack, "max_rows_per_pack": pk.max_rows_per_pack})
    longest = ds.round_up(max(kept), pad_multiple)
    return {
        "schema_version": 1,
        "file": counts.file,
        "format": counts.format,
        "format_detected": counts.format_detected,
        "tokenizer": counts.tokenizer,
        "cached": counts.cached,
        "rows": len(full),
        "tokens": {"total": sum(full), "prompt": sum(p), "response": sum(r)},
        "seq": seq,
        "labels": {"train_on_prompt_false": ds.trained_labels(p, r, seq, False),
                   "train_on_prompt_true": ds.trained_labels(p, r, seq, True)},
        "tokens_after_cutoff": sum(kept),
        "lengths": {"min": srt[0], "median": ds.quantile(srt, 0.5), "mean": sum(full) / len(full),
                    "p90": ds.quantile(srt, 0.9), "p99": ds.quantile(srt, 0.99), "max": srt[-1]},
        "truncation": {"rows": tr.rows, "tokens_lost": tr.tokens_lost, "response_tokens_lost": tr.response_tokens_lost},
        "histogram": {"edges": list(hist.edges), "counts": list(hist.counts)},
        "pad_multiple": pad_multiple,
        "grad_accum": grad_accum,
        "padding": padding,
        "packing": packing,
        "longest_batch": {"row_tokens": longest, "note": "without packing, the micro-batch holding the longest row is "
                          "padded to it: micro-batch x this many tokens sets the memory peak"},
        "orderings": dict(ds.ORDERINGS),
        "packers": dict(ds.PACKERS),
    }


def render_text(rep: dict[str, Any], width: int | None = None) -> str:
    """The human report (rich tables), as text."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=width or 100, force_terminal=False, color_system=None)
    t = rep["tokens"]
    fmt = rep["format"] + (" (detected)" if rep["format_detected"] else "")
    con.print(f"{Path(rep['file']).name}: {rep['rows']:,} rows, format {fmt}, tokenizer {rep['tokenizer']}"
              + (" (cached counts)" if rep["cached"] else ""))
    con.print(f"tokens: {t['total']:,} ({t['prompt']:,} prompt + {t['response']:,} response), "
              f"{t['total'] / rep['rows']:,.1f} per row")
    lab = rep["labels"]
    con.print(f"labels that train at --seq {rep['seq']}: {lab['train_on_prompt_false']:,} with train_on_prompt false "
              f"(default), {lab['train_on_prompt_true']:,} with true")
    ln = rep["lengths"]
    con.print(f"row length: min {ln['min']:,}, median {ln['median']:,}, mean {ln['mean']:,.1f}, p90 {ln['p90']:,}, "
              f"p99 {ln['p99']:,}, max {ln['max']:,}")
    tr = rep["truncation"]
    pct = tr["rows"] / rep["rows"]
    con.print(f"cut-off --seq {rep['seq']}: {tr['rows']:,} rows ({pct:.1%}) longer, {tr['tokens_lost']:,} tokens cut "
              f"({tr['response_tokens_lost']:,} of them response)")
    con.print(_text_histogram(rep))
    tab = Table(title=f"dynamic padding (pad_to_multiple_of {rep['pad_multiple']}): real / processed tokens",
                title_justify="left")
    for col in ("micro-batch", "ordering", "efficiency", "mean padded len", "longest batch (tokens)"):
        tab.add_column(col, justify="right" if col != "ordering" else "left")
    for row in rep["padding"]:
        tab.add_row(str(row["micro_batch"]), row["ordering"], f"{row['efficiency']:.1%}",
                    f"{row['mean_padded_length']:,.0f}", f"{row['longest_batch_tokens']:,}")
    con.print(tab)
    con.print("random: expected over shuffles, exact (HF Trainer / torchtune default); group_by_length: mean of 4 "
              "seeded shuffles of the HF Trainer's LengthGroupedSampler")
    tab = Table(title=f"packing into {rep['seq']}-token sequences", title_justify="left")
    for col in ("packer", "packs", "efficiency", "rows/pack", "max rows", "dropped rows"):
        tab.add_column(col, justify="left" if col == "packer" else "right")
    for row in rep["packing"]:
        tab.add_row(row["packer"], f"{row['packs']:,}", f"{row['efficiency']:.1%}", f"{row['rows_per_pack']:.2f}",
                    str(row["max_rows_per_pack"]), f"{row['dropped_rows']:,}")
    con.print(tab)
    for k, v in rep["packers"].items():
        con.print(f"  {k}: {v}")
    con.print(f"longest batch without packing: micro-batch x {rep['longest_batch']['row_tokens']:,} tokens "
              "(the memory peak; plan --dataset uses it)")
    return buf.getvalue()


def _text_histogram(rep: dict[str, Any], width: int = 40) -> str:
    edges, counts, seq = rep["histogram"]["edges"], rep["histogram"]["counts"], rep["seq"]
    top = max(counts) or 1
    lines = ["length histogram (rows per bin; | marks the cut-off bin):"]
    for i, c in enumerate(counts):
        if not c and not (edges[i] <= seq < edges[i + 1]):
            continue
        mark = " |cut-off" if edges[i] <= seq < edges[i + 1] else ""
        lines.append(f"  {edges[i]:>7,}-{edges[i + 1] - 1:<7,} {'#' * max(1 if c else 0, round(width * c / top)):<{width}} "
                     f"{c:,}{mark}")
    return "\n".join(lines)


def render_markdown(rep: dict[str, Any]) -> str:
    return ("# Dataset report\n\n```\n" + render_text(rep, width=110) + "```\n\n![lengths](lengths.png)\n")


def run(args: argparse.Namespace) -> int:
    import json

    from planner.app.render.data_figures import length_histogram_png
    from profiles.registry import get_model

    if args.out and args.plot:
        raise CliError("--plot and --out both write the figure; choose one (--out writes lengths.png)")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot!r}: give a .png file name")
    if args.out:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
            raise CliError(f"--out {out} exists and is not an empty folder; pass --force to replace it")
    model = get_model(args.model)
    counts = read_counts(args, model, args.file, show_progress=not args.json)
    rep = build_report(counts, args.seq, args.micro_batch, args.grad_accum, args.pad_multiple)
    if args.plot:
        png = length_histogram_png(rep)
        _write_atomic(Path(args.plot), png)
    if args.out:
        from planner.fileio import write_files

        files: dict[str, str | bytes] = {"report.json": json.dumps(rep, indent=2) + "\n",
                                         "report.md": render_markdown(rep), "lengths.png": length_histogram_png(rep)}
        write_files(files, args.out, force=args.force)
    if args.json:
        print_json(rep)
    else:
        sys.stdout.write(render_text(rep))
        if args.plot:
            sys.stdout.write(f"wrote {args.plot}\n")
        if args.out:
            sys.stdout.write(f"wrote report.json, report.md, lengths.png to {args.out}\n")
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    from profiles.atomic import write_atomic

    if path.parent and not path.parent.exists():
        raise CliError(f"--plot {path}: folder {path.parent} does not exist")
    try:
        write_atomic(path, data)
    except OSError as e:
        raise CliError(f"cannot write --plot {path}: {e.strerror or e}") from None


def dataset_from_args(args: argparse.Namespace, model: Any):  # noqa: ANN201
    """The :class:`planner.engine.dataset.DatasetShape` of ``--dataset`` (None without it), for plan / estimate / configs."""
    path = getattr(args, "dataset", None)
    if not path:
        for flag in ("tokenizer", "chat_template"):
            if getattr(args, flag, None):
                raise CliError(f"--{flag.replace('_', '-')} needs --dataset FILE")
        return None
    from planner.app.data_io import dataset_shape

    return dataset_shape(read_counts(args, model, path, show_progress=not getattr(args, "json", False)))
