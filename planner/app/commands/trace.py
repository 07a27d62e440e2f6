"""``plan trace``: exact tensor memory of one setup, from the real model code on fake tensors (no GPU)."""

from __future__ import annotations

from planner.units import gib_num

import argparse

from planner.app.commands.common import (
    add_output_args,
    add_setup_args,
    add_target_args,
    positive_int,
    print_json,
    resolve_target,
    setup_from_args,
)
from planner.app.errors import CliError

NAME = "trace"
HELP = "exact tensor memory of one setup: the real model code on fake tensors, no GPU"
DESCRIPTION = """\
Build the model from its config with transformers on fake tensors (no weights, no download), apply the setup
(precision recipe, LoRA / DoRA / freeze, activation checkpointing, attention, loss, optimizer), run training
steps under torch's FakeTensorMode on the CPU and count every live tensor: bytes per category and the peak
of each phase (after load, forward, backward, optimizer step) for one GPU rank. ZeRO / FSDP shares are
applied by dividing the traced model states per the stage rules. The output has the shape of
`plan estimate`, so the two can be diffed. Parts a CPU cannot run (QLoRA's NF4 kernels, 8-bit optimizers,
FlashAttention-2, Liger) are traced with a named substitute, listed in the output.

Needs torch and transformers (and peft for LoRA): pip install 'tuneplan[validate]'.

examples:
  plan trace --model llama3-8b --gpus A800 --seq 2048
  plan trace --model qwen2.5-7b --gpus 8xA800 --zero 3 --checkpointing full --micro-batch 4
  plan trace --model qwen2.5-7b --gpus 4090 --method lora --json > trace.json
  plan estimate --model qwen2.5-7b --gpus 4090 --method lora --json > estimate.json   # then diff
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    add_setup_args(parser, search=False)
    g = parser.add_argument_group("trace")
    g.add_argument("--steps", type=positive_int, default=2, metavar="N",
                   help="training steps to trace (default: 2; the second shows the steady state with "
                        "optimizer states allocated)")
    g.add_argument("--adam-impl", choices=["fused", "foreach", "for-loop"], default="fused",
                   help="torch AdamW implementation (default: fused, the HF Trainer's adamw_torch_fused; "
                        "foreach is torch's own default on CUDA and holds temporaries for every parameter)")
    g.add_argument("--layers", type=positive_int, default=None, metavar="N",
                   help="trace a model with only N blocks (huge MoE models); the output says so")
    g.add_argument("--detail", action="store_true",
                   help="also show every phase of every step (JSON: an extra 'trace' key)")
    add_output_args(parser)


def run(args: argparse.Namespace) -> int:
    model, cluster = resolve_target(args)
    if cluster is None:
        raise CliError("--gpus is required, e.g. --gpus A800 or --gpus 8xH100")
    setup = setup_from_args(args, cluster, model)
    import validation.trace as vt  # torch-free; torch itself is imported only when the trace runs

    try:
        vt.require_torch(peft=setup.method in ("lora", "qlora"))
    except vt.TraceUnavailable as e:
        raise CliError(str(e)) from None
    if not model.transformers_buildable:
        raise CliError(f"{model.name} cannot be traced: {model.not_buildable_reason}; "
                       "use plan estimate for it")
    if args.layers is not None and args.layers > model.num_layers:
        raise CliError(f"--layers {args.layers} exceeds {model.name}'s {model.num_layers} layers; "
                       f"use a number up to {model.num_layers}")

    try:
        result = _trace_with_progress(vt, model, cluster, setup, args)
    except vt.NotTraceable as e:
        raise CliError(str(e).splitlines()[0]) from None
    if args.json:
        print_json(result.to_json(detail=args.detail))
    else:
        _print_tables(result, args.detail)
    return 0


def _trace_with_progress(vt, model, cluster, setup, args):  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("tracing {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(f"{model.name}: building", total=None)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{model.name}: {label}")

        return vt.trace_memory(model, cluster, setup, steps=args.steps, adam_impl=args.adam_impl,
                               num_layers=args.layers, progress=progress)




def _print_tables(result, detail: bool) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from planner.app.render.fit import print_table
    from planner.engine.results import CATEGORIES, PHASES

    est = result.estimate
    console = Console()
    title = (f"{est.model} on {est.gpu} · {est.setup.recipe} · {est.setup.short()} · "
             f"seq {est.setup.seq_len} · traced")
    t = Table(title=title, title_justify="left")
    t.add_column("per GPU, at the peak", overflow="fold")
    t.add_column("GiB", justify="right", no_wrap=True)
    t.add_column("share", justify="right", no_wrap=True)
    peak = est.peak_bytes or 1
    for k in CATEGORIES:
        v = est.categories[k]
        if v >= 2**20 or k in ("framework_overhead", "allocator_margin"):  # hide RoPE buffers and the like
            t.add_row(k, gib_num(v), f"{100 * v / peak:.1f} %")
    t.add_row(f"[bold]peak ({est.peak_phase})[/bold]", f"[bold]{gib_num(est.peak_bytes)}[/bold]", "")
    cap = est.capacity_bytes
    t.add_row("capacity", gib_num(cap), "fits" if est.fits else "[red]does not fit[/red]")
    print_table(console, t)

    steps = sorted({r.step for r in result.records})
    p = Table(title="peak of each phase (GiB)", title_justify="left")
    p.add_column("phase", overflow="fold")
    for s in steps:
        p.add_column(f"step {s}", justify="right", no_wrap=True)
    for ph in PHASES:
        cells = []
        for s in steps:
            vals = [r.peak_bytes for r in result.records if r.step == s and _phase_name(r.phase) == ph]
            cells.append(gib_num(max(vals)) if vals else "-")
        p.add_row(ph, *cells)
    print_table(console, p)
    if detail:
        d = Table(title="categories at each phase's peak, last step (GiB)", title_justify="left")
        d.add_column("category", overflow="fold")
        recs = result.phase_records()
        for r in recs:
            d.add_column(_phase_name(r.phase), justify="right", no_wrap=True)
        for k in CATEGORIES:
            if any(r.categories.get(k) for r in recs):
                d.add_row(k, *[gib_num(r.categories.get(k, 0)) for r in recs])
        print_table(console, d)
    if est.host_bytes:
        console.print(f"host RAM per node: {gib_num(est.host_bytes)} GiB "
                      + ", ".join(f"{k} {gib_num(v)}" for k, v in est.host_categories.items()))
    for line in est.assumptions:
        console.print(f"- {line}", highlight=False, soft_wrap=True)
    console.print(f"traced in {result.seconds:.1f} s ({result.ops:,} ops; {est.calibration})", highlight=False)


def _phase_name(phase: str) -> str:
    from validation.trace.plan import PHASE_OF

    return PHASE_OF[phase]
