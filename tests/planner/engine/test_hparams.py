"""Hyper-parameters with reasons: the rules (sources in planner/engine/hparams.py), the overrides, and every generated
file still accepted by each trainer's own parser with the new keys."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from planner.engine import hparams as hpm
from planner.emit import accelerate as acc
from planner.emit import build_files, trainers_for
from planner.emit import deepspeed as ds
from planner.emit import llamafactory as lf
from planner.emit import torchtune as tt
from planner.emit.common import Target
from planner.engine.setup import Setup
from profiles.registry import get_model
from tests.planner.emit.data.emit_cases import check_llamafactory_keys, parse_with_deepspeed, target


def test_learning_rate_rules_and_sqrt_scaling():
    m7, m70 = get_model("llama3-8b"), get_model("llama3-70b")
    lora = Setup(method="lora", micro_batch=2, grad_accum=2)
    # QLoRA app. B.2: 2e-4 (7B/13B), 1e-4 (33B/65B) at 16 sequences; one GPU x 2 x 2 = 4 -> x sqrt(1/4)
    assert hpm.recommend(m7, lora, 1).learning_rate.value == pytest.approx(1e-4)
    assert hpm.recommend(m70, lora, 4).learning_rate.value == pytest.approx(1e-4)  # 16 sequences: unscaled 1e-4
    # Alpaca: full fine-tuning 2e-5 at 128 sequences; 8 GPUs x 4 x 4 = 128
    full = Setup(method="full", micro_batch=4, grad_accum=4)
    assert hpm.recommend(m7, full, 8).learning_rate.value == pytest.approx(2e-5)
    assert hpm.recommend(m70, full, 8).learning_rate.value == pytest.approx(1e-5)
    # quadrupling the batch doubles the rate
    a = hpm.sqrt_scaled_learning_rate(2e-4, 16, 16)
    assert hpm.sqrt_scaled_learning_rate(2e-4, 16, 64) == pytest.approx(2 * a)


def test_data_size_drives_epochs_eval_split_and_interval():
    m, s = get_model("qwen2.5-7b"), Setup(method="lora", micro_batch=4, grad_accum=4)
    small = hpm.recommend(m, s, 1, rows=5_000, steps_per_epoch=300)
    assert small.epochs.value == 3.0 and small.val_size.value == pytest.approx(0.1)
    assert small.total_steps == 900 and small.eval_steps.value == 90  # ten evaluations per run (QLoRA)
    big = hpm.recommend(m, s, 1, rows=500_000, steps_per_epoch=31_250)
    assert big.epochs.value == 2.0  # Tulu 3
    assert big.val_size.value == pytest.approx(1024 / 500_000)  # at most QLoRA's 1,024 rows
    unknown = hpm.recommend(m, s, 1)
    assert unknown.eval_steps.value == 500 and unknown.total_steps is None


def test_overrides_say_so_and_bad_ones_are_refused():
    m = get_model("qwen2.5-7b")
    hp = hpm.recommend(m, Setup(method="lora"), 1, overrides={"learning_rate": 5e-5, "neftune_alpha": 5.0})
    assert hp.learning_rate.value == 5e-5 and hp.learning_rate.overridden
    assert "set by --lr" in hp.learning_rate.comment and "recommended" in hp.learning_rate.comment
    assert hp.neftune_alpha.value == 5.0
    with pytest.raises(ValueError, match="LoRA/QLoRA"):
        hpm.recommend(m, Setup(method="full"), 1, overrides={"use_rslora": True})
    with pytest.raises(ValueError, match="unknown"):
        hpm.recommend(m, Setup(method="lora"), 1, overrides={"lr": 1.0})


def test_every_value_has_a_reason_and_a_source():
    for method in ("full", "lora"):
        hp = hpm.recommend(get_model("llama3-8b"), Setup(method=method), 8, rows=10_000, steps_per_epoch=100,
                           dropout_cost_bytes=3 * 2**30)
        for name, item in hp.items():
            assert item.reason and item.source, name
        if method == "lora":
            assert "3.00 GiB" in hp.lora_dropout.comment  # the engine's dropout memory, passed in


def _with(t: Target, **overrides) -> Target:
    steps = overrides.pop("steps", None)
    hp = hpm.recommend(t.model, t.setup, t.world_size, rows=20_000 if steps else None, steps_per_epoch=steps,
                       overrides=overrides)
    return Target(t.plan, t.model, t.cluster, t.command, hparams=hp)


def test_new_keys_parse_in_every_trainer():
    """NEFTune, rsLoRA, LoRA+, eval split: TrainingArguments, LoraConfig, LLaMA-Factory 0.9.5's key list,
    DeepSpeed's DeepSpeedConfig and torchtune 0.6.1's facts all accept the files."""
    from peft import LoraConfig
    from transformers import HfArgumentParser, TrainingArguments

    t = _with(target("qwen2.5-7b-qlora-4090"), neftune_alpha=5.0, use_rslora=True, loraplus_lr_ratio=16.0,
              learning_rate=1e-4, steps=500)
    files = acc.emit(t, acc.trainer_for(t.setup)).files
    args = yaml.safe_load(files[acc.TRAINING_ARGS_FILE])
    (parsed,) = HfArgumentParser(TrainingArguments).parse_dict({**args, "use_cpu": True})
    assert parsed.neftune_noise_alpha == 5.0 and parsed.learning_rate == 1e-4
    assert parsed.eval_strategy == "steps" and parsed.eval_steps == t.hp.eval_steps.value
    assert parsed.warmup_steps == pytest.approx(0.03) and parsed.weight_decay == 0.0
    model = yaml.safe_load(files[acc.MODEL_FILE])
    lc = LoraConfig(**model["lora"])
    assert lc.use_rslora is True and model["loraplus"] == {"loraplus_lr_ratio": 16.0}
    assert model["data"] == {"train_on_prompt": False, "val_size": t.hp.val_size.value}
    cfg = lf.llamafactory_config(t)
    check_llamafactory_keys(cfg)
    assert cfg["neftune_noise_alpha"] == 5.0 and cfg["use_rslora"] is True and cfg["loraplus_lr_ratio"] == 16.0
    assert cfg["train_on_prompt"] is False and cfg["val_size"] == t.hp.val_size.value
    assert cfg["eval_strategy"] == "steps" and cfg["eval_steps"] == 500 * 3 // 10 + (1 if 1500 % 10 else 0)


def test_deepspeed_and_torchtune_carry_the_values():
    t = _with(target("llama3-8b-full-zero3-8xA800"), learning_rate=3e-5, weight_decay=0.1, max_grad_norm=0.5)
    cfg = ds.deepspeed_config(t, "explicit")
    parsed = parse_with_deepspeed(cfg, t.world_size)
    assert parsed.gradient_clipping == 0.5
    assert cfg["optimizer"]["params"]["lr"] == 3e-5 and cfg["optimizer"]["params"]["weight_decay"] == 0.1
    # torchtune: learning rate, whole epochs, warm-up in steps from the ratio, train_on_input
    facts = json.loads((__import__("pathlib").Path(__file__).parents[1] / "emit" / "data" / "torchtune_0.6.1.json").read_text())
    tcase = target("llama3.1-8b-lora-fsdp-4xA800")
    t2 = _with(tcase, epochs=1.5, steps=200)
    cfg = tt.torchtune_config(t2)
    assert cfg["epochs"] == 2 and cfg["optimizer"]["lr"] == t2.hp.learning_rate.value
    assert cfg["lr_scheduler"]["num_warmup_steps"] == round(0.03 * math.ceil(200 * 1.5))
    assert cfg["lr_scheduler"]["_component_"].rsplit(".", 1)[1] in facts["lr_schedulers"]
    assert cfg["dataset"]["train_on_input"] is False
    assert any("whole epochs" in n for n in tt.notes(t2))
    with pytest.raises(Exception, match="cosine"):
        tt.torchtune_config(_with(tcase, scheduler="linear"))


def test_plan_md_lists_the_hyper_parameters_and_val_size_zero_turns_eval_off():
    t = _with(target("qwen2.5-7b-qlora-4090"), val_size=0.0)
    files = build_files(t, trainers_for(t, "all")).files
    md = files["PLAN.md"]
    assert "## Hyper-parameters" in md and "QLoRA app. B.2" in md and "--neftune-alpha" in md
    args = yaml.safe_load(files[acc.TRAINING_ARGS_FILE])
    assert "eval_strategy" not in args
    assert "val_size" not in yaml.safe_load(files[lf.FILENAME])
    # the reasons are YAML comments next to the values
    assert "learning_rate: " in files[lf.FILENAME] and "# 0.0002 x sqrt(" in files[lf.FILENAME]


def test_configs_cli_overrides_and_errors(tmp_path, capsys):
    from tests.helpers import run

    out = tmp_path / "o"
    code, _, err = run(["configs", "--model", "qwen2.5-0.5b", "--gpus", "4090", "--method", "lora", "--lr", "7e-5",
                        "--epochs", "1", "--neftune-alpha", "5", "--trainer", "llamafactory", "--out", str(out)], capsys)
    assert code == 0, err
    cfg = yaml.safe_load((out / "llamafactory.yaml").read_text())
    assert cfg["learning_rate"] == 7e-5 and cfg["num_train_epochs"] == 1.0 and cfg["neftune_noise_alpha"] == 5.0
    code, _, err = run(["configs", "--model", "qwen2.5-0.5b", "--gpus", "4090", "--method", "full", "--rslora",
                        "--out", str(tmp_path / "p")], capsys)
    assert code == 2 and "LoRA/QLoRA" in err and err.count("\n") == 1
    code, _, err = run(["configs", "--model", "qwen2.5-0.5b", "--gpus", "4090", "--warmup-ratio", "1.5",
                        "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and "[0, 1)" in err
