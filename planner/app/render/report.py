"""Rendering: rich tables for the terminal. Formats what the engine computed; never recomputes.

GiB means 2**30 bytes everywhere here; conversions happen only in this layer.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from planner.engine.results import CATEGORIES, PHASES, MemoryEstimate, Plan, SpeedEstimate
from planner.engine.evaluate import DEFAULT_HEADROOM, usable_bytes

from planner.app.render.fit import print_table
from planner.units import gib_num as gib


def _bar(frac: float, width: int = 24) -> str:
    n = max(0, min(width, round(frac * width)))
    return "█" * n + "·" * (width - n)


def memory_table(est: MemoryEstimate, title: str | None = None, bar_width: int = 24) -> Table:
    """Per-GPU bytes by category at the peak, with a bar each (``bar_width`` characters, none at 0), then the
    phases. The figure columns never shrink (:mod:`planner.app.render.fit`)."""
    peak = est.peak_bytes
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("per GPU at the peak", style="bold", no_wrap=False, overflow="fold")
    t.add_column("GiB", justify="right", no_wrap=True)
    t.add_column("share", justify="right", no_wrap=True)
    if bar_width:
        t.add_column("", no_wrap=True)
    bar = (lambda f: (_bar(f, bar_width),)) if bar_width else (lambda f: ())
    for k in CATEGORIES:
        v = est.categories[k]
        if v == 0:
            continue
        t.add_row(k.replace("_", " "), gib(v), f"{v / peak:5.1%}", *bar(v / peak))
    style = "green" if est.fits else "red"
    t.add_row(
        Text("peak (" + est.peak_phase.replace("_", " ") + ") of the GPU's " + gib(est.capacity_bytes) + " GiB",
             style=style),
        Text(gib(peak), style=style),
        Text(f"{peak / est.capacity_bytes:5.1%}", style=style),
        *(Text(b, style=style) for b in bar(peak / est.capacity_bytes)),
        end_section=True,
    )
    for ph in PHASES:
        t.add_row(Text(ph.replace("_", " "), style="dim"), Text(gib(est.phases[ph]), style="dim"), "",
                  *([""] if bar_width else []))
    return t


def _bar_width(console: Console) -> int:
    """The bars take what the figures leave of the line, up to 24 characters (none below 8)."""
    w = min(24, console.width - 50)
    return w if w >= 8 else 0


def host_table(est: MemoryEstimate) -> Table:
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("host RAM per node", style="bold", overflow="fold")
    t.add_column("GiB", justify="right", no_wrap=True)
    for k, v in est.host_categories.items():
        if v:
            t.add_row(k.replace("_", " "), gib(v))
    t.add_row(Text("total", style="bold"), Text(gib(est.host_bytes), style="bold"))
    return t


def speed_table(sp: SpeedEstimate) -> Table:
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("speed", style="bold", overflow="fold")
    t.add_column("value", justify="right", no_wrap=True)
    t.add_row("step time", f"{sp.step_s:,.3f} s")
    for k, v in sp.breakdown_s.items():
        t.add_row(f"  {k}", f"{v:,.3f} s")
    t.add_row("tokens/s (cluster)", f"{sp.tokens_per_s:,.0f}")
    t.add_row("tokens/s per GPU", f"{sp.tokens_per_s_per_gpu:,.0f}")
    t.add_row("MFU", f"{sp.mfu:.1%}")
    t.add_row(f"efficiency used ({sp.calibration})", f"{sp.efficiency:.0%} of peak")
    return t


def render_estimate(
    console: Console, est: MemoryEstimate, speed: SpeedEstimate | None, host_capacity_bytes: int | None = None,
    track_record: str | None = None,
) -> None:
    """One setup in full; ``track_record``: the engine's errors against published runs
    (:func:`planner.app.track_record.track_record_line`), printed under the verdict."""
    s = est.setup
    head = (
        f"[bold]{est.model}[/] on [bold]{est.nodes}x{est.gpus_per_node}x{est.gpu}[/]"
        if est.nodes > 1
        else f"[bold]{est.model}[/] on [bold]{est.gpus_per_node}x{est.gpu}[/]"
    )
    console.print(head + f"  ·  {s.short()}  ·  seq {s.seq_len}")
    console.print(f"recipe [bold]{s.recipe}[/]  ·  {est.calibration}")
    print_table(console, memory_table(est, bar_width=_bar_width(console)))
    console.print()
    print_table(console, host_table(est))
    if speed is not None:
        console.print()
        print_table(console, speed_table(speed))
    verdict = "[green]fits[/]" if est.fits else "[red]does not fit[/]"
    console.print(f"\n{verdict}: peak {gib(est.peak_bytes)} GiB of {gib(est.capacity_bytes)} GiB per GPU")
    if est.allocated_peak_bytes:
        console.print(
            f"  estimated as torch reports it: max_memory_allocated {gib(est.allocated_peak_bytes)} GiB, "
            f"max_memory_reserved {gib(est.reserved_peak_bytes)} GiB; nvidia-smi {gib(est.peak_bytes)} GiB "
            "(reserved + CUDA context + NCCL)"
        )
    left = est.capacity_bytes - est.peak_bytes
    if est.fits and est.peak_bytes > usable_bytes(est.capacity_bytes, DEFAULT_HEADROOM):
        capped = " (the reserved figure is capped at the card: it fits only after the allocator frees its cache and " \
                 f"retries, eq. R3; {gib(est.retry_floor_bytes)} GiB stays held then, eq. R3c)" \
            if left <= 0 else ""
        console.print(
            f"  [yellow]tight[/]: {gib(max(0, left))} GiB ({max(0, left) / est.capacity_bytes * 100:.1f} %) of the card "
            f"left{capped}, less than plan's default {DEFAULT_HEADROOM * 100:.0f} % headroom: a margin this small is within the "
            "engine's error against published runs, which the default headroom covers (docs/accuracy.md, \"What the "
            "headroom buys\")"
        )
    if est.peak_bytes <= est.capacity_bytes < est.retry_floor_bytes:
        console.print(
            f"  [red]out of memory through fragmentation[/]: when the allocator frees its cache and retries, "
            f"{gib(est.retry_floor_bytes)} GiB stays held (tensors + fragments in segments that still hold live "
            "tensors, eq. R3c), more than the card"
        )
    if track_record:
        console.print(f"  [dim]{track_record}[/]")
    if host_capacity_bytes is not None and est.host_bytes > host_capacity_bytes:
        console.print(
            f"[red]host RAM short[/]: needs {gib(est.host_bytes)} GiB per node, the node has "
            f"{gib(host_capacity_bytes)} GiB (--host-ram-gib)"
        )
    console.print("[dim]assumptions:[/]")
    for a in est.assumptions:
        console.print(f"[dim]  - {a}[/]")
    if speed is not None and speed.assumptions:
        console.print("[dim]speed assumptions:[/]")
        for a in speed.assumptions:
            console.print(f"[dim]  - {a}[/]")


def plans_table(plans: list[Plan]) -> Table:
    t = Table(show_edge=False, pad_edge=False, header_style="bold")
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("plan: method, sharding, offload, ckpt, micro x accum, optimizer", overflow="fold")
    t.add_column("peak GiB", justify="right", no_wrap=True)
    t.add_column("tokens/s", justify="right", no_wrap=True)
    t.add_column("MFU", justify="right", no_wrap=True)
    for p in plans:
        t.add_row(
            str(p.rank),
            p.setup.compact(),
            gib(p.memory.peak_bytes),
            f"{p.speed.tokens_per_s:,.0f}",
            f"{p.speed.mfu:.0%}",
        )
    return t


def breakdown_row_table(plans: list[Plan]) -> Table:
    """GiB per category for each plan side by side."""
    t = Table(show_edge=False, pad_edge=False, header_style="bold", title="memory per GPU at the peak (GiB)", title_justify="left")
    t.add_column("category", overflow="fold")
    for p in plans:
        t.add_column(f"#{p.rank}", justify="right", no_wrap=True)
    for k in CATEGORIES:
        vals = [p.memory.categories[k] for p in plans]
        if not any(vals):
            continue
        t.add_row(k.replace("_", " "), *[gib(v) for v in vals])
    return t


def render_search(console: Console, result, explain: bool = False, train_time=None,  # noqa: ANN001
                  track_record: str | None = None, caveat=None) -> None:  # noqa: ANN001
    """The ranked plans; ``train_time(plan)`` -> TrainTime | None adds the time to train to each panel;
    ``track_record`` (:func:`planner.app.track_record.track_record_line`) follows the notes; ``caveat(plan)`` ->
    str | None (:func:`planner.app.track_record.class_bias_note`) ends a plan's panel."""
    m, c = result.model, result.cluster
    console.print(f"[bold]{m.name}[/] on [bold]{c.label()}[/] ({gib(c.gpu.memory_bytes)} GiB each)")
    for n in result.notes:
        console.print(f"[dim]{n}[/]")
    if track_record:
        console.print(f"[dim]{track_record}[/]")
    if not result.plans:
        console.print("\n[red bold]no plan fits[/]")
        for s in result.suggestions:
            console.print(f"  - {s}")
    else:
        console.print()
        print_table(console, plans_table(result.plans))
        console.print()
        print_table(console, breakdown_row_table(result.plans))
        for p in result.plans:
            body = [f"[bold]{p.setup.short()}[/]  recipe {p.setup.recipe}"]
            body += [f"• {r}" for r in p.reasons]
            if train_time is not None:
                tt = train_time(p)
                if tt is not None:
                    body.append(f"• {tt}")
            note = caveat(p) if caveat is not None else None
            if note:
                body.append(f"• [yellow]{note}[/]")
            console.print(Panel("\n".join(body), title=f"plan {p.rank}", title_align="left", expand=False))
    if explain and result.rejected:
        t = Table(title="rejected candidates", title_justify="left", show_edge=False, pad_edge=False)
        t.add_column("setup", overflow="fold")
        t.add_column("reason", overflow="fold")
        for r in result.rejected:
            t.add_row(candidate_label(r.setup), r.reason)
        print_table(console, t)
    elif result.rejected:
        console.print(f"[dim]{len(result.rejected)} candidates did not fit (--explain lists them)[/]")


def candidate_label(setup) -> str:  # noqa: ANN001
    """A rejected candidate's row label: the plan's short label and its precision recipe, so that candidates
    differing only in the recipe (hf-amp / bf16) are told apart; with every dimension the search varies
    (method, sharding, offload, checkpointing, micro-batch x accumulation, optimizer, loss, recipe) and, where
    the recipe book sets them, the trainer and torch.compile (a torchtune and a torchtitan bundle can otherwise
    share every other setting)."""
    parts = [setup.short(), setup.recipe]
    if setup.compile:
        parts.append("compiled")
    if setup.framework:
        parts.append(setup.framework)
    return " · ".join(parts)


def render_group(*items) -> Group:  # noqa: ANN002
    return Group(*items)
