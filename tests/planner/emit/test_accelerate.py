"""HF Trainer files: accelerate's own config loader accepts the YAML, every TrainingArguments key is a field of
the installed transformers (and the optim name a member of OptimizerNames), and the model settings build
BitsAndBytesConfig / peft LoraConfig."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from planner.emit import NotExpressible, build_files
from planner.emit import accelerate as acc
from tests.planner.emit.data.emit_cases import CASES, expressible, random_targets, target

transformers = pytest.importorskip("transformers")
HF_CASES = [c for c in CASES if expressible(c, lambda t: acc.check(t, acc.trainer_for(t.setup)))]


def _load_accelerate(tmp_path, text):
    from accelerate.commands.config.config_args import ClusterConfig

    p = tmp_path / "accelerate_config.yaml"
    p.write_text(text)
    return ClusterConfig.from_yaml_file(str(p))


def _launch_dests() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {a.dest for a in launch_command_parser()._actions}


@pytest.mark.parametrize("case", HF_CASES)
def test_accelerate_config_loads_and_names_real_launch_options(case, tmp_path):
    t = target(case)
    e = acc.emit(t, acc.trainer_for(t.setup))
    cfg = _load_accelerate(tmp_path, e.files[acc.ACCELERATE_FILE])
    assert cfg.num_processes == t.world_size and cfg.num_machines == t.cluster.nodes
    dests = _launch_dests()
    for key in cfg.deepspeed_config:
        assert key in dests, key
    for key in cfg.fsdp_config:
        assert key in dests, key
    if cfg.deepspeed_config:
        assert cfg.deepspeed_config["deepspeed_config_file"] in e.files
        assert cfg.mixed_precision is None  # the DeepSpeed JSON decides precision
    if t.multi_node:
        assert cfg.main_process_port and cfg.main_process_ip is None


def test_training_args_keys_are_transformers_fields():
    from transformers import TrainingArguments
    from transformers.training_args import OptimizerNames

    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    names = {o.value for o in OptimizerNames}
    assert set(acc.HF_OPTIM.values()) <= names
    for case in HF_CASES:
        t = target(case)
        args = acc.training_arguments(t)
        assert set(args) <= fields, set(args) - fields
        assert args["optim"] in names if "optim" in args else acc.deepspeed_owns_optimizer(t.setup)


@pytest.mark.parametrize("case", ["llama3-8b-full-zero3-8xA800", "qwen2.5-7b-qlora-4090"])
def test_training_args_construct_with_the_deepspeed_file(case):
    """TrainingArguments(**args) on CPU (use_cpu so bf16 is allowed), with the HF-flavour DeepSpeed dict."""
    from transformers import HfArgumentParser, TrainingArguments

    t = target(case)
    files = acc.emit(t, acc.trainer_for(t.setup)).files
    args = yaml.safe_load(files[acc.TRAINING_ARGS_FILE])
    extra = {"use_cpu": True}
    if "ds_config_hf.json" in files:
        import json

        extra["deepspeed"] = json.loads(files["ds_config_hf.json"])
    (parsed,) = HfArgumentParser(TrainingArguments).parse_dict({**args, **extra})
    assert parsed.per_device_train_batch_size == t.setup.micro_batch
    assert parsed.gradient_accumulation_steps == t.setup.grad_accum
    assert parsed.activation_checkpointing == (t.setup.checkpointing != "none")
    if "deepspeed" in extra:
        filled = parsed.hf_deepspeed_config.config
        assert filled["train_micro_batch_size_per_gpu"] == t.setup.micro_batch
        assert filled["gradient_accumulation_steps"] == t.setup.grad_accum


@pytest.mark.parametrize("case", HF_CASES)
def test_model_settings_build_bnb_and_lora_configs(case):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    t = target(case)
    m = yaml.safe_load(acc.emit(t, acc.trainer_for(t.setup)).files[acc.MODEL_FILE])
    assert m["model_name_or_path"] == t.model.hf_id
    q = m["from_pretrained"].get("quantization_config")
    assert (q is not None) == (t.setup.method == "qlora")
    if q:
        bnb = BitsAndBytesConfig(**q)
        assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4"
        assert bnb.bnb_4bit_use_double_quant == t.setup.double_quant
    if t.setup.trains_adapters:
        lc = LoraConfig(**m["lora"])
        assert lc.r == t.setup.lora_rank and lc.lora_alpha == t.setup.lora_alpha and lc.use_dora == t.setup.dora
    else:
        assert "lora" not in m


def test_wrong_backend_is_refused_with_the_right_suggestion():
    t = target("llama3-8b-full-zero3-8xA800")
    with pytest.raises(NotExpressible, match="use --trainer hf-deepspeed"):
        acc.emit(t, "hf-fsdp")
    t = target("llama3.1-8b-lora-fsdp-4xA800")
    with pytest.raises(NotExpressible, match="use --trainer hf-fsdp"):
        acc.emit(t, "hf-deepspeed")


def test_fsdp_checkpointing_goes_through_training_args_when_offloading():
    """FSDP's own activation checkpointing cannot offload, so the plan's offload uses activation_checkpointing
    with offload=True and FSDP's switch stays off (transformers refuses both)."""
    t = target("llama3.1-8b-lora-fsdp-4xA800")
    assert t.setup.activation_offload
    assert acc.accelerate_config(t)["fsdp_config"]["fsdp_activation_checkpointing"] is False
    args = acc.training_arguments(t)
    assert args["activation_checkpointing"] is True and args["activation_checkpointing_kwargs"]["offload"] is True


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(random_targets())
def test_random_plans_hf_files(t):
    from transformers import TrainingArguments

    trainer = acc.trainer_for(t.setup)
    try:
        e = acc.emit(t, trainer)
    except NotExpressible as err:
        assert "\n" not in str(err)
        return
    args = yaml.safe_load(e.files[acc.TRAINING_ARGS_FILE])
    assert set(args) <= {f.name for f in dataclasses.fields(TrainingArguments)}
    acc_cfg = yaml.safe_load(e.files[acc.ACCELERATE_FILE])
    assert acc_cfg["num_processes"] == t.world_size
    both = acc_cfg.get("fsdp_config", {}).get("fsdp_activation_checkpointing") and args["activation_checkpointing"]
    assert not both
    build_files(t, [trainer])


def _optimizer_transformers_builds(files: dict[str, str], args_key: str, args_file: str) -> str:
    """Run transformers' own DeepSpeed integration (integrations/deepspeed.py ``deepspeed_optim_sched``) on the
    emitted files: ``"deepspeed"`` when the DeepSpeed config's optimizer block wins, ``"trainer"`` when the
    Trainer builds the optimizer that ``optim`` names."""
    import json

    from transformers import HfArgumentParser, TrainingArguments
    from transformers.integrations.deepspeed import deepspeed_optim_sched

    args = yaml.safe_load(files[args_file])
    keep = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    args = {k: v for k, v in args.items() if k in keep}
    ds_cfg = json.loads(files["ds_config_hf.json"])
    (parsed,) = HfArgumentParser(TrainingArguments).parse_dict({**args, "use_cpu": True, "deepspeed": ds_cfg})
    hf_ds = parsed.hf_deepspeed_config

    class Trainer:  # what deepspeed_optim_sched asks of the Trainer
        built = False

        def create_optimizer(self):  # noqa: ANN202
            Trainer.built = True
            return object()

        def create_scheduler(self, num_training_steps, optimizer):  # noqa: ANN001, ANN202
            return None

    opt, _ = deepspeed_optim_sched(Trainer(), hf_ds, parsed, 100, [])
    return "trainer" if Trainer.built else "deepspeed"


ZERO_OFFLOAD = [("llama3-70b-full-zero3-offload-2x8xH100", {}),
                ("llama3-8b-full-zero3-8xA800", {"offload": "optimizer"}),
                ("llama3-8b-full-zero3-8xA800", {"optimizer": "adamw-8bit"}),
                ("llama3-8b-full-zero3-8xA800", {})]


@pytest.mark.parametrize("case, change", ZERO_OFFLOAD)
def test_every_optimizer_setting_written_takes_effect(case, change):
    """With ZeRO optimizer offload the DeepSpeed config carries its own optimizer, and transformers then ignores
    ``optim``: the HF Trainer's and LLaMA-Factory's files leave ``optim`` out and say why; without that block
    ``optim`` is written and it is what the Trainer builds. Checked with transformers' own code."""
    from planner.emit import deepspeed as ds
    from planner.emit import llamafactory as lf

    t = target(case)
    if change:
        from dataclasses import replace

        t = replace(t, plan=t.plan.model_copy(update={"setup": t.setup.model_copy(update=change)}))
    files = acc.emit(t, "hf-deepspeed").files
    args = yaml.safe_load(files[acc.TRAINING_ARGS_FILE])
    built = _optimizer_transformers_builds(files, "optim", acc.TRAINING_ARGS_FILE)
    has_block = "optimizer" in __import__("json").loads(files["ds_config_hf.json"])
    assert built == ("deepspeed" if has_block else "trainer")
    assert ("optim" in args) == (built == "trainer")
    assert ("No `optim` key" in files[acc.TRAINING_ARGS_FILE]) == has_block
    lf_cfg = yaml.safe_load(lf.emit(t).files[lf.FILENAME])
    assert ("optim" in lf_cfg) == (built == "trainer")
    assert has_block == ds.owns_optimizer(t.setup)


@pytest.mark.parametrize("kernel, fused", [("fused", True), ("foreach", False)])
def test_optimizer_kernel_is_what_transformers_builds(kernel, fused):
    """The written ``optim`` builds, in transformers' own code, torch's AdamW with the plan's kernel:
    ``adamw_torch_fused`` passes fused=True, ``adamw_torch`` leaves torch's foreach default."""
    transformers = pytest.importorskip("transformers")
    from planner.emit import llamafactory as lf

    t = target("llama3-8b-full-zero3-8xA800")
    t = dataclasses.replace(t, plan=t.plan.model_copy(update={"setup": t.setup.model_copy(
        update={"optimizer_kernel": kernel})}))
    optim = yaml.safe_load(acc.emit(t, "hf-deepspeed").files[acc.TRAINING_ARGS_FILE])["optim"]
    assert yaml.safe_load(lf.emit(t).files[lf.FILENAME])["optim"] == optim
    args = transformers.TrainingArguments(output_dir="/tmp/unused", optim=optim, report_to=[])
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls.__name__ == "AdamW" and cls.__module__.startswith("torch.optim")
    assert bool(kwargs.get("fused", False)) is fused
