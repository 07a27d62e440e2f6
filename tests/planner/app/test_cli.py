"""The CLI: bad input gets one line naming the bad value and what is valid, exit 2, no traceback;
the main job and ``plan estimate --json`` keep their contracts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.engine.speed.step import BREAKDOWN
from tests.helpers import run




BAD = [
    (["--model", "llama3-8bb", "--gpus", "8xA800"], "plan: error: unknown model 'llama3-8bb'; did you mean 'Llama-3-8B'"),
    (["--model", "llama3-8b", "--gpus", "8xA8000"], "plan: error: unknown GPU 'A8000'; did you mean"),
    (["--model", "llama3-8b", "--gpus", "0xA800"], "plan: error: GPU counts must be at least 1 in '0xA800'"),
    (["--model", "llama3-8b", "--gpus", "8x"], "plan: error: malformed GPU spec '8x'"),
    (["--model", "llama3-8b", "--gpus", "x8"], "plan: error: malformed GPU spec 'x8'"),
    (["--model", "llama3-8b", "--gpus", "8xA800x"], "plan: error: malformed GPU spec '8xA800x'"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--headroom", "0.95"], "plan: error: argument --headroom: 0.95 is outside (0, 0.9)"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--objective", "speed"], "plan: error: unknown --objective 'speed'"),
    (["--model", "llama3-8b", "--gpus", "3xA800", "--global-batch", "64"],
     "plan: error: global batch 64 is not divisible by the data-parallel size 3; use a multiple of 3, e.g. 66"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--micro-batch", "3", "--global-batch", "64"],
     "plan: error: global batch 64 is not divisible into micro-batch 3"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--price-per-gpu-hour", "-1"], "plan: error: --price-per-gpu-hour -1.0 is not a finite price >= 0"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--micro-batch", "0"],
     "plan: error: argument --micro-batch: expected a whole number >= 1, got '0'"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--host-ram-gib", "-5"], "plan: error: argument --host-ram-gib: expected a positive number, got '-5'"),
    (["estimate", "--model", "llama3-8b", "--gpus", "8xA800", "--zero", "2", "--offload", "optimizer+params"],
     "plan estimate: error: parameter offload needs ZeRO-3"),
    (["estimate", "--model", "llama3-8b", "--gpus", "1xA800", "--optimizer-in-backward", "--grad-accum", "4"],
     "plan estimate: error: --optimizer-in-backward frees each gradient as it is made, so it cannot accumulate"),
    (["estimate", "--model", "llama3-8b", "--gpus", "v100", "--recipe", "bf16"],
     "plan estimate: error: recipe 'bf16' needs bf16, which V100"),
    (["estimate", "--model", "llama3-8b", "--gpus", "h100", "--seq", "100000"],
     "plan estimate: error: --seq 100000 exceeds Llama-3-8B's max positions 8192"),
    (["estimate", "--model", "llama3-8b", "--gpus", "h100", "--method", "full", "--double-quant", "--dora"],
     "plan estimate: error: --dora applies to LoRA/QLoRA"),
    (["estimate", "--model", "llama3-8b", "--gpus", "h100", "--zero", "5"],
     "plan estimate: error: argument --zero: invalid choice: 5"),
    (["estimate", "--model", "llama3-8b", "--gpus", "h100", "--method", "qlora", "--lora-targets", "q_proj,foo"],
     "plan estimate: error: LoRA target foo is not a linear layer of Llama-3-8B"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--lora-targets", "foo"],
     "plan: error: LoRA target foo is not a linear layer of Llama-3-8B"),
    (["--model", "llama3-8b", "--gpus", "8xA800", "--fsdp", "shard-grad-op", "--zero", "3"],
     "plan: error: choose ZeRO or FSDP, not both (got --zero 3 and --fsdp shard-grad-op)"),
    (["estimate", "--model", "llama3-8b", "--gpus", "8xA800", "--fsdp", "full-shard", "--zero", "2"],
     "plan estimate: error: choose ZeRO or FSDP, not both (got --zero 2 and --fsdp full-shard)"),
    (["estimat", "--model", "x"], "plan: error: unknown command 'estimat'; did you mean 'estimate'?"),
    (["estimate", "--model", "llama3-8b", "--gpus", "H100", "--optimizer-kernel", "fast"],
     "plan estimate: error: argument --optimizer-kernel: invalid choice: 'fast'"),
    (["estimate", "--model", "llama3-8b", "--gpus", "H100", "--optimizer", "sgd", "--optimizer-kernel", "foreach"],
     "plan estimate: error: --optimizer-kernel is not used: it applies to torch's AdamW stepping on the GPU"),
    (["estimate", "--model", "llama3-8b", "--gpus", "H100", "--fused-kernels", "foak"],
     "plan estimate: error: argument --fused-kernels: invalid choice: 'foak' (choose from 'liger', 'unsloth')"),
    (["configs", "--model", "llama3-8b", "--gpus", "8xA100", "--fused-kernels", "unsloth", "--out", "/nonexistent/x"],
     "plan configs: error: no searched setup passes --trainer all on 8xA100 80GB SXM: no trainer can express this "
     "plan: --fused-kernels unsloth models Unsloth's kernels"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_main_job_json_contract(capsys):
    code, out, _ = run(["--model", "llama3-8b", "--gpus", "8xA800", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["schema_version"] == 1 and d["rejected"] >= 0
    assert d["plans"] and [p["rank"] for p in d["plans"]] == list(range(1, len(d["plans"]) + 1))
    for p in d["plans"]:
        assert set(p["speed"]) >= {"step_s", "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "breakdown_s"}
        assert tuple(p["speed"]["breakdown_s"]) == BREAKDOWN
        per = p["memory"]["per_gpu"]
        assert per["peak_bytes"] <= 0.9 * per["capacity_bytes"]
        assert sum(per["categories"].values()) == per["peak_bytes"]
        assert p["reasons"]
    # fastest first (ties broken by simplicity)
    tps = [p["speed"]["tokens_per_s"] for p in d["plans"][:5]]
    assert all(a >= b * 0.99 for a, b in zip(tps, tps[1:]))


def test_estimate_json_contract(capsys):
    code, out, _ = run(["estimate", "--model", "qwen2.5-7b", "--gpus", "4090", "--method", "qlora",
                        "--checkpointing", "full", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["schema_version"] == 1
    assert d["cluster"] == {"gpu": "RTX 4090", "gpus_per_node": 1, "nodes": 1}
    assert d["setup"]["method"] == "qlora" and d["setup"]["recipe"] == "hf-amp"
    per = d["per_gpu"]
    assert set(per["phases"]) == {"after_load", "forward_peak", "backward_peak", "optimizer_peak"}
    assert per["phases"][per["peak_phase"]] == per["peak_bytes"] == sum(per["categories"].values())
    assert all(isinstance(v, int) for v in per["categories"].values())
    assert d["fits"] is True and d["assumptions"] and "speed" in d
    assert per["allocated_peak_bytes"] <= per["retry_floor_bytes"] <= per["capacity_bytes"]


def test_estimate_says_out_of_memory_through_fragmentation(capsys):
    """Liger-Kernel's README OOM (profiles/evidence/liger-kernel-readme-ooms.yaml): Llama-3-8B FSDP1, 8xA100, batch 8
    at 4096 went out of memory. Its capped peak fits the card; the retry floor (eq. R3c) does not: exit 1, the JSON
    says so, and the text names the mechanism."""
    argv = ["estimate", "--model", "llama-3-8b", "--gpus", "8xa100", "--method", "full", "--recipe", "hf-amp",
            "--fsdp", "full-shard", "--fsdp-version", "1", "--checkpointing", "full", "--micro-batch", "8",
            "--seq", "4096"]
    code, out, _ = run([*argv, "--json"], capsys)
    per = json.loads(out)["per_gpu"]
    assert code == 1 and json.loads(out)["fits"] is False
    assert per["peak_bytes"] <= per["capacity_bytes"] < per["retry_floor_bytes"]
    code, out, _ = run(argv, capsys)
    assert code == 1 and "out of memory through fragmentation" in out


def test_estimate_calls_a_fit_inside_the_default_headroom_tight(capsys):
    """fms-acceleration's Llama-2-70B QLoRA at micro-batch 4 on 2xA100 80GB, with Liger's kernels here: the engine's
    peak is capped at the card (the published run used FOAK's kernels, with which the engine calls it out of memory,
    as it went: eq. A10c, profiles/evidence/fms-acceleration-bench-a100-2025-02.yaml). A fit with less left than the
    default headroom says so, and names the cap and the retry floor; a roomy fit does not."""
    argv = ["estimate", "--model", "llama-2-70b", "--gpus", "2xA100-80G", "--method", "qlora", "--lora-rank", "16",
            "--lora-targets", "q_proj,k_proj,v_proj,o_proj", "--fsdp", "full-shard", "--fsdp-version", "1",
            "--checkpointing", "full", "--attention", "flash", "--micro-batch", "4", "--seq", "4096", "--packing",
            "--fused-kernels", "--double-quant"]
    code, out, _ = run([*argv, "--json"], capsys)
    per = json.loads(out)["per_gpu"]
    assert code == 0 and per["capacity_bytes"] - per["peak_bytes"] < 0.10 * per["capacity_bytes"]
    code, out, _ = run(argv, capsys)
    text = " ".join(out.split())
    assert code == 0 and "tight:" in text and "capped at the card" in text and "eq. R3c" in text
    code, out, _ = run(["estimate", "--model", "llama-2-70b", "--gpus", "2xA100-80G", "--method", "qlora",
                        "--fsdp", "full-shard", "--checkpointing", "full", "--micro-batch", "1", "--seq", "2048"], capsys)
    assert code == 0 and "tight:" not in out


@pytest.mark.parametrize("flag, library", [(["--fused-kernels"], "liger"), (["--fused-kernels", "liger"], "liger"),
                                           (["--fused-kernels", "unsloth"], "unsloth")])
def test_fused_kernels_names_its_library(flag, library, capsys):
    """A bare --fused-kernels is Liger's set (LLaMA-Factory's enable_liger_kernel); a value names the library
    (docs/memory.md eq. A10b, A10c), and plan's search keeps it fixed."""
    base = ["--model", "llama3-8b", "--gpus", "1xA100-80G", "--method", "lora", "--json"]
    code, out, _ = run(["estimate", *base, *flag], capsys)
    setup = json.loads(out)["setup"]
    assert code == 0 and setup["fused_kernels"] is True and setup["kernel_library"] == library
    code, out, _ = run([*base, *flag], capsys)
    plans = json.loads(out)["plans"]
    assert code == 0 and plans and all(p["setup"]["kernel_library"] == library and p["setup"]["fused_kernels"]
                                       for p in plans)
    code, out, _ = run(["estimate", *base], capsys)
    assert json.loads(out)["setup"]["fused_kernels"] is False


def test_nothing_fits_exits_1_with_suggestions(capsys):
    code, out, _ = run(["--model", "llama3.1-405b", "--gpus", "1xL4", "--json"], capsys)
    assert code == 1
    d = json.loads(out)
    assert d["plans"] == [] and d["suggestions"]


def test_plan_help_documents_every_setup_flag(capsys):
    code, out, _ = run(["estimate", "--help"], capsys)
    assert code == 0
    for flag in ["--method", "--recipe", "--optimizer", "--zero", "--fsdp", "--offload", "--checkpointing",
                 "--checkpoint-every", "--attention", "--loss", "--micro-batch", "--grad-accum", "--seq",
                 "--packing", "--lora-rank", "--lora-alpha", "--lora-targets", "--lora-dropout",
                 "--optimizer-in-backward", "--activation-offload", "--double-quant", "examples:"]:
        assert flag in out


def test_python_dash_m_planner():
    r = subprocess.run([sys.executable, "-m", "planner", "profiles", "gpus", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and len(json.loads(r.stdout)["gpus"]) >= 22


def test_missing_config_path(capsys):
    code, _, err = run(["estimate", "--model", "./nope/config.json", "--gpus", "h100"], capsys)
    assert code == 2 and err.startswith("plan estimate: error: no such file or folder './nope/config.json'")


def test_config_json_model(tmp_path, capsys):
    """--model accepts a config.json path and a folder holding one (HF keys, read without transformers)."""
    cfg = {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16", "hidden_act": "silu",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for arg in (str(tmp_path / "config.json"), str(tmp_path)):
        code, out, _ = run(["profiles", "show", arg, "--json"], capsys)
        assert code == 0
        assert json.loads(out)["params"]["total"] == 494_032_768  # Qwen2.5-0.5B, models.md "computed"


def test_zero_needs_the_deepspeed_recipe(capsys):
    code, _, err = run(["estimate", "--model", "llama3-8b", "--gpus", "8xA800", "--zero", "2", "--recipe", "hf-amp"], capsys)
    assert code == 2 and err.startswith("plan estimate: error: recipe 'hf-amp' is not what DeepSpeed runs under ZeRO-2")


def test_version(capsys):
    """``plan --version`` (and -V, and after any subcommand) prints the version pyproject.toml declares."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    declared = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M).group(1)
    for argv in (["--version"], ["-V"], ["estimate", "--version"], ["--model", "x", "--version"]):
        code, out, err = run(argv, capsys)
        assert code == 0 and out == f"tuneplan {declared}\n", (argv, out, err)
    r = subprocess.run([sys.executable, "-m", "planner", "--version"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"tuneplan {declared}\n" and r.stderr == ""


@pytest.mark.parametrize("preset, seen", [(None, "__all__"), ("", "")])
def test_plan_process_skips_pydantic_plugin_scan_unless_the_caller_set_it(preset, seen):
    """``entry`` sets PYDANTIC_DISABLE_PLUGINS for its own process (pydantic's entry-point scan costs 10-13 ms) and
    leaves a caller's value alone."""
    import os

    code = ("import os, sys; sys.argv = ['plan', '--version']; from planner.app import cli\n"
            "try:\n    cli.entry()\nexcept SystemExit:\n    pass\n"
            "print(repr(os.environ.get('PYDANTIC_DISABLE_PLUGINS')))")
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if preset is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = preset
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == repr(seen)


def test_no_reentrant_is_one_line_where_unused_and_lowers_fsdp1_lora_memory(capsys):
    """--reentrant / --no-reentrant: refused with one line and exit 2 where eq. A9d cannot apply (FSDP2 here); under
    FSDP1 + LoRA + full checkpointing the non-reentrant run keeps no block inputs, so its peak is lower."""
    base = ["estimate", "--model", "mistral-7b-v0.1", "--gpus", "2xA100", "--method", "lora", "--fsdp", "full-shard",
            "--checkpointing", "full", "--json"]
    code, out, err = run([*base, "--no-reentrant"], capsys)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert "--reentrant is not used" in err and "--fsdp-version 1" in err
    peaks = {}
    for flag in ("--reentrant", "--no-reentrant"):
        code, out, _ = run([*base, "--fsdp-version", "1", flag], capsys)
        assert code in (0, 1)
        d = json.loads(out)
        assert d["setup"]["reentrant"] is (flag == "--reentrant")
        peaks[flag] = d["per_gpu"]["allocated_peak_bytes"]
    assert peaks["--no-reentrant"] < peaks["--reentrant"]
