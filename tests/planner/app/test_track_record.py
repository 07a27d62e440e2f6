"""The track record ``plan`` and ``plan estimate`` print (planner/app/track_record.py): the shipped file says what
docs/accuracy.md's reports compute, the calibration reader skips it, and the CLI prints the GPU family's figures or
nothing when the file is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.app import track_record as tr
from planner.app.calibration_io import CALIBRATION_DIR, load_calibration_book
from profiles.cluster import parse_cluster
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[3]


def _script(name: str):  # noqa: ANN202
    return load_script(f"benchmarks/{name}.py")


@pytest.fixture(scope="module")
def shipped() -> dict:
    record = tr.read_track_record()
    assert record is not None, "profiles/calibration/accuracy.json is missing: python benchmarks/accuracy.py"
    return record


def test_the_memory_block_is_what_the_memory_report_computes(shipped):
    """Recomputed from the corpus (a few seconds): regenerate with python benchmarks/memory_vs_corpus.py."""
    from validation.corpus import load
    from validation.corpus_memory import evaluate_corpus

    block = _script("memory_vs_corpus").track_record_block(evaluate_corpus(load()))
    assert {k: v for k, v in shipped["memory"].items() if k != "generated"} == block


def test_the_speed_block_is_what_the_speed_report_renders(shipped):
    """From the leave-one-source-out predictions the speed section renders (benchmarks/results/speed_loso.json):
    regenerate with python benchmarks/accuracy_vs_corpus.py --reuse."""
    mod = _script("accuracy_vs_corpus")
    data = json.loads((ROOT / "benchmarks" / "results" / "speed_loso.json").read_text())
    block = mod.track_record_block(mod.speed_summary(data))
    assert {k: v for k, v in shipped["speed"].items() if k != "generated"} == block
    # the families are GpuProfile.family, the key the CLI looks up (over the counted records)
    flagged = mod.anomalies()
    assert set(block["families"]) == {r["gpu_family"] for r in data["rows"] if r["id"] not in flagged}
    assert "ampere" in block["families"] and parse_cluster("8xA800").gpu.family == "ampere"


def test_the_calibration_reader_skips_the_track_record():
    assert (CALIBRATION_DIR / tr.ACCURACY_FILE).is_file()
    load_calibration_book(CALIBRATION_DIR)  # would raise CalibrationError were it read as a GPU calibration


def test_the_line_gives_the_gpu_family_and_the_headroom_s_verdicts(shipped):
    family = parse_cluster("8xA800").gpu.family
    fam = shipped["speed"]["families"][family]
    line = tr.track_record_line(shipped, family, 0.10)
    assert f"on {family} GPUs {fam['records']} runs" in line
    assert f"{fam['held_out_median_signed'] * 100:+.1f} %" in line
    row = next(r for r in shipped["memory"]["headroom"] if r["headroom"] == 0.10)
    assert f"at 10 % headroom {row['oom_accepted']} of {shipped['memory']['oom_total']} published OOMs" in line
    # no headroom: the engine's own verdicts; a headroom the report did not sweep: no verdict clause
    assert "without headroom" in tr.track_record_line(shipped, family, None)
    assert "OOMs" not in tr.track_record_line(shipped, family, 0.33)
    assert "none of them on volta-x GPUs" in tr.track_record_line(shipped, "volta-x", 0.10)


def test_a_missing_or_foreign_file_prints_nothing(tmp_path):
    assert tr.read_track_record(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert tr.read_track_record(tmp_path / "bad.json") is None
    (tmp_path / "v2.json").write_text(json.dumps({"schema_version": 2}))
    assert tr.read_track_record(tmp_path / "v2.json") is None
    # a damaged block (a figure missing, or of the wrong type) is dropped, never a traceback; the other stays
    good = tr.read_track_record()
    for block, damage in (("speed", lambda d: d["speed"].pop("records")),
                          ("memory", lambda d: d["memory"]["headroom"][0].update(oom_accepted="x")),
                          ("speed", lambda d: d["speed"]["families"]["ampere"].pop("held_out_median_signed")),
                          ("memory", lambda d: d.pop("memory"))):
        d = json.loads(json.dumps(good))
        damage(d)
        (tmp_path / "bad.json").write_text(json.dumps(d))
        kept = tr.read_track_record(tmp_path / "bad.json")
        assert block not in kept and set(kept) - {block} == set(good) - {block}
        line = tr.track_record_line(kept, "ampere", 0.10)
        assert ("tokens/s" in line) == (block != "speed") and ("peak memory" in line) == (block != "memory")
    d = json.loads(json.dumps(good))
    d["speed"], d["memory"] = None, []
    (tmp_path / "bad.json").write_text(json.dumps(d))
    assert tr.read_track_record(tmp_path / "bad.json") is None
    assert tr.track_record_line(None, "ampere") is None and tr.track_record_json(None, "ampere") is None


def test_writing_a_block_keeps_the_other(tmp_path):
    path = tmp_path / "accuracy.json"
    tr.write_track_record_block("speed", {"records": 3}, path)
    tr.write_track_record_block("memory", {"records": 5}, path)
    tr.write_track_record_block("speed", {"records": 4}, path)
    data = json.loads(path.read_text())  # as written (these made-up blocks lack the figures the line reads)
    assert data["speed"]["records"] == 4 and data["memory"]["records"] == 5 and data["report"] == "docs/accuracy.md"


def test_plan_and_estimate_carry_it(capsys):
    from planner.app.cli import main

    assert main(["--model", "llama3-8b", "--gpus", "8xA800", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["track_record"]
    assert t["speed"]["family"] == "ampere" and t["memory"]["headroom"] == 0.1
    assert main(["estimate", "--model", "llama3-8b", "--gpus", "h100", "--method", "lora", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["track_record"]
    assert t["speed"]["family"] == "hopper" and t["memory"]["headroom"] == 0.0
    assert main(["estimate", "--model", "llama3-8b", "--gpus", "h100", "--method", "lora"]) == 0
    assert "track record against published runs" in " ".join(capsys.readouterr().out.split())


def test_without_a_family_the_line_points_to_the_report(shipped):
    """plan capacity --model compares GPU kinds: no family figure, the report's per-family table instead."""
    line = tr.track_record_line(shipped, None, 0.10)
    assert "gives each GPU family's" in line and "bias" not in line
    assert "family" not in tr.track_record_json(shipped, None, 0.10)["speed"]


def test_one_setup_gets_its_parallelism_class_figures(shipped, capsys):
    """plan estimate adds the figures of its setup's class (Setup.parallelism_class), from the speed block."""
    from planner.app.cli import main

    cls = shipped["speed"]["parallelism"]["ZeRO-3"]
    line = tr.track_record_line(shipped, "ampere", None, "ZeRO-3")
    assert f"{cls['records']} ZeRO-3 runs with a median bias of {cls['held_out_median_signed'] * 100:+.1f} %" in line
    assert "none of them TP / CP" in tr.track_record_line({**shipped, "speed": {**shipped["speed"], "parallelism": {}}},
                                                          "ampere", None, "TP / CP")
    assert main(["estimate", "--model", "llama3-8b", "--gpus", "8xa800", "--zero", "3", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["track_record"]["speed"]
    assert t["parallelism"] == "ZeRO-3" and t["parallelism_records"] == cls["records"]


def test_a_plan_of_a_class_the_model_is_biased_on_carries_a_caveat(shipped, capsys):
    """Beyond issue 10's 15 % tolerance and from 5 published runs, a plan's panel and JSON say how its parallelism
    class fared; within it, or with fewer runs, nothing (made-up records check the thresholds)."""
    from planner.app.cli import main

    def rec(n, b):
        return {"speed": {"parallelism": {"ZeRO-3": {"records": n, "held_out_median_signed": b}}}}
    assert "43 % too fast" in tr.class_bias_note(rec(12, 0.43), "ZeRO-3")
    assert "29 % too slow" in tr.class_bias_note(rec(18, -0.29), "ZeRO-3")
    assert tr.class_bias_note(rec(12, 0.15), "ZeRO-3") is None and tr.class_bias_note(rec(4, 0.5), "ZeRO-3") is None
    assert tr.class_bias_note(rec(12, 0.43), "FSDP2") is None and tr.class_bias_note(None, "ZeRO-3") is None
    assert main(["--model", "llama3-8b", "--gpus", "8xA800", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)["plans"]
    par = shipped["speed"]["parallelism"]
    for p in plans:
        from planner.engine.setup import Setup

        cls = Setup(**p["setup"]).parallelism_class(8)
        biased = cls in par and par[cls]["records"] >= 5 and abs(par[cls]["held_out_median_signed"]) > 0.15
        assert (p["speed_caveat"] is not None) == biased, cls
    assert any(p["speed_caveat"] for p in plans) and not all(p["speed_caveat"] for p in plans)


def test_capacity_reports_carry_it(capsys):
    from planner.app.cli import main

    assert main(["capacity", "--gpus", "8xA800", "--models", "llama3-8b", "--format", "json"]) == 0
    t = json.loads(capsys.readouterr().out)["track_record"]
    assert t["speed"]["family"] == "ampere" and t["memory"]["headroom"] == 0.1
