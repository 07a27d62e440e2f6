"""The length histogram of ``plan data`` as a PNG (matplotlib, Agg), with the ``--seq`` cut-off drawn.

Draws the numbers :func:`planner.app.commands.data.build_report` computed; recomputes nothing. matplotlib is
imported inside the function (the ``reports`` extra), via :mod:`planner.app.render.figures`.
"""

from __future__ import annotations

import io
from typing import Any

from planner.app.errors import CliError


def length_histogram_png(rep: dict[str, Any]) -> bytes:
    """PNG bytes: rows per length bin, the cut-off as a vertical line, the truncated share in its label."""
    from planner.app.render.figures import MissingMatplotlib, _pyplot

    try:
        plt = _pyplot()
    except MissingMatplotlib as e:
        raise CliError(str(e)) from None
    edges, counts, seq = rep["histogram"]["edges"], rep["histogram"]["counts"], rep["seq"]
    fig, ax = plt.subplots(figsize=(9, 4))
    widths = [b - a for a, b in zip(edges, edges[1:])]
    colors = ["#1f77b4" if a < seq else "#d62728" for a in edges[:-1]]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=colors, edgecolor="white", linewidth=0.4)
    tr = rep["truncation"]
    ax.axvline(seq, color="#222222", lw=1.5, ls="--",
               label=f"cut-off --seq {seq:,}: {tr['rows']:,} rows ({tr['rows'] / rep['rows']:.1%}) truncated")
    ax.set_xlabel("row length (tokens, chat template included)")
    ax.set_ylabel("rows")
    name = rep["file"].replace("\\", "/").split("/")[-1]
    ax.set_title(f"{name}: {rep['rows']:,} rows, {rep['tokens']['total']:,} tokens ({rep['tokenizer']})")
    ax.legend(loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
