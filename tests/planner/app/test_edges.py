"""Rough edges a new user hits, each tried as they would: bad input on every command ends in one line and exit 2,
never a traceback; output folders that cannot be written are refused before any work; a reader that closes the
pipe early (``| head``) ends the command quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import read_only, run

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "validation" / "data" / "tiny-qwen2.yaml")


def _one_line(code: int, out: str, err: str, prefix: str, expect: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    assert expect in err, err


# ---- --gpus "" ------------------------------------------------------------------------------------------------

EMPTY_GPUS = [
    ["--model", "llama3-8b", "--gpus", ""],
    ["estimate", "--model", "llama3-8b", "--gpus", ""],
    ["capacity", "--gpus", ""],
    ["configs", "--model", "llama3-8b", "--gpus", "", "--out", "unused"],
    ["validate", "--model", "llama3-8b", "--gpus", "", "--dry-run"],
    ["trace", "--model", "llama3-8b", "--gpus", ""],
]


@pytest.mark.parametrize("argv", EMPTY_GPUS, ids=[a[0] for a in EMPTY_GPUS])
def test_empty_gpus_is_a_bad_spec(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    prog = "plan" if argv[0].startswith("-") else f"plan {argv[0]}"
    _one_line(code, out, err, f"{prog}: error: ", "empty GPU spec")


@pytest.mark.parametrize("argv", [["--model", "", "--gpus", "8xA800"], ["capacity", "--model", ""],
                                  ["profiles", "show", " "]])
def test_empty_model_is_a_bad_name(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "empty model name" in err or "needs a NAME" in err, err


# ---- output folders ---------------------------------------------------------------------------------------------


def _calibration_runs(tmp_path: Path) -> Path:
    from tests.planner.engine.test_calibration import synthetic_runs, write_runs

    return write_runs(tmp_path, synthetic_runs())


WRITERS = {
    "configs": lambda out, tmp: ["configs", "--model", "llama3.2-1b", "--gpus", "1xH100", "--out", out],
    "capacity": lambda out, tmp: ["capacity", "--gpus", "1xH100", "--models", "llama3.2-1b", "--method", "lora",
                                  "--out", out],
    "validate": lambda out, tmp: ["validate", "--model", TINY, "--gpus", "H100", "--device", "cpu", "--seq", "32",
                                  "--steps", "1", "--warmup", "0", "--no-timeline", "--quiet", "--out", out],
    "calibrate": lambda out, tmp: ["calibrate", str(_calibration_runs(tmp)), "--out", out],
}


@pytest.mark.parametrize("command", list(WRITERS))
@pytest.mark.parametrize("where", ["read-only folder", "new folder below a read-only one"])
def test_read_only_out_is_refused_before_any_work(command, where, tmp_path, monkeypatch, capsys):
    if command == "capacity":
        pytest.importorskip("matplotlib")
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro if where == "read-only folder" else ro / "new" / "run"
    argv = WRITERS[command](str(out), tmp_path)
    read_only(monkeypatch, ro)
    code, stdout, err = run(argv, capsys)
    _one_line(code, stdout, err, f"plan {command}: error: ", "not writable")
    assert str(out) in err
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", list(WRITERS))
def test_out_below_a_file_or_empty_is_refused(command, tmp_path, monkeypatch, capsys):
    if command == "capacity":
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    code, stdout, err = run(WRITERS[command]("afile/sub", tmp_path), capsys)
    _one_line(code, stdout, err, f"plan {command}: error: ", "is a file, not a folder")
    code, stdout, err = run(WRITERS[command]("", tmp_path), capsys)
    _one_line(code, stdout, err, f"plan {command}: error: ", "--out is empty")


def test_out_dot_force_refuses_to_delete_where_you_stand(tmp_path, monkeypatch, capsys):
    here = tmp_path / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    code, out, err = run(["configs", "--model", "llama3.2-1b", "--gpus", "1xH100", "--out", ".", "--force"], capsys)
    _one_line(code, out, err, "plan configs: error: ", "holds the current folder")
    assert (here / "notes.txt").read_text() == "mine"


def test_empty_existing_folder_is_filled_in_place(tmp_path, capsys):
    """An empty mount point: written into, never renamed away (its inode stays), no --force needed."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    inode = mount.stat().st_ino
    code, _, err = run(["configs", "--model", "llama3.2-1b", "--gpus", "1xH100", "--out", str(mount)], capsys)
    assert code == 0, err
    assert mount.stat().st_ino == inode and (mount / "plan.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "mnt"]  # no staging folder left beside it


# ---- | head -------------------------------------------------------------------------------------------------


PIPED = [
    ["--model", "llama3-8b", "--gpus", "8xA800", "--json"],
    ["estimate", "--model", "llama3-8b", "--gpus", "8xA800", "--json"],
    ["profiles", "--json"],
    ["profiles", "models"],
    ["capacity", "--gpus", "8xA800", "--models", "llama3.2-1b", "--format", "json"],
]


@pytest.mark.parametrize("argv", PIPED, ids=[" ".join(a[:2]) for a in PIPED])
def test_output_into_head_ends_quietly(argv):
    """``plan ... --json | head -1``: the reader leaves after one line; no traceback, no message."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    producer = subprocess.Popen([sys.executable, "-m", "planner", *argv], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, text=True)
    producer.stdout.close()
    err = producer.stderr.read().decode()
    code = producer.wait(timeout=120)
    assert head.stdout.strip(), head.stdout
    assert err == "", err
    assert code in (0, 1)  # 1: the reader left (Python's recipe, rich's console); 0: everything fit the pipe


# ---- more bad input, each found by trying -----------------------------------------------------------------------


def test_negative_profile_step_is_a_usage_error(capsys):
    code, out, err = run(["validate", "--model", TINY, "--gpus", "H100", "--profile-step", "-1", "--dry-run"], capsys)
    _one_line(code, out, err, "plan validate: error: ", "argument --profile-step: expected a whole number >= 0")


def test_plan_file_with_a_broken_cluster(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"model": "llama3-8b", "cluster": {"gpu": "A800"}, "setup": {}}))
    for argv in (["configs", "--plan", str(f), "--out", str(tmp_path / "o")], ["validate", "--plan", str(f), "--dry-run"]):
        code, out, err = run(argv, capsys)
        _one_line(code, out, err, f"plan {argv[0]}: error: ", "needs gpu (a name), gpus_per_node and nodes")


def test_plan_file_or_matrix_with_a_bad_setup_value_names_it(tmp_path, capsys):
    """pydantic's last line is a documentation link that names nothing: the message names the field, what is
    valid and the value given (profiles.errors.validation_message)."""
    code, out, _ = run(["estimate", "--model", "llama3-8b", "--gpus", "h100", "--method", "lora", "--json"], capsys)
    assert code == 0
    plan = json.loads(out)
    plan["setup"]["kernel_library"] = "foak"
    f = tmp_path / "p.json"
    f.write_text(json.dumps(plan))
    want = "kernel_library: Input should be 'liger' or 'unsloth' (got 'foak')"
    code, out, err = run(["configs", "--plan", str(f), "--out", str(tmp_path / "o")], capsys)
    _one_line(code, out, err, "plan configs: error: ", f"--plan {f}: invalid setup: {want}")
    m = tmp_path / "m.yaml"
    m.write_text("runs:\n  - model: llama3-8b\n    gpus: H100\n    kernel_library: foak\n")
    code, out, err = run(["validate", "--matrix", str(m), "--dry-run", "--out", str(tmp_path / "v")], capsys)
    _one_line(code, out, err, "plan validate: error: ", f"run 1 (llama3-8b): invalid setup: {want}")


def test_a_plan_no_trainer_writes_says_why_once(tmp_path, capsys):
    """A reason that holds for every trainer (Unsloth's kernels, which tuneplan models but writes for none) is said
    once, not once per trainer."""
    code, out, _ = run(["estimate", "--model", "llama3-8b", "--gpus", "h100", "--method", "lora", "--fused-kernels",
                        "unsloth", "--json"], capsys)
    f = tmp_path / "p.json"
    f.write_text(out)
    code, out, err = run(["configs", "--plan", str(f), "--out", str(tmp_path / "o")], capsys)
    _one_line(code, out, err, "plan configs: error: ", "cannot express this plan: --fused-kernels unsloth")
    assert err.count("--fused-kernels unsloth models") == 1 and not (tmp_path / "o").exists()


def test_fixed_grad_accum_keeps_the_global_batch(capsys):
    """--grad-accum alone used to be combined with every micro-batch, so the plans ran global batches of 48 or
    96 under a note that said 64."""
    code, out, err = run(["--model", "llama3-8b", "--gpus", "8xA800", "--grad-accum", "2", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert {p["setup"]["micro_batch"] * p["setup"]["grad_accum"] * 8 for p in d["plans"]} == {d["global_batch"]}
    code, out, err = run(["--model", "llama3-8b", "--gpus", "8xA800", "--grad-accum", "3"], capsys)
    _one_line(code, out, err, "plan: error: ", "global batch 64 is not divisible into accumulation 3")


@pytest.mark.parametrize("flag, value, message", [("--dataset", "missing.jsonl", "is not a file"),
                                                  ("--weights", "missing-folder", "is not a folder"),
                                                  ("--weights", "afile", "is not a folder")])
def test_validate_checks_dataset_and_weights_before_running(flag, value, message, tmp_path, monkeypatch, capsys):
    """Used to load the model, fail, and append an error record; now refused up front, even with --dry-run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "runs"
    for extra in (["--dry-run"], ["--out", str(out)]):
        code, stdout, err = run(["validate", "--model", TINY, "--gpus", "H100", "--device", "cpu", "--seq", "32",
                                 "--quiet", flag, value, *extra], capsys)
        _one_line(code, stdout, err, "plan validate: error: ", message)
    assert not out.exists()
