"""The step time of one setup: the per-op time inventory of its micro-steps, the optimizer step, exposed
communication, offload and the trainer's fixed costs, assembled into a
:class:`~planner.engine.results.SpeedEstimate` (docs/speed.md eq. S18)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import math

from planner.engine.activations import effective_attention
from planner.engine.calibration import Calibration
from planner.engine.facts import ModelFacts
from planner.engine.results import SpeedEstimate, unchecked
from planner.engine.setup import FLASH_KERNEL_ARCH, Setup
from planner.engine.speed.comm import (
    OVERLAP_FRACTION,
    PARAM_GATHER_BYTES,
    collectives,
    exposed_seconds,
    grad_comm_bytes,
    ring_bandwidth_bytes_per_s,
    ring_factor,
)
from planner.engine.speed.compute import (
    FOREACH_ADAMW_PASSES, optimizer_shards, optimizer_step_bytes_per_param, peak_flops,
)
from planner.engine.speed.flops import flops_per_token
from planner.engine.speed.kernels import (
    BASE_KERNELS_PER_BLOCK,
    fsdp1_units,
    gemm_efficiency,
    micro_step_time,
    micro_step_work,
)
from planner.engine.speed.offload import (
    HOST_OPTIMIZER_PUBLISHED_GB_S,
    activation_offload_bytes_per_micro_step,
    host_optimizer_seconds,
    offload_pcie_bytes_per_gpu,
)
from planner.engine.speed.parallel import (
    cp_collectives_per_micro_step,
    galore_step_work,
    tp_collectives_per_micro_step,
)
from planner.engine.speed.params import PRIORS, SpeedParams
from planner.engine.techniques import fp8_weight_params
from planner.engine.speed.train_time import tokens_per_step
from profiles.cluster import Cluster

BREAKDOWN = ("gemm", "attention", "memory_bound", "recompute", "host_overhead", "optimizer", "communication",
             "offload")
"""The parts of a step, in display order; they sum to the step time."""

BUCKET_BYTES = 25 * 2**20
"""Gradient bucket size of PyTorch DDP (``bucket_cap_mb=25``, torch/nn/parallel/distributed.py); DeepSpeed's
ZeRO-1/2 ``reduce_bucket_size`` as the HF integration fills it (h^2 elements, 32 MiB at h = 4096) is of the
same order. One collective call, one latency, per bucket."""

DEEPSPEED_STAGE0_OVERLAP = 0.0
"""Eq. S13: DeepSpeed without ZeRO all-reduces the gradients in ``engine.backward`` after autograd has
finished (``allreduce_gradients`` in deepspeed/runtime/engine.py), so nothing hides it."""


ZERO3_RECOMPUTE_HOOKS = 1.5
"""Eq. S26c under full checkpointing: the recompute runs the forward's fetch hooks again, so a block's hooks cost 1.5x
[assumption: forward and backward hooks cost alike; no published split]."""


def zero3_hook_seconds(facts: ModelFacts, setup: Setup, params: SpeedParams) -> float:
    """Eq. S26c: host time DeepSpeed ZeRO-3's module hooks add to one micro-step, serialised with the GPU:
    ``zero3_block_host_s`` per decoder block, x :data:`ZERO3_RECOMPUTE_HOOKS` under full checkpointing; 0 for any
    other strategy. Source: the CPU measurement behind the prior (``benchmarks/results/zero3_host_overhead.json``)
    and the ZeRO-3 runs of the corpus; a block is priced alike whatever its parameter count (errs low for MoE blocks
    with one module per expert)."""
    if setup.zero != 3:
        return 0.0
    recompute = ZERO3_RECOMPUTE_HOOKS if setup.checkpointing == "full" else 1.0
    return facts.model.num_layers * params.zero3_block_host_s * recompute


def paging_seconds(paged_bytes: float, pcie_bytes_per_s: float) -> float:
    """Eq. S16b: a paged optimizer (bitsandbytes ``PagedAdamW`` / ``PagedAdamW8bit``: states in CUDA unified
    memory, prefetched for the step) moves the states that do not fit on the GPU over PCIe twice per step:
    in for the optimizer step, out again when forward and backward need the memory. Zero when they fit
    (paging then costs nothing: bitsandbytes ``optim/optimizer.py`` prefetches resident pages). Errs fast where
    the driver evicts and faults page by page instead of streaming."""
    return 2.0 * paged_bytes / pcie_bytes_per_s if paged_bytes > 0 else 0.0


def estimate_speed(
    facts: ModelFacts,
    cluster: Cluster,
    setup: Setup,
    calibration: Calibration | None = None,
    params: SpeedParams = PRIORS,
    *,
    efficiency: float | None = None,
    paged_bytes: float = 0.0,
    explain: bool = True,
) -> SpeedEstimate:
    """Step time, throughput and MFU of ``setup`` on ``cluster`` (eq. S18).

    One optimizer step on one GPU (all GPUs are symmetric under data parallelism) is

    ``grad_accum x max(GPU time, host time) of a micro-step + optimizer + exposed communication + offload
    + the trainer's per-step overhead``

    where a micro-step's GPU time is its GEMMs, attention, memory-bound work and recompute
    (:func:`planner.engine.speed.kernels.micro_step`, S20-S22) and its host time the kernel launches (S26):
    kernels are queued asynchronously, so the slower of the two sets the pace.

    ``params`` are the physical parameters (priors, or the corpus fit the app layer loads).
    ``efficiency`` overrides the architecture's large-GEMM ceiling (``--efficiency``), and so does a
    validation run's calibration for its GPU and recipe (``calibration.mfu``). ``paged_bytes``: optimizer
    state of a paged optimizer that does not fit beside the rest and lives on the host (eq. S16b).
    ``explain=False`` skips the
    assumption lines (the corpus fit evaluates thousands of estimates).
    """
    gpu = cluster.gpu
    n = cluster.world_size
    ga = setup.grad_accum
    model = facts.model
    ceiling_source = "sourced/fitted ceiling"
    if efficiency is not None:
        params = params.model_copy(update={"matmul_efficiency": {**params.matmul_efficiency, gpu.arch: efficiency}})
        ceiling_source = "given (--efficiency)"
    elif calibration is not None and calibration.mfu is not None:
        params = params.model_copy(
            update={"matmul_efficiency": {**params.matmul_efficiency, gpu.arch: calibration.mfu}})
        ceiling_source = calibration.label
    peak = peak_flops(gpu, setup)
    ms = micro_step_time(micro_step_work(facts, setup), gpu, setup.framework, peak, params)
    units = fsdp1_units(facts, setup)
    if units:  # eq. S26b: FSDP1's per-unit hooks, host work that competes with the GPU's like the launches
        ms = replace(ms, host_s=ms.host_s + units * params.fsdp1_unit_s)
    hbm = gpu.hbm_bandwidth_gb_s * 1e9 * params.hbm_efficiency

    # the optimizer step on the GPU (S8b), memory-bound
    t_opt = 0.0
    if setup.offload == "none":
        local = facts.trainable.trainable / optimizer_shards(setup, n)
        t_opt = local * optimizer_step_bytes_per_param(setup) / hbm
    if setup.galore_rank is not None:
        # GaLore (S31): projections every step (the larger of their FLOPs and bytes), the SVD every update interval
        proj_f, proj_b, svd_f = galore_step_work(facts, setup)
        t_opt += max(proj_f / (peak * params.matmul(gpu.arch)), proj_b / hbm)
        t_opt += svd_f / (peak * params.svd_efficiency) / setup.galore_update_interval

    # communication (S10-S13, S23): ring collectives at the achieved link bandwidth plus a latency per call
    link_eff = params.link(gpu.interconnect) if cluster.nodes == 1 else params.link_efficiency
    bw = ring_bandwidth_bytes_per_s(cluster) * link_eff
    overlap = OVERLAP_FRACTION[setup.sharding_label]
    if setup.zero == 0 and setup.fsdp is None and setup.uses_deepspeed and n > 1:
        overlap = DEEPSPEED_STAGE0_OVERLAP
    # the windows communication can hide in: the micro-step's wall time (the GPU's, or the host's when launches
    # bind), forward being about a third of it
    wall = max(ms.gpu_s, ms.host_s)
    windows = {"backward": wall * 2.0 / 3.0, "forward+backward": wall, "none": 0.0}
    # with TP the FSDP mesh is the other world / tp ranks, each moving its TP shard (eq. S29)
    n_dp = max(1, n // setup.tp)
    colls = collectives(facts, setup, n_dp) if n_dp > 1 else []
    per_layer = setup.zero == 3 or setup.fsdp is not None
    by_window: dict[tuple[str, bool], float] = {}
    for c in colls:
        # ZeRO-3 / FSDP gather and reduce block by block; the others in buckets of BUCKET_BYTES
        calls = model.num_layers if per_layer else max(1, math.ceil(c.payload_bytes / BUCKET_BYTES))
        payload = c.payload_bytes / setup.tp
        if setup.fp8 == "tensorwise" and c.op == "all-gather" and setup.fsdp is not None:
            payload -= fp8_weight_params(facts) * (PARAM_GATHER_BYTES - 1) / setup.tp  # float8 all-gather (S28)
        t = ring_factor(c.op, n_dp) * payload / bw + params.collective_latency_s * calls
        key = (c.window, c.per_micro_step)
        by_window[key] = by_window.get(key, 0.0) + t
    # the collectives that share a window hide behind it together (eq. S13)
    comm_s = sum(exposed_seconds(t, windows[w], overlap) * (ga if per_micro else 1)
                 for (w, per_micro), t in by_window.items())
    # tensor and context parallelism (S30): inside the critical path; async TP hides part of TP's
    tp_bytes, tp_calls = tp_collectives_per_micro_step(facts, setup)
    cp_bytes, cp_calls = cp_collectives_per_micro_step(facts, setup)
    if tp_calls or cp_calls:
        intra = gpu.intra_node_bandwidth_gb_s * 1e9 * params.link(gpu.interconnect)
        t_tp = tp_bytes / intra + params.collective_latency_s * tp_calls
        if setup.async_tp:
            t_tp *= 1.0 - params.async_tp_overlap
        cp_bw = intra if setup.model_parallel <= cluster.gpus_per_node else bw
        t_cp = cp_bytes / cp_bw + params.collective_latency_s * cp_calls
        comm_s += ga * (t_tp + t_cp)

    # offload (S14-S16)
    pcie = gpu.pcie_bandwidth_gb_s * 1e9 * params.pcie_efficiency
    pcie_bytes = offload_pcie_bytes_per_gpu(facts, setup, n)
    host_opt_s = host_optimizer_seconds(
        facts, cluster, setup, params.host_optimizer("fsdp" if setup.fsdp else "deepspeed"))
    act_s = activation_offload_bytes_per_micro_step(facts, setup) / pcie
    offload_s = sum(pcie_bytes.values()) / pcie + host_opt_s + ga * exposed_seconds(act_s, ms.gpu_s, 1.0)
    # paged optimizer states that do not fit (S16b): paged in for the step, evicted again as activations grow
    offload_s += paging_seconds(paged_bytes, pcie)

    host_wait = max(0.0, ms.host_s - ms.gpu_s)  # the GPU idles while the host launches the rest
    # eq. S26c: DeepSpeed ZeRO-3's module hooks, serialised with the GPU by its event waits
    zero3_hooks_s = ga * zero3_hook_seconds(facts, setup, params)
    breakdown = {
        "gemm": ga * ms.gemm_s,
        "attention": ga * ms.attention_s,
        "memory_bound": ga * ms.memory_s,
        "recompute": ga * ms.recompute_s,
        "host_overhead": ga * host_wait + zero3_hooks_s + params.step_overhead(setup.framework),
        "optimizer": t_opt,
        "communication": comm_s,
        "offload": offload_s,
    }
    step_s = sum(breakdown.values())
    fb = flops_per_token(facts, setup)
    processed_tokens = setup.micro_batch * setup.seq_len * ga * setup.data_parallel(n)
    useful_tokens = tokens_per_step(setup, n)
    assumptions = (_assumptions(facts, cluster, setup, params, ceiling_source, peak, bool(colls), overlap, bw, ms)
                   if explain else [])
    make = SpeedEstimate if explain else partial(unchecked, SpeedEstimate)  # unchecked when explain=False (search, fit)
    return make(
        step_s=step_s,
        tokens_per_step=useful_tokens,
        breakdown_s=breakdown,
        model_flops_per_step=fb.model_total * useful_tokens,
        hardware_flops_per_step=fb.hardware_total * processed_tokens,
        peak_flops_per_gpu=peak,
        efficiency=gemm_efficiency(setup.micro_batch * setup.seq_len // setup.cp, gpu.arch, params),
        world_size=n,
        calibration=calibration.label if calibration is not None else params.source,
        assumptions=tuple(assumptions),
    )


def _assumptions(facts: ModelFacts, cluster: Cluster, setup: Setup, params: SpeedParams, ceiling_source: str,
                 peak: float, has_comm: bool, overlap: float, bw: float, ms) -> list[str]:  # noqa: ANN001
    """The parameters and conventions an estimate used, one line each (rendered by the report layer)."""
    gpu, model = cluster.gpu, facts.model
    rows = setup.micro_batch * setup.seq_len
    link_eff = params.link(gpu.interconnect) if cluster.nodes == 1 else params.link_efficiency
    prec = "fp16" if setup.recipe == "fp16-amp" else "bf16"
    out = [
        f"speed parameters: {params.source}",
        f"GEMMs at {params.matmul(gpu.arch):.3f} of the dense {prec} peak {peak / 1e12:g} TFLOPS ({gpu.arch}, "
        f"{ceiling_source}) x rows/(rows + {params.gemm_half_rows:.0f}) = "
        f"{gemm_efficiency(rows, gpu.arch, params):.3f} at {rows} rows per micro-batch (S20)",
        "FLOPs from the architecture: 2*in*out per matmul per token, MoE top-k experts, LM head 2hV (S1-S3)",
    ]
    if effective_attention(model, setup) == "eager":
        out.append("eager attention: QK^T and PV as GEMMs over the full s x s square, mask/softmax/casts at HBM "
                   "bandwidth (S21)")
    else:
        eff = params.attention(gpu.arch, setup.framework, setup.attention)
        out.append(f"{setup.attention} attention at {eff:.2f} of peak ({gpu.arch}, "
                   f"{'S21b' if setup.attention in FLASH_KERNEL_ARCH else 'S21'})")
    fused = setup.compile or setup.fused_kernels
    out.append(
        f"elementwise work: {params.memory_passes:g} HBM passes over each block's activations at "
        f"{params.hbm_efficiency:.0%} of {gpu.hbm_bandwidth_gb_s:g} GB/s"
        + (f", x{params.fused_memory_factor:g} fused ({'torch.compile' if setup.compile else 'Liger kernels'})"
           if fused else "") + " (S22)"
    )
    out.append(
        f"host: {params.layer_overhead(setup.framework) * 1e3:.2f} ms per block per micro-step ({setup.framework}, "
        f"{BASE_KERNELS_PER_BLOCK} kernels) overlapped with the GPU; {params.step_overhead(setup.framework) * 1e3:.0f} ms "
        "per optimizer step (S26)"
    )
    if setup.zero == 3:
        out.append(f"DeepSpeed ZeRO-3's module hooks: {params.zero3_block_host_s * 1e3:.1f} ms per block per micro-step"
                   + (f" (x{ZERO3_RECOMPUTE_HOOKS:g}, recompute)" if setup.checkpointing == "full" else "")
                   + ", not hidden under the GPU's queue: DeepSpeed waits on its fetch events (S26c)")
    units = fsdp1_units(facts, setup)
    if units:
        out.append(f"FSDP1: {units} units per micro-step (blocks, root"
                   + (", and each LoRA matrix: the trainer's wrapping policy" if units > model.num_layers + 1 else "")
                   + f") x {params.fsdp1_unit_s * 1e3:.2f} ms of host hooks each, beside the launches (S26b)")
    if ms.host_s > ms.gpu_s:
        out.append(f"launch-bound: the host needs {ms.host_s * 1e3:.1f} ms per micro-step, the GPU {ms.gpu_s * 1e3:.1f} ms")
    if setup.checkpointing != "none":
        out.append(
            f"recompute: {setup.checkpointing} checkpointing of every {setup.checkpoint_every} block(s) "
            "re-runs " + {"full": "its forward", "selective": "the attention core",
                          "op": "its forward but the saved matmul and attention outputs (S6b)"}[setup.checkpointing]
            + " (S6)"
        )
    if setup.fp8 != "none":
        arch_ratio = params.fp8_arch(gpu.arch)
        out.append(
            f"FP8 {setup.fp8} linears at the FP8 peak {(gpu.fp8_tflops or peak / 1e12):g} TFLOPS x the bf16 GEMM "
            f"efficiency x {params.fp8(setup.fp8):g} (the recipe, S28)"
            + (f" x {arch_ratio:.3g} ({gpu.arch}, S28b)" if arch_ratio != 1.0 else "")
            + "; casts at HBM bandwidth; LM head and attention in bf16"
        )
    if setup.method == "qlora":
        out.append("QLoRA dequantisation: NF4 read + bf16 written per weight per pass at HBM bandwidth (S7)")
    if setup.offload == "none":
        kernel = (f" (torch's foreach AdamW: {FOREACH_ADAMW_PASSES} passes, S8c)"
                  if setup.foreach_adamw else "")
        out.append(f"GPU optimizer step: {optimizer_step_bytes_per_param(setup):g} B/param at HBM bandwidth (S8b)"
                   + kernel)
    if has_comm:
        out.append(
            f"ring collectives at {bw / 1e9:g} GB/s per GPU ({link_eff:.0%} of the "
            + ("inter-node link / GPUs per node" if cluster.nodes > 1 else "intra-node link")
            + f"), {params.collective_latency_s * 1e6:g} us per call (S10, S11, S23)"
        )
        out.append(f"{setup.sharding_label} overlap fraction {overlap} (S13)")
        out.append(
            f"gradients reduced in {grad_comm_bytes(setup)} B, parameters gathered in {PARAM_GATHER_BYTES} B (S12)"
        )
    if setup.offload != "none":
        out.append(
            f"{'NVLink-C2C' if gpu.host_link == 'nvlink-c2c' else 'PCIe'} {gpu.pcie_bandwidth_gb_s:g} GB/s per GPU at "
            f"{params.pcie_efficiency:.0%}, copies not overlapped (S14)"
        )
        out.append(
            f"host optimizer step: {optimizer_step_bytes_per_param(setup, on_gpu=False):g} B/param at "
            f"{params.host_optimizer('fsdp' if setup.fsdp else 'deepspeed') / 1e9:g} GB/s per node, not overlapped (S15); "
            f"published hosts imply {HOST_OPTIMIZER_PUBLISHED_GB_S[0]:g}-{HOST_OPTIMIZER_PUBLISHED_GB_S[1]:g} GB/s, "
            "--host-optimizer-gbs gives your node's"
        )
    if setup.activation_offload:
        out.append("activation offload: checkpointed block inputs over PCIe, hidden behind compute (S16)")
    if setup.optimizer.startswith("paged"):
        out.append("paged optimizer: states that do not fit the GPU cross PCIe twice per step (S16b)")
    if setup.padding_efficiency < 1:
        out.append(f"{setup.padding_efficiency:.1%} of processed tokens are real (padding or unfilled packs) (S17)")
    elif not setup.packing:
        out.append("no packing: rows assumed full, no padding counted (pass --padding-efficiency or --dataset) (S17)")
    if model.derived is not None:
        out.append("attention FLOPs per block kind of the derived profile: sliding windows and chunks counted, "
                   "linear-attention / state-space FLOPs as measured (docs/memory.md eq. D5)")
    elif model.sliding_window is not None:
        out.append(f"sliding window {model.sliding_window} ignored: attention FLOPs err high beyond it (S2)")
    if model.moe is not None:
        out.append("MoE: top-k routed experts per token, each expert's GEMM sees tokens x k / experts rows")
    return out
