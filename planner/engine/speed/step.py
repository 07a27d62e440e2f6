"""The step time of one setup: compute, recompute, exposed communication and offload, assembled into a
:class:`~planner.engine.results.SpeedEstimate` (docs/speed.md eq. S18)."""

from __future__ import annotations

from planner.engine.activations import effective_attention
from planner.engine.calibration import Calibration
from planner.engine.facts import ModelFacts
from planner.engine.results import SpeedEstimate
from planner.engine.setup import Setup, SetupError
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
    compute_seconds,
    gpu_optimizer_seconds,
    optimizer_step_bytes_per_param,
    peak_flops,
    qlora_dequant_bytes_per_pass,
)
from planner.engine.speed.flops import FLASH_BACKWARD_FACTOR, checkpointed_blocks, flops_per_token
from planner.engine.speed.offload import (
    HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S,
    activation_offload_bytes_per_micro_step,
    host_optimizer_seconds,
    offload_pcie_bytes_per_gpu,
)
from planner.engine.speed.train_time import tokens_per_step
from profiles.cluster import Cluster
from profiles.schema import ModelProfile


def estimate_speed(
    facts: ModelFacts,
    cluster: Cluster,
    setup: Setup,
    calibration: Calibration | None = None,
    *,
    efficiency: float | None = None,
    padding_efficiency: float = 1.0,
) -> SpeedEstimate:
    """Step time, throughput and MFU of ``setup`` on ``cluster`` (eq. S18).

    ``step_s = compute + communication + offload + recompute``, each the *exposed* seconds of one optimizer
    step on one GPU (all GPUs are symmetric under data parallelism):

    * compute: forward + backward hardware FLOPs of ``grad_accum`` micro-batches at ``peak x efficiency``
      (eq. S8), QLoRA dequantisation of the forward and backward (eq. S7), the GPU optimizer step (S8b);
    * recompute: the checkpointed forward (eq. S6) and its dequantisation;
    * communication: the strategy's collectives (S10-S12) minus what hides behind compute (S13);
    * offload: PCIe copies (S14, not overlapped: errs high), the host optimizer step (S15), activation
      offload beyond the compute it overlaps (S16).

    ``efficiency`` (an explicit override) defaults to the calibration's fitted value, else
    ``cluster.gpu.default_mfu``. MFU (``SpeedEstimate.mfu``) is model FLOPs
    (no recompute) over ``step_s x peak x GPUs`` (eq. S9). Errs low (fast) overall: no kernel-launch,
    data-loading, logging or small-batch inefficiency terms; calibration fits ``efficiency``.
    """
    model = facts.model
    fitted = calibration.mfu if calibration is not None else None
    eff = efficiency if efficiency is not None else (fitted if fitted is not None else cluster.gpu.default_mfu)
    eff_source = "given" if efficiency is not None else ("calibrated" if fitted is not None else f"{cluster.gpu.name} default_mfu")
    if not 0 < eff <= 1:
        raise SetupError(f"efficiency must be in (0, 1], got {eff!r}")
    if not 0 < padding_efficiency <= 1:
        raise SetupError(f"padding efficiency must be in (0, 1], got {padding_efficiency!r}")
    gpu = cluster.gpu
    n = cluster.world_size
    ga = setup.grad_accum
    peak = peak_flops(gpu, setup)
    fb = flops_per_token(facts, setup)
    micro_tokens = setup.micro_batch * setup.seq_len
    hbm = gpu.hbm_bandwidth_gb_s * 1e9

    # compute-side times of one micro-step (S7, S8)
    dq = qlora_dequant_bytes_per_pass(facts, setup) / hbm
    dq_recompute = dq if (setup.checkpointing == "full" and checkpointed_blocks(model, setup)) else 0.0
    t_fwd = compute_seconds(fb.forward_total * micro_tokens, peak, eff) + dq
    t_bwd = compute_seconds(fb.backward_total * micro_tokens, peak, eff) + dq
    t_rec = compute_seconds(fb.recompute_total * micro_tokens, peak, eff) + dq_recompute
    t_opt = gpu_optimizer_seconds(facts, cluster, setup)
    compute_s = ga * (t_fwd + t_bwd) + t_opt
    recompute_s = ga * t_rec

    # communication (S10-S13)
    bw = ring_bandwidth_bytes_per_s(cluster)
    overlap = OVERLAP_FRACTION[setup.sharding_label]
    windows = {"backward": t_bwd + t_rec, "forward+backward": t_fwd + t_bwd + t_rec, "none": 0.0}
    per_micro: dict[str, float] = {}
    per_step: dict[str, float] = {}
    colls = collectives(facts, setup, n)
    for c in colls:
        t = ring_factor(c.op, n) * c.payload_bytes / bw
        bucket = per_micro if c.per_micro_step else per_step
        bucket[c.window] = bucket.get(c.window, 0.0) + t
    comm_s = ga * sum(exposed_seconds(t, windows[w], overlap) for w, t in per_micro.items()) + sum(
        exposed_seconds(t, windows[w], overlap) for w, t in per_step.items()
    )

    # offload (S14-S16)
    pcie = gpu.pcie_bandwidth_gb_s * 1e9
    pcie_bytes = offload_pcie_bytes_per_gpu(facts, setup, n)
    host_s = host_optimizer_seconds(facts, cluster, setup)
    act_s = activation_offload_bytes_per_micro_step(facts, setup) / pcie
    offload_s = sum(pcie_bytes.values()) / pcie + host_s + ga * exposed_seconds(act_s, t_fwd + t_bwd + t_rec, 1.0)

    breakdown = {"compute": compute_s, "communication": comm_s, "offload": offload_s, "recompute": recompute_s}
    step_s = sum(breakdown.values())
    useful_tokens = tokens_per_step(setup, n, padding_efficiency)
    processed_tokens = micro_tokens * ga * n

    assumptions = _assumptions(
        model, cluster, setup, eff, eff_source, padding_efficiency, bool(colls), overlap, bw
    )
    return SpeedEstimate(
        step_s=step_s,
        tokens_per_step=useful_tokens,
        breakdown_s=breakdown,
        model_flops_per_step=fb.model_total * useful_tokens,
        hardware_flops_per_step=fb.hardware_total * processed_tokens,
        peak_flops_per_gpu=peak,
        efficiency=eff,
        world_size=n,
        calibration=calibration.label if calibration is not None else "uncalibrated",
        assumptions=tuple(assumptions),
    )


def _assumptions(
    model: ModelProfile,
    cluster: Cluster,
    setup: Setup,
    eff: float,
    eff_source: str,
    padding_efficiency: float,
    has_comm: bool,
    overlap: float,
    bw: float,
) -> list[str]:
    """The constants and conventions an estimate used, one line each (rendered by the report layer)."""
    gpu = cluster.gpu
    src = eff_source
    prec = "fp16" if setup.recipe == "fp16-amp" else "bf16"
    out = [
        f"efficiency {eff:.2f} of dense {prec} peak {peak_flops(gpu, setup) / 1e12:g} TFLOPS ({src}; S8)",
        "FLOPs from the architecture: 2*in*out per matmul per token, MoE top-k experts, LM head 2hV (S1-S3)",
        "attention: causal, useful keys s/2 per query"
        + (", eager computes the full s x s square (hardware FLOPs)" if effective_attention(model, setup) == "eager" else
           f", {setup.attention} skips masked tiles; backward {FLASH_BACKWARD_FACTOR}x forward (S2, S4)"),
        "backward: 2x forward for trained weights, 1x for frozen weights above the first trained block (S4)",
    ]
    if setup.checkpointing != "none":
        out.append(
            f"recompute: {setup.checkpointing} checkpointing of every {setup.checkpoint_every} block(s) "
            "re-runs " + ("its forward" if setup.checkpointing == "full" else "the attention core") + " (S6)"
        )
    if setup.method == "qlora":
        out.append(f"QLoRA dequantisation: 2.5 B/weight per pass at HBM {gpu.hbm_bandwidth_gb_s:g} GB/s, no "
                   "efficiency factor (S7, errs fast)")
    if setup.dora:
        out.append("DoRA weight-norm cost ignored (errs fast)")
    if setup.offload == "none":
        out.append(f"GPU optimizer step: {optimizer_step_bytes_per_param(setup):g} B/param at HBM bandwidth (S8b)")
    if has_comm:
        out.append(
            f"ring collectives at {bw / 1e9:g} GB/s per GPU"
            + (" (inter-node link / GPUs per node)" if cluster.nodes > 1 else " (intra-node link)")
            + ", no latency term (S10, S11)"
        )
        out.append(f"{setup.sharding_label} overlap fraction {overlap} [assumption, calibrate] (S13)")
        out.append(
            f"gradients reduced in {grad_comm_bytes(setup)} B, parameters gathered in {PARAM_GATHER_BYTES} B (S12)"
        )
    if setup.offload != "none":
        out.append(
            f"PCIe {gpu.pcie_bandwidth_gb_s:g} GB/s per GPU, one direction, not shared, copies not overlapped (S14)"
        )
        out.append(
            f"host optimizer step: {optimizer_step_bytes_per_param(setup):g} B/param at "
            f"{HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S / 1e9:g} GB/s per node [assumption, calibrate], "
            "not overlapped (S15)"
        )
    if setup.activation_offload:
        out.append("activation offload: checkpointed block inputs over PCIe, hidden behind compute (S16)")
    if not setup.packing:
        out.append(f"no packing: padding efficiency {padding_efficiency:g} (S17)")
    if model.sliding_window is not None:
        out.append(f"sliding window {model.sliding_window} ignored: attention FLOPs err high beyond it (S2)")
    if model.moe is not None:
        out.append("MoE: top-k routed experts per token, no capacity dropping or expert-parallel all-to-all")
    return out


