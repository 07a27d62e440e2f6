"""``plan configs`` end to end with the real engine and the shipped profiles: the three clusters of issue 6
(llama3-8b full ZeRO on 8xA800, qwen2.5-7b QLoRA on one 4090, llama3-70b on 2x8xH100), --plan round trip,
--pick, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml

from planner.app.cli import main
from tests.planner.emit.data.emit_cases import check_llamafactory_keys as check_keys_and_values
from tests.planner.emit.data.emit_cases import parse_with_deepspeed


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _check_folder(out_dir, world):
    files = {p.name for p in out_dir.iterdir()}
    assert {"PLAN.md", "plan.json", "launch.sh"} <= files
    plan = json.loads((out_dir / "plan.json").read_text())
    s = plan["setup"]
    if "ds_config.json" in files:
        cfg = json.loads((out_dir / "ds_config.json").read_text())
        parsed = parse_with_deepspeed(cfg, world)
        assert parsed.train_batch_size == s["micro_batch"] * s["grad_accum"] * world
        assert parsed.zero_optimization_stage == s["zero"]
        if "offload_param" in cfg["zero_optimization"]:
            assert cfg["zero_optimization"]["stage"] == 3
    if "llamafactory.yaml" in files:
        lf = yaml.safe_load((out_dir / "llamafactory.yaml").read_text())
        check_keys_and_values(lf)
        assert lf["per_device_train_batch_size"] == s["micro_batch"]
    md = (out_dir / "PLAN.md").read_text()
    assert "## Memory per GPU (GiB = 2^30 bytes)" in md and "| per GPU at the peak | GiB |" in md
    return files, plan, md


def test_llama3_8b_full_zero_on_8xa800(tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, err = _run(["configs", "--model", "llama3-8b", "--gpus", "8xA800", "--method", "full",
                              "--trainer", "all", "--out", str(out)], capsys)
    assert code == 0, err
    files, plan, md = _check_folder(out, 8)
    assert plan["setup"]["method"] == "full"
    assert plan["setup"]["zero"] > 0 or plan["setup"]["fsdp"]
    assert "llamafactory.yaml" in files and "accelerate_config.yaml" in files
    assert "wrote" in stdout and "next: read" in stdout


def test_qwen25_7b_qlora_on_one_4090(tmp_path, capsys):
    out = tmp_path / "b"
    code, stdout, err = _run(["configs", "--model", "qwen2.5-7b", "--gpus", "4090", "--method", "qlora",
                              "--trainer", "all", "--out", str(out)], capsys)
    assert code == 0, err
    files, plan, md = _check_folder(out, 1)
    lf = yaml.safe_load((out / "llamafactory.yaml").read_text())
    assert lf["quantization_bit"] == 4 and lf["finetuning_type"] == "lora" and lf["template"] == "qwen"
    assert "skipped torchtune" in stdout and "no QLoRA builder" in md


def test_llama3_70b_on_2x8xh100_multi_node(tmp_path, capsys):
    out = tmp_path / "c"
    code, stdout, err = _run(["configs", "--model", "llama3-70b", "--gpus", "2x8xH100", "--trainer", "all",
                              "--out", str(out)], capsys)
    assert code == 0, err
    files, plan, md = _check_folder(out, 16)
    launch = (out / "launch.sh").read_text()
    for var in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert var in launch
    assert "Multi-node (2 nodes)" in md


def test_plan_json_round_trip_and_json_output(tmp_path, capsys):
    first = tmp_path / "first"
    code, _, err = _run(["configs", "--model", "llama3-8b", "--gpus", "8xA800", "--method", "full", "--zero", "3",
                         "--trainer", "hf-deepspeed", "--out", str(first)], capsys)
    assert code == 0, err
    second = tmp_path / "second"
    code, stdout, err = _run(["configs", "--plan", str(first / "plan.json"), "--trainer", "hf-deepspeed",
                              "--out", str(second), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["trainers"] == ["hf-deepspeed"]
    assert (first / "ds_config.json").read_text() == (second / "ds_config.json").read_text()
    assert json.loads((first / "plan.json").read_text())["setup"] == json.loads((second / "plan.json").read_text())["setup"]


def test_plan_from_estimate_and_search_json(tmp_path, capsys):
    code, stdout, err = _run(["estimate", "--model", "qwen2.5-7b", "--gpus", "4090", "--method", "qlora",
                              "--checkpointing", "full", "--json"], capsys)
    assert code == 0, err
    (tmp_path / "est.json").write_text(stdout)
    code, _, err = _run(["configs", "--plan", str(tmp_path / "est.json"), "--trainer", "llamafactory",
                         "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert "not ranked by a search" in (tmp_path / "e" / "PLAN.md").read_text()
    code, stdout, err = _run(["--model", "llama3-8b", "--gpus", "8xA800", "--json"], capsys)
    (tmp_path / "search.json").write_text(stdout)
    code, _, err = _run(["configs", "--plan", str(tmp_path / "search.json"), "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    first = json.loads(stdout)["plans"][0]["setup"]
    assert json.loads((tmp_path / "s" / "plan.json").read_text())["setup"] == first


def test_pick_second_plan(tmp_path, capsys):
    code, _, err = _run(["configs", "--model", "llama3-8b", "--gpus", "8xA800", "--pick", "2",
                         "--out", str(tmp_path / "p")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "plan.json").read_text())["rank"] == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--gpus", "8xA800"], "--model and --gpus are required"),
        (["--model", "llama3-8b", "--gpus", "8xA800", "--method", "full", "--zero", "3", "--trainer", "torchtune"],
         "torchtune cannot express this plan: the plan uses DeepSpeed ZeRO-3"),
        (["--model", "llama3-8b", "--gpus", "8xA800", "--pick", "500"], "--pick 500: the search ranked only"),
        (["--plan", "/nonexistent/plan.json"], "no such file"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    code, _, err = _run(["configs", *argv, "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_non_empty_out_refused_then_forced(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["configs", "--model", "qwen2.5-7b", "--gpus", "4090", "--method", "qlora", "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "exists and is not empty; pass --force" in err
    assert (out / "notes.txt").exists()
    code, _, err = _run([*argv, "--force"], capsys)
    assert code == 0, err
    assert not (out / "notes.txt").exists() and (out / "PLAN.md").exists()
