"""Figures for capacity reports (matplotlib, Agg backend, PNG). They draw what the engine computed; they
never recompute it.

matplotlib is an optional dependency (the ``reports`` extra): it is imported inside each function, so
``import planner.app.render.figures`` stays light, and :func:`require_matplotlib` turns its absence into one line.
Sizes are GiB (2**30 bytes) everywhere, and every axis says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from planner.engine.results import CATEGORIES
from planner.units import GiB as GIB

DPI = 110

CATEGORY_COLORS: dict[str, str] = {
    "weights_trainable": "#1f77b4",
    "weights_frozen": "#aec7e8",
    "gradients": "#ff7f0e",
    "optimizer_states": "#d62728",
    "master_weights": "#ff9896",
    "activations": "#2ca02c",
    "logits_loss": "#98df8a",
    "temporaries": "#9467bd",
    "comm_buffers": "#8c564b",
    "framework_overhead": "#7f7f7f",
    "allocator_margin": "#c7c7c7",
}
"""One fixed colour per memory category, so every figure of a report reads the same way."""
METHOD_COLORS: dict[str, str] = {"full": "#d62728", "lora": "#1f77b4", "qlora": "#2ca02c", "freeze": "#9467bd"}
METHOD_STYLES: dict[str, tuple[str, str]] = {"full": ("-", "o"), "lora": ("--", "s"), "qlora": (":", "^"),
                                             "freeze": ("-.", "D")}
"""(line style, marker) per method, so overlapping curves stay distinguishable."""
CAPACITY_COLOR = "#222222"


class MissingMatplotlib(ImportError):
    """matplotlib is not installed (one line, with the install command)."""


def require_matplotlib() -> None:
    """Raise :class:`MissingMatplotlib` unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingMatplotlib(
            "figures need matplotlib, which is not installed; pip install 'tuneplan[reports]'"
        ) from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _short_number(x: float, _pos: object = None) -> str:
    """Axis labels: 500, 2k, 150k, 1.5M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            return f"{v:.0f}{suffix}" if v >= 10 or v == int(v) else f"{v:.1f}{suffix}"
    return f"{x:.0f}"


def _label(category: str) -> str:
    return category.replace("_", " ")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def memory_breakdown(
    bars: Sequence[tuple[str, dict[str, int], int]],
    path: Path,
    title: str,
    usable_fraction: float | None = None,
    groups: Sequence[str] | None = None,
) -> Path:
    """Horizontal stacked bars: GiB per GPU at the peak by category, one bar per plan.

    ``bars``: (label, categories in bytes, GPU capacity in bytes). The capacity is a vertical line when all
    bars share it, else a black tick on each bar; ``usable_fraction`` adds the headroom limit (dashed).
    ``groups`` (one name per bar) draws a thin rule where the group changes (e.g. between models).
    """
    plt = _pyplot()
    n = len(bars)
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.38 * n))
    ys = list(range(n))[::-1]  # first plan on top
    used = [k for k in CATEGORIES if any(b[1].get(k, 0) for b in bars)]
    left = [0.0] * n
    for k in used:
        vals = [b[1].get(k, 0) / GIB for b in bars]
        ax.barh(ys, vals, left=left, color=CATEGORY_COLORS[k], label=_label(k), height=0.7, edgecolor="white",
                linewidth=0.4)
        left = [a + v for a, v in zip(left, vals)]
    caps = [b[2] / GIB for b in bars]
    if len(set(caps)) == 1:
        ax.axvline(caps[0], color=CAPACITY_COLOR, lw=1.5, label=f"GPU memory {caps[0]:.0f} GiB")
        if usable_fraction is not None:
            ax.axvline(caps[0] * usable_fraction, color=CAPACITY_COLOR, lw=1.2, ls="--",
                       label=f"usable ({usable_fraction:.0%})")
    else:
        ax.scatter(caps, ys, marker="|", s=260, color=CAPACITY_COLOR, linewidths=2, zorder=3,
                   label="GPU memory")
        if usable_fraction is not None:
            ax.scatter([c * usable_fraction for c in caps], ys, marker="|", s=180, color=CAPACITY_COLOR,
                       linewidths=1.2, zorder=3, alpha=0.6, label=f"usable ({usable_fraction:.0%})")
    shared = len(set(caps)) == 1
    gap = 0.006 * max(max(left), max(caps))
    for y, total, cap in zip(ys, left, caps):
        x = total if shared else max(total, cap) + gap
        ax.text(x, y, f" {total:.1f}", va="center", ha="left", fontsize=8,
                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    if groups is not None:
        for i in range(1, n):
            if groups[i] != groups[i - 1]:
                ax.axhline(ys[i] + 0.5, color="#bbbbbb", lw=0.6)
    ax.set_yticks(ys)
    ax.set_yticklabels([b[0] for b in bars], fontsize=9)
    ax.set_xlabel("memory per GPU at the peak (GiB)")
    ax.set_xlim(0, max(max(left), max(caps)) * 1.1)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def memory_vs_seq(
    panels: Sequence[tuple[str, dict[str, Sequence[tuple[int, int]]]]],
    capacity_bytes: int,
    usable_bytes: int,
    path: Path,
    title: str,
) -> Path:
    """Small multiples, one panel per model: smallest peak GiB per GPU versus sequence length, one line per
    method, with the GPU's capacity (solid) and the usable limit after headroom (dashed)."""
    plt = _pyplot()
    n = len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows + 0.6), squeeze=False)
    cap, usable = capacity_bytes / GIB, usable_bytes / GIB
    ticks = [2**k for k in range(9, 18)]
    for i, (name, series) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        top = 0.0
        for method, pts in series.items():
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1] / GIB for p in pts]
            top = max(top, max(ys))
            ls, mk = METHOD_STYLES.get(method, ("-", "o"))
            ax.plot(xs, ys, ls=ls, marker=mk, ms=4, lw=1.7, color=METHOD_COLORS.get(method), label=method,
                    alpha=0.9)
        ax.axhline(cap, color=CAPACITY_COLOR, lw=1.3)
        ax.axhline(usable, color=CAPACITY_COLOR, lw=1.0, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t // 1024}k" if t >= 1024 else str(t) for t in ticks], fontsize=8)
        ax.set_xlim(400, 2**17 * 1.25)
        ax.set_ylim(0, min(max(top, cap) * 1.08, cap * 2.5))
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("peak per GPU (GiB)", fontsize=9)
        if i // cols == rows - 1 or i + cols >= n:
            ax.set_xlabel("sequence length (tokens)", fontsize=9)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color=CAPACITY_COLOR, lw=1.3), Line2D([], [], color=CAPACITY_COLOR, lw=1.0, ls="--")]
    labels += [f"GPU memory ({cap:.0f} GiB)", f"usable ({usable:.0f} GiB)"]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _save(fig, path)


def grouped_barh(
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    path: Path,
    title: str,
    xlabel: str,
    log: bool = True,
    fmt: str = "{:,.0f}",
    missing: str = "does not fit",
    log_base: int = 10,
) -> Path:
    """Horizontal bars, one group per row label and one bar per series (method) within it, each annotated
    with its value; a missing value (None) is written as ``missing``."""
    plt = _pyplot()
    n, k = len(groups), max(1, len(series))
    h = 0.8 / k
    fig, ax = plt.subplots(figsize=(10, 1.2 + n * (0.2 + 0.2 * k)))
    vmax = max([v for vals in series.values() for v in vals if v] or [1.0])
    vmin = min([v for vals in series.values() for v in vals if v] or [1.0])
    for j, (name, vals) in enumerate(series.items()):
        ys = [(n - 1 - i) + (k - 1 - j - (k - 1) / 2) * h for i in range(n)]
        widths = [v if v else 0 for v in vals]
        ax.barh(ys, widths, height=h * 0.92, color=METHOD_COLORS.get(name), label=name)
        for y, v in zip(ys, vals):
            text = fmt.format(v) if v else missing
            x = v if v else (vmin if log else 0)
            ax.text(x, y, " " + text, va="center", ha="left", fontsize=7, color="#333333" if v else "#999999")
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(groups)[::-1], fontsize=9)
    if log:
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        lo, hi = vmin / 1.6, vmax * 2.2
        ax.set_xscale("log", base=log_base)
        ax.set_xlim(lo, hi)
        if log_base == 2:
            ticks = [2**k for k in range(0, 20) if lo <= 2**k <= hi]
        else:
            ticks = [m * 10**e for e in range(-1, 9) for m in (1, 2, 5) if lo <= m * 10**e <= hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
    else:
        ax.set_xlim(0, vmax * 1.25)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _save(fig, path)
