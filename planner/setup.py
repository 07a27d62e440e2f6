"""The :class:`Setup`: every choice that changes what a fine-tuning step costs.

Each field has a documented default that matches what the trainer does by default (LLaMA-Factory for
LoRA rank / alpha / dropout / targets, the HF Trainer for the rest) unless noted. Strategies are named
``Literal`` values, never magic integers (the ZeRO stage number *is* the name).

:func:`validate_setup` rejects impossible combinations with one-line :class:`SetupError` messages; it is
the single place those rules live.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from profiles.cluster import Cluster
from profiles.schema import ModelProfile

Recipe = Literal["hf-amp", "deepspeed-bf16", "bf16", "fp16-amp"]
RECIPES: dict[str, str] = {
    "hf-amp": "HF Trainer AMP: fp32 weights, bf16 autocast (a bf16 copy of each weight lives during the step), "
    "fp32 grads, fp32 Adam states: 4+4+8 B/param plus the autocast copies",
    "deepspeed-bf16": "DeepSpeed bf16 with fp32 master: bf16 weights + bf16 grads, fp32 grad buffer, fp32 master "
    "and Adam states (2 + 18/N B/param under ZeRO-2, DeepSpeed's own accounting)",
    "bf16": "pure bf16 (torchtune default): bf16 weights, grads and Adam states, no fp32 master: 8 B/param",
    "fp16-amp": "fp16 AMP for GPUs without bf16 (V100, T4): fp32 weights, fp16 autocast, fp32 grads and "
    "states, dynamic loss scaling",
}

Method = Literal["full", "lora", "qlora", "freeze"]
METHODS: dict[str, str] = {
    "full": "full fine-tuning: every parameter trains",
    "lora": "LoRA: frozen base in the compute dtype, trainable low-rank adapters (peft)",
    "qlora": "QLoRA: frozen base in NF4 (bitsandbytes), trainable low-rank adapters",
    "freeze": "freeze tuning: only the last --freeze-layers blocks train (LLaMA-Factory finetuning_type: freeze)",
}

Optimizer = Literal["adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "sgd-momentum", "adafactor"]
OPTIMIZERS: dict[str, str] = {
    "adamw": "AdamW, two fp32 states (m, v) per trainable parameter (bf16 under the pure-bf16 recipe)",
    "adamw-8bit": "bitsandbytes 8-bit AdamW: two uint8 states plus one fp32 absmax per 2048-value block",
    "paged-adamw": "bitsandbytes PagedAdamW (32-bit): fp32 m and v in CUDA unified memory (cudaMallocManaged), "
    "outside torch's allocator; pages move to the host under memory pressure",
    "paged-adamw-8bit": "bitsandbytes PagedAdamW8bit: 8-bit states in CUDA unified memory, outside torch's allocator; "
    "pages move to the host under memory pressure",
    "sgd": "plain SGD: no state",
    "sgd-momentum": "SGD with momentum: one state per trainable parameter",
    "adafactor": "Adafactor: factored second moment (row + column vectors per matrix), no first moment",
}

Fsdp = Literal["full-shard", "shard-grad-op"]
Offload = Literal["none", "optimizer", "optimizer+params"]
Checkpointing = Literal["none", "full", "selective"]
CHECKPOINTING: dict[str, str] = {
    "none": "keep every activation for backward",
    "full": "recompute each checkpointed block in backward; keep only its input",
    "selective": "recompute attention only (Korthikanti et al. 2022, sec. 4.2); keep MLP activations",
}
Attention = Literal["sdpa", "flash", "eager"]
ATTENTION: dict[str, str] = {
    "sdpa": "torch scaled_dot_product_attention (flash / memory-efficient kernel: log-sum-exp per row, no s^2)",
    "flash": "FlashAttention-2: no s^2 scores, a log-sum-exp per row",
    "eager": "eager attention: materialises the a x s x s scores and probabilities",
}
Loss = Literal["plain", "chunked", "liger"]
LOSSES: dict[str, str] = {
    "plain": "HF default: full logits, upcast to fp32, cross-entropy and its gradient",
    "chunked": "chunked cross-entropy (torchtune CEWithChunkedOutputLoss, 8 chunks): fp32 upcast per chunk",
    "liger": "Liger fused linear cross-entropy: logits never materialised beyond one chunk",
}


class SetupError(ValueError):
    """An impossible or unsupported setup: one line, safe to print as-is."""


class Setup(BaseModel):
    """One concrete training configuration. Defaults are the trainers' own defaults (see each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: Recipe = Field("deepspeed-bf16", description="precision recipe; decides the byte accounting")
    method: Method = Field("full", description="what trains")
    optimizer: Optimizer = Field("adamw", description="HF Trainer default: adamw_torch_fused")
    zero: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage; 0 = plain data parallel (DDP)")
    fsdp: Fsdp | None = Field(None, description="PyTorch FSDP instead of ZeRO (then zero must be 0)")
    offload: Offload = "none"
    checkpointing: Checkpointing = Field("none", description="HF Trainer default: gradient_checkpointing=False")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every k-th block (1 = all blocks)")
    attention: Attention = Field("sdpa", description="transformers default attn_implementation")
    loss: Loss = "plain"
    micro_batch: int = Field(1, ge=1, description="per-device batch size (HF default 8; planners search it)")
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(2048, ge=1)
    packing: bool = Field(True, description="packed sequences: every micro-batch is full; no padding")
    lora_rank: int = Field(8, ge=1, description="LLaMA-Factory default 8")
    lora_alpha: int = Field(16, ge=1, description="LLaMA-Factory default: 2 x rank")
    lora_targets: str = Field("all-linear", description="'all-linear' or a comma list such as 'q_proj,v_proj'")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LLaMA-Factory and peft default 0")
    dora: bool = False
    lora_train_embeddings: bool = Field(False, description="train embed_tokens too (vocabulary expansion)")
    lora_train_lm_head: bool = Field(False, description="train lm_head too (vocabulary expansion)")
    freeze_layers: int = Field(2, ge=1, description="freeze method: trainable last blocks (LLaMA-Factory default 2)")
    double_quant: bool = Field(True, description="QLoRA double quantisation (LLaMA-Factory default true)")
    optimizer_in_backward: bool = False
    activation_offload: bool = False
    compile: bool = False
    allow_long_seq: bool = Field(False, description="permit seq_len beyond the model's max positions")

    @property
    def trains_adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def sharding_label(self) -> str:
        if self.fsdp:
            return f"FSDP {self.fsdp}"
        return "DDP" if self.zero == 0 else f"ZeRO-{self.zero}"

    def compact(self) -> str:
        """A table-width label: ``full ZeRO-3 ckpt 2x8 adamw``."""
        parts = [self.method + (f" r{self.lora_rank}" if self.trains_adapters else ""), self.sharding_label]
        if self.offload != "none":
            parts.append("off:" + ("opt" if self.offload == "optimizer" else "opt+par"))
        if self.checkpointing != "none":
            parts.append("ckpt" if self.checkpointing == "full" else "sel-ckpt")
        parts.append(f"{self.micro_batch}x{self.grad_accum}")
        parts.append(self.optimizer)
        if self.loss != "plain":
            parts.append(self.loss)
        return " ".join(parts)

    def short(self) -> str:
        """A one-line label: ``full · ZeRO-3 · ckpt full · mb 2 x ga 8 · adamw``."""
        parts = [self.method + (f" r{self.lora_rank}" if self.trains_adapters else ""), self.sharding_label]
        if self.offload != "none":
            parts.append(f"offload {self.offload}")
        parts.append(f"ckpt {self.checkpointing}" if self.checkpointing != "none" else "no ckpt")
        parts.append(f"mb {self.micro_batch} x ga {self.grad_accum}")
        parts.append(self.optimizer)
        if self.loss != "plain":
            parts.append(f"{self.loss} loss")
        return " · ".join(parts)


def lora_target_names(setup: Setup, model: ModelProfile) -> list[str]:
    """Resolve ``lora_targets`` to the model's linear-layer names; unknown names raise :class:`SetupError`."""
    from profiles.params import linear_layers

    names = [x.name for x in linear_layers(model)]
    base = sorted({n.split(".")[-1] for n in names if n not in ("gate", "shared_expert_gate")})
    if setup.lora_targets.strip() in ("all-linear", "all"):
        return base
    wanted = [t.strip() for t in setup.lora_targets.split(",") if t.strip()]
    bad = [t for t in wanted if t not in base]
    if bad or not wanted:
        raise SetupError(
            f"LoRA target {', '.join(bad) or repr(setup.lora_targets)!s} is not a linear layer of {model.name}; "
            f"valid: all-linear or a comma list of {', '.join(base)}"
        )
    return wanted


def validate_setup(setup: Setup, model: ModelProfile, cluster: Cluster) -> None:
    """Reject impossible combinations with one clear line each (raises :class:`SetupError`)."""
    gpu = cluster.gpu
    if setup.fsdp is not None and setup.zero != 0:
        raise SetupError(f"choose ZeRO or FSDP, not both (got --zero {setup.zero} and --fsdp {setup.fsdp})")
    if setup.recipe in ("deepspeed-bf16", "bf16", "hf-amp") and not gpu.supports_bf16:
        raise SetupError(
            f"recipe {setup.recipe!r} needs bf16, which {gpu.name} lacks; use --recipe fp16-amp"
        )
    if setup.recipe == "deepspeed-bf16" and setup.fsdp is not None:
        raise SetupError("recipe 'deepspeed-bf16' is DeepSpeed's; with --fsdp use --recipe hf-amp or bf16")
    if setup.zero > 0 and setup.recipe in ("hf-amp", "bf16"):
        raise SetupError(
            f"recipe {setup.recipe!r} is not what DeepSpeed runs under ZeRO-{setup.zero} (it keeps an fp32 master); "
            "use --recipe deepspeed-bf16 (or fp16-amp on GPUs without bf16)"
        )
    if setup.offload == "optimizer+params" and not (setup.zero == 3 or setup.fsdp == "full-shard"):
        raise SetupError(
            "parameter offload needs ZeRO-3 (or FSDP full-shard); got "
            f"{setup.sharding_label}; use --zero 3 or --offload optimizer"
        )
    if setup.offload == "optimizer" and setup.zero == 0 and setup.fsdp is None:
        raise SetupError("optimizer offload needs ZeRO-1/2/3 or FSDP; got DDP; use --zero 2")
    if setup.optimizer_in_backward and setup.grad_accum != 1:
        raise SetupError(
            f"--optimizer-in-backward frees each gradient as it is made, so it cannot accumulate; "
            f"got --grad-accum {setup.grad_accum}; use --grad-accum 1"
        )
    if setup.optimizer_in_backward and (setup.zero or setup.fsdp):
        raise SetupError("--optimizer-in-backward is single-device or DDP only (torchtune); drop --zero/--fsdp")
    if setup.method == "qlora" and setup.zero == 3 and setup.offload != "none":
        raise SetupError("QLoRA with ZeRO-3 offload is not supported by bitsandbytes/DeepSpeed; use --offload none")
    if setup.method == "full" and setup.dora:
        raise SetupError("--dora applies to LoRA/QLoRA, not full fine-tuning; use --method lora")
    if setup.method in ("full", "freeze") and setup.optimizer in ("paged-adamw", "paged-adamw-8bit") and setup.zero:
        raise SetupError(f"{setup.optimizer} is a bitsandbytes paged optimizer; DeepSpeed ZeRO cannot shard it; use --zero 0")
    if setup.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit") and setup.offload != "none":
        raise SetupError(f"--optimizer {setup.optimizer} cannot be offloaded by DeepSpeed; use --optimizer adamw")
    if setup.method == "freeze" and setup.freeze_layers > model.num_layers:
        raise SetupError(f"--freeze-layers {setup.freeze_layers} exceeds the model's {model.num_layers} layers")
    if setup.seq_len > model.max_positions and not setup.allow_long_seq:
        raise SetupError(
            f"--seq {setup.seq_len} exceeds {model.name}'s max positions {model.max_positions}; "
            "pass --allow-long-seq if you extend RoPE yourself"
        )
    if setup.activation_offload and setup.checkpointing == "none":
        raise SetupError("--activation-offload offloads checkpointed block inputs; it needs --checkpointing full")
    if setup.recipe == "fp16-amp" and gpu.fp16_tflops is None:
        raise SetupError(f"{gpu.name} has no fp16 tensor cores")
    if setup.trains_adapters:
        lora_target_names(setup, model)
    elif setup.lora_train_embeddings or setup.lora_train_lm_head:
        raise SetupError("--lora-train-embeddings/--lora-train-lm-head apply to LoRA/QLoRA only")
