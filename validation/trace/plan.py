"""What the trace will run for a :class:`~planner.engine.setup.Setup`, decided before torch is imported.

A setup names things a CPU trace can run exactly (the transformers model code, peft's LoRA/DoRA, torch's
optimizers, transformers' activation checkpointing) and things it cannot (bitsandbytes' NF4 and 8-bit CUDA
kernels, FlashAttention-2, Liger's Triton kernels, DeepSpeed's fused CUDA Adam, torch.compile). For each of the
latter this module picks the closest traceable substitute and records it as a :class:`Substitution`, so the
report says what was traced instead, never silently.

The byte-accounting choices follow ``planner.engine.dtypes`` (the engine's recipe table) so the two can be diffed:
HF AMP keeps trainable weights, their gradients and Adam states in fp32 under ``torch.autocast``; LoRA /
freeze under AMP keep the frozen base in the compute dtype; DeepSpeed's recipe (``deepspeed-bf16``, or
``fp16-amp`` with ZeRO) casts the module to 16 bit and keeps an fp32 master copy, fp32 Adam states and an fp32
gradient partition; ``bf16`` is pure bf16 (torchtune).

Sharding: FSDP is traced by running real FSDP2 (``fully_shard`` as accelerate prepares it) on rank 0 of a fake
process group (:mod:`validation.trace.fsdp`), so the bytes are one rank's own; ZeRO is applied by dividing the
traced bytes of each model-state kind by the world size according to :func:`shard_divisors`; activations are
traced as one rank computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from planner.engine.memory import deepspeed_grads_partitioned
from planner.engine.setup import FLASH_KERNELS, Setup
from profiles.cluster import Cluster
from profiles.schema import ModelProfile

AdamImpl = Literal["fused", "foreach", "for-loop"]
ADAM_IMPLS: dict[str, str] = {
    "fused": "torch.optim.AdamW(fused=True): one fused kernel, no temporaries (HF Trainer default adamw_torch_fused)",
    "foreach": "torch.optim.AdamW(foreach=True): multi-tensor ops that materialise temporaries for every parameter",
    "for-loop": "torch.optim.AdamW(foreach=False, fused=False): per-parameter ops, one parameter's temporaries",
}

PHASE_OF = {"after_load": "after_load", "forward": "forward_peak", "backward": "backward_peak",
            "optimizer": "optimizer_peak"}
"""Tracker phase -> MemoryEstimate phase."""

KINDS: dict[str, str] = {
    "weights_trainable": "weights_trainable",
    "weights_frozen": "weights_frozen",
    "buffers": "weights_frozen",
    "gradients": "gradients",
    "grad_fp32": "gradients",
    "optimizer_states": "optimizer_states",
    "master_weights": "master_weights",
    "activations": "activations",
    "logits_loss": "logits_loss",
    "autocast_copy": "temporaries",
    "optimizer_temp": "temporaries",
    "offloaded_activations": "activations",
    "fsdp_buffers": "comm_buffers",
    "fsdp_unsharded_grad": "comm_buffers",
    "ds_grad_partition": "gradients",
    "paged_optimizer": "optimizer_states",
}
"""Tracker tag -> MemoryEstimate category. ``buffers`` (RoPE inverse frequencies) count as frozen weights;
``grad_fp32`` is DeepSpeed's fp32 gradient partition; ``autocast_copy`` the 16-bit copies autocast makes of fp32
weights; ``optimizer_temp`` everything the optimizer step allocates besides its states; ``fsdp_buffers`` FSDP2's
unsharded parameters and its all-gather / reduce-scatter buffers, ``fsdp_unsharded_grad`` the gradients of a
gathered group before they are reduce-scattered (both comm buffers); ``ds_grad_partition`` DeepSpeed ZeRO-3's
persistent 16-bit gradient partition; ``paged_optimizer`` bitsandbytes' paged states (CUDA unified memory, outside
torch's allocator: counted in host RAM, never on the GPU)."""


@dataclass(frozen=True)
class Substitution:
    """A part of the setup the trace cannot run, and what it ran instead."""

    wanted: str
    traced: str
    why: str

    def line(self) -> str:
        return f"not traceable: {self.wanted} -> traced {self.traced} ({self.why})"


@dataclass(frozen=True)
class TracePlan:
    """Everything :func:`validation.trace.trace_memory` needs, as plain data (no torch)."""

    method: Literal["full", "lora", "freeze"]
    qlora: bool
    """QLoRA requested: LoRA is traced over a 16-bit base (bitsandbytes' NF4 kernels cannot run under fake tensors)"""
    attention: Literal["sdpa", "eager"]
    loss: Literal["plain", "chunked"]
    optimizer: Literal["adamw", "sgd", "sgd-momentum", "adafactor"]
    adam_impl: AdamImpl
    eight_bit_states: bool
    """8-bit AdamW requested: emulated with uint8 states and fp32 block constants (no bitsandbytes kernels)"""
    weight_dtype: str
    """dtype the model is built in (the frozen / 16-bit weights)"""
    trainable_dtype: str
    """dtype of trainable weights (fp32 under HF AMP)"""
    autocast_dtype: str | None
    deepspeed: bool
    """emulate DeepSpeed's mixed-precision optimizer: fp32 master copy, fp32 gradients, fp32 states"""
    ds_persistent_fp32_grads: bool
    """DeepSpeed's ``BF16_Optimizer`` (bf16 without ZeRO): a persistent full-size fp32 gradient buffer; with
    ZeRO the fp32 gradient partition exists only inside the optimizer step"""
    loss_scale: bool
    """fp16: scale the loss and unscale the gradients in place (GradScaler / DeepSpeed dynamic loss scale)"""
    world_size: int
    divisors: dict[str, int]
    """tracker tag -> divisor of its bytes on this rank (0: not on the GPU at all)"""
    host_divisors: dict[str, int]
    """tracker tag -> divisor of its bytes in host RAM per rank (offload); absent: not on the host"""
    micro_steps: int
    """micro-batches traced per optimizer step: min(grad_accum, 2), the second shows accumulation"""
    optimizer_in_backward: bool = False
    """torchtune's optimizer-in-backward: each parameter steps as its gradient lands, then frees it"""
    ds_grad_partition: bool = False
    """DeepSpeed ZeRO-3: gradients land in one persistent flat 16-bit partition buffer allocated with the
    optimizer (``stage3.py`` ``grad_partitions_flat_buffer``); each full gradient is freed once reduced"""
    bnb_states: bool = False
    """a bitsandbytes optimizer (8-bit or paged): its states are emulated with the sizes bitsandbytes allocates"""
    paged_states: bool = False
    """paged bitsandbytes optimizer: states of tensors >= 1e5 elements live in unified memory (tag paged_optimizer)"""
    fsdp2: bool = False
    """run real FSDP2 over a fake process group of ``world_size`` ranks (validation/trace/fsdp.py): model states
    are one rank's real shards, so their divisors are 1"""
    substitutions: tuple[Substitution, ...] = ()
    assumptions: tuple[str, ...] = field(default_factory=tuple)


def shard_divisors(setup: Setup, world_size: int) -> tuple[dict[str, int], dict[str, int]]:
    """Per tracker tag: by how much ZeRO / FSDP divide its bytes on one rank, and which go to host RAM.

    Rules (ZeRO paper, Rajbhandari et al. 2020, sec. 5; DeepSpeed ``stage_1_and_2.py`` / ``stage3.py``; PyTorch
    FSDP ``ShardingStrategy``): ZeRO-1 partitions optimizer states, the fp32 master copy and the fp32 gradient
    partition, and at ``grad_accum`` 1 the 16-bit gradients too (``planner.engine.memory.deepspeed_grads_partitioned``,
    eq. M5d); ZeRO-2 also the 16-bit gradients; ZeRO-3 also the parameters (frozen ones too) and keeps its
    16-bit gradients in a persistent partition (each full gradient is transient). FSDP is not divided: the
    trace runs it for real (validation/trace/fsdp.py). The optimizer step runs on the shard only, so its
    temporaries divide like its states. ``--offload optimizer`` moves states, master, fp32 gradients and the
    step's temporaries to host RAM (DeepSpeed runs CPU Adam there); ``optimizer+params`` also the parameters.
    """
    n = max(1, world_size)
    # FSDP runs for real in the trace (validation/trace/fsdp.py): its shards need no division
    stage = 0 if setup.fsdp else setup.zero
    d = {k: 1 for k in KINDS}
    if stage >= 1:
        for k in ("optimizer_states", "master_weights", "grad_fp32", "optimizer_temp"):
            d[k] = n
    if stage >= 2 or (stage == 1 and deepspeed_grads_partitioned(setup)):
        d["gradients"] = n  # ZeRO-1 at grad_accum 1 frees each full gradient into the reduce bucket (eq. M5d)
    if stage >= 3:
        d["weights_trainable"] = d["weights_frozen"] = n
        # stage3.py reduces each full 16-bit gradient into the persistent partition and frees it at once
        d["gradients"] = 1
        d["ds_grad_partition"] = n
    host: dict[str, int] = {"offloaded_activations": 1, "paged_optimizer": 1}
    d["offloaded_activations"] = 0  # saved block inputs under --activation-offload live in host RAM
    d["paged_optimizer"] = 0  # bitsandbytes' paged states: unified memory, outside torch's allocator
    moved = []
    if setup.offload in ("optimizer", "optimizer+params"):
        moved += ["optimizer_states", "master_weights", "grad_fp32", "optimizer_temp", "ds_grad_partition"]
    if setup.offload == "optimizer+params":
        moved += ["weights_trainable", "weights_frozen"]
    for k in moved:
        host[k] = d[k]
        d[k] = 0
    return d, host


def plan_trace(model: ModelProfile, cluster: Cluster, setup: Setup, adam_impl: AdamImpl = "fused") -> TracePlan:
    """Decide dtypes, kernels and substitutes for tracing ``setup`` on ``model``; never imports torch."""
    subs: list[Substitution] = []
    notes: list[str] = []

    attention: Literal["sdpa", "eager"] = "eager" if setup.attention == "eager" else "sdpa"
    flash_label = FLASH_KERNELS.get(setup.attention)
    if flash_label and model.attn_logit_softcap is None:
        subs.append(Substitution(
            flash_label, "SDPA (torch's flash kernel on CPU)",
            "a CUDA kernel; SDPA's flash path keeps the same q, k, v, output and one log-sum-exp per row"))
    if model.derived is not None and not model.derived.supports_sdpa and attention == "sdpa":
        attention = "eager"
        subs.append(Substitution(f"{setup.attention} attention", "eager attention",
                                 f"transformers' {model.derived.architecture} does not support SDPA "
                                 "(_supports_sdpa is False), so a real run uses eager too"))
    if model.attn_logit_softcap is not None and attention == "sdpa":
        attention = "eager"
        if flash_label:
            why = (f"{flash_label} supports {model.name}'s attention soft-capping but not on a CPU, and "
                   "transformers refuses SDPA for it: errs high by the eager s^2 scores")
        else:
            why = (f"transformers refuses SDPA for {model.name} (attention soft-capping is implemented in eager "
                   "attention only), so a real run uses eager too")
        subs.append(Substitution(f"{setup.attention} attention", "eager attention", why))

    if setup.fsdp is not None and setup.fsdp_version == 1:
        subs.append(Substitution(
            "FSDP1 (FullyShardedDataParallel)", "FSDP2 (fully_shard, as accelerate wraps it)",
            "the trace runs FSDP2 only; FSDP1 keeps its root unit gathered and, for frozen LoRA blocks under reentrant "
            "checkpointing, every block input and its gradient to the end of backward (docs/memory.md C4b, A9d): "
            "the engine counts those, the trace does not"))
    loss: Literal["plain", "chunked"] = "chunked" if setup.loss in ("chunked", "liger") else "plain"
    if setup.loss == "liger":
        subs.append(Substitution(
            "Liger fused linear cross-entropy", "chunked cross-entropy (8 chunks, torchtune style)",
            "Triton kernels; Liger also never keeps a logits chunk for backward, so this errs high"))

    if setup.fused_library == "liger":
        subs.append(Substitution(
            "Liger's fused RMSNorm / SwiGLU / RoPE", "transformers' eager RMSNorm, SwiGLU and RoPE",
            "Triton kernels; they save less (the norm input and one fp32 value per row, no SiLU output: docs/memory.md "
            "eq. A10b), so the trace errs high against the engine here"))
    elif setup.fused_library == "unsloth":
        subs.append(Substitution(
            "Unsloth's RMSNorm / RoPE / cross-entropy (fms-acceleration FOAK)", "transformers' eager ops and loss",
            "Triton kernels; the norms save less and the loss's backward runs in place (docs/memory.md eq. A10c, L5), "
            "so the trace errs high against the engine here"))
    if setup.moe_expert_loop and model.moe is not None:
        subs.append(Substitution(
            "transformers before 5.0 (a MoE block's experts in a Python loop)", "the installed transformers' experts",
            "the loop holds one expert's tokens at a time in the block's working set (docs/memory.md eq. A7c); the "
            "trace runs the installed experts implementation and errs high against the engine here"))
    if setup.loss_shift_copy:
        subs.append(Substitution(
            "transformers before 4.49 (a contiguous fp32 copy of the shifted logits)",
            "the installed transformers' loss",
            "the installed version shifts the labels instead; the trace errs low by 4 B per logit at the loss's "
            "forward (docs/memory.md eq. L1b)"))

    method = setup.method
    qlora = method == "qlora"
    if qlora:
        method = "lora"
        subs.append(Substitution(
            "QLoRA (bitsandbytes NF4 base)", "LoRA over a 16-bit base",
            "bitsandbytes quantises and dequantises with CUDA kernels; weights_frozen is the 16-bit size, "
            "not NF4's ~0.53 B/param, and the per-layer dequantised copy is absent"))

    for wanted, on in (("GaLore", setup.galore_rank is not None), ("BAdam", setup.badam),
                       ("LISA", setup.lisa_layers is not None), (f"FP8 {setup.fp8}", setup.fp8 != "none"),
                       (f"TP {setup.tp} / CP {setup.cp}", setup.model_parallel > 1)):
        if on:
            subs.append(Substitution(wanted, "the same setup without it", "the trace has no emulation of it yet "
                                     "(issue 12 added it to the engine only); errs high against the engine"))
    optimizer = setup.optimizer
    if optimizer == "paged-adamw":
        subs.append(Substitution(
            "bitsandbytes PagedAdamW (32-bit, unified memory)", "torch AdamW with its states on the traced device",
            "bitsandbytes keeps fp32 states in CUDA managed memory outside torch's allocator (docs/memory.md M4b); "
            "the trace counts torch AdamW's states on the device instead, so it errs high against the engine"))
        optimizer = "adamw"
    eight_bit = optimizer in ("adamw-8bit", "paged-adamw-8bit")
    paged = optimizer in ("paged-adamw", "paged-adamw-8bit")
    bnb = eight_bit or paged
    if bnb:
        subs.append(Substitution(
            f"bitsandbytes {optimizer}",
            ("AdamW states emulated as uint8 m and v plus fp32 block constants" if eight_bit
             else "AdamW states emulated as fp32 m and v"),
            "bitsandbytes' update is a CUDA kernel; the states are sized as bitsandbytes allocates them"
            + ("; states of tensors with >= 1e5 elements are paged (cudaMallocManaged, outside torch's allocator) "
               "and counted in host RAM" if paged else "")))
        optimizer = "adamw"
    opt: Literal["adamw", "sgd", "sgd-momentum", "adafactor"] = optimizer  # type: ignore[assignment]

    half = "float16" if setup.recipe == "fp16-amp" else "bfloat16"
    deepspeed = setup.recipe == "deepspeed-bf16" or (setup.recipe == "fp16-amp" and setup.zero > 0)
    if deepspeed:
        weight, trainable, autocast = half, half, None
        if opt == "adamw" and not bnb:
            subs.append(Substitution(
                "DeepSpeed FusedAdam (CUDA)", f"torch AdamW {adam_impl} over fp32 master weights",
                "same fp32 states; DeepSpeed's multi-tensor kernel keeps no per-parameter temporaries, like fused"))
        if setup.zero == 0:
            notes.append(
                "DeepSpeed bf16 without ZeRO emulated as deepspeed/runtime/bf16_optimizer.py (BF16_Optimizer, "
                "chosen by engine._do_optimizer_sanity_check for bf16 with fp32 gradient accumulation): 16-bit "
                "weights and gradients, a persistent full-size fp32 gradient buffer, fp32 master weights and Adam "
                "states partitioned over the data-parallel ranks")
        else:
            notes.append(
                "DeepSpeed ZeRO mixed precision emulated as deepspeed/runtime/zero/stage_1_and_2.py: 16-bit weights "
                "and gradients, fp32 master weights and optimizer states created with the optimizer, the fp32 "
                "gradient partition built from the 16-bit gradients in step() and released after it"
                + ("; ZeRO-3 as stage3.py: a persistent flat 16-bit gradient partition (grad_partitions_flat_buffer) "
                   "that each gradient is reduced into and then freed" if setup.zero == 3 else ""))
    elif setup.recipe == "bf16":
        weight, trainable, autocast = "bfloat16", "bfloat16", None
    else:  # hf-amp / fp16-amp without DeepSpeed
        trainable = "float32"
        weight = "float32" if method == "full" else half
        autocast = half
    if setup.recipe == "fp16-amp":
        notes.append("fp16 loss scaling emulated: the loss is multiplied and the gradients unscaled in place "
                     "(GradScaler's inf check reads tensor values, which fake tensors do not have)")
    if opt == "adamw" and not deepspeed and not bnb:
        notes.append(f"optimizer implementation: {ADAM_IMPLS[adam_impl]}")

    in_backward = setup.optimizer_in_backward
    if in_backward and deepspeed:
        in_backward = False
        subs.append(Substitution("--optimizer-in-backward under DeepSpeed's optimizer", "one optimizer step per step",
                                 "a torchtune feature; DeepSpeed steps its fp32 master once per step"))
    if setup.compile:
        subs.append(Substitution("torch.compile", "eager execution",
                                 "compiled graphs fuse and reorder kernels; the trace runs the eager model code"))
    if setup.packing is False:
        notes.append("padding traced as full-length sequences (the worst case of an unpacked batch)")

    n = cluster.world_size
    divisors, host = shard_divisors(setup, n)
    if deepspeed and setup.zero == 0:  # BF16_Optimizer partitions the fp32 master and states (ZeRO-1 style)
        for k in ("optimizer_states", "master_weights", "optimizer_temp"):
            divisors[k] = n
    if setup.zero:
        notes.append(
            f"one rank's share under {setup.sharding_label} over {n} GPUs: traced model-state bytes divided by {n} "
            "per the stage rules; activations traced as one rank computes them; "
            "gather and reduce buffers (comm_buffers) are not traced")
    if setup.fsdp:
        mp = {"hf-amp": "bf16", "fp16-amp": "fp16"}.get(setup.recipe)
        notes.append(
            f"FSDP2 run for real on rank 0 of a fake {n}-rank process group: accelerate's fsdp2_prepare_model (one "
            "group per decoder block, the input embedding, the final norm + LM head kept gathered, the root), "
            f"reshard_after_forward={setup.fsdp == 'full-shard'}"
            + (f", MixedPrecisionPolicy(param_dtype={mp}, reduce_dtype={mp}, output_dtype={mp}) as accelerate sets "
               f"it for mixed_precision={mp} (autocast on too, with nothing left to cast)" if mp else "")
            + "; collectives move no data and run synchronously (no CUDA streams)")
        if setup.offload != "none":
            notes.append("FSDP CPU offload not run: the offloaded states are moved to host RAM by tag")
    if setup.offload != "none":
        notes.append(f"--offload {setup.offload}: the offloaded tensors are counted in host RAM, not on the GPU")

    notes += [
        "traced on the CPU under torch FakeTensorMode (no GPU): exact bytes of every tensor the model code, "
        "autograd and the optimizer create; kernel-internal workspaces (cuBLAS, flash-attention backward "
        "accumulators) are not visible",
        "framework_overhead and allocator_margin are 0: a trace sees tensors, not the CUDA context or the caching "
        "allocator",
        "sizes are exact tensor bytes without the CUDA allocator's 512-byte rounding",
        "use_cache=False as LLaMA-Factory sets it for training (the HF Trainer alone keeps the config's "
        "use_cache=True, whose KV cache adds each layer's K/V to the forward peak with eager attention)",
    ]
    if setup.grad_accum > 1:
        notes.append(f"grad_accum {setup.grad_accum}: two micro-batches traced per step (the second shows "
                     "gradient accumulation); more repeat the second")
    return TracePlan(
        method=method,  # type: ignore[arg-type]
        qlora=qlora,
        attention=attention,
        loss=loss,
        optimizer=opt,
        adam_impl=adam_impl,
        eight_bit_states=eight_bit,
        bnb_states=bnb,
        paged_states=paged,
        weight_dtype=weight,
        trainable_dtype=trainable,
        autocast_dtype=autocast,
        deepspeed=deepspeed,
        ds_persistent_fp32_grads=deepspeed and setup.zero == 0,
        loss_scale=setup.recipe == "fp16-amp",
        world_size=n,
        divisors=divisors,
        host_divisors=host,
        micro_steps=min(setup.grad_accum, 2),
        optimizer_in_backward=in_backward,
        ds_grad_partition=deepspeed and setup.zero == 3,
        fsdp2=setup.fsdp is not None,
        substitutions=tuple(subs),
        assumptions=tuple(notes),
    )
