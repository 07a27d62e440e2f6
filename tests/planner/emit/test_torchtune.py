"""torchtune YAML: what the 0.6.1 recipes require (facts extracted from the wheel into
tests/planner/emit/data/torchtune_0.6.1.json by extract_torchtune_facts.py), the optimizer-in-backward and
activation-offloading rules, the model table against torchtune's shipped configs, and clear refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from planner.emit import NotExpressible
from planner.emit import torchtune as tt
from profiles.registry import all_models
from tests.planner.emit.data.emit_cases import random_targets, target

FACTS = json.loads((Path(__file__).parent / "data" / f"torchtune_{tt.TORCHTUNE_VERSION}.json").read_text())
OUR_TOP_LEVEL = {"model_dir"}
"""Our own interpolation variable (``${model_dir}``); torchtune recipes ignore keys they do not read."""


def test_facts_file_is_the_pinned_version():
    assert FACTS["torchtune_version"] == tt.TORCHTUNE_VERSION and len(FACTS["wheel_sha256"]) == 64
    assert "extract_torchtune_facts.py" in FACTS["_comment"]


def _component_exists(component: str) -> bool:
    module, _, name = component.rpartition(".")
    if module in FACTS["builders"]:
        return name in FACTS["builders"][module]
    known = {
        "torchtune.modules.loss": FACTS["losses"],
        "torchtune.training": FACTS["training"],
        "torchtune.datasets": FACTS["datasets"],
        "torchtune.training.lr_schedulers": FACTS["lr_schedulers"],
        "torchtune.training.metric_logging": FACTS["metric_loggers"],
    }
    if module in known:
        return name in known[module]
    return module in ("torch.optim", "torch.nn", "bitsandbytes.optim")


def check_config(t, cfg: dict) -> None:
    recipe = FACTS["recipes"][tt.recipe_name(t)]
    missing = set(recipe["required"]) - set(cfg)
    assert not missing, f"{tt.recipe_name(t)} reads cfg.{sorted(missing)} without a default"
    unread = set(cfg) - set(recipe["required"]) - set(recipe["optional"]) - OUR_TOP_LEVEL
    assert not unread, f"{tt.recipe_name(t)} never reads {sorted(unread)}"
    for block in cfg.values():
        if isinstance(block, dict) and "_component_" in block:
            assert _component_exists(block["_component_"]), block["_component_"]
    assert cfg["checkpointer"]["model_type"] in FACTS["model_types"]
    # the rules the recipes enforce at start-up
    if cfg.get("optimizer_in_bwd"):
        assert cfg["gradient_accumulation_steps"] == 1 and cfg["clip_grad_norm"] is None
    if cfg.get("enable_activation_offloading"):
        assert cfg["enable_activation_checkpointing"] is True
    assert cfg["dtype"] in ("bf16", "fp32")
    # every ${var} interpolation names a top-level key
    text = json.dumps(cfg)
    for var in re.findall(r"\$\{([^}]+)\}", text):
        assert var in cfg, var


@pytest.mark.parametrize("case", ["llama3.1-8b-lora-fsdp-4xA800", "llama3.2-3b-full-obwd-h100"])
def test_cases_satisfy_the_recipe(case):
    t = target(case)
    e = tt.emit(t)
    cfg = yaml.safe_load(e.files[tt.FILENAME])
    check_config(t, cfg)
    assert "no longer developed upstream" in e.files[tt.FILENAME].splitlines()[0]


def test_optimizer_in_backward_plan():
    t = target("llama3.2-3b-full-obwd-h100")
    cfg = tt.torchtune_config(t)
    assert tt.recipe_name(t) == "full_finetune_single_device"
    assert cfg["optimizer_in_bwd"] is True and cfg["gradient_accumulation_steps"] == 1 and cfg["clip_grad_norm"] is None
    assert cfg["dataset"]["packed"] is False and cfg["loss"]["_component_"].endswith("CEWithChunkedOutputLoss")
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.llama3_2_3b"
    assert tt.launch_lines(t) == ['tune run full_finetune_single_device --config torchtune.yaml ${MODEL_DIR:+model_dir="$MODEL_DIR"}']


def test_lora_fsdp_plan():
    t = target("llama3.1-8b-lora-fsdp-4xA800")
    cfg = tt.torchtune_config(t)
    assert cfg["model"]["lora_attn_modules"] == ["q_proj", "k_proj", "v_proj", "output_proj"]
    assert cfg["model"]["apply_lora_to_mlp"] is False and cfg["model"]["lora_rank"] == 16
    assert cfg["enable_activation_offloading"] is True and cfg["enable_activation_checkpointing"] is True
    assert cfg["fsdp_reshard_after_forward"] is True and cfg["fsdp_cpu_offload"] is False
    assert cfg["compile"] is True and cfg["tokenizer"]["max_seq_len"] == 8192
    # Llama 3.1 8B's LM head is not tied: embedding and head get FSDP groups of their own (eq. C4d), as torchtune's
    # own llama3_1/8B_full.yaml sets them
    assert cfg["custom_sharded_layers"] == ["tok_embeddings", "output"]


@pytest.mark.parametrize(
    "case,why",
    [
        ("llama3-8b-full-zero3-8xA800", "DeepSpeed ZeRO-3"),
        ("qwen2.5-7b-qlora-4090", "no QLoRA builder for Qwen2.5-7B"),
        ("mistral-7b-freeze-fp16-2xV100", "not fp16"),  # what no re-plan of the sharding fixes is said first
    ],
)
def test_not_expressible_says_why(case, why):
    with pytest.raises(NotExpressible) as e:
        tt.emit(target(case))
    assert why in str(e.value) and "\n" not in str(e.value)


def test_model_table_matches_torchtune_shipped_configs():
    names = {m.name for m in all_models()}
    cb = FACTS["configs_by_builder"]
    for name, entry in tt.TORCHTUNE_MODELS.items():
        assert name in names, f"{name} is not a shipped profile"
        builders = FACTS["builders"][entry.module]
        for b in (entry.full, entry.lora, entry.qlora):
            if b is not None:
                assert b in builders, f"{entry.module}.{b}"
        full = f"{entry.module}.{entry.full}"
        shipped = cb.get(full) or cb.get(full.replace("_base", "_instruct"))
        assert shipped, f"no torchtune config uses {full}"
        files = list(entry.checkpoint_files)
        files = dict(files) if files and isinstance(files[0], tuple) else files
        want = {
            "tokenizer": entry.tokenizer, "tokenizer_files": dict(entry.tokenizer_files),
            "checkpointer": entry.checkpointer, "checkpoint_files": files, "model_type": entry.model_type,
            "checkpoint_subdir": entry.checkpoint_subdir,
        }
        got = [{k: e[k] for k in want} for e in shipped]
        assert want in got, f"{name}: {want} not among torchtune's configs {got}"
        has_q = any(b.startswith("qlora_") and b.endswith(entry.full.replace("_base", "")) for b in builders)
        assert (entry.qlora is not None) == has_q, name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(random_targets())
def test_random_plans_torchtune(t):
    try:
        cfg = tt.torchtune_config(t)
    except NotExpressible as err:
        assert "\n" not in str(err)
        return
    check_config(t, cfg)
    s = t.setup
    assert cfg["batch_size"] == s.micro_batch and cfg["gradient_accumulation_steps"] == s.grad_accum
    assert cfg["model"]["_component_"].rpartition(".")[2].startswith("qlora_") == (s.method == "qlora")


def test_optimizer_kernel_is_written():
    """torch's AdamW runs the plan's kernel: ``fused: True`` by default, torch's own default (foreach) when the
    plan says foreach."""
    from dataclasses import replace

    t = target("llama3.2-3b-full-obwd-h100")
    assert tt.torchtune_config(t)["optimizer"]["fused"] is True
    s = t.setup.model_copy(update={"optimizer_kernel": "foreach"})
    cfg = tt.torchtune_config(replace(t, plan=t.plan.model_copy(update={"setup": s})))
    assert cfg["optimizer"]["fused"] is False and cfg["optimizer"]["_component_"] == "torch.optim.AdamW"
