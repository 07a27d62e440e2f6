"""Byte sizes the precision recipes imply, decided in one place (docs/memory.md, eq. M1).

For each recipe: what dtype stores the weights that train, the frozen weights, the gradients, the optimizer
states, whether an fp32 master copy exists, what dtype activations are computed in and what dtype the
residual stream (the layers' inputs and outputs) has.

Sources: HF Trainer AMP (``torch.autocast`` over fp32 weights); DeepSpeed's bf16/fp16 optimizers keep an
fp32 master and an fp32 gradient partition (``deepspeed/runtime/zero/stage_1_and_2.py``, the comment in
``estimate_zero2_model_states_mem_needs``: "18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit +
8_optimizer_states_32bit"); torchtune's pure bf16 (``docs/source/tutorials/memory_optimizations.rst``).
LoRA / QLoRA / freeze under AMP: the frozen base is loaded in the compute dtype (LLaMA-Factory, peft
examples) while trainable parameters stay fp32 (peft ``autocast_adapter_dtype=True``; LLaMA-Factory
upcasts trainable parameters to fp32 unless ``pure_bf16``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.engine.setup import Setup


@dataclass(frozen=True)
class RecipeBytes:
    """Bytes per element for each kind of tensor under one recipe and method."""

    trainable_weight: int
    frozen_weight: int
    grad16: int
    """low-precision gradient (the autograd .grad for bf16/fp16 weights); 0 when grads are fp32"""
    grad32: int
    """fp32 gradient (AMP .grad of fp32 weights, or DeepSpeed's fp32 gradient partition)"""
    master: int
    """fp32 master copy (DeepSpeed bf16/fp16 optimizers)"""
    state: int
    """one optimizer state element (Adam m or v): fp32 = 4, pure bf16 = 2"""
    compute: int
    """activation dtype: bf16/fp16 = 2"""
    residual: int
    """dtype of the residual stream between layers (fp32 when full-model weights are fp32 under AMP)"""
    autocast: bool
    """True when torch.autocast casts fp32 weights per use (a cached low-precision copy per weight)"""
    adapter: int
    """dtype of LoRA adapter weights"""
    gathered: bool = False
    """FSDP mixed precision (eq. M1b): every parameter reaches its module already cast to the compute dtype
    (FSDP2 ``MixedPrecisionPolicy.param_dtype``), so autocast has nothing to cast and LoRA adapters compute in
    the compute dtype although they are stored in fp32"""


def recipe_bytes(setup: Setup) -> RecipeBytes:
    """Resolve the byte sizes of ``setup.recipe`` for ``setup.method`` (eq. M1)."""
    r = setup.recipe
    deepspeed = setup.zero > 0
    if setup.badam and setup.method == "full":
        # BAdam (eq. M1c): the model stays bf16 (LLaMA-Factory model/adapter.py: "BAdam detected, remaining trainable
        # params in half precision"); the active block gets an fp32 master copy, an fp32 gradient and fp32 Adam states
        # (BAdam block_optim.py: param.clone().float(), _grad_to_hp), its bf16 gradient made in backward. Under ZeRO-3
        # DeepSpeed's bf16 optimizer keeps the same set for the trainable (active) parameters.
        return RecipeBytes(2, 2, 2, 4, 4, 4, 2, 2, False, 2)
    if r == "bf16":
        return RecipeBytes(2, 2, 2, 0, 0, 2, 2, 2, False, 2, )
    if r == "deepspeed-bf16" or (r == "fp16-amp" and deepspeed):
        # DeepSpeed casts the whole module to bf16/fp16 (engine: module.bfloat16()), adapters included.
        return RecipeBytes(2, 2, 2, 4, 4, 4, 2, 2, False, 2)
    # hf-amp / fp16-amp without DeepSpeed: fp32 trainable weights under autocast
    full_model_fp32 = setup.method == "full"
    if setup.fsdp is not None:
        return fsdp_amp_recipe_bytes(full_model_fp32)
    return amp_recipe_bytes(full_model_fp32)


def amp_recipe_bytes(full_model_fp32: bool) -> RecipeBytes:
    """hf-amp / fp16-amp without DeepSpeed or FSDP (eq. M1): fp32 trainable weights, gradients and Adam states;
    autocast computes in 16 bits from per-weight copies; the residual stream stays fp32 when the whole model is."""
    return RecipeBytes(
        trainable_weight=4,
        frozen_weight=4 if full_model_fp32 else 2,
        grad16=0,
        grad32=4,
        master=0,
        state=4,
        compute=2,
        residual=4 if full_model_fp32 else 2,
        autocast=True,
        adapter=4,
    )


def fsdp_amp_recipe_bytes(full_model_fp32: bool) -> RecipeBytes:
    """hf-amp / fp16-amp under FSDP (eq. M1b), as accelerate 1.15 sets it up for ``mixed_precision="bf16"``:
    ``FullyShardedDataParallelPlugin.set_mixed_precision`` makes FSDP2 ``MixedPrecisionPolicy(param_dtype=bf16,
    reduce_dtype=bf16, output_dtype=bf16)`` (FSDP1: ``MixedPrecision(param_dtype=bf16, ...)``) and
    ``fsdp2_prepare_model`` upcasts trainable parameters to fp32. So the shards are fp32 (weights, gradients,
    Adam states), but each module computes with bf16 copies gathered for it: the embedding output and so the
    residual stream are bf16, and autocast (still on: accelerate's ``native_amp``) finds no fp32 weight to
    cast, so none of the per-weight copies of plain AMP exist (traced with real FSDP2, docs/accuracy.md).
    The frozen base of LoRA stays in its load dtype (only trainable parameters are upcast)."""
    return replace(amp_recipe_bytes(full_model_fp32), residual=2, autocast=False, gathered=True)


def fsdp_reduce_dtype_bytes(setup: Setup, rb: RecipeBytes) -> int | None:
    """Bytes per gradient element of the FSDP mixed-precision policy's ``reduce_dtype`` where it is not the compute
    dtype, else ``None``. torchtitan reduces in fp32 whatever the compute dtype (``reduce_dtype=torch.float32`` in
    ``torchtitan/parallelisms/parallelize_llama.py`` at 157a12c, April 2024; ``mixed_precision_reduce:
    Literal["float32"]`` in ``torchtitan/config/configs.py`` to this day): 4. accelerate's policy reduces in the
    compute dtype (eq. M1b). The one place the speed model's gradient bytes on the wire (eq. S12) and the memory
    engine's reduce-scatter buffers (eq. C4) read it."""
    if rb.gathered and setup.fsdp is not None and setup.framework == "torchtitan":
        return 4
    return None
