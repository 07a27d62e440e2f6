"""Compute time: the dense peak of the recipe's precision, matmul time at an efficiency, QLoRA
dequantisation and the GPU optimizer step (docs/speed.md eqs. S7-S9)."""

from __future__ import annotations

from planner.engine.bnb import quantized_frozen_bytes
from planner.engine.dtypes import recipe_bytes
from planner.engine.facts import ModelFacts
from planner.engine.setup import Setup, SetupError
from profiles.schema import GpuProfile

def peak_flops(gpu: GpuProfile, setup: Setup) -> float:
    """Eq. S8: dense peak FLOP/s of the recipe's matmul precision.

    bf16 tensor cores for ``hf-amp`` (autocast to bf16), ``deepspeed-bf16`` and ``bf16``; fp16 for
    ``fp16-amp``. GeForce figures are the FP32-accumulate rate (reference/hardware.md). Raises
    :class:`SetupError` when the GPU lacks the precision.
    """
    tflops = gpu.fp16_tflops if setup.recipe == "fp16-amp" else gpu.bf16_tflops
    if tflops is None:
        want = "fp16" if setup.recipe == "fp16-amp" else "bf16"
        alt = "fp16-amp" if want == "bf16" else "bf16"
        raise SetupError(f"{gpu.name} has no {want} tensor-core rate for recipe {setup.recipe!r}; use --recipe {alt}")
    return tflops * 1e12


def compute_seconds(flops: float, peak: float, efficiency: float) -> float:
    """Eq. S8: ``FLOPs / (peak * efficiency)``. ``efficiency`` is the achieved fraction of the dense peak
    (the GPU profile's ``default_mfu`` until calibrated). Does not fall with small matmuls or short
    sequences: errs low (fast) for micro-batch x seq below a few thousand tokens."""
    return flops / (peak * efficiency)


def qlora_dequant_bytes_per_pass(facts: ModelFacts, setup: Setup) -> float:
    """Eq. S7: HBM bytes one QLoRA dequantisation pass moves (0 unless QLoRA).

    bitsandbytes dequantises every NF4 linear weight of the blocks to bf16 before its matmul, in the
    forward, again for the backward's input gradient, and again in a checkpointed recompute: it reads
    its NF4 storage (:func:`planner.engine.memory.quantized_frozen_bytes`: 0.5 B + constants; Dettmers et al. 2023,
    arXiv:2305.14314) and writes 2 B per weight (the matmul's own read of the bf16 copy is part of the
    GEMM). All routed experts are counted (with thousands of tokens per micro-batch every expert is hit).
    Memory-bound, time = bytes / HBM bandwidth with no efficiency factor: errs low (fast); measured QLoRA
    runs are 1.3-1.8x slower than LoRA (ms-swift ``docs/source/LLM/Benchmark.md``, int4 bnb vs bf16),
    far more than this term, so calibration absorbs the rest.
    """
    if setup.method != "qlora":
        return 0.0
    frozen_linear = facts.trainable.frozen_linear
    return quantized_frozen_bytes(frozen_linear, setup.double_quant) + 2.0 * frozen_linear


FUSED_ADAMW_PASSES = 7
"""Eq. S8b: tensor passes of one step of a fused AdamW kernel (torch ``fused=True``, DeepSpeed FusedAdam, and the
host's one-loop-per-element CPU Adam): read param, grad, m and v, write param, m and v. A test counts it on a real
torch step (tests/planner/engine/test_speed.py)."""

FOREACH_ADAMW_PASSES = 20
"""Eq. S8c: tensor passes of one step of torch's multi-tensor (``foreach``) AdamW, counted from
``torch/optim/adam.py`` ``_multi_tensor_adam`` (torch 2.13, not capturable, weight decay on): ``_foreach_mul_``
(decay: read and write p, 2), ``_foreach_lerp_`` (m: read m and g, write m, 3), ``_foreach_mul_`` (v, 2),
``_foreach_addcmul_`` (v += g*g: read v and g, write v, 3), ``_foreach_sqrt`` (read v, write a temporary, 2),
``_foreach_div_`` and ``_foreach_add_`` on the temporary (2 + 2), ``_foreach_addcdiv_`` (read p, m and the
temporary, write p, 4): 20, against the fused kernel's :data:`FUSED_ADAMW_PASSES`. A test counts both
on a real torch step. All tensors are taken at the state size (exact where parameters, gradients and states
share a dtype, as under pure bf16 and torch AMP). Without weight decay (the HF Trainer's default 0.0) it is 18:
the count errs slow by 2 passes there; every pass is taken at the HBM bandwidth (errs fast for the many small
tensors of a LoRA run, whose launches the step's fixed costs hold)."""


def optimizer_step_bytes_per_param(setup: Setup, on_gpu: bool = True) -> float:
    """Bytes one optimizer step reads and writes per trainable parameter (GPU HBM or host DRAM).

    With ``s`` the recipe's state element size (:func:`planner.engine.dtypes.recipe_bytes`: 4; 2 under pure bf16):
    AdamW reads param, grad, m, v and writes param, m, v: ``7 s`` (:data:`FUSED_ADAMW_PASSES`) (+2 for the 16-bit copy written back from
    an fp32 master, DeepSpeed); on the GPU with ``optimizer_kernel="foreach"`` (torch's default multi-tensor
    AdamW) ``20 s`` (eq. S8c, :data:`FOREACH_ADAMW_PASSES`; ``on_gpu=False``, the host step, keeps ``7 s``:
    DeepSpeedCPUAdam and torch's CPU AdamW are one loop per element); 8-bit
    AdamW: ``3 s + 4``; SGD ``3 s``; SGD with momentum ``5 s``; Adafactor ``3 s`` (factored second moment
    is O(rows + cols)); bitsandbytes' 32-bit paged AdamW keeps fp32 m and v whatever the parameter dtype:
    ``16 + 2 w + g`` (w, g the weight and gradient sizes). Assumes each tensor streams through memory once (fused /
    multi-tensor kernels): errs low (fast) for unfused optimizers.
    """
    rb = recipe_bytes(setup)
    s = float(rb.state)
    copy = 2.0 if rb.master else 0.0
    if setup.optimizer == "paged-adamw":
        return 16.0 + 2.0 * rb.trainable_weight + float(rb.grad16 or rb.grad32) + copy
    return {
        "adamw": (FOREACH_ADAMW_PASSES if on_gpu and setup.foreach_adamw else FUSED_ADAMW_PASSES) * s + copy,
        "adamw-8bit": 3 * s + 4 + copy,
        "paged-adamw": FUSED_ADAMW_PASSES * 4.0 + copy,  # bitsandbytes keeps 32-bit states whatever the recipe
        "paged-adamw-8bit": 3 * s + 4 + copy,
        "sgd": 3 * s + copy,
        "sgd-momentum": 5 * s + copy,
        "adafactor": 3 * s + copy,
    }[setup.optimizer]


def optimizer_shards(setup: Setup, world_size: int) -> int:
    """How many ranks the optimizer states are partitioned over: N under ZeRO-1/2/3 and FSDP, 1 under DDP."""
    return world_size if (setup.zero > 0 or setup.fsdp is not None) else 1
