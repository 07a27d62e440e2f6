"""HF Trainer under ``accelerate launch``: the accelerate config, the ``TrainingArguments``, and the model
loading / LoRA settings a training script needs.

* ``accelerate_config.yaml`` - loaded by accelerate's ``ClusterConfig.from_yaml_file`` (unknown keys are an
  error there): DeepSpeed plugin pointing at ``ds_config_hf.json``, FSDP (version 2), or plain multi-GPU.
* ``training_args.yaml`` - every key a ``transformers.TrainingArguments`` field (checked against the installed
  transformers in the tests); a script reads it with ``HfArgumentParser(TrainingArguments).parse_yaml_file``.
* ``hf_model.yaml`` - ``from_pretrained`` keyword arguments (dtype, attention kernel, the 4-bit
  ``BitsAndBytesConfig`` for QLoRA) and the ``peft.LoraConfig`` arguments.

FSDP: accelerate's ``fsdp_sharding_strategy`` is FSDP-1 only; with ``fsdp_version: 2`` (what accelerate's own
``accelerate config`` offers first) full sharding is ``fsdp_reshard_after_forward: true`` (ZeRO-3-like) and
shard-grad-op is ``false`` (parameters stay gathered between forward and backward, ZeRO-2-like).
"""

from __future__ import annotations

from typing import Any, Literal

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
from planner.engine.setup import HF_ATTN_IMPLEMENTATION, Setup

Backend = Literal["deepspeed", "fsdp", "ddp"]
TRAINER_OF: dict[str, Backend] = {"hf-deepspeed": "deepspeed", "hf-fsdp": "fsdp", "hf-ddp": "ddp"}

HF_OPTIM: dict[str, str] = {
    "adamw": "adamw_torch_fused",
    "adamw-8bit": "adamw_bnb_8bit",
    "paged-adamw": "paged_adamw_32bit",
    "paged-adamw-8bit": "paged_adamw_8bit",
    "sgd": "sgd",
    "sgd-momentum": "sgd",
    "adafactor": "adafactor",
}
"""Setup optimizer -> ``TrainingArguments.optim`` (members of ``transformers.training_args.OptimizerNames``)."""


def hf_optim(s: Setup) -> str:
    """``TrainingArguments.optim`` for ``s``: :data:`HF_OPTIM`, with torch's multi-tensor AdamW
    (``adamw_torch``, torch's ``foreach`` default) for ``optimizer_kernel="foreach"``."""
    if s.foreach_adamw:
        return "adamw_torch"
    return HF_OPTIM[s.optimizer]

GALORE_HF_OPTIM: dict[str, str] = {"adamw": "galore_adamw", "adamw-8bit": "galore_adamw_8bit",
                                    "adafactor": "galore_adafactor"}
"""Setup optimizer -> transformers' GaLore ``optim`` (``OptimizerNames``; ``_layerwise`` appended for layer-wise)."""

HF_ATTENTION: dict[str, str] = HF_ATTN_IMPLEMENTATION
"""Setup attention -> ``attn_implementation`` of ``from_pretrained`` (the one map, :mod:`planner.engine.setup`)."""

MAIN_PROCESS_PORT = 29500
"""torchrun's default master port; launch.sh passes ``$MASTER_PORT`` on multi-node runs."""

ACCELERATE_FILE = "accelerate_config.yaml"
TRAINING_ARGS_FILE = "training_args.yaml"
MODEL_FILE = "hf_model.yaml"


TRAINING_ARGS_HP = {"learning_rate": "learning_rate", "num_train_epochs": "epochs", "lr_scheduler_type": "scheduler",
                    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "eval_steps": "eval_steps",
                    "neftune_noise_alpha": "neftune_alpha"}
"""TrainingArguments key -> :class:`planner.engine.hparams.HyperParams` field (for the comments)."""
MODEL_FILE_HP = {"lora.r": "lora_rank", "lora.lora_alpha": "lora_alpha", "lora.lora_dropout": "lora_dropout",
                 "lora.use_rslora": "use_rslora", "loraplus.loraplus_lr_ratio": "loraplus_lr_ratio",
                 "data.train_on_prompt": "train_on_prompt", "data.val_size": "val_size"}


def backend_of(setup: Setup) -> Backend:
    if setup.fsdp is not None:
        return "fsdp"
    if setup.zero > 0 or setup.recipe == "deepspeed-bf16":
        return "deepspeed"
    return "ddp"


def trainer_for(setup: Setup) -> str:
    """The ``hf-*`` trainer that matches the plan's sharding."""
    return {"deepspeed": "hf-deepspeed", "fsdp": "hf-fsdp", "ddp": "hf-ddp"}[backend_of(setup)]


def check(t: Job, trainer: str) -> None:
    """Raise :class:`NotExpressible` unless the HF Trainer with ``trainer``'s backend runs the plan as planned."""
    s = t.setup
    # what no re-plan of the sharding changes comes first, so that the search reports it (planner.emit.refusal)
    check_block_checkpointing(trainer, s, "the HF Trainer")
    if s.compile and not s.compile_loss:
        raise NotExpressible(trainer, "the HF Trainer's torch_compile compiles the loss with the model (it runs in "
                             "forward); an eager loss on compiled blocks is torchtitan's 2024 setup")
    want = TRAINER_OF[trainer]
    have = backend_of(s)
    if want != have:
        replan = {"fsdp": "--fsdp full-shard", "deepspeed": "--zero 2 or 3", "ddp": "--zero 0"}[want]
        raise NotExpressible(
            trainer, f"the plan uses {s.sharding_label} ({have}); use --trainer {trainer_for(s)} or re-plan with {replan}"
        )
    if have == "deepspeed":
        ds.check(t, trainer)
    if s.optimizer_in_backward:
        raise NotExpressible(trainer, "the HF Trainer has no optimizer-in-backward (only layer-wise GaLore / LOMO); "
                             "use --trainer torchtune or torchtitan")
    if s.tp > 1 or s.cp > 1:
        raise NotExpressible(trainer, "tuneplan writes tensor / context parallelism for torchtitan only; use --trainer "
                             "torchtitan")
    if s.badam or s.lisa_layers:
        raise NotExpressible(trainer, f"the HF Trainer has no {'BAdam' if s.badam else 'LISA'}; "
                             + ("use --trainer llamafactory" if s.badam else "LMFlow runs LISA, which tuneplan does not write"))
    if s.fp8 != "none":
        raise NotExpressible(trainer, "tuneplan writes FP8 for LLaMA-Factory (rowwise, te) and torchtitan "
                             "(tensorwise, rowwise); the HF Trainer needs accelerate FP8 recipe kwargs in your script")
    if s.galore_rank is not None and s.optimizer not in GALORE_HF_OPTIM:
        raise NotExpressible(trainer, f"the HF Trainer's GaLore wraps AdamW, 8-bit AdamW or Adafactor, not {s.optimizer}")
    if s.method == "freeze":
        raise NotExpressible(
            trainer, "the HF Trainer has no setting to freeze all but the last blocks; use --trainer llamafactory"
        )


def _checkpointing_kwargs(s: Setup) -> dict[str, Any]:
    kw: dict[str, Any] = {"use_reentrant": False}
    if s.checkpoint_every > 1:
        kw["every_n_layers"] = s.checkpoint_every
    if s.activation_offload:
        kw["offload"] = True
    return kw


def _fsdp_owns_checkpointing(s: Setup) -> bool:
    """FSDP's own activation checkpointing (preferred by transformers under FSDP) checkpoints every block and
    cannot offload; other cases go through ``TrainingArguments.activation_checkpointing``."""
    return s.fsdp is not None and s.checkpointing != "none" and s.checkpoint_every == 1 and not s.activation_offload


def accelerate_config(t: Target, ds_file: str = ds.HF_FILENAME, fsdp_checkpointing: bool | None = None) -> dict[str, Any]:
    """accelerate's ClusterConfig as a dict. Multi-node fields are defaults launch.sh overrides per node."""
    s = t.setup
    backend = backend_of(s)
    cfg: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "debug": False}
    if backend == "deepspeed":
        cfg["distributed_type"] = "DEEPSPEED"
        dsc: dict[str, Any] = {"deepspeed_config_file": ds_file, "zero3_init_flag": s.zero == 3}
        if t.multi_node:
            dsc["deepspeed_multinode_launcher"] = "standard"
        cfg["deepspeed_config"] = dsc
    elif backend == "fsdp":
        own = _fsdp_owns_checkpointing(s) if fsdp_checkpointing is None else fsdp_checkpointing
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": s.fsdp == "full-shard",
            "fsdp_offload_params": s.offload != "none",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": own,
        }
        cfg["mixed_precision"] = half_dtype(s)
    else:
        cfg["distributed_type"] = "MULTI_GPU" if t.world_size > 1 else "NO"
        cfg["mixed_precision"] = half_dtype(s)
    cfg.update(
        num_machines=t.cluster.nodes,
        num_processes=t.world_size,
        machine_rank=0,
        gpu_ids="all",
        rdzv_backend="static",
        same_network=True,
        main_training_function="main",
        use_cpu=False,
    )
    if t.multi_node:
        cfg["main_process_ip"] = None
        cfg["main_process_port"] = MAIN_PROCESS_PORT
    return cfg


def accelerate_comments(t: Target) -> dict[str, str]:
    out = {
        "num_processes": "all GPUs of all nodes",
        "deepspeed_config.zero3_init_flag": "build the model directly sharded (ZeRO-3)",
        "fsdp_config.fsdp_reshard_after_forward": "true = FULL_SHARD (ZeRO-3-like), false = SHARD_GRAD_OP",
        "fsdp_config.fsdp_offload_params": "parameters, gradients and optimizer states in CPU RAM",
    }
    if t.multi_node:
        out["machine_rank"] = "launch.sh passes --machine_rank $NODE_RANK on each node"
        out["main_process_ip"] = "launch.sh passes --main_process_ip $MASTER_ADDR"
    return out


def deepspeed_owns_optimizer(s: Setup) -> bool:
    """Whether DeepSpeed's optimizer block (``ds_config_hf.json``) replaces the HF Trainer's ``optim``: then
    ``optim`` is not written, since it would not take effect (:data:`planner.emit.deepspeed.OPTIM_NOT_WRITTEN`)."""
    return backend_of(s) == "deepspeed" and ds.owns_optimizer(s)


def training_arguments(t: Target) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments for the plan (transformers 5: ``activation_checkpointing``,
    float ``warmup_steps`` as a fraction)."""
    s = t.setup
    hp = t.hp
    args: dict[str, Any] = {
        "output_dir": f"output/{t.slug}",
        "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        "learning_rate": hp.learning_rate.value,
        "num_train_epochs": hp.epochs.value,
        "lr_scheduler_type": hp.scheduler.value,
        "warmup_steps": hp.warmup_ratio.value,
        "weight_decay": hp.weight_decay.value,
        "max_grad_norm": hp.max_grad_norm.value,
    }
    if not deepspeed_owns_optimizer(s):
        args["optim"] = hf_optim(s)
    if s.galore_rank is not None:
        # transformers trainer_optimizer: optim_target_modules names the projected modules; optim_args its knobs
        args["optim"] = GALORE_HF_OPTIM[s.optimizer] + ("_layerwise" if s.galore_layerwise else "")
        args["optim_target_modules"] = "all-linear"
        args["optim_args"] = (f"rank={s.galore_rank},update_proj_gap={s.galore_update_interval},"
                              f"scale={2.0},proj_type=std")
    if hp.val_size.value:
        args.update(eval_strategy="steps", eval_steps=hp.eval_steps.value, per_device_eval_batch_size=s.micro_batch)
    if hp.neftune_alpha.value is not None:
        args["neftune_noise_alpha"] = hp.neftune_alpha.value
    if s.optimizer == "sgd-momentum":
        args["optim_args"] = f"momentum={SGD_MOMENTUM}"
    args[half_dtype(s)] = True
    ckpt = s.checkpointing != "none" and not _fsdp_owns_checkpointing(s)
    args["activation_checkpointing"] = ckpt
    if ckpt:
        args["activation_checkpointing_kwargs"] = _checkpointing_kwargs(s)
    if s.loss in ("liger", "chunked"):
        args["use_liger_kernel"] = True
    if s.compile:
        args["torch_compile"] = True
    if s.trains_adapters and t.world_size > 1 and backend_of(s) == "ddp":
        args["ddp_find_unused_parameters"] = False
    args.update(logging_steps=10, save_strategy="epoch", report_to="none")
    return args


def model_settings(t: Target) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments and ``peft.LoraConfig`` arguments."""
    s = t.setup
    half = {"bf16": "bfloat16", "fp16": "float16"}[half_dtype(s)]
    # HF AMP keeps fp32 weights that train and autocasts (planner.engine.dtypes, recipe hf-amp / fp16-amp); LoRA bases
    # and pure bf16 load in the 16-bit dtype; DeepSpeed casts to 16-bit itself.
    fp32 = s.method == "full" and s.recipe in ("hf-amp", "fp16-amp")
    kwargs: dict[str, Any] = {"dtype": "float32" if fp32 else half, "attn_implementation": HF_ATTENTION[s.attention]}
    if s.method == "qlora":
        q: dict[str, Any] = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": s.double_quant,
            "bnb_4bit_compute_dtype": half,
        }
        if s.zero == 3 or s.fsdp is not None:
            q["bnb_4bit_quant_storage"] = half  # sharded QLoRA: storage dtype must match the other params
        kwargs["quantization_config"] = q
    out: dict[str, Any] = {"model_name_or_path": t.model_path, "from_pretrained": kwargs}
    if s.trains_adapters:
        targets = "all-linear" if s.lora_targets.strip() in ("all-linear", "all") else list(t.facts.lora_targets)
        lora: dict[str, Any] = {
            "r": s.lora_rank,
            "lora_alpha": s.lora_alpha,
            "lora_dropout": s.lora_dropout,
            "target_modules": targets,
            "use_dora": s.dora,
            "use_rslora": t.hp.use_rslora.value,
            "task_type": "CAUSAL_LM",
        }
        save = [n for n, on in (("embed_tokens", s.lora_train_embeddings), ("lm_head", s.lora_train_lm_head)) if on]
        if save:
            lora["modules_to_save"] = save
        out["lora"] = lora
        if t.hp.loraplus_lr_ratio.value is not None:
            out["loraplus"] = {"loraplus_lr_ratio": t.hp.loraplus_lr_ratio.value}
    hp = t.hp
    out["data"] = {"train_on_prompt": hp.train_on_prompt.value, "val_size": hp.val_size.value}
    return out


def notes(t: Target) -> list[str]:
    s = t.setup
    out = []
    if s.checkpointing == "selective":
        out.append("HF Trainer: checkpointing is per whole block (no attention-only mode), so it recomputes more "
                   "than the plan's selective checkpointing: less memory, slower")
    if s.loss == "chunked":
        out.append("HF Trainer: no chunked cross-entropy; Liger's fused linear cross-entropy (use_liger_kernel) "
                   "stands in and never materialises the logits: less memory than planned")
    if s.loss in ("liger", "chunked"):
        out.append("HF Trainer: use_liger_kernel also swaps in Liger's RMSNorm / SwiGLU / RoPE kernels, which save "
                   "activation memory the plan did not count")
    if s.packing:
        out.append("HF Trainer: packing belongs to your script's data pipeline (e.g. TRL SFTTrainer packing=True or "
                   "DataCollatorWithFlattening); the plan assumes every micro-batch holds seq_len tokens")
    if s.fsdp is not None and s.offload == "optimizer":
        out.append("FSDP offloads parameters, gradients and optimizer states together (fsdp_offload_params); the "
                   "plan offloaded the optimizer only: less GPU memory, more PCIe traffic")
    return out


def emit(t: Target, trainer: str) -> Emitted:
    check(t, trainer)
    s = t.setup
    files: dict[str, str] = {}
    run = "bash launch.sh hf"
    if backend_of(s) == "deepspeed":
        files[ds.HF_FILENAME] = ds.render(ds.deepspeed_config(t, "hf"))
        files[ds.EXPLICIT_FILENAME] = ds.render(ds.deepspeed_config(t, "explicit"))
    files[ACCELERATE_FILE] = dump(
        accelerate_config(t), comments=accelerate_comments(t),
        header=header_lines(t, "accelerate config for the HF Trainer", run),
    )
    files[TRAINING_ARGS_FILE] = dump(
        training_arguments(t),
        comments={
            "per_device_train_batch_size": "the plan's micro-batch",
            "activation_checkpointing": "recompute each block in backward: the plan's checkpointing",
            "use_liger_kernel": "fused linear cross-entropy: logits never materialised",
            **hp_comments(t, TRAINING_ARGS_HP),
            "warmup_steps": "a float < 1 is a fraction of the steps (transformers >= 5): " + t.hp.warmup_ratio.comment,
            "eval_strategy": "evaluate on the held-out split (hf_model.yaml data.val_size) your script passes as eval_dataset",
        },
        header=header_lines(t, "TrainingArguments for HfArgumentParser(TrainingArguments).parse_yaml_file", run)
        + ([ds.OPTIM_NOT_WRITTEN] if deepspeed_owns_optimizer(s) else []),
    )
    files[MODEL_FILE] = dump(
        model_settings(t),
        comments={
            "from_pretrained": "AutoModelForCausalLM.from_pretrained(model_name_or_path, **from_pretrained)",
            "from_pretrained.quantization_config": "BitsAndBytesConfig(**quantization_config)",
            "lora": "peft.LoraConfig(**lora); then get_peft_model(model, config)",
            "loraplus": "peft.optimizers.create_loraplus_optimizer(model, optimizer_cls, lr=..., **loraplus)",
            "data": "for your script's data pipeline",
            **hp_comments(t, MODEL_FILE_HP),
        },
        header=header_lines(t, "model loading and LoRA settings for your training script", run),
    )
    modes = {"hf": launch_lines(t)}
    if backend_of(s) == "deepspeed":
        modes["deepspeed"] = deepspeed_launch_lines(t)
    return Emitted(trainer, files, modes, tuple(notes(t)))


def accelerate_launch(t: Target, config_file: str) -> str:
    """``accelerate launch --config_file F`` plus, on several nodes, the per-node values launch.sh holds."""
    node = (
        ' --num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR"'
        ' --main_process_port "$MASTER_PORT"'
        if t.multi_node
        else ""
    )
    return f"accelerate launch --config_file {config_file}{node}"


def launch_lines(t: Target) -> list[str]:
    """The ``hf`` launch command; node variables come from launch.sh."""
    return [f'{accelerate_launch(t, ACCELERATE_FILE)} "$TRAIN_SCRIPT" {TRAINING_ARGS_FILE}']


def deepspeed_launch_lines(t: Target) -> list[str]:
    node = (
        ' --num_nodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_ssh'
        if t.multi_node
        else ""
    )
    return [f'deepspeed --num_gpus {t.cluster.gpus_per_node}{node} "$TRAIN_SCRIPT" --deepspeed_config {ds.EXPLICIT_FILENAME}']
