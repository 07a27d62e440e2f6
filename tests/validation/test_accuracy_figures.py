"""benchmarks/accuracy_figures.py and the report's figure links (benchmarks/accuracy.py): the pictures draw the
sections' own results, and docs/accuracy.md links each one after its section's summary."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):  # noqa: ANN202
    return load_script(f"benchmarks/{name}.py")


def test_points_carry_the_results_figures_unchanged():
    fig = _load("accuracy_figures")
    data = {"rows": [{"id": "a/x", "measured": 100.0, "held_out": 120.0, "gpu_family": "ampere"},
                     {"id": "a/y", "measured": 50.0, "held_out": 40.0, "gpu_family": "hopper"}]}
    pts = fig.speed_points(data, {"a/y": "an anomaly"})
    assert pts == [{"measured": 100.0, "estimated": 120.0, "group": "ampere", "counted": True},
                   {"measured": 50.0, "estimated": 40.0, "group": "hopper", "counted": False}]
    rows = [{"kind": "reserved", "counted": True, "measured_bytes": 2 * 2**30, "estimated_bytes": 3 * 2**30},
            {"kind": "allocated", "counted": True, "measured_bytes": None, "estimated_bytes": 2**30}]  # OOM: no peak
    assert fig.memory_points(rows) == [{"measured": 2.0, "estimated": 3.0, "group": "reserved", "counted": True}]


def test_figure_is_a_png_written_whole(tmp_path):
    fig = _load("accuracy_figures")
    pts = [{"measured": m, "estimated": m * f, "group": g, "counted": c}
           for m, f, g, c in ((10, 1.1, "a", True), (20, 0.9, "a", True), (30, 1.0, "b", True), (40, 2.0, "b", False))]
    out = fig.estimate_vs_measured(pts, tmp_path / "f" / "x.png", title="t", unit="u", bands=(0.08, 0.25),
                                   group_label="g")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["x.png"]  # no temporary file left behind


def test_report_links_the_figure_after_the_summary_only_when_it_exists(tmp_path, monkeypatch):
    acc = _load("accuracy")
    text = "## Speed\n\nintro\n\n**Summary: 3 records, median 5 %.**\n\n| table |\n"
    monkeypatch.setattr(acc, "FIGURE_ROOT", tmp_path / "docs")
    figure = ("figures/s.png", "speed picture")
    out = tmp_path / "docs" / "accuracy.md"
    assert acc._with_figure(text, figure, out) == text  # not drawn: no link to a missing file
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "figures" / "s.png").write_bytes(b"png")
    linked = acc._with_figure(text, figure, out)
    assert linked.index("**Summary") < linked.index("![speed picture](figures/s.png)") < linked.index("| table |")
    # a report written elsewhere links the same file from where it lies
    elsewhere = acc._with_figure(text, figure, tmp_path / "out" / "acc.md")
    assert "![speed picture](../docs/figures/s.png)" in elsewhere


def test_unknown_argument_is_one_line_exit_2(tmp_path):
    import subprocess

    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy_figures.py"), "--nope"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and "--nope" in p.stderr and "Traceback" not in p.stderr
