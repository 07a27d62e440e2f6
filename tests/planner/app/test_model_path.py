"""A model given as a ``config.json`` or a folder: the trainer files load the folder the user gave (absolute),
and ``plan.json`` keeps the path and the whole profile, so ``plan configs --plan``, ``plan validate --plan`` and
the generated ``launch.sh`` work anywhere, even after the folder is gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner.plan_file import read_plan_file
from profiles.hf_config import to_hf_config
from profiles.registry import get_model
from tests.helpers import run

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "models" / "my-qwen"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(to_hf_config(get_model("qwen2.5-0.5b"))), encoding="utf-8")
    return d


def _load_paths(out: Path) -> dict[str, str]:
    hf = yaml.safe_load((out / "hf_model.yaml").read_text())
    lf = yaml.safe_load((out / "llamafactory.yaml").read_text())
    return {"hf": hf["model_name_or_path"], "llamafactory": lf["model_name_or_path"]}


@pytest.mark.parametrize("given", ["folder", "config", "relative-folder", "relative-config"])
def test_trainer_files_load_the_absolute_folder(given, model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(model_dir.parent)
    arg = {"folder": str(model_dir), "config": str(model_dir / "config.json"), "relative-folder": "my-qwen",
           "relative-config": "my-qwen/config.json"}[given]
    out = tmp_path / "out"
    code, _, err = run(["configs", "--model", arg, "--gpus", "1xH100", "--method", "lora", "--out", str(out)], capsys)
    assert code == 0, err
    assert _load_paths(out) == {"hf": str(model_dir), "llamafactory": str(model_dir)}
    pf = read_plan_file(out / "plan.json")
    assert pf.model_path == str(model_dir)
    assert pf.load_model() == get_model(str(model_dir))


def test_plan_json_re_reads_after_the_folder_is_gone(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["configs", "--model", str(model_dir), "--gpus", "1xH100", "--method", "lora",
                        "--out", str(out)], capsys)
    assert code == 0, err
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    shutil.rmtree(model_dir.parent)
    code, _, err = run(["configs", "--plan", str(moved / "plan.json"), "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    assert _load_paths(tmp_path / "again") == {"hf": str(model_dir), "llamafactory": str(model_dir)}
    code, stdout, err = run(["validate", "--plan", str(moved / "plan.json"), "--dry-run"], capsys)
    assert code == 0, err
    assert "my-qwen" in stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_generated_launch_sh_validates_the_plan(model_dir, tmp_path, capsys):
    """launch.sh runs ``plan validate --plan plan.json`` first: with ``plan`` standing for this checkout (plus
    --dry-run, nothing trains) and the launchers stubbed, the script gets through with the model folder gone."""
    out = tmp_path / "out"
    code, _, err = run(["configs", "--model", str(model_dir), "--gpus", "1xH100", "--method", "lora",
                        "--out", str(out)], capsys)
    assert code == 0, err
    shutil.rmtree(model_dir.parent)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "plan").write_text(f'#!/usr/bin/env bash\nexec {sys.executable} -m planner "$@" --dry-run\n')
    for name in ("accelerate", "llamafactory-cli", "deepspeed", "tune"):
        (bindir / name).write_text("#!/usr/bin/env bash\necho \"$0 $*\"\n")
    for p in bindir.iterdir():
        p.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "TRAIN_SCRIPT": "train.py"}
    r = subprocess.run(["bash", str(out / "launch.sh"), "llamafactory"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "my-qwen" in r.stdout and "llamafactory-cli train llamafactory.yaml" in r.stdout


@pytest.mark.parametrize("command", [["estimate", "--method", "lora"], ["--method", "lora"]])
def test_json_outputs_carry_the_profile(command, model_dir, tmp_path, capsys):
    """``plan --json`` and ``plan estimate --json`` are plan files too: they carry the profile and the path."""
    code, stdout, err = run([*command, "--model", str(model_dir), "--gpus", "1xH100", "--json"], capsys)
    assert code == 0, err
    f = tmp_path / "p.json"
    f.write_text(stdout)
    shutil.rmtree(model_dir.parent)
    pf = read_plan_file(f)
    assert pf.model_path == str(model_dir) and pf.load_model().name == "my-qwen"
    code, _, err = run(["configs", "--plan", str(f), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
