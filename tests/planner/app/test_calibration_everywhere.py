"""Issue 15, "done when": a calibration file placed in the calibration folder moves ``plan``, ``plan estimate``,
``plan capacity`` and ``plan configs`` (from a search and from ``--plan``) identically: the same setup gets the
same tokens/s and the same peak everywhere, and all of them differ from the uncalibrated figures. The folder is
a temporary one, named by ``TUNEPLAN_CALIBRATION_DIR``; the CLI runs in-process."""

from __future__ import annotations

import json

import pytest

from planner.app.calibration_io import CALIBRATION_DIR, CALIBRATION_DIR_ENV, calibration_dir

CALIBRATION_DIR_UNSET = CALIBRATION_DIR  # the shipped folder: no per-GPU file for the A800
from planner.engine.calibration import Calibration, calibration_filename
from planner.engine.rules import flag_of, ignored_fields
from planner.engine.setup import Setup
from tests.helpers import run

GPU = "A800 80GB SXM"
TARGET = ["--model", "llama3-8b", "--gpus", "8xA800"]


def _write_calibrations(folder) -> None:  # noqa: ANN001
    """Made-up fitted terms (not measurements): mfu 0.2 (the issue's example), 2 GiB fixed overhead, allocator
    factor 1.2, for every recipe the search may pick on the A800."""
    folder.mkdir(parents=True, exist_ok=True)
    for recipe in ("hf-amp", "deepspeed-bf16", "bf16"):
        c = Calibration(gpu=GPU, recipe=recipe, fixed_overhead_bytes=2 * 2**30, allocator_factor=1.2, mfu=0.2,
                        n_runs=3, runs=("m#1", "m#2", "m#3"))
        (folder / calibration_filename(GPU, recipe)).write_text(c.model_dump_json(indent=2))


def _setup_flags(setup: dict) -> list[str]:
    """``plan estimate`` flags for a setup: every field that differs from the default and that the setup uses."""
    s, d = Setup(**setup), Setup()
    ignored = ignored_fields(s)
    out: list[str] = []
    for field in Setup.model_fields:
        v = getattr(s, field)
        if field in ignored or v == getattr(d, field) or (field == "lora_alpha" and v == 2 * s.lora_rank):
            continue
        flag = flag_of(field)
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + flag[2:])
        elif v is not None:
            out += [flag, str(v)]
    if s.zero == 0 and s.fsdp is None and "--zero" not in out:
        out += ["--zero", "0"]
    return out


def _figures(capsys, tmp_path) -> dict[str, tuple]:  # noqa: ANN001
    """(setup, tokens/s, peak bytes, calibration label) of the same LoRA setup from every command."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple] = {}
    code, text, err = run([*TARGET, "--method", "lora", "--json"], capsys)
    assert code == 0, err
    top = json.loads(text)["plans"][0]
    out["plan"] = (top["setup"], top["speed"]["tokens_per_s"], top["memory"]["per_gpu"]["peak_bytes"],
                   top["speed"]["calibration"])
    (tmp_path / "search.json").write_text(text)

    code, text, err = run(["estimate", *TARGET, *_setup_flags(top["setup"]), "--json"], capsys)
    assert code == 0, err
    e = json.loads(text)
    out["estimate"] = (e["setup"], e["speed"]["tokens_per_s"], e["per_gpu"]["peak_bytes"], e["speed"]["calibration"])

    code, text, err = run(["capacity", "--gpus", "8xA800", "--models", "llama3-8b", "--method", "lora",
                           "--format", "json"], capsys)
    assert code == 0, err
    cell = json.loads(text)["rows"][0]["plan"]
    out["capacity"] = (cell["setup"], cell["tokens_per_s"], cell["peak_bytes"], None)

    for name, argv in (("configs", [*TARGET, "--method", "lora"]),
                       ("configs --plan", ["--plan", str(tmp_path / "search.json")])):
        folder = tmp_path / name.replace(" ", "_").replace("-", "")
        code, text, err = run(["configs", *argv, "--out", str(folder), "--force"], capsys)
        assert code == 0, err
        p = json.loads((folder / "plan.json").read_text())
        out[name] = (p["setup"], p["speed"]["tokens_per_s"], p["memory"]["per_gpu"]["peak_bytes"],
                     p["speed"]["calibration"])
    return out


def test_a_calibration_file_moves_every_command_alike(tmp_path, monkeypatch, capsys):
    cal_dir = tmp_path / "calibration"
    monkeypatch.setenv(CALIBRATION_DIR_ENV, str(cal_dir))
    assert calibration_dir() == cal_dir
    before = _figures(capsys, tmp_path / "before")  # the folder does not exist yet: uncalibrated
    _write_calibrations(cal_dir)
    after = _figures(capsys, tmp_path / "after")

    from planner.app.calibration_io import load_calibration_book

    speed_fit = load_calibration_book().speed.source  # without a file for this GPU, speed is the corpus fit's
    for figures, label in ((before, speed_fit), (after, f"calibrated from 3 runs on {GPU}")):
        setup, tps, peak, _ = figures["plan"]
        for name, (s, t, p, lab) in figures.items():
            assert s == setup, name
            assert t == pytest.approx(tps, rel=1e-12), name
            assert p == peak, name
            assert lab in (None, label), (name, lab)
    # the calibration really moved them: for the setup the calibrated commands chose, mfu 0.2 (a GEMM ceiling
    # below the A800's) lowers tokens/s, and the fixed overhead and allocator factor replace the runtime terms
    # (eq. F1, R3): peak = 2 GiB + 1.2 x allocated
    from planner.engine.evaluate import evaluate
    from profiles.cluster import parse_cluster
    from profiles.registry import get_model

    chosen, tps, peak, _ = after["plan"]
    model, cluster = get_model(TARGET[TARGET.index("--model") + 1]), parse_cluster(TARGET[TARGET.index("--gpus") + 1])
    plain = evaluate(model, cluster, Setup(**chosen), load_calibration_book(CALIBRATION_DIR_UNSET))
    assert tps < plain.speed.tokens_per_s and peak != plain.memory.peak_bytes
    assert peak == 2 * 2**30 + int(1.2 * plain.memory.allocated_peak_bytes)


def test_the_environment_variable_names_the_folder(tmp_path, monkeypatch):
    from planner.app.calibration_io import CALIBRATION_DIR, load_calibration_book

    monkeypatch.delenv(CALIBRATION_DIR_ENV, raising=False)
    assert calibration_dir() == CALIBRATION_DIR
    monkeypatch.setenv(CALIBRATION_DIR_ENV, "  ")
    assert calibration_dir() == CALIBRATION_DIR  # empty: the shipped folder
    monkeypatch.setenv(CALIBRATION_DIR_ENV, str(tmp_path))
    _write_calibrations(tmp_path)
    book = load_calibration_book()
    assert book.lookup(GPU, "hf-amp") is not None and len(book.entries) == 3
