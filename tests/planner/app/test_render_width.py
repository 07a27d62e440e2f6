"""At 80 columns (a pipe, a CI log, a small terminal) and at 60, every figure and name stays whole: descriptive
columns wrap, figure columns never shrink, and a table too wide for its figures is split into parts that repeat
the row labels. Checked on the renderers with rich's ``Console(width=...)`` and through the CLI with
``COLUMNS`` (what rich reads when stdout is not a terminal)."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from planner.app.render.report import render_estimate, render_search
from planner.engine.calibration import CalibrationBook
from planner.engine.evaluate import evaluate
from planner.engine.results import CATEGORIES
from planner.engine.setup import Setup
from planner.search.rank import SearchRequest, search
from planner.units import gib_num
from profiles.cluster import parse_cluster
from profiles.registry import all_gpus, all_models, get_model
from tests.helpers import run

WIDTHS = (80, 60)


def _console(width: int) -> Console:
    return Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False, force_terminal=False)


def _text(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def _tokens(text: str) -> set[str]:
    """Every whitespace- or table-rule-separated token of the output (a list's trailing comma dropped)."""
    return {t.rstrip(",") for t in re.split(r"[\s│┃|]+", text)}


def _assert_whole(out: str, figures: list[str], width: int) -> None:
    assert "…" not in out, out
    toks = _tokens(out)
    missing = [f for f in figures if f not in toks]
    assert not missing, f"figures cut or missing at {width} columns: {missing}\n{out}"
    assert max(len(line) for line in out.splitlines()) <= width, out


@pytest.fixture(scope="module")
def search_result():
    return search(get_model("llama3-8b"), parse_cluster("8xA800"), SearchRequest(top=7))


@pytest.mark.parametrize("width", WIDTHS)
def test_search_tables_keep_every_figure(search_result, width):
    c = _console(width)
    render_search(c, search_result)
    figures = []
    for p in search_result.plans:
        figures += [gib_num(p.memory.peak_bytes), f"{p.speed.tokens_per_s:,.0f}", f"{p.speed.mfu:.0%}"]
        figures += [gib_num(p.memory.categories[k]) for k in CATEGORIES if p.memory.categories[k]]
        figures += [f"#{p.rank}"]
    _assert_whole(_text(c), figures, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_explain_table_keeps_every_word(search_result, width):
    c = _console(width)
    render_search(c, search_result, explain=True)
    out = _text(c)
    assert "…" not in out


@pytest.mark.parametrize("width", WIDTHS)
def test_estimate_tables_keep_every_figure(width):
    model, cluster = get_model("llama3-8b"), parse_cluster("8xA800")
    plan = evaluate(model, cluster, Setup(zero=3, checkpointing="full", micro_batch=4), CalibrationBook())
    c = _console(width)
    render_estimate(c, plan.memory, plan.speed, plan.host_capacity_bytes)
    m, sp = plan.memory, plan.speed
    figures = [gib_num(m.peak_bytes), f"{sp.tokens_per_s:,.0f}", f"{sp.tokens_per_s_per_gpu:,.0f}", f"{sp.mfu:.1%}",
               f"{sp.step_s:,.3f}"]
    figures += [gib_num(m.categories[k]) for k in CATEGORIES if m.categories[k]]
    # the two peaks torch reports, beside nvidia-smi's (issue 11), each distinct and ordered
    assert m.allocated_peak_bytes < m.reserved_peak_bytes < m.peak_bytes
    figures += [gib_num(m.allocated_peak_bytes), gib_num(m.reserved_peak_bytes)]
    _assert_whole(_text(c), figures, width)


# ---- through the CLI, as `plan ... | cat` prints it -----------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_cli_search_at_width(width, monkeypatch, capsys):
    argv = ["--model", "llama3-8b", "--gpus", "8xA800"]
    code, js, _ = run(argv + ["--json"], capsys)
    assert code == 0
    plans = json.loads(js)["plans"]
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run(argv, capsys)
    assert code == 0
    figures = []
    for p in plans:
        figures += [gib_num(p["memory"]["per_gpu"]["peak_bytes"]), f"{p['speed']['tokens_per_s']:,.0f}",
                    f"{p['speed']['mfu']:.0%}"]
    _assert_whole(out, figures, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_cli_estimate_at_width(width, monkeypatch, capsys):
    argv = ["estimate", "--model", "llama3-8b", "--gpus", "8xA800", "--zero", "3"]
    code, js, _ = run(argv + ["--json"], capsys)
    d = json.loads(js)
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run(argv, capsys)
    figures = [gib_num(d["per_gpu"]["peak_bytes"]), f"{d['speed']['tokens_per_s']:,.0f}", f"{d['speed']['mfu']:.1%}"]
    figures += [gib_num(v) for v in d["per_gpu"]["categories"].values() if v]
    _assert_whole(out, figures, width)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """No user-derived profiles: the catalogue as shipped (what the table holds on a fresh machine)."""
    from profiles import cache

    monkeypatch.setenv("TUNEPLAN_CACHE", str(tmp_path / "cache"))
    cache.forget()
    yield tmp_path / "cache"
    cache.forget()


def test_a_column_too_wide_beside_long_labels_is_printed_whole(empty_cache, monkeypatch, capsys):
    """A user-derived profile with a long name widens the row labels until an alias cannot sit beside them at
    60 columns: that part prints wider than the terminal (which wraps the line) rather than cut a name."""
    from pathlib import Path

    from profiles import cache

    data = Path(__file__).parents[2] / "profiles" / "data" / "derived" / "granite.yaml"
    cache.save(cache.load_file(data).model_copy(update={"name": "arch-a-rather-long-derived-name"}))
    cache.forget()
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = run(["profiles", "models"], capsys)
    assert code == 0 and "…" not in out
    toks = _tokens(out)
    assert "arch-a-rather-long-derived-name" in toks
    assert all(a.rstrip(",") in toks for m in all_models() for a in m.aliases[:3])


@pytest.mark.parametrize("width", WIDTHS)
def test_cli_profiles_at_width(width, empty_cache, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run(["profiles", "models"], capsys)
    assert code == 0
    figures = [m.name for m in all_models()] + [f"{m.vocab_size:,}" for m in all_models()]
    figures += [a for m in all_models() for a in m.aliases[:3]]
    _assert_whole(out, figures, width)
    code, out, _ = run(["profiles", "gpus"], capsys)
    assert code == 0
    # a GPU name or alias such as "A100 80GB SXM" may wrap at its spaces, never be cut
    figures = [gib_num(g.memory_bytes, 1) for g in all_gpus()]
    figures += [w for g in all_gpus() for name in (g.name, *g.aliases[:3]) for w in name.split()]
    _assert_whole(out, figures, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_cli_capacity_at_width(width, monkeypatch, capsys):
    argv = ["capacity", "--gpus", "8xA800", "--models", "llama3.2-1b,qwen2.5-7b,llama3.1-70b"]
    code, js, _ = run(argv + ["--format", "json"], capsys)
    assert code == 0
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run(argv, capsys)
    assert code == 0
    cells = json.loads(js)["rows"]
    figures = [c["model"] for c in cells]
    figures += [gib_num(c["plan"]["peak_bytes"]) for c in cells if c.get("plan")]
    figures += [f"{c['plan']['tokens_per_s']:,.0f}" for c in cells if c.get("plan")]
    _assert_whole(out, figures, width)


def test_explain_rows_are_distinguishable(search_result):
    """--explain lists every rejected candidate: no two rows may read the same (the recipe used to be missing,
    so hf-amp and bf16 candidates looked identical)."""
    from planner.app.render.report import candidate_label

    labels = [candidate_label(r.setup) for r in search_result.rejected]
    assert len(search_result.rejected) > 10
    assert len(set(labels)) == len(labels), [x for x in labels if labels.count(x) > 1][:4]
    c = _console(200)
    render_search(c, search_result, explain=True)
    out = _text(c)
    assert all(label in out for label in labels)
