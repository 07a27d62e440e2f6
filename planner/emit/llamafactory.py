"""LLaMA-Factory ``llamafactory-cli train`` YAML for a plan.

Keys are checked against the argument dataclasses of LLaMA-Factory 0.9.5 (``tests/planner/emit/data/
llamafactory_keys_0.9.5.json``; its TrainingArguments fields come from the installed transformers). Behaviour
this file relies on, from that version's source:

* ``hparams/parser.py``: DeepSpeed needs a distributed launch (``FORCE_TORCHRUN=1``); ``pure_bf16`` is refused
  with ZeRO-3; LoRA under DDP sets ``ddp_find_unused_parameters: false`` itself.
* ``data/collator.py``: ``neat_packing`` (packing without cross-attention between packed samples) keeps its
  cost only with FlashAttention-2 (``block_diag_attn`` otherwise builds a 4-D ``b x 1 x s x s`` mask) and asserts
  micro-batch 1 there; we ask for it only in that case and use plain ``packing`` otherwise.
* ``model/model_utils/checkpointing.py``: gradient checkpointing is on unless
  ``disable_gradient_checkpointing``; ``use_unsloth_gc`` keeps each checkpointed block input in CPU RAM
  (activation offload, no unsloth install needed).
* ``launcher.py``: reads ``NNODES``, ``NODE_RANK``, ``NPROC_PER_NODE``, ``MASTER_ADDR``, ``MASTER_PORT``.
"""

from __future__ import annotations

from typing import Any

from planner.emit import accelerate as acc
from planner.emit import deepspeed as ds
from planner.emit.common import (
    SGD_MOMENTUM,
    Emitted,
    Job,
    NotExpressible,
    Target,
    check_block_checkpointing,
    half_dtype,
    header_lines,
    hp_comments,
)
from planner.emit.yamltext import dump
from profiles.schema import ModelProfile

LLAMAFACTORY_VERSION = "0.9.5"
FILENAME = "llamafactory.yaml"
ACCELERATE_FILE = "llamafactory_accelerate.yaml"

FLASH_ATTN: dict[str, str] = {"flash": "fa2", "fa3": "fa3", "fa4": "auto", "sdpa": "sdpa", "eager": "disabled"}
"""Setup attention -> ``flash_attn`` (``extras/constants.py`` ``AttentionFunction``: auto, disabled, sdpa, fa2, and fa3
in recent releases; no FlashAttention-4, so ``auto``, which picks FlashAttention-2 or SDPA: :func:`notes` says so)."""

TEMPLATES: dict[str, str] = {
    "qwen2": "qwen",
    "qwen2_moe": "qwen",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "mistral": "mistral",
    "mixtral": "mistral",
    "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek3",
    "glm": "glm4",
    "glm4": "glm4",
    "chatglm": "glm4",
    "internlm2": "intern2",
    "olmo": "olmo",
    "olmo2": "olmo",
    "phi3": "phi",
}
"""model_type -> chat template registered in LLaMA-Factory's ``data/template.py`` (Llama is decided below)."""


def template_for(model: ModelProfile) -> str:
    """The chat template for the model family; ``default`` when LLaMA-Factory has none for it."""
    if model.model_type == "llama":
        if model.name.lower().startswith("yi"):
            return "yi"
        if model.vocab_size >= 128_000:
            return "llama3"  # Llama 3 / 3.1 / 3.2 / 3.3: 128,256-token tiktoken vocabulary
        return "llama2"
    return TEMPLATES.get(model.model_type, "default")


GALORE_OPTIM: dict[str, str] = {"adamw": "adamw_torch", "adamw-8bit": "adamw_bnb_8bit",
                                 "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor"}
"""Setup optimizer -> the ``optim`` LLaMA-Factory 0.9.5 builds GaLore from (``train/trainer_utils.py``
``_create_galore_optimizer`` raises for any other name, transformers' default ``adamw_torch_fused`` included)."""
GALORE_SCALE = 2.0
"""``galore_scale``: LLaMA-Factory's default and its GaLore example's value (HF's own default is 0.25)."""
BADAM_SWITCH_INTERVAL = 50
"""``badam_switch_interval``: LLaMA-Factory's default and its BAdam example's value."""


def check(t: Job) -> None:
    s = t.setup
    trainer = "llamafactory"
    check_block_checkpointing(trainer, s, "LLaMA-Factory")
    if s.compile and not s.compile_loss:
        raise NotExpressible(trainer, "LLaMA-Factory's torch_compile compiles the loss with the model; an eager loss "
                             "on compiled blocks is torchtitan's 2024 setup")
    if s.optimizer_in_backward:
        raise NotExpressible(trainer, "LLaMA-Factory has no optimizer-in-backward (only layer-wise GaLore); use "
                             "--trainer torchtune or torchtitan")
    if s.tp > 1 or s.cp > 1:
        raise NotExpressible(trainer, f"LLaMA-Factory {LLAMAFACTORY_VERSION} runs no tensor or context parallelism "
                             "(Megatron via use_mca is out of scope); use --trainer torchtitan")
    if s.lisa_layers:
        raise NotExpressible(trainer, f"LLaMA-Factory {LLAMAFACTORY_VERSION} has no LISA (PR #3103 was closed); LMFlow "
                             "runs it, which tuneplan does not write")
    if s.fp8 == "tensorwise":
        raise NotExpressible(trainer, "LLaMA-Factory's torchao FP8 backend uses rowwise scaling (train/fp8_utils.py: "
                             "Float8LinearConfig.from_recipe_name('rowwise')); re-plan with --fp8 rowwise or use "
                             "--trainer torchtitan")
    if acc.backend_of(s) == "deepspeed":
        ds.check(t, trainer)  # also refuses pure bf16 under ZeRO, which LLaMA-Factory's parser refuses at ZeRO-3


def llamafactory_config(t: Target) -> dict[str, Any]:
    """The YAML as a dict, in LLaMA-Factory's section order (model, method, dataset, output, train)."""
    check(t)
    s = t.setup
    hp = t.hp
    cfg: dict[str, Any] = {"model_name_or_path": t.model_path}
    if not t.model.transformers_buildable:
        cfg["trust_remote_code"] = True
    cfg["flash_attn"] = FLASH_ATTN[s.attention]
    if s.loss in ("liger", "chunked"):
        cfg["enable_liger_kernel"] = True
    if s.method == "qlora":
        cfg.update(quantization_bit=4, quantization_method="bnb", quantization_type="nf4", double_quantization=s.double_quant)
    if s.checkpointing == "none":
        cfg["disable_gradient_checkpointing"] = True
    elif s.activation_offload:
        cfg["use_unsloth_gc"] = True

    cfg.update(stage="sft", do_train=True, finetuning_type={"qlora": "lora"}.get(s.method, s.method))
    if s.trains_adapters:
        all_linear = s.lora_targets.strip() in ("all-linear", "all")
        cfg.update(
            lora_rank=s.lora_rank,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            lora_target="all" if all_linear else ",".join(t.facts.lora_targets),
        )
        if hp.use_rslora.value:
            cfg["use_rslora"] = True
        if hp.loraplus_lr_ratio.value is not None:
            cfg["loraplus_lr_ratio"] = hp.loraplus_lr_ratio.value
        if s.dora:
            cfg["use_dora"] = True
        extra = [n for n, on in (("embed_tokens", s.lora_train_embeddings), ("lm_head", s.lora_train_lm_head)) if on]
        if extra:
            cfg["additional_target"] = ",".join(extra)
    if s.method == "freeze":
        cfg.update(freeze_trainable_layers=s.freeze_layers, freeze_trainable_modules="all")
    if s.galore_rank is not None:
        cfg.update(use_galore=True, galore_target="all", galore_rank=s.galore_rank,
                   galore_update_interval=s.galore_update_interval, galore_scale=GALORE_SCALE,
                   galore_proj_type="std", galore_layerwise=s.galore_layerwise)
    if s.badam:
        cfg.update(use_badam=True, badam_mode="layer", badam_switch_mode="ascending",
                   badam_switch_interval=BADAM_SWITCH_INTERVAL)
    if s.recipe == "bf16" and not s.badam:
        cfg["pure_bf16"] = True
    if acc.backend_of(s) == "deepspeed":
        cfg["deepspeed"] = ds.HF_FILENAME

    neat = s.packing and s.attention == "flash" and s.micro_batch == 1
    cfg.update(
        dataset="alpaca_en_demo",
        dataset_dir="data",
        template=template_for(t.model),
        cutoff_len=s.seq_len,
        packing=s.packing,
        train_on_prompt=hp.train_on_prompt.value,
    )
    if hp.val_size.value:
        cfg["val_size"] = hp.val_size.value
    if neat:
        cfg["neat_packing"] = True
    cfg["preprocessing_num_workers"] = 16

    cfg.update(output_dir=f"saves/{t.slug}/sft", logging_steps=10, save_steps=500, plot_loss=True, report_to="none")

    cfg.update(
        per_device_train_batch_size=s.micro_batch,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=hp.learning_rate.value,
        num_train_epochs=hp.epochs.value,
        lr_scheduler_type=hp.scheduler.value,
        warmup_steps=hp.warmup_ratio.value,
        weight_decay=hp.weight_decay.value,
        max_grad_norm=hp.max_grad_norm.value,
    )
    if not acc.deepspeed_owns_optimizer(s):  # else DeepSpeed's optimizer block runs and optim would be ignored
        cfg["optim"] = GALORE_OPTIM[s.optimizer] if s.galore_rank is not None else acc.hf_optim(s)
    if s.fp8 in ("rowwise", "te"):
        cfg.update(fp8=True, fp8_backend="torchao" if s.fp8 == "rowwise" else "te")
    if hp.neftune_alpha.value is not None:
        cfg["neftune_noise_alpha"] = hp.neftune_alpha.value
    if hp.val_size.value:
        cfg.update(eval_strategy="steps", eval_steps=hp.eval_steps.value, per_device_eval_batch_size=s.micro_batch)
    if s.optimizer == "sgd-momentum":
        cfg["optim_args"] = f"momentum={SGD_MOMENTUM}"
    if s.recipe != "bf16" or s.badam:
        cfg[half_dtype(s)] = True
    if s.compile:
        cfg["torch_compile"] = True
    return cfg


SECTIONS = {
    "model_name_or_path": "## model",
    "stage": "## method",
    "dataset": "## dataset (replace with yours: dataset_dir holds dataset_info.json; alpaca_en_demo ships in "
    "LLaMA-Factory's data/)",
    "output_dir": "## output",
    "per_device_train_batch_size": "## train",
}

COMMENTS = {
    "flash_attn": "attention kernel the plan assumed",
    "enable_liger_kernel": "fused linear cross-entropy: logits never materialised",
    "quantization_bit": "QLoRA: 4-bit NF4 base (bitsandbytes)",
    "double_quantization": "quantise the block constants too (~0.37 bit/param less)",
    "disable_gradient_checkpointing": "the plan keeps every activation (LLaMA-Factory checkpoints by default)",
    "use_unsloth_gc": "checkpointing with block inputs offloaded to CPU RAM (the plan's activation offload)",
    "lora_rank": "higher trains more and needs more memory",
    "lora_alpha": "scale = alpha / rank",
    "pure_bf16": "bf16 weights, gradients and optimizer states, no fp32 master (the plan's recipe)",
    "use_galore": "GaLore: Adam on rank-r projections of each block matrix's gradient",
    "galore_target": "all = every nn.Linear of the blocks (not lm_head)",
    "galore_update_interval": "recompute the projection (an SVD per matrix) every N steps",
    "galore_scale": "LLaMA-Factory's default and its GaLore example's value",
    "galore_layerwise": "step each parameter in backward: no gradient buffer, no accumulation",
    "use_badam": "BAdam: one decoder block trains at a time; embeddings and LM head frozen",
    "badam_switch_interval": "switch the trained block every N steps",
    "fp8": "FP8 matmuls for the blocks' linear layers (Hopper / Ada / Blackwell; MI300X through ROCm's builds)",
    "fp8_backend": "torchao = rowwise scaling; te = TransformerEngine",
    "deepspeed": "ZeRO config (HF-integration flavour, auto values filled from this file)",
    "cutoff_len": "the plan's sequence length",
    "packing": "pack samples to full length: every micro-batch holds cutoff_len tokens",
    "neat_packing": "packing without attention across samples (FlashAttention-2, micro-batch 1)",
    "per_device_train_batch_size": "the plan's micro-batch",
    "gradient_accumulation_steps": "global batch = micro-batch x accumulation x GPUs",
    "warmup_steps": "a float < 1 is a fraction of the steps (transformers >= 5)",
}
HP_KEYS = {"lora_rank": "lora_rank", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
           "use_rslora": "use_rslora", "loraplus_lr_ratio": "loraplus_lr_ratio", "train_on_prompt": "train_on_prompt",
           "val_size": "val_size", "learning_rate": "learning_rate", "num_train_epochs": "epochs",
           "lr_scheduler_type": "scheduler", "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm",
           "neftune_noise_alpha": "neftune_alpha", "eval_steps": "eval_steps"}
"""LLaMA-Factory key -> :class:`planner.engine.hparams.HyperParams` field, for the reasons written as comments."""


def notes(t: Target) -> list[str]:
    s = t.setup
    out = []
    if s.attention == "fa3":
        out.append("flash_attn: fa3 needs a LLaMA-Factory release whose AttentionFunction has FA3 and the FlashAttention-3 "
                   "package (flash_attn_interface, Hopper)")
    if s.attention == "fa4":
        out.append("LLaMA-Factory has no FlashAttention-4 setting: flash_attn auto picks FlashAttention-2 or SDPA, so expect "
                   "the speed of --attention flash; transformers' attn_implementation flash_attention_4 runs it")
    if s.checkpointing == "selective" or s.checkpoint_every > 1:
        out.append("LLaMA-Factory checkpoints every block (no selective or every-k mode): less memory than "
                   "planned, more recompute")
    if s.loss == "chunked":
        out.append("LLaMA-Factory has no chunked cross-entropy; enable_liger_kernel's fused linear cross-entropy "
                   "stands in (less memory than planned)")
    if s.packing and not (s.attention == "flash" and s.micro_batch == 1):
        out.append("LLaMA-Factory: plain packing (samples in one sequence attend to each other); neat_packing "
                   "needs FlashAttention-2 and micro-batch 1 to avoid a b x 1 x s x s mask")
    if s.fsdp is not None and s.offload == "optimizer":
        out.append("FSDP offloads parameters, gradients and optimizer states together (fsdp_offload_params)")
    if s.galore_rank is not None and s.galore_layerwise:
        out.append("layer-wise GaLore: LLaMA-Factory logs a zero gradient norm ('The displayed gradient norm will be "
                   "all zeros in layerwise GaLore')")
    if s.badam:
        out.append("BAdam: bf16: true with the model kept in bf16 (LLaMA-Factory's BAdam example); BAdam keeps its own "
                   "fp32 copy, gradient and Adam states of the active block")
    if s.fp8 != "none":
        out.append("LLaMA-Factory FP8 needs PyTorch 2.7+ (and accelerate's FP8 support); the torchao backend skips the "
                   "embeddings and lm_head, as the plan counted")
    return out


def emit(t: Target) -> Emitted:
    cfg = llamafactory_config(t)
    s = t.setup
    files: dict[str, str] = {}
    if acc.backend_of(s) == "deepspeed":
        files[ds.HF_FILENAME] = ds.render(ds.deepspeed_config(t, "hf"))
    if s.fsdp is not None:
        # LLaMA-Factory enables gradient checkpointing itself, so FSDP's own stays off
        files[ACCELERATE_FILE] = dump(
            acc.accelerate_config(t, fsdp_checkpointing=False),
            comments=acc.accelerate_comments(t),
            header=header_lines(t, "accelerate FSDP config for LLaMA-Factory", "bash launch.sh llamafactory"),
        )
    comments = {**COMMENTS, **hp_comments(t, HP_KEYS)}
    comments["warmup_steps"] = COMMENTS["warmup_steps"] + ": " + t.hp.warmup_ratio.comment
    files[FILENAME] = dump(
        cfg,
        comments=comments,
        sections=SECTIONS,
        header=header_lines(t, f"LLaMA-Factory {LLAMAFACTORY_VERSION} training config", "bash launch.sh llamafactory")
        + ([ds.OPTIM_NOT_WRITTEN] if acc.deepspeed_owns_optimizer(s) else []),
    )
    return Emitted("llamafactory", files, {"llamafactory": launch_lines(t)}, tuple(notes(t)))


def launch_lines(t: Target) -> list[str]:
    s = t.setup
    if s.fsdp is not None:
        return [f"{acc.accelerate_launch(t, ACCELERATE_FILE)} -m llamafactory.launcher {FILENAME}"]
    if t.world_size == 1 and acc.backend_of(s) != "deepspeed":
        return [f"llamafactory-cli train {FILENAME}"]
    env = f"FORCE_TORCHRUN=1 NPROC_PER_NODE={t.cluster.gpus_per_node}"
    if t.multi_node:
        env += ' NNODES="$NNODES" NODE_RANK="$NODE_RANK" MASTER_ADDR="$MASTER_ADDR" MASTER_PORT="$MASTER_PORT"'
    return [f"{env} llamafactory-cli train {FILENAME}"]
