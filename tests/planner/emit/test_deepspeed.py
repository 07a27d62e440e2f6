"""DeepSpeed JSON: DeepSpeed's own config parsing accepts it, the batch arithmetic holds, offload_param only at
stage 3, and the HF flavour's "auto" sits exactly where transformers fills it (and fills it to the explicit
numbers)."""

from __future__ import annotations

import ast
import copy
import inspect
import json
import types

import pytest
from hypothesis import HealthCheck, given, settings

from planner.emit import NotExpressible, deepspeed as ds
from planner.emit import accelerate as acc
from planner.engine.memory import zero_bucket_elements
from tests.planner.emit.data.emit_cases import CASES, expressible, parse_with_deepspeed, random_targets, target

deepspeed = pytest.importorskip("deepspeed")
DS_CASES = [c for c in CASES if expressible(c, ds.check)]


@pytest.mark.parametrize("case", DS_CASES)
def test_explicit_config_passes_deepspeed_validation(case):
    t = target(case)
    cfg = ds.deepspeed_config(t, "explicit")
    parsed = parse_with_deepspeed(cfg, t.world_size)
    s = t.setup
    assert parsed.world_size == t.world_size
    assert parsed.train_batch_size == s.micro_batch * s.grad_accum * t.world_size == cfg["train_batch_size"]
    assert parsed.train_micro_batch_size_per_gpu == s.micro_batch
    assert parsed.gradient_accumulation_steps == s.grad_accum
    assert parsed.zero_optimization_stage == s.zero
    assert parsed.gradient_clipping == 1.0
    assert parsed.zero_config.overlap_comm is (True if s.zero else parsed.zero_config.overlap_comm)
    if s.zero == 3:
        b = zero_bucket_elements(t.model)
        assert parsed.zero_config.prefetch_bucket_size == b["stage3_prefetch_bucket_size"]
        assert parsed.zero_config.param_persistence_threshold == b["stage3_param_persistence_threshold"]
    assert (parsed.bfloat16_config.enabled, parsed.float16_config.enabled) == (
        (True, False) if s.recipe != "fp16-amp" else (False, True)
    )


@pytest.mark.parametrize("case", DS_CASES)
def test_hf_flavour_passes_deepspeed_zero_model(case):
    """DeepSpeed's pydantic ZeRO model drops "auto" values in non-strict mode and validates the rest."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    t = target(case)
    z = DeepSpeedZeroConfig(**copy.deepcopy(ds.deepspeed_config(t, "hf")["zero_optimization"]))
    assert z.stage == t.setup.zero


def test_comment_only_at_top_level_because_blocks_forbid_unknown_keys():
    t = target("llama3-8b-full-zero3-8xA800")
    cfg = ds.deepspeed_config(t, "explicit")
    parse_with_deepspeed(cfg, 8)  # top-level "_comment" tolerated
    bad = copy.deepcopy(cfg)
    bad["zero_optimization"]["_comment"] = "x"
    with pytest.raises(Exception, match="(?i)extra"):
        parse_with_deepspeed(bad, 8)


def _hf_args(t, world):
    a = acc.training_arguments(t)
    return types.SimpleNamespace(
        world_size=world, per_device_train_batch_size=a["per_device_train_batch_size"],
        gradient_accumulation_steps=a["gradient_accumulation_steps"], max_grad_norm=a["max_grad_norm"],
        learning_rate=a["learning_rate"], adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        save_on_each_node=False, fp16=a.get("fp16", False), fp16_full_eval=False, bf16=a.get("bf16", False),
        bf16_full_eval=False, get_warmup_steps=lambda n: 1,
    )


def hf_fill(t) -> dict:
    """Run transformers' own filling (HfTrainerDeepSpeedConfig) over the HF flavour with the TrainingArguments
    values we emit, as the HF Trainer does at start-up."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    c = HfTrainerDeepSpeedConfig(copy.deepcopy(ds.deepspeed_config(t, "hf")))
    args = _hf_args(t, t.world_size)
    c.trainer_config_process(args)
    c.trainer_config_finalize(args, types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=t.model.hidden_size)), 1000)
    return c.config


def _walk(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("case", DS_CASES)
def test_hf_fill_leaves_no_auto_and_equals_explicit(case):
    t = target(case)
    filled = hf_fill(t)
    assert not [k for k, v in _walk(filled) if v == "auto"]
    explicit = ds.deepspeed_config(t, "explicit")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping", "zero_optimization", "bf16", "fp16"):
        assert filled.get(key) == explicit.get(key), key


def hf_fillable_keys() -> set[str]:
    """Every key transformers' HfTrainerDeepSpeedConfig fills ("auto" positions), read from its source."""
    from transformers.integrations import deepspeed as integ

    src = inspect.getsource(integ.HfTrainerDeepSpeedConfig)
    keys = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("fill_match", "fill_only"):
            if node.args and isinstance(node.args[0], ast.Constant):
                keys.add(node.args[0].value)
    for node in ast.walk(ast.parse(src)):  # the hidden-size keys are listed, then filled through a variable
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("zero_optimization."):
            keys.add(node.value)
    return keys


def test_fillable_keys_read_from_transformers():
    keys = hf_fillable_keys()
    assert {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping",
            "bf16.enabled", "fp16.enabled", "zero_optimization.reduce_bucket_size"} <= keys


@pytest.mark.parametrize("case", DS_CASES)
def test_auto_exactly_where_transformers_fills(case):
    t = target(case)
    hf = ds.deepspeed_config(t, "hf")
    fillable = hf_fillable_keys()
    for key, value in _walk(hf):
        if key == "_comment":
            continue
        assert (value == "auto") == (key in fillable), key


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(random_targets())
def test_random_plans_valid_for_deepspeed(t):
    try:
        explicit = ds.deepspeed_config(t, "explicit")
    except NotExpressible:
        return
    s = t.setup
    z = explicit["zero_optimization"]
    # offload_param (and any NVMe offload) only at stage 3; optimizer offload only with ZeRO
    assert ("offload_param" in z) == (s.offload == "optimizer+params")
    if "offload_param" in z:
        assert z["stage"] == 3
    for block in ("offload_param", "offload_optimizer"):
        if block in z:
            assert z[block] == {"device": "cpu", "pin_memory": True}
            assert z["stage"] >= 1
    assert explicit["train_batch_size"] == s.micro_batch * s.grad_accum * t.world_size
    parsed = parse_with_deepspeed(explicit, t.world_size)
    assert parsed.zero_optimization_stage == s.zero
    json.dumps(explicit)  # serialisable


def test_not_expressible_reasons_are_one_line():
    from tests.planner.emit.data.emit_cases import target as tg

    t = tg("llama3.1-8b-lora-fsdp-4xA800")
    with pytest.raises(NotExpressible) as e:
        ds.deepspeed_config(t, "explicit")
    assert "\n" not in str(e.value) and "FSDP" in str(e.value) and "--trainer hf-fsdp" in str(e.value)


@pytest.mark.parametrize("kernel, built", [("fused", "FusedAdam"), ("foreach", "AdamW")])
def test_explicit_adamw_is_the_plans_kernel(kernel, built):
    """The explicit flavour's AdamW block builds, in DeepSpeed's own code, FusedAdam for the fused kernel and
    torch.optim.AdamW with torch's default (foreach) for ``optimizer_kernel="foreach"``."""
    from dataclasses import replace

    from deepspeed.runtime.engine import DeepSpeedEngine

    t = target("llama3-8b-full-zero3-8xA800")
    t = replace(t, plan=t.plan.model_copy(update={"setup": t.setup.model_copy(update={"optimizer_kernel": kernel})}))
    block = ds.deepspeed_config(t, "explicit")["optimizer"]
    assert block["type"] == "AdamW"
    params = dict(block["params"])
    engine = types.SimpleNamespace(zero_use_cpu_optimizer=lambda: False)  # the GPU path: no CPU offload here
    try:
        cls, kwargs = DeepSpeedEngine.get_optimizer_configuration(engine, params, True)
    except ImportError:  # FusedAdam's extension needs a CUDA build; the decision is what is checked
        assert kernel == "fused" and "torch_adam" not in block["params"]
        return
    assert cls.__name__ == built
    if kernel == "foreach":
        assert cls.__module__.startswith("torch.optim") and kwargs.get("foreach") is None
