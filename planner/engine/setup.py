"""The :class:`Setup`: every choice that changes what a fine-tuning step costs.

Each field has a documented default that matches what the trainer does by default (LLaMA-Factory for
LoRA rank / alpha / dropout / targets, the HF Trainer for the rest) unless noted. Strategies are named
``Literal`` values, never magic integers (the ZeRO stage number *is* the name).

:func:`planner.engine.rules.validate_setup` rejects impossible combinations; :func:`candidate_recipes` and
:func:`default_recipe` decide which precision recipes a setup can run under, in one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.engine.bnb import BNB_8BIT_BLOCK
from profiles.errors import InputError

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
OptimizerKernel = Literal["fused", "foreach"]
OPTIMIZERS: dict[str, str] = {
    "adamw": "AdamW, two fp32 states (m, v) per trainable parameter (bf16 under the pure-bf16 recipe)",
    "adamw-8bit": f"bitsandbytes 8-bit AdamW: two uint8 states plus one fp32 absmax per {BNB_8BIT_BLOCK}-value block",
    "paged-adamw": "bitsandbytes PagedAdamW (32-bit): fp32 m and v in CUDA unified memory (cudaMallocManaged), "
    "outside torch's allocator; pages move to the host under memory pressure",
    "paged-adamw-8bit": "bitsandbytes PagedAdamW8bit: 8-bit states in CUDA unified memory, outside torch's allocator; "
    "pages move to the host under memory pressure",
    "sgd": "plain SGD: no state",
    "sgd-momentum": "SGD with momentum: one state per trainable parameter",
    "adafactor": "Adafactor: factored second moment (row + column vectors per matrix), no first moment",
}

Framework = Literal["hf", "torchtune", "torchtitan", "litgpt", "megatron", "other"]
FRAMEWORKS: dict[str, str] = {
    "hf": "Hugging Face Trainer under accelerate / DeepSpeed / FSDP, and what wraps it (LLaMA-Factory, TRL, "
    "ms-swift, axolotl): eager PyTorch with the Trainer's per-step bookkeeping",
    "torchtune": "torchtune recipes (plain PyTorch training loop, FSDP2)",
    "torchtitan": "torchtitan (FSDP2 / TP / CP, usually compiled)",
    "litgpt": "LitGPT on Lightning Fabric",
    "megatron": "Megatron-Core and what runs on it (NeMo 2, Megatron-Bridge, ms-swift's Megatron path): Transformer "
    "Engine kernels, whose attention is cuDNN's fused attention on Hopper and later (docs/speed.md S21b)",
    "other": "another training loop (a plain PyTorch loop, a research harness)",
}
"""The software that runs a plan, where it changes the speed (per-step and per-layer host overhead; Megatron's
attention kernel)."""

Fsdp = Literal["full-shard", "shard-grad-op"]
Offload = Literal["none", "optimizer", "optimizer+params"]
Checkpointing = Literal["none", "full", "selective", "op"]
CHECKPOINTING: dict[str, str] = {
    "none": "keep every activation for backward",
    "full": "recompute each checkpointed block in backward; keep only its input",
    "selective": "recompute attention only (Korthikanti et al. 2022, sec. 4.2); keep MLP activations",
    "op": "per-op SAC (torchtitan): save matmul and attention outputs, every second matmul recomputed",
}
Attention = Literal["sdpa", "flash", "fa3", "fa4", "eager"]
ATTENTION: dict[str, str] = {
    "sdpa": "torch scaled_dot_product_attention (flash / memory-efficient kernel: log-sum-exp per row, no s^2)",
    "flash": "FlashAttention-2: no s^2 scores, a log-sum-exp per row",
    "fa3": "FlashAttention-3 (Hopper; transformers' flash_attention_3): memory as FlashAttention-2, faster kernels",
    "fa4": "FlashAttention-4 (Blackwell; transformers' flash_attention_4): memory as FlashAttention-2, faster kernels",
    "eager": "eager attention: materialises the a x s x s scores and probabilities",
}
FLASH_KERNELS: dict[str, str] = {"flash": "FlashAttention-2", "fa3": "FlashAttention-3", "fa4": "FlashAttention-4"}
"""The FlashAttention kernels among the attention choices, by name: memory as FlashAttention-2's (no scores)."""
FLASH_KERNEL_ARCH: dict[str, str] = {"fa3": "hopper", "fa4": "blackwell"}
"""The one architecture each newer FlashAttention runs on (rules), and whose kernel-class efficiency it takes
(docs/speed.md S21b)."""
HF_ATTN_IMPLEMENTATION: dict[str, str] = {"sdpa": "sdpa", "flash": "flash_attention_2", "fa3": "flash_attention_3",
                                          "fa4": "flash_attention_4", "eager": "eager"}
"""Attention choice -> transformers' ``attn_implementation`` (configs and ``plan validate``)."""
KernelLibrary = Literal["liger", "unsloth"]
KERNEL_LIBRARIES: dict[str, str] = {
    "liger": "Liger Kernel's RMSNorm, SwiGLU and RoPE (LLaMA-Factory enable_liger_kernel, HF use_liger_kernel)",
    "unsloth": "Unsloth's RMSNorm, RoPE and a cross-entropy whose backward runs in place, as fms-acceleration's FOAK "
    "plugin installs them (SwiGLU fused only in its fused LoRA MLP: a quantised base with LoRA on gate, up and down)",
}
"""``--fused-kernels`` library -> what it fuses (the flag's help; docs/memory.md eq. A10b, A10c)."""
Loss = Literal["plain", "chunked", "liger"]
LOSSES: dict[str, str] = {
    "plain": "HF default: full logits, upcast to fp32, cross-entropy and its gradient",
    "chunked": "chunked cross-entropy (torchtune CEWithChunkedOutputLoss, 8 chunks): fp32 upcast per chunk",
    "liger": "Liger fused linear cross-entropy: logits never materialised beyond one chunk",
}

Fp8 = Literal["none", "tensorwise", "rowwise", "te"]
FP8: dict[str, str] = {
    "none": "bf16 / fp16 matmuls",
    "tensorwise": "torchao float8 with one dynamic scale per tensor (torchtitan's default float8 recipe; float8 "
    "all-gather under FSDP2)",
    "rowwise": "torchao float8 with one scale per row (torchtitan recipe_name rowwise; LLaMA-Factory's torchao backend): "
    "more accurate, slower GEMMs, bf16 all-gather",
    "te": "NVIDIA TransformerEngine FP8 (HYBRID E4M3/E5M2, delayed scaling; LLaMA-Factory fp8_backend te): linear "
    "inputs saved in FP8",
}
"""FP8 training of the blocks' linear layers (docs/memory.md F8, docs/speed.md S28): GPUs with FP8 tensor cores only."""
FP8_ARCHS = ("ada", "hopper", "blackwell", "cdna3")
"""Architectures with FP8 tensor cores that torchao's float8 training runs on: torchtitan's ``Float8LinearConverter``
requires ``has_cuda_capability(8, 9)`` (SM89 Ada, SM90 Hopper, SM100 Blackwell; MI300X's gfx942 reports 9.4 under
ROCm and is in torchao's own float8 benchmark table). TransformerEngine: the same architectures, CDNA3 through ROCm's
port (ROCm/TransformerEngine, FP8 GEMMs in hipBLASLt; SemiAnalysis' MI300X runs in issue #79 of that repository)."""


class SetupError(InputError):
    """An impossible or unsupported setup: one line, safe to print as-is."""


class Setup(BaseModel):
    """One concrete training configuration. Defaults are the trainers' own defaults (see each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    recipe: Recipe = Field("deepspeed-bf16", description="precision recipe; decides the byte accounting")
    method: Method = Field("full", description="what trains")
    optimizer: Optimizer = Field("adamw", description="HF Trainer default: adamw_torch_fused")
    optimizer_kernel: OptimizerKernel = Field(
        "fused", description="how torch's AdamW runs its update on the GPU: fused = one kernel per step (torch "
        "fused=True, HF adamw_torch_fused since torch 2.8, torchtune's fused: True, torchtitan, DeepSpeed FusedAdam); "
        "foreach = torch's multi-tensor ops (torch.optim.AdamW's default, HF adamw_torch), several passes over the "
        "states per step (docs/speed.md S8c)")
    zero: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage; 0 = plain data parallel (DDP)")
    fsdp: Fsdp | None = Field(None, description="PyTorch FSDP instead of ZeRO (then zero must be 0)")
    fsdp_version: Literal[1, 2] = Field(
        2, description="FSDP implementation (with fsdp): 2 = fully_shard (accelerate fsdp_version 2, torchtune, "
        "torchtitan); 1 = FullyShardedDataParallel (accelerate before fsdp_version 2, Lightning 2.x): the root unit "
        "stays gathered, and frozen LoRA blocks under reentrant checkpointing keep their inputs (docs/memory.md C4b)")
    offload: Offload = "none"
    checkpointing: Checkpointing = Field("none", description="HF Trainer default: gradient_checkpointing=False")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every k-th block (1 = all blocks)")
    reentrant: bool = Field(
        True, description="the HF Trainer's gradient checkpointing re-enters (torch.utils.checkpoint use_reentrant=True, "
        "its default) or not (gradient_checkpointing_kwargs={'use_reentrant': False}); decides eq. A9d, FSDP1's frozen "
        "LoRA block units keeping their inputs (docs/memory.md)")
    attention: Attention = Field("sdpa", description="transformers default attn_implementation")
    loss: Loss = "plain"
    micro_batch: int = Field(1, ge=1, description="per-device batch size (HF default 8; planners search it)")
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(2048, ge=1)
    packing: bool = Field(True, description="packed sequences: every micro-batch is full; no padding")
    lora_rank: int = Field(8, ge=1, description="LLaMA-Factory default 8")
    lora_alpha: int = Field(
        16, ge=1, description="default 2 x lora_rank (LLaMA-Factory finetuning_args: lora_alpha = lora_alpha or rank * 2)"
    )
    lora_targets: str = Field("all-linear", description="'all-linear' or a comma list such as 'q_proj,v_proj'")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LLaMA-Factory and peft default 0")
    dora: bool = False
    lora_train_embeddings: bool = Field(False, description="train embed_tokens too (vocabulary expansion)")
    lora_train_lm_head: bool = Field(False, description="train lm_head too (vocabulary expansion)")
    freeze_layers: int = Field(2, ge=1, description="freeze method: trainable last blocks (LLaMA-Factory default 2)")
    double_quant: bool = Field(True, description="QLoRA double quantisation (LLaMA-Factory default true)")
    optimizer_in_backward: bool = False
    activation_offload: bool = False
    compile: bool = Field(False, description="torch.compile the model (fused elementwise kernels)")
    compile_loss: bool = Field(
        True, description="with compile: the loss is compiled too (the HF Trainer compiles the whole model, torchtune "
        "training.compile_loss, torchtitan >= 0.2 compile.components model + loss). False: compiled blocks with an "
        "eager loss, as torchtitan ran in 2024 ('compiling loss function causes CUDA errors, turning off for now', "
        "train.py); the published runs of that time are mapped so")
    galore_rank: int | None = Field(
        None, ge=1, description="GaLore (Zhao et al. 2024): project each block matrix's gradient to this rank for Adam; "
        "None = off (LLaMA-Factory use_galore / galore_rank)"
    )
    galore_update_interval: int = Field(
        200, ge=1, description="GaLore: recompute the projection (an SVD per matrix) every N steps (LLaMA-Factory default 200)"
    )
    galore_layerwise: bool = Field(
        False, description="GaLore layer-wise: one optimizer per parameter, stepped in backward (no gradient buffer, "
        "no accumulation; LLaMA-Factory galore_layerwise)"
    )
    badam: bool = Field(
        False, description="BAdam (Luo et al. 2024) layer mode: one decoder block trains at a time, switching blocks "
        "every 50 steps; embeddings and LM head frozen (LLaMA-Factory use_badam)"
    )
    lisa_layers: int | None = Field(
        None, ge=1, description="LISA (Pan et al. 2024): this many randomly sampled decoder blocks train per interval, "
        "embeddings and LM head always; None = off (LMFlow lisa_activated_layers; no emitter)"
    )
    fp8: Fp8 = Field("none", description="FP8 training of the blocks' linear layers (torchao float8 or TransformerEngine)")
    tp: int = Field(1, ge=1, description="tensor-parallel degree, within a node (torchtitan: TP inside, FSDP2 across)")
    cp: int = Field(1, ge=1, description="context-parallel degree (torchtitan ring attention over sequence shards)")
    async_tp: bool = Field(False, description="torchtitan asynchronous TP: collectives overlapped with the matmuls (needs compile)")
    fused_kernels: bool = Field(
        False, description="fused Triton kernels for RMSNorm, SwiGLU and RoPE (Liger Kernel; LLaMA-Factory "
        "enable_liger_kernel patches these together with the fused linear cross-entropy); kernel_library says whose"
    )
    loss_shift_copy: bool = Field(
        False, description="the plain loss of transformers before 4.49: ForCausalLMLoss (or the model's own forward) "
        "makes a contiguous fp32 copy of the shifted logits, 4 B per logit more at the loss's forward (docs/memory.md "
        "eq. L1b); for estimates of runs on those versions (the evidence corpus), no flag"
    )
    moe_expert_loop: bool = Field(
        False, description="a MoE block's routed experts run one at a time in a Python loop, as transformers before "
        "5.0 ran them (MixtralSparseMoeBlock, Qwen3MoeSparseMoeBlock): the experts' working set is one expert's share "
        "of the routed tokens (docs/memory.md eq. A7c); for estimates of runs on those versions (the evidence corpus), "
        "no flag"
    )
    kernel_library: KernelLibrary = Field(
        "liger", description="whose fused kernels fused_kernels turns on (KERNEL_LIBRARIES says what each fuses; "
        "docs/memory.md eq. A10b, A10c)"
    )
    framework: Framework = Field("hf", description="the software that runs the plan (speed: per-step and per-layer overhead)")
    padding_efficiency: float = Field(
        1.0, gt=0, le=1,
        description="real tokens / processed positions (1.0: every row or pack full): the pad tokens of padded "
        "micro-batches or the unfilled end of packs; the GPU processes micro_batch x seq_len positions, of which "
        "this fraction trains (--padding-efficiency, or measured by --dataset)",
    )
    allow_long_seq: bool = Field(False, description="permit seq_len beyond the model's max positions")

    @model_validator(mode="before")
    @classmethod
    def _alpha_default(cls, data: Any) -> Any:
        """An absent (or None) ``lora_alpha`` is 2 x ``lora_rank``: the one place that default lives."""
        if isinstance(data, dict) and data.get("lora_alpha") is None:
            rank = data.get("lora_rank", 8)
            data = {**data, "lora_alpha": 2 * rank if isinstance(rank, int) else rank}
        return data

    @property
    def trains_adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def uses_deepspeed(self) -> bool:
        """DeepSpeed's engine runs the step: its recipe, or any ZeRO stage (the one place this is decided)."""
        return self.recipe == "deepspeed-bf16" or self.zero > 0

    @property
    def method_label(self) -> str:
        """``full``, ``freeze``, ``lora``, ``qlora``, ``dora``, ``qdora`` (QLoRA with DoRA, peft's QDoRA), or the
        optimizer that changes what a full fine-tuning update is: ``galore``, ``badam``, ``lisa``."""
        if self.dora and self.trains_adapters:
            return "qdora" if self.method == "qlora" else "dora"
        if self.method == "full" and self.subspace_optimizer != "none":
            return self.subspace_optimizer
        return self.method

    @property
    def subspace_optimizer(self) -> str:
        """``galore``, ``badam``, ``lisa`` or ``none``: the full-parameter methods that update a subspace (a low-rank
        projection, one block, a few sampled blocks) per step."""
        if self.galore_rank is not None:
            return "galore"
        if self.badam:
            return "badam"
        if self.lisa_layers is not None:
            return "lisa"
        return "none"

    @property
    def steps_in_backward(self) -> bool:
        """Each parameter is stepped as soon as its gradient exists (no gradient buffer): optimizer in backward, or
        layer-wise GaLore (which is implemented the same way: per-parameter optimizers in post-accumulate hooks)."""
        return self.optimizer_in_backward or (self.galore_rank is not None and self.galore_layerwise)

    @property
    def model_parallel(self) -> int:
        """GPUs that share one replica's sequence: TP x CP (torchtitan's mesh: data parallel = world / (tp x cp))."""
        return self.tp * self.cp

    def data_parallel(self, world_size: int) -> int:
        """Data-parallel ranks (FSDP shards x replicas): ``world / (tp x cp)``; each consumes its own micro-batch."""
        return max(1, world_size // self.model_parallel)

    @property
    def sharding_label(self) -> str:
        if self.fsdp:
            return f"FSDP {self.fsdp}"
        return "DDP" if self.zero == 0 else f"ZeRO-{self.zero}"

    def parallelism_class(self, world_size: int) -> str:
        """The class docs/accuracy.md reports speed errors by, on ``world_size`` GPUs: ``CPU offload`` (the optimizer
        or parameters on the host decide the step), ``TP / CP``, ``ZeRO-1/2``, ``ZeRO-3``, ``FSDP1``, ``FSDP2``,
        ``DDP``, ``one GPU``."""
        if self.offload != "none":
            return "CPU offload"
        if self.tp > 1 or self.cp > 1:
            return "TP / CP"
        if self.zero in (1, 2):
            return "ZeRO-1/2"
        if self.zero == 3:
            return "ZeRO-3"
        if self.fsdp:
            return f"FSDP{self.fsdp_version}"
        return "DDP" if world_size > 1 else "one GPU"

    def compact(self) -> str:
        """A table-width label: ``full ZeRO-3 ckpt 2x8 adamw``."""
        parts = [self.method_label + (f" r{self.lora_rank}" if self.trains_adapters else "")
                 + (f" r{self.galore_rank}" if self.galore_rank else ""), self.sharding_label]
        parts += self._parallel_parts()
        if self.offload != "none":
            parts.append("off:" + ("opt" if self.offload == "optimizer" else "opt+par"))
        if self.checkpointing != "none":
            parts.append({"full": "ckpt", "selective": "sel-ckpt", "op": "op-sac"}[self.checkpointing])
        parts.append(f"{self.micro_batch}x{self.grad_accum}")
        parts.append(self.optimizer)
        parts += self._extra_parts(short=False)
        if self.loss != "plain":
            parts.append(self.loss)
        return " ".join(parts)

    def _parallel_parts(self) -> list[str]:
        out = [f"TP{self.tp}" + ("-async" if self.async_tp else "")] if self.tp > 1 else []
        return out + ([f"CP{self.cp}"] if self.cp > 1 else [])

    def _extra_parts(self, short: bool) -> list[str]:
        out = []
        if self.fp8 != "none":
            out.append(f"fp8 {self.fp8}" if short else f"fp8:{self.fp8}")
        if self.optimizer_in_backward:
            out.append("optimizer in backward" if short else "obwd")
        if self.galore_layerwise and self.galore_rank:
            out.append("layer-wise" if short else "lw")
        if self.lisa_layers:
            out.append(f"{self.lisa_layers} layers")
        if self.activation_offload:
            out.append("activation offload" if short else "act-off")
        if short and self.fused_library and not self._liger_patch:
            out.append(f"{self.fused_library.capitalize()} kernels")
        return out

    @property
    def fused_library(self) -> KernelLibrary | None:
        """Whose fused kernels run: ``kernel_library`` when ``fused_kernels``, else None (the pair's one reading)."""
        return self.kernel_library if self.fused_kernels else None

    @property
    def _liger_patch(self) -> bool:
        """Liger's kernels with its fused linear cross-entropy: what LLaMA-Factory's ``enable_liger_kernel`` patches
        together (one label)."""
        return self.fused_library == "liger" and self.loss == "liger"

    @property
    def torch_adamw_on_gpu(self) -> bool:
        """Whether torch's AdamW steps on the GPU, so that ``optimizer_kernel`` applies: AdamW, no optimizer offload
        (the host steps then) and no GaLore (its own optimizer)."""
        return self.optimizer == "adamw" and self.offload == "none" and self.galore_rank is None

    @property
    def foreach_adamw(self) -> bool:
        """Whether torch's multi-tensor (``foreach``) AdamW steps on the GPU (eqs. S8c, M4d)."""
        return self.torch_adamw_on_gpu and self.optimizer_kernel == "foreach"

    def short(self) -> str:
        """A one-line label: ``full · ZeRO-3 · ckpt full · mb 2 x ga 8 · adamw``."""
        parts = [self.method_label + (f" r{self.lora_rank}" if self.trains_adapters else "")
                 + (f" r{self.galore_rank}" if self.galore_rank else ""), self.sharding_label]
        parts += self._parallel_parts()
        if self.offload != "none":
            parts.append(f"offload {self.offload}")
        parts.append(f"ckpt {self.checkpointing}" if self.checkpointing != "none" else "no ckpt")
        parts.append(f"mb {self.micro_batch} x ga {self.grad_accum}")
        parts.append(self.optimizer + (" foreach" if self.foreach_adamw else ""))
        parts += self._extra_parts(short=True)
        if self._liger_patch:
            parts.append("Liger kernels + loss")
        elif self.loss != "plain":
            parts.append(f"{self.loss} loss")
        return " · ".join(parts)


def candidate_recipes(supports_bf16: bool, zero: int, fsdp: str | None) -> tuple[Recipe, ...]:
    """The recipes a setup can run under, the default first (the one place the default recipe is decided).

    GPUs without bf16 (V100, T4): fp16 AMP only. Under DeepSpeed ZeRO: DeepSpeed's bf16 with fp32 master
    (the HF integration's ``bf16: auto``). Otherwise HF AMP (the HF Trainer's ``bf16=True``), then pure bf16
    (torchtune's default ``dtype: bf16``)."""
    if not supports_bf16:
        return ("fp16-amp",)
    if zero and not fsdp:
        return ("deepspeed-bf16",)
    return ("hf-amp", "bf16")


def default_recipe(supports_bf16: bool, zero: int, fsdp: str | None) -> Recipe:
    """The recipe a user gets without ``--recipe``: the first of :func:`candidate_recipes`."""
    return candidate_recipes(supports_bf16, zero, fsdp)[0]
