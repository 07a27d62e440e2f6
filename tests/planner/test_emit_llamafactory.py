"""LLaMA-Factory YAML: every key is an argument of LLaMA-Factory 0.9.5 (key list extracted from its wheel into
tests/planner/data/llamafactory_keys_0.9.5.json by extract_llamafactory_keys.py), every value with a closed set
of choices is one of them, and the file reads back to the plan's setup."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from planner.emit import NotExpressible
from planner.emit import llamafactory as lf
from planner.emit.accelerate import HF_OPTIM
from profiles.registry import all_models
from tests.planner.data.emit_cases import (
    CASES,
    LF_KEYS as KEYS,
    check_llamafactory_keys as check_keys_and_values,
    expressible,
    random_targets,
    target,
)

CHOICES = KEYS["choices"]

LF_CASES = [c for c in CASES if expressible(c, lf.check)]


def test_key_file_is_the_pinned_version_and_says_where_it_came_from():
    assert KEYS["llamafactory_version"] == lf.LLAMAFACTORY_VERSION
    assert "pypi.org/project/llamafactory" in KEYS["source"] and len(KEYS["wheel_sha256"]) == 64
    assert "extract_llamafactory_keys.py" in KEYS["_comment"]
    assert set(KEYS["classes"]) == {"ModelArguments", "DataArguments", "TrainingArguments", "FinetuningArguments",
                                    "GeneratingArguments"}


@pytest.mark.parametrize("case", LF_CASES)
def test_keys_subset_of_pinned_llamafactory(case):
    e = lf.emit(target(case))
    cfg = yaml.safe_load(e.files[lf.FILENAME])
    check_keys_and_values(cfg)
    if "deepspeed" in cfg:
        assert cfg["deepspeed"] in e.files


def test_templates_exist_for_every_shipped_model():
    for m in all_models():
        assert lf.template_for(m) in CHOICES["template"], m.name


def test_template_examples():
    from profiles.registry import get_model

    assert lf.template_for(get_model("llama3-8b")) == "llama3"
    assert lf.template_for(get_model("qwen2.5-7b")) == "qwen"
    assert lf.template_for(get_model("llama-2-7b")) == "llama2"


def test_qlora_yaml():
    cfg = lf.llamafactory_config(target("qwen2.5-7b-qlora-4090"))
    assert cfg["quantization_bit"] == 4 and cfg["quantization_method"] == "bnb" and cfg["double_quantization"] is True
    assert cfg["finetuning_type"] == "lora" and cfg["lora_target"] == "all" and cfg["optim"] == "paged_adamw_8bit"
    t = target("qwen2.5-7b-qlora-4090")
    gb = t.setup.micro_batch * t.setup.grad_accum * t.world_size
    # QLoRA's 2e-4 at 16 sequences per step, square-root scaled to the plan's global batch (planner.engine.hparams)
    assert cfg["learning_rate"] == pytest.approx(2e-4 * (gb / 16) ** 0.5, rel=1e-2)
    assert cfg["template"] == "qwen" and "deepspeed" not in cfg


def test_full_zero3_yaml_points_at_the_hf_flavour_json():
    e = lf.emit(target("llama3-8b-full-zero3-8xA800"))
    cfg = yaml.safe_load(e.files[lf.FILENAME])
    assert cfg["deepspeed"] == "ds_config_hf.json" and cfg["finetuning_type"] == "full"
    assert json.loads(e.files["ds_config_hf.json"])["train_micro_batch_size_per_gpu"] == "auto"
    assert "disable_gradient_checkpointing" not in cfg  # the plan checkpoints; LLaMA-Factory does by default
    assert e.launch["llamafactory"] == ["FORCE_TORCHRUN=1 NPROC_PER_NODE=8 llamafactory-cli train llamafactory.yaml"]


def test_no_checkpointing_is_said_and_offload_uses_unsloth_gc():
    cfg = lf.llamafactory_config(target("llama3-70b-full-zero3-offload-2x8xH100"))
    assert "disable_gradient_checkpointing" not in cfg
    cfg = lf.llamafactory_config(target("llama3.1-8b-lora-fsdp-4xA800"))
    assert cfg["use_unsloth_gc"] is True and cfg["pure_bf16"] is True


def test_neat_packing_only_with_flash_attention_and_micro_batch_one():
    cfg = lf.llamafactory_config(target("llama3-8b-full-zero3-8xA800"))  # flash, micro-batch 2
    assert cfg["packing"] is True and "neat_packing" not in cfg


def test_freeze_and_fp16():
    cfg = lf.llamafactory_config(target("mistral-7b-freeze-fp16-2xV100"))
    assert cfg["finetuning_type"] == "freeze" and cfg["freeze_trainable_layers"] == 4
    assert cfg["fp16"] is True and "bf16" not in cfg and cfg["flash_attn"] == "disabled"
    assert cfg["optim"] == "sgd" and cfg["optim_args"] == "momentum=0.9"


def test_optimizer_in_backward_not_expressible():
    with pytest.raises(NotExpressible, match="optimizer-in-backward"):
        lf.emit(target("llama3.2-3b-full-obwd-h100"))


def test_fsdp_launch_goes_through_accelerate():
    e = lf.emit(target("llama3.1-8b-lora-fsdp-4xA800"))
    assert lf.ACCELERATE_FILE in e.files
    acc_cfg = yaml.safe_load(e.files[lf.ACCELERATE_FILE])
    assert acc_cfg["fsdp_config"]["fsdp_activation_checkpointing"] is False  # LLaMA-Factory checkpoints itself
    assert e.launch["llamafactory"] == [
        "accelerate launch --config_file llamafactory_accelerate.yaml -m llamafactory.launcher llamafactory.yaml"
    ]


def test_every_hf_optim_name_is_known_to_llamafactory_training_args():
    assert "optim" in KEYS["classes"]["TrainingArguments"]
    assert set(HF_OPTIM) == {"adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "sgd-momentum", "adafactor"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(random_targets())
def test_random_plans_llamafactory_keys(t):
    try:
        cfg = lf.llamafactory_config(t)
    except NotExpressible as err:
        assert "\n" not in str(err)
        return
    check_keys_and_values(cfg)
    s = t.setup
    assert cfg["per_device_train_batch_size"] == s.micro_batch and cfg["gradient_accumulation_steps"] == s.grad_accum
    assert ("quantization_bit" in cfg) == (s.method == "qlora")
    assert cfg.get("disable_gradient_checkpointing", False) == (s.checkpointing == "none")
    if cfg.get("neat_packing"):
        assert s.attention == "flash" and s.micro_batch == 1
