"""torchtune recipe YAML for a plan, where torchtune can run it as planned.

torchtune's development has stopped upstream; 0.6.1 is its last release and the version this output is checked
against (``tests/planner/emit/data/torchtune_0.6.1.json``, extracted from the wheel). What the recipes require, from
``recipes/full_finetune_single_device.py`` and ``full_finetune_distributed.py`` of 0.6.1:
``optimizer_in_bwd`` refuses gradient accumulation > 1 and any ``clip_grad_norm``;
``enable_activation_offloading`` needs ``enable_activation_checkpointing``; ``dtype: fp16`` is refused.
The LoRA recipes have no ``optimizer_in_bwd``. Distributed recipes shard with FSDP2 (``fsdp_cpu_offload``,
``fsdp_reshard_after_forward``); there is no DeepSpeed and no plain DDP.

Not expressible (a reason instead of a file): DeepSpeed ZeRO plans, multi-GPU DDP plans, fp16, freeze tuning,
models without a builder below, QLoRA where torchtune has no ``qlora_*`` builder (Qwen2.5), a subset of MLP
projections as LoRA targets (``apply_lora_to_mlp`` is all or nothing), trained embeddings / LM head, and
Liger's fused loss (0.6.1 has no fused linear cross-entropy; ``CEWithChunkedOutputLoss`` is the chunked one).

Hyper-parameters (:mod:`planner.engine.hparams`): ``optimizer.lr`` / ``weight_decay``, whole ``epochs``, the cosine
schedule's ``num_warmup_steps`` (its only schedule in 0.6.1), ``clip_grad_norm``, and ``dataset.train_on_input``,
a keyword of ``alpaca_dataset`` (``torchtune/datasets/_alpaca.py``: ``train_on_input: bool = True``, so the prompt
trains unless it is set false). The 0.6.1 recipes have no eval split, NEFTune, rsLoRA or LoRA+.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from planner.emit.common import (
    SGD_MOMENTUM,
    Emitted,
    Job,
    NotExpressible,
    Target,
    check_block_checkpointing,
    header_lines,
    hp_comments,
)
from planner.emit.yamltext import dump

TORCHTUNE_VERSION = "0.6.1"
FILENAME = "torchtune.yaml"
WARMUP_STEPS = 100
"""``num_warmup_steps`` of torchtune's cosine schedule in its shipped LoRA configs (torchtune counts steps), used
when the run's length is unknown (no ``--dataset``)."""
TT_SCHEDULERS = {"cosine": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup"}
"""Scheduler name -> torchtune 0.6.1 builder: its ``training.lr_schedulers`` has only the cosine schedule with
warm-up (``lr_schedulers`` in tests/planner/emit/data/torchtune_0.6.1.json)."""


def warmup_steps(t: Target) -> int:
    """The warm-up ratio as torchtune's step count: ratio x the run's optimizer steps when a dataset gave them,
    else the shipped configs' 100."""
    hp = t.hp
    if hp.total_steps is None:
        return WARMUP_STEPS
    return max(1, round(hp.warmup_ratio.value * hp.total_steps))


@dataclass(frozen=True)
class TorchtuneModel:
    """One model's torchtune builders and checkpoint layout, as torchtune 0.6.1's shipped configs use them
    (``recipes/configs/<family>/*.yaml``; checked by tests against the extracted facts)."""

    module: str
    full: str
    lora: str
    qlora: str | None
    tokenizer: str
    tokenizer_files: tuple[tuple[str, str], ...]
    """tokenizer argument -> file below the download folder (``tune download <hf_id> --output-dir``)"""
    checkpointer: str
    checkpoint_subdir: str
    checkpoint_files: tuple[str, ...] | tuple[tuple[str, str], ...]
    """a list of files, or (``filename_format``, ``max_filename``) pairs for torchtune's FormattedCheckpointFiles"""
    model_type: str


_LLAMA3_TOK = ("torchtune.models.llama3.llama3_tokenizer", (("path", "original/tokenizer.model"),))
_LLAMA2_TOK = ("torchtune.models.llama2.llama2_tokenizer", (("path", "tokenizer.model"),))
_QWEN25_TOK = ("torchtune.models.qwen2_5.qwen2_5_tokenizer", (("path", "vocab.json"), ("merges_file", "merges.txt")))
_GEMMA_TOK = ("torchtune.models.gemma.gemma_tokenizer", (("path", "tokenizer.model"),))
_HF = "torchtune.training.FullModelHFCheckpointer"


def _shards(n: int) -> tuple[tuple[str, str], ...]:
    return (("filename_format", "model-{}-of-{}.safetensors"), ("max_filename", f"{n:05d}"))


def _files(n: int) -> tuple[str, ...]:
    return ("model.safetensors",) if n == 1 else tuple(f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1))


def _m(module: str, base: str, qlora: bool, tok: tuple, ckpt_files: tuple, model_type: str,
       checkpointer: str = _HF, subdir: str = "") -> TorchtuneModel:
    return TorchtuneModel(
        module=f"torchtune.models.{module}", full=base, lora=f"lora_{base}", qlora=f"qlora_{base}" if qlora else None,
        tokenizer=tok[0], tokenizer_files=tok[1], checkpointer=checkpointer, checkpoint_subdir=subdir,
        checkpoint_files=ckpt_files, model_type=model_type,
    )


def _bins(n: int) -> tuple[str, ...]:
    return tuple(f"pytorch_model-{i:05d}-of-{n:05d}.bin" for i in range(1, n + 1))


TORCHTUNE_MODELS: dict[str, TorchtuneModel] = {
    # Llama 2: the checkpoint layout of torchtune's llama2 configs (7B: eleuther_evaluation.yaml and
    # 7B_full_low_memory.yaml, the chapter's 48 GB recipe; 13B: 13B_full.yaml; 70B: 70B_lora.yaml)
    "Llama-2-7B": _m("llama2", "llama2_7b", True, _LLAMA2_TOK, _bins(2), "LLAMA2"),
    "Llama-2-13B": _m("llama2", "llama2_13b", True, _LLAMA2_TOK, _bins(3), "LLAMA2"),
    "Llama-2-70B": _m("llama2", "llama2_70b", True, _LLAMA2_TOK,
                      (("filename_format", "pytorch_model-{}-of-{}.bin"), ("max_filename", "00015")), "LLAMA2"),
    # profile name -> builders; files from the shipped configs (which name the -Instruct uploads; the base
    # uploads are sharded the same way [unverified for the base repos])
    "Llama-3-8B": _m("llama3", "llama3_8b", True, _LLAMA3_TOK, ("consolidated.00.pth",), "LLAMA3",
                     "torchtune.training.FullModelMetaCheckpointer", "original"),
    "Llama-3-70B": _m("llama3", "llama3_70b", True, _LLAMA3_TOK, _shards(30), "LLAMA3"),
    "Llama-3.1-8B": _m("llama3_1", "llama3_1_8b", True, _LLAMA3_TOK, _files(4), "LLAMA3"),
    "Llama-3.1-70B": _m("llama3_1", "llama3_1_70b", True, _LLAMA3_TOK, _shards(30), "LLAMA3"),
    "Llama-3.2-1B": _m("llama3_2", "llama3_2_1b", True, _LLAMA3_TOK, _files(1), "LLAMA3_2"),
    "Llama-3.2-3B": _m("llama3_2", "llama3_2_3b", True, _LLAMA3_TOK, _files(2), "LLAMA3_2"),
    "Llama-3.3-70B": _m("llama3_3", "llama3_3_70b", True, _LLAMA3_TOK, _shards(30), "LLAMA3"),
    "Qwen2.5-0.5B": _m("qwen2_5", "qwen2_5_0_5b", False, _QWEN25_TOK, _files(1), "QWEN2"),
    "Qwen2.5-1.5B": _m("qwen2_5", "qwen2_5_1_5b_base", False, _QWEN25_TOK, _files(1), "QWEN2"),
    "Qwen2.5-3B": _m("qwen2_5", "qwen2_5_3b", False, _QWEN25_TOK, _files(2), "QWEN2"),
    "Qwen2.5-7B": _m("qwen2_5", "qwen2_5_7b_base", False, _QWEN25_TOK, _files(4), "QWEN2"),
    "Qwen2.5-14B": _m("qwen2_5", "qwen2_5_14b_base", False, _QWEN25_TOK, _shards(8), "QWEN2"),
    "Qwen2.5-32B": _m("qwen2_5", "qwen2_5_32b_base", False, _QWEN25_TOK, _shards(17), "QWEN2"),
    "Qwen2.5-72B": _m("qwen2_5", "qwen2_5_72b_base", False, _QWEN25_TOK, _shards(37), "QWEN2"),
    "Gemma-2-2B": _m("gemma2", "gemma2_2b", True, _GEMMA_TOK, _files(3), "GEMMA2"),
    "Gemma-2-9B": _m("gemma2", "gemma2_9b", True, _GEMMA_TOK, _shards(8), "GEMMA2"),
    "Gemma-2-27B": _m("gemma2", "gemma2_27b", True, _GEMMA_TOK, _shards(24), "GEMMA2"),
}

LORA_ATTN: dict[str, str] = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
"""HF projection names -> torchtune ``lora_attn_modules`` names."""
LORA_MLP = ("gate_proj", "up_proj", "down_proj")
"""torchtune's ``apply_lora_to_mlp`` adapts w1, w2 and w3 (these three) together."""

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"_component_": "torch.optim.AdamW", "fused": True},
    "adamw-8bit": {"_component_": "bitsandbytes.optim.AdamW8bit"},
    "paged-adamw": {"_component_": "bitsandbytes.optim.PagedAdamW"},
    "paged-adamw-8bit": {"_component_": "bitsandbytes.optim.PagedAdamW8bit"},
    "sgd": {"_component_": "torch.optim.SGD"},
    "sgd-momentum": {"_component_": "torch.optim.SGD", "momentum": SGD_MOMENTUM},
    "adafactor": {"_component_": "torch.optim.Adafactor"},
}
"""Setup optimizer -> torchtune ``optimizer`` block (torchtune instantiates any ``_component_``; its recipes
document bitsandbytes' 8-bit and paged AdamW; ``torch.optim.Adafactor`` needs torch >= 2.5)."""

LOSSES: dict[str, str] = {
    "plain": "torch.nn.CrossEntropyLoss",
    "chunked": "torchtune.modules.loss.CEWithChunkedOutputLoss",
}


def recipe_name(t: Target) -> str:
    kind = "lora" if t.setup.trains_adapters else "full"
    where = "single_device" if t.world_size == 1 else "distributed"
    return f"{kind}_finetune_{where}"


def check(t: Job) -> TorchtuneModel:
    """The model's torchtune entry, or :class:`NotExpressible` with the reason."""
    s, trainer = t.setup, "torchtune"
    # what no re-plan of the sharding changes comes first, so that the search reports it (planner.emit.refusal)
    check_block_checkpointing(trainer, s, "torchtune (its ac_mode 'selective' takes a layer frequency only)")
    if s.recipe == "fp16-amp":
        raise NotExpressible(trainer, "torchtune trains in bf16 or fp32, not fp16 (its recipes refuse dtype fp16)")
    if s.compile and not s.compile_loss:
        raise NotExpressible(trainer, "torchtune's compile flag compiles the model and the loss together")
    if s.method == "freeze":
        raise NotExpressible(trainer, "torchtune has no freeze tuning; use --trainer llamafactory")
    entry = TORCHTUNE_MODELS.get(t.model.name)
    if entry is None:
        raise NotExpressible(trainer, f"no torchtune {TORCHTUNE_VERSION} builder for {t.model.name} in tuneplan's "
                             f"table (mapped: {', '.join(TORCHTUNE_MODELS)})")
    if s.method == "qlora" and entry.qlora is None:
        raise NotExpressible(trainer, f"torchtune {TORCHTUNE_VERSION} has no QLoRA builder for {t.model.name}; use "
                             "--method lora or --trainer llamafactory")
    if s.zero > 0:
        raise NotExpressible(trainer, f"the plan uses DeepSpeed ZeRO-{s.zero}; torchtune shards with FSDP2 only "
                             "(re-plan with --fsdp full-shard)")
    if t.world_size > 1 and s.fsdp is None:
        raise NotExpressible(trainer, "the plan replicates the model (DDP); torchtune's distributed recipes always "
                             "shard with FSDP2 (re-plan with --fsdp full-shard)")
    if t.world_size == 1 and s.offload != "none":
        raise NotExpressible(trainer, "torchtune's single-device recipes cannot offload parameters or optimizer "
                             "states (only the distributed ones, through fsdp_cpu_offload)")
    hp = t.hp if isinstance(t, Target) else None  # a search candidate has no hyper-parameters yet
    if hp is not None and hp.scheduler.value not in TT_SCHEDULERS:
        raise NotExpressible(trainer, f"torchtune {TORCHTUNE_VERSION} has only a cosine schedule with warm-up, not "
                             f"{hp.scheduler.value!r}; drop --scheduler or use another trainer")
    if s.optimizer_in_backward and s.trains_adapters:
        raise NotExpressible(trainer, "torchtune's LoRA recipes have no optimizer_in_bwd")
    if s.loss == "liger":
        raise NotExpressible(trainer, f"torchtune {TORCHTUNE_VERSION} has no fused linear cross-entropy; re-plan "
                             "with --loss chunked (CEWithChunkedOutputLoss)")
    if s.subspace_optimizer != "none":
        raise NotExpressible(trainer, f"torchtune {TORCHTUNE_VERSION} has no {s.method_label} (LLaMA-Factory runs "
                             "GaLore and BAdam; LMFlow runs LISA)")
    if s.fp8 != "none" or s.tp > 1 or s.cp > 1:
        raise NotExpressible(trainer, f"tuneplan writes FP8 / tensor / context parallelism for torchtitan, not torchtune "
                             f"{TORCHTUNE_VERSION}; use --trainer torchtitan")
    if t.world_size > 1 and s.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit"):
        raise NotExpressible(trainer, f"torchtune runs bitsandbytes optimizers in its single-device recipe only "
                             f"(memory_optimizations.rst); the plan uses {s.optimizer} on {t.world_size} GPUs")
    if s.trains_adapters:
        if s.lora_train_embeddings or s.lora_train_lm_head:
            raise NotExpressible(trainer, "torchtune's LoRA builders cannot train embed_tokens / lm_head fully")
        targets = set(t.facts.lora_targets)
        mlp = targets & set(LORA_MLP)
        if mlp and mlp != set(LORA_MLP):
            raise NotExpressible(trainer, "torchtune applies LoRA to all MLP projections or none "
                                 f"(apply_lora_to_mlp); the plan adapts {', '.join(sorted(mlp))} only")
        if targets - set(LORA_MLP) - set(LORA_ATTN):
            raise NotExpressible(trainer, f"LoRA targets {', '.join(sorted(targets - set(LORA_MLP) - set(LORA_ATTN)))} "
                                 "have no torchtune equivalent")
    return entry


def torchtune_config(t: Target) -> dict[str, Any]:
    entry = check(t)
    s = t.setup
    cfg: dict[str, Any] = {
        "model_dir": t.local_dir or f"/tmp/{t.model_path.split('/')[-1]}",
        "output_dir": f"output/torchtune/{t.slug}",
    }
    builder = {"full": entry.full, "lora": entry.lora, "qlora": entry.qlora}[s.method]
    model: dict[str, Any] = {"_component_": f"{entry.module}.{builder}"}
    if s.trains_adapters:
        targets = list(t.facts.lora_targets)
        model.update(
            lora_attn_modules=[LORA_ATTN[x] for x in LORA_ATTN if x in targets],
            apply_lora_to_mlp=all(x in targets for x in LORA_MLP),
            apply_lora_to_output=False,
            lora_rank=s.lora_rank,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
        )
        if s.dora:
            model["use_dora"] = True
    cfg["model"] = model
    tok: dict[str, Any] = {"_component_": entry.tokenizer}
    tok.update({k: f"${{model_dir}}/{v}" for k, v in entry.tokenizer_files})
    tok["max_seq_len"] = s.seq_len
    cfg["tokenizer"] = tok
    files: Any = list(entry.checkpoint_files)
    if files and isinstance(files[0], tuple):
        files = dict(files)
    cfg["checkpointer"] = {
        "_component_": entry.checkpointer,
        "checkpoint_dir": "${model_dir}" + (f"/{entry.checkpoint_subdir}" if entry.checkpoint_subdir else ""),
        "checkpoint_files": files,
        "recipe_checkpoint": None,
        "output_dir": "${output_dir}",
        "model_type": entry.model_type,
    }
    cfg["resume_from_checkpoint"] = False
    if s.trains_adapters:
        cfg["save_adapter_weights_only"] = False
    cfg["dataset"] = {"_component_": "torchtune.datasets.alpaca_cleaned_dataset", "packed": s.packing}
    hp = t.hp
    cfg["dataset"]["train_on_input"] = hp.train_on_prompt.value
    cfg.update(seed=None, shuffle=True, batch_size=s.micro_batch, epochs=math.ceil(hp.epochs.value),
               max_steps_per_epoch=None)
    cfg["gradient_accumulation_steps"] = s.grad_accum
    opt = dict(OPTIMIZERS[s.optimizer])
    if s.foreach_adamw:
        opt["fused"] = False  # torch.optim.AdamW's own default: the multi-tensor (foreach) update
    opt["lr"] = hp.learning_rate.value
    if s.optimizer in ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit"):
        opt["weight_decay"] = hp.weight_decay.value
    cfg["optimizer"] = opt
    cfg["lr_scheduler"] = {"_component_": TT_SCHEDULERS[hp.scheduler.value], "num_warmup_steps": warmup_steps(t)}
    cfg["loss"] = {"_component_": LOSSES[s.loss]}
    if not s.trains_adapters:
        cfg["optimizer_in_bwd"] = s.optimizer_in_backward
    cfg["clip_grad_norm"] = None if s.optimizer_in_backward else hp.max_grad_norm.value
    cfg["compile"] = s.compile
    cfg["device"] = "cuda"
    cfg["dtype"] = "bf16"
    cfg["enable_activation_checkpointing"] = s.checkpointing != "none"
    cfg["enable_activation_offloading"] = s.activation_offload
    if s.fsdp is not None and t.world_size > 1:
        cfg["fsdp_reshard_after_forward"] = s.fsdp == "full-shard"
        cfg["fsdp_cpu_offload"] = s.offload != "none"
        if not t.model.tie_embeddings:
            # the input embedding and the LM head in FSDP groups of their own, as torchtune's own larger configs
            # shard them (llama3_1/8B_full.yaml: "useful for large vocab size models. Lower Memory"); the memory
            # estimate assumes it (docs/memory.md eq. C4d). A tied head has no module of its own to shard.
            cfg["custom_sharded_layers"] = ["tok_embeddings", "output"]
    cfg["metric_logger"] = {"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": "${output_dir}/logs"}
    cfg.update(log_every_n_steps=1, log_peak_memory_stats=True)
    return cfg


COMMENTS = {
    "model_dir": "where `tune download <hf id> --output-dir` put the weights (launch.sh: MODEL_DIR=...)",
    "model.lora_rank": "higher trains more and needs more memory",
    "custom_sharded_layers": "embedding and LM head sharded on their own: less memory than keeping them gathered",
    "model.lora_alpha": "usually 2 x rank",
    "tokenizer.max_seq_len": "the plan's sequence length (packing fills it)",
    "dataset.packed": "True packs samples to max_seq_len (the plan's packing)",
    "batch_size": "the plan's micro-batch",
    "optimizer_in_bwd": "step each parameter as its gradient is ready: no gradient buffer",
    "enable_activation_checkpointing": "True reduces memory (the plan's checkpointing)",
    "enable_activation_offloading": "needs activation checkpointing; block inputs go to CPU RAM",
    "fsdp_reshard_after_forward": "True = FULL_SHARD, False = SHARD_GRAD_OP",
    "fsdp_cpu_offload": "parameters, gradients and optimizer states in CPU RAM",
    "dtype": "pure bf16: weights, gradients and optimizer states",
}


HP_KEYS = {"model.lora_rank": "lora_rank", "model.lora_alpha": "lora_alpha", "model.lora_dropout": "lora_dropout",
           "dataset.train_on_input": "train_on_prompt", "epochs": "epochs", "optimizer.lr": "learning_rate",
           "optimizer.weight_decay": "weight_decay", "clip_grad_norm": "max_grad_norm", "lr_scheduler": "scheduler"}
"""torchtune key path -> :class:`planner.engine.hparams.HyperParams` field, for the reasons written as comments."""


def notes(t: Target) -> list[str]:
    s = t.setup
    hp = t.hp
    out = [f"torchtune is no longer developed upstream; this targets its last release, {TORCHTUNE_VERSION}"]
    missing = [n for n, on in (("an eval split (val_size)", bool(hp.val_size.value)),
                               ("NEFTune", hp.neftune_alpha.value is not None),
                               ("rsLoRA", bool(hp.use_rslora and hp.use_rslora.value)),
                               ("LoRA+", bool(hp.loraplus_lr_ratio and hp.loraplus_lr_ratio.value))) if on]
    if missing:
        out.append(f"torchtune {TORCHTUNE_VERSION}'s recipes have no {', '.join(missing)}: not in torchtune.yaml")
    if hp.epochs.value != math.ceil(hp.epochs.value):
        out.append(f"torchtune counts whole epochs: {math.ceil(hp.epochs.value)} instead of {hp.epochs.value:g}")
    if s.recipe != "bf16" and s.method in ("full", "freeze"):
        out.append(f"torchtune trains in pure bf16 (8 bytes/parameter of model state); the plan counted recipe "
                   f"{s.recipe}: torchtune needs less memory than planned and keeps bf16 optimizer states")
    if s.checkpointing == "selective" or s.checkpoint_every > 1:
        out.append("torchtune checkpoints every block: less memory than planned, more recompute")
    if s.fsdp is not None and t.world_size == 1:
        out.append("one GPU: torchtune's single-device recipe, no FSDP wrapping (no gather buffers)")
    if s.attention != "sdpa":
        out.append(f"torchtune uses PyTorch SDPA attention; the plan assumed {s.attention}")
    if s.fsdp is not None and s.offload == "optimizer":
        out.append("fsdp_cpu_offload offloads parameters and gradients too; the plan offloaded the optimizer only")
    return out


def emit(t: Target) -> Emitted:
    cfg = torchtune_config(t)
    header = header_lines(
        t,
        f"torchtune {TORCHTUNE_VERSION} config for recipe {recipe_name(t)}. NOTE: torchtune is no longer developed "
        "upstream; this is its last release",
        "bash launch.sh torchtune",
    )
    header.insert(1, f"Weights: the checkpoint files in {t.local_dir}" if t.local_dir else
                  f"Weights: tune download {t.model_path} --output-dir {cfg['model_dir']}")
    comments = {**COMMENTS, **hp_comments(t, HP_KEYS)}
    hp = t.hp
    comments["lr_scheduler.num_warmup_steps"] = (
        f"{hp.warmup_ratio.value:g} x {hp.total_steps:,} steps: " if hp.total_steps else
        f"torchtune's shipped configs (run length unknown; {hp.warmup_ratio.value:g} of the steps recommended): ") \
        + hp.warmup_ratio.comment
    if t.setup.optimizer_in_backward:
        comments["gradient_accumulation_steps"] = "must be 1 with optimizer_in_bwd"
        comments["clip_grad_norm"] = "null: torchtune refuses clipping with optimizer_in_bwd"
    text = dump(cfg, comments=comments, header=header)
    return Emitted("torchtune", {FILENAME: text}, {"torchtune": launch_lines(t)}, tuple(notes(t)))


def launch_lines(t: Target) -> list[str]:
    override = ' ${MODEL_DIR:+model_dir="$MODEL_DIR"}'
    if t.world_size == 1:
        return [f"tune run {recipe_name(t)} --config {FILENAME}{override}"]
    node = (
        ' --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"'
        if t.multi_node
        else ""
    )
    return [f"tune run{node} --nproc_per_node {t.cluster.gpus_per_node} {recipe_name(t)} --config {FILENAME}{override}"]
