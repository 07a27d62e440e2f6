"""One rule for flags: a flag given explicitly that the chosen setup ignores is refused with one line naming it
(in a search: when no searched plan uses it), on every command; and setup flags given with --plan change the
plan's setup instead of being dropped."""

from __future__ import annotations

import json

import pytest

from planner.engine.rules import ignored_fields
from planner.engine.setup import Setup
from tests.helpers import run

EST = ["estimate", "--model", "llama3-8b", "--gpus", "8xA800"]
SEARCH = ["--model", "llama3-8b", "--gpus", "8xA800"]

IGNORED = [  # (flags, the flag named)
    (["--method", "full", "--lora-rank", "16"], "--lora-rank"),
    (["--method", "full", "--lora-alpha", "32"], "--lora-alpha"),
    (["--method", "full", "--lora-targets", "q_proj"], "--lora-targets"),
    (["--method", "qlora", "--freeze-layers", "3"], "--freeze-layers"),
    (["--method", "lora", "--double-quant"], "--double-quant"),
    (["--method", "lora", "--no-double-quant"], "--double-quant"),
    (["--checkpointing", "none", "--checkpoint-every", "2"], "--checkpoint-every"),
]


@pytest.mark.parametrize("flags, named", IGNORED, ids=[" ".join(f) for f, _ in IGNORED])
@pytest.mark.parametrize("command", ["estimate", "search", "trace", "validate"])
def test_an_ignored_flag_is_refused_everywhere(command, flags, named, capsys):
    argv = {"estimate": EST, "search": SEARCH, "trace": ["trace", *SEARCH],
            "validate": ["validate", *SEARCH, "--dry-run"]}[command]
    code, out, err = run([*argv, *flags], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, (code, out, err)
    assert f"error: {named} is not used" in err and f"drop {named}" in err, err


@pytest.mark.parametrize("flags", [["--lora-rank", "16"], ["--checkpoint-every", "2"], ["--double-quant"],
                                   ["--method", "lora", "--lora-targets", "q_proj,v_proj"]])
def test_a_flag_some_searched_plan_uses_is_accepted(flags, capsys):
    code, out, err = run([*SEARCH, *flags, "--top", "1", "--json"], capsys)
    assert code == 0, err


def test_the_default_value_given_explicitly_counts_as_given(capsys):
    """The rule is about what the user typed, not about values differing from defaults."""
    code, _, err = run([*EST, "--method", "full", "--lora-rank", "8"], capsys)
    assert code == 2 and "--lora-rank is not used" in err
    code, _, err = run([*EST, "--method", "full"], capsys)  # the defaults themselves are never refused
    assert code in (0, 1), err


def test_the_rule_lists_what_each_setup_uses():
    """ignored_fields is the one list: a setup that uses a field never has it listed."""
    assert "lora_rank" not in ignored_fields(Setup(method="lora"))
    assert "double_quant" not in ignored_fields(Setup(method="qlora"))
    assert "freeze_layers" not in ignored_fields(Setup(method="freeze"))
    assert "checkpoint_every" not in ignored_fields(Setup(checkpointing="selective"))
    assert set(ignored_fields(Setup(method="qlora", checkpointing="full"))) == {"freeze_layers", "fsdp_version",
                                                                                "reentrant"}
    fsdp1 = Setup(method="qlora", checkpointing="full", fsdp="full-shard", fsdp_version=1, recipe="hf-amp")
    assert "reentrant" not in ignored_fields(fsdp1)  # eq. A9d reads it
    assert "fsdp_version" not in ignored_fields(Setup(method="qlora", recipe="bf16", fsdp="full-shard"))


def test_fsdp_version_without_fsdp_is_refused_and_fsdp1_gets_no_configs(capsys, tmp_path):
    code, _, err = run(["estimate", "--model", "llama3.2-1b", "--gpus", "2xA100", "--fsdp-version", "1"], capsys)
    assert code == 2 and "--fsdp-version is not used" in err and "--fsdp" in err
    code, _, err = run(["configs", "--model", "llama3.2-1b", "--gpus", "2xA100", "--method", "lora", "--recipe", "bf16",
                        "--fsdp", "full-shard", "--fsdp-version", "1", "--micro-batch", "1", "--grad-accum", "1",
                        "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "FSDP2 configs only" in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written


# ---- --plan: setup flags change the plan; --global-batch is refused --------------------------------------------


@pytest.fixture
def plan_file(tmp_path, capsys):
    code, out, err = run(["estimate", "--model", "llama3.2-1b", "--gpus", "8xA800", "--zero", "2", "--json"], capsys)
    assert code == 0, err
    f = tmp_path / "plan.json"
    f.write_text(out)
    return f


def test_configs_plan_applies_setup_flags(plan_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["configs", "--plan", str(plan_file), "--micro-batch", "4", "--grad-accum", "2",
                             "--out", str(out), "--json"], capsys)
    assert code == 0, err
    d = json.loads((out / "plan.json").read_text())
    assert (d["setup"]["micro_batch"], d["setup"]["grad_accum"], d["setup"]["zero"]) == (4, 2, 2)
    assert any("--micro-batch 4 (the plan had 1)" in r for r in d["reasons"])
    # the engine re-estimated the changed setup (4x the micro-batch: more activation memory)
    before = json.loads(plan_file.read_text())["per_gpu"]["categories"]["activations"]
    assert d["memory"]["per_gpu"]["categories"]["activations"] > 3 * before


def test_plan_overrides_rederive_what_they_decide(plan_file, tmp_path, capsys):
    """--fsdp over a ZeRO-2 plan: ZeRO off and the recipe default for FSDP; --lora-rank: alpha follows."""
    out = tmp_path / "out"
    code, _, err = run(["configs", "--plan", str(plan_file), "--fsdp", "full-shard", "--method", "lora",
                        "--lora-rank", "32", "--out", str(out)], capsys)
    assert code == 0, err
    s = json.loads((out / "plan.json").read_text())["setup"]
    assert (s["zero"], s["fsdp"], s["recipe"], s["method"], s["lora_rank"], s["lora_alpha"]) == \
        (0, "full-shard", "hf-amp", "lora", 32, 64)


@pytest.mark.parametrize("flags, named", [(["--lora-rank", "4"], "--lora-rank"), (["--global-batch", "64"],
                                                                                   "--global-batch")])
def test_configs_plan_refuses_what_it_would_ignore(plan_file, tmp_path, flags, named, capsys):
    code, out, err = run(["configs", "--plan", str(plan_file), *flags, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{named} is not used" in err, err
    assert not (tmp_path / "o").exists()


def test_validate_plan_applies_setup_flags(plan_file, capsys):
    code, out, err = run(["validate", "--plan", str(plan_file), "--micro-batch", "2", "--seq", "1024",
                          "--dry-run"], capsys)
    assert code == 0, err
    assert "mb 2 x ga 1" in out and "seq 1024" in out
    code, out, err = run(["validate", "--plan", str(plan_file), "--freeze-layers", "2", "--dry-run"], capsys)
    assert code == 2 and "--freeze-layers is not used" in err


def test_validate_matrix_refuses_flags_it_would_ignore(tmp_path, capsys):
    m = tmp_path / "m.yaml"
    m.write_text("- {model: llama3.2-1b, gpus: H100}\n")
    for flags, named in ((["--method", "lora"], "--method"), (["--steps", "5"], "--steps"),
                         (["--gpus", "H100"], "--gpus")):
        code, out, err = run(["validate", "--matrix", str(m), *flags, "--dry-run"], capsys)
        assert code == 2 and err.count("\n") == 1 and f"{named} is not used with --matrix" in err, err
    code, out, err = run(["validate", "--matrix", str(m), "--device", "cpu", "--dry-run"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("command", ["configs", "validate"])
def test_help_says_the_rule(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert "flags change the plan's setup" in flat or "setup flags change the plan's setup" in flat.lower()
    assert "is refused" in flat


def test_fsdp1_with_tensor_parallelism_is_refused(capsys):
    code, _, err = run(["estimate", "--model", "llama3-8b", "--gpus", "8xH100", "--fsdp", "full-shard", "--fsdp-version",
                        "1", "--tp", "2", "--framework", "torchtitan", "--recipe", "hf-amp"], capsys)
    assert code == 2 and "--fsdp-version 1" in err and "Traceback" not in err


def test_host_optimizer_throughput_replaces_the_fit_for_the_cpu_step_only(capsys):
    """--host-optimizer-gbs (eq. S15): the CPU optimizer step of an offload plan takes state bytes / the given rate;
    the rest of the estimate is the same, and the speed parameters' source line names the flag."""
    base = ["estimate", "--model", "llama3.1-8b", "--gpus", "8xH200", "--recipe", "deepspeed-bf16", "--zero", "3",
            "--offload", "optimizer", "--checkpointing", "full", "--json"]
    code, out, _ = run(base, capsys)
    assert code == 0
    fit = json.loads(out)["speed"]
    offload = {}
    for gbs in (25, 50, 100):
        code, out, _ = run([*base, "--host-optimizer-gbs", str(gbs)], capsys)
        assert code == 0
        given = json.loads(out)["speed"]
        assert {k: v for k, v in given["breakdown_s"].items() if k != "offload"} == \
            {k: v for k, v in fit["breakdown_s"].items() if k != "offload"}
        assert given["breakdown_s"]["offload"] != fit["breakdown_s"]["offload"]
        assert any(f"host optimizer {gbs:g} GB/s per node given (--host-optimizer-gbs)" in a for a in given["assumptions"])
        offload[gbs] = given["breakdown_s"]["offload"]
    # the CPU step is state bytes / rate and the PCIe part does not move: halving the rate twice adds twice as much
    assert offload[25] - offload[50] == pytest.approx(2 * (offload[50] - offload[100]), rel=1e-9)
    assert offload[50] > offload[100]
    code, out, err = run([*base, "--host-optimizer-gbs", "0"], capsys)
    assert code == 2 and "--host-optimizer-gbs: expected a positive number, got '0'" in err and out == ""


def test_an_offload_estimate_explains_its_host_rate_in_the_terminal_and_the_json(capsys):
    """The CPU optimizer step dominates an offload plan's step and published hosts span a ~10x range of rates
    (docs/speed.md S15): the speed assumptions, printed under the memory ones and in --json, name the rate used, the
    published range (planner.engine.speed.offload.HOST_OPTIMIZER_PUBLISHED_GB_S) and the flag; a plan that keeps its
    optimizer on the GPU says nothing of it."""
    from planner.engine.speed.offload import HOST_OPTIMIZER_PUBLISHED_GB_S

    lo, hi = HOST_OPTIMIZER_PUBLISHED_GB_S
    base = ["estimate", "--model", "llama3.1-8b", "--gpus", "8xH200", "--recipe", "deepspeed-bf16", "--zero", "3",
            "--checkpointing", "full"]
    line = f"published hosts imply {lo:g}-{hi:g} GB/s, --host-optimizer-gbs gives your node's"
    code, out, _ = run([*base, "--offload", "optimizer"], capsys)
    assert code == 0
    text = " ".join(out.split())  # rich wraps long lines
    assert "speed assumptions:" in text and line in text
    assert text.index("speed assumptions:") > text.index("assumptions:")
    code, out, _ = run([*base, "--offload", "optimizer", "--json"], capsys)
    assert any(line in a for a in json.loads(out)["speed"]["assumptions"])
    code, out, _ = run(base, capsys)
    assert code == 0 and "speed assumptions:" in out and "host optimizer step" not in " ".join(out.split())


def test_every_attention_choice_maps_to_a_transformers_implementation_and_a_llamafactory_setting():
    from typing import get_args

    from planner.emit.llamafactory import FLASH_ATTN
    from planner.engine.setup import ATTENTION, FLASH_KERNEL_ARCH, FLASH_KERNELS, HF_ATTN_IMPLEMENTATION, Attention

    choices = set(get_args(Attention))
    assert set(HF_ATTN_IMPLEMENTATION) == set(FLASH_ATTN) == set(ATTENTION) == choices
    assert set(FLASH_KERNEL_ARCH) < set(FLASH_KERNELS) < choices
