"""The speed model: FLOPs per token, compute / communication / offload time, tokens/s and MFU.

Pure arithmetic: no printing, no files, no torch. Every formula lives in exactly one function, whose
docstring names its source, its assumptions and whether it errs high or low; ``docs/speed.md`` carries
the derivations under the equation ids (S1, S2, ...) the docstrings cite. One module per equation group:

* :mod:`.flops` (S1-S6): FLOPs per token by phase and part;
* :mod:`.compute` (S7-S9): peak FLOP/s, matmul time, QLoRA dequantisation, the GPU optimizer step;
* :mod:`.comm` (S10-S13): collectives, ring bandwidth, overlap;
* :mod:`.offload` (S14-S16): PCIe traffic, the host optimizer step, activation offload;
* :mod:`.step` (S18): :func:`estimate_speed`, the step time of one setup;
* :mod:`.train_time` (S17, S19): tokens per step, time and cost of a run.

Units: FLOPs are floating-point operations (a multiply-add is 2), bytes are bytes, times are seconds,
bandwidths are bytes per second. Conversion to TFLOPS / GB/s happens only in the constants' names.
"""

from planner.engine.speed.comm import (
    OVERLAP_FRACTION,
    PARAM_GATHER_BYTES,
    Collective,
    collectives,
    communication_bytes_per_gpu,
    exposed_seconds,
    gathered_param_bytes,
    grad_comm_bytes,
    ring_bandwidth_bytes_per_s,
    ring_factor,
)
from planner.engine.speed.compute import (
    compute_seconds,
    gpu_optimizer_seconds,
    optimizer_shards,
    optimizer_step_bytes_per_param,
    peak_flops,
    qlora_dequant_bytes_per_pass,
)
from planner.engine.speed.flops import (
    FLASH_BACKWARD_FACTOR,
    PARTS,
    FlopsBreakdown,
    attention_core_flops,
    checkpointed_blocks,
    first_backward_block,
    flops_per_token,
    lm_head_flops,
    lora_adapter_flops,
    matmul_flops,
)
from planner.engine.speed.offload import (
    HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S,
    activation_offload_bytes_per_micro_step,
    host_optimizer_seconds,
    offload_pcie_bytes_per_gpu,
)
from planner.engine.speed.step import estimate_speed
from planner.engine.speed.train_time import TrainTime, tokens_per_step, train_time

__all__ = [
    "FLASH_BACKWARD_FACTOR", "HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S", "OVERLAP_FRACTION", "PARAM_GATHER_BYTES",
    "PARTS", "Collective", "FlopsBreakdown", "TrainTime", "activation_offload_bytes_per_micro_step",
    "attention_core_flops", "checkpointed_blocks", "collectives", "communication_bytes_per_gpu",
    "compute_seconds", "estimate_speed", "exposed_seconds", "first_backward_block", "flops_per_token",
    "gathered_param_bytes", "gpu_optimizer_seconds", "grad_comm_bytes", "host_optimizer_seconds",
    "lm_head_flops", "lora_adapter_flops", "matmul_flops", "offload_pcie_bytes_per_gpu", "optimizer_shards",
    "optimizer_step_bytes_per_param", "peak_flops", "qlora_dequant_bytes_per_pass", "ring_bandwidth_bytes_per_s",
    "ring_factor", "tokens_per_step", "train_time",
]
