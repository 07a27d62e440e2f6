"""Communication: the collectives each data-parallel strategy runs, their bytes, the ring bandwidth, and
what stays exposed after overlap (docs/speed.md eqs. S10-S13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from planner.engine.bnb import quantized_frozen_bytes
from planner.engine.dtypes import fsdp_reduce_dtype_bytes, recipe_bytes
from planner.engine.facts import ModelFacts
from planner.engine.setup import Setup
from profiles.cluster import Cluster

OVERLAP_FRACTION: dict[str, float] = {
    "DDP": 0.8,
    "ZeRO-1": 0.5,
    "ZeRO-2": 0.5,
    "ZeRO-3": 0.7,
    "FSDP full-shard": 0.7,
    "FSDP shard-grad-op": 0.7,
}
"""Fraction of the overlap window (eq. S13) that hides communication, per strategy. [assumption, to be
calibrated] DDP: bucketed all-reduce fires during backward (PyTorch DDP, Li et al. 2020, VLDB, sec. 3.2.3),
only the last bucket is exposed. ZeRO-1/2: DeepSpeed ``overlap_comm`` (true in the HF DeepSpeed
integration's example ZeRO-2 config; DeepSpeed's own default is false for stage 1/2), reduction competes
with backward kernels for SMs. ZeRO-3 / FSDP: prefetching gathers the next layer during forward and
backward (``stage3_prefetch_bucket_size``, FSDP ``forward_prefetch`` / ``backward_prefetch``)."""

CommOp = Literal["all-reduce", "reduce-scatter", "all-gather"]
Window = Literal["backward", "forward+backward", "none"]


@dataclass(frozen=True)
class Collective:
    """One collective a data-parallel strategy runs (eq. S12).

    ``payload_bytes`` is the size of the whole tensor reduced or gathered (the model's gradients or
    parameters); the bytes each GPU sends are ``ring_factor(op, N) * payload_bytes`` (eq. S10).
    ``per_micro_step``: runs on every micro-batch (else once per optimizer step). ``window``: which compute
    it can hide behind (eq. S13).
    """

    name: str
    op: CommOp
    payload_bytes: float
    per_micro_step: bool
    window: Window


def grad_comm_bytes(setup: Setup) -> int:
    """Bytes per gradient element as reduced across ranks: the recipe's 16-bit gradient where one exists,
    else its fp32 gradient (:func:`planner.engine.dtypes.recipe_bytes`, eq. M1).

    DeepSpeed bf16/fp16 (``communication_data_type`` defaults to the model dtype) and pure bf16: 2. HF AMP
    and fp16 AMP under DDP keep fp32 weights and reduce fp32 gradients: 4. Under FSDP, accelerate's mixed
    precision policy reduces in bf16 (``MixedPrecisionPolicy(reduce_dtype=bf16)``, eq. M1b): 2. torchtitan's
    FSDP reduces in fp32 (:func:`planner.engine.dtypes.fsdp_reduce_dtype_bytes`): 4.
    """
    rb = recipe_bytes(setup)
    if rb.gathered:
        return fsdp_reduce_dtype_bytes(setup, rb) or rb.compute
    return rb.grad16 if rb.grad16 else rb.grad32


PARAM_GATHER_BYTES = 2
"""Bytes per parameter element in ZeRO-1/2 updated-parameter all-gathers and ZeRO-3/FSDP gathers: the
compute dtype (DeepSpeed's bf16/fp16 parameters; FSDP ``MixedPrecision(param_dtype=bf16)`` casts the shard
before gathering, as accelerate configures it)."""


def gathered_param_bytes(facts: ModelFacts, setup: Setup) -> float:
    """Bytes of all parameters (adapters included) as ZeRO-3 / FSDP gather them: QLoRA's frozen linear
    weights in NF4 storage (:func:`planner.engine.bnb.quantized_frozen_bytes`, 0.5 B + constants), everything
    else at :data:`PARAM_GATHER_BYTES`."""
    c = facts.trainable
    total = facts.counts.total + c.adapter
    if setup.method != "qlora":
        return total * PARAM_GATHER_BYTES
    nf4 = quantized_frozen_bytes(c.frozen_linear, setup.double_quant)
    return nf4 + (total - c.frozen_linear) * PARAM_GATHER_BYTES


def ring_factor(op: CommOp, n: int) -> float:
    """Eq. S10: bytes each rank sends per byte of payload in a bandwidth-optimal ring collective.

    All-reduce ``2 (N-1) / N`` (reduce-scatter then all-gather; Patarasuk & Yuan 2009, "Bandwidth optimal
    all-reduce algorithms for clusters of workstations", JPDC 69(2)); reduce-scatter and all-gather
    ``(N-1) / N`` each (NCCL docs, "Performance" / nccl-tests ``PERFORMANCE.md``: busBw factors). Latency
    (the alpha term) is ignored: errs low (fast) for small messages such as LoRA gradients.
    """
    if n <= 1:
        return 0.0
    return (2.0 if op == "all-reduce" else 1.0) * (n - 1) / n


def collectives(facts: ModelFacts, setup: Setup, world_size: int) -> list[Collective]:
    """Eq. S12: the collectives each data-parallel strategy runs, with payloads and schedule.

    Sources: Rajbhandari et al. 2020 (ZeRO, arXiv:1910.02054) sec. 7: DDP and ZeRO-1/2 move 2 Psi per step,
    ZeRO-3 3 Psi (1.5x); DeepSpeed ``runtime/engine.py`` ``allreduce_gradients``: "ZeRO stage >= 2
    communicates during non gradient accumulation boundaries as well", stage 1 only at the boundary.

    * DDP: one all-reduce of the trainable gradients per optimizer step (HF Trainer / accelerate wrap the
      non-final micro-steps in ``no_sync``).
    * ZeRO-1: reduce-scatter of gradients at the boundary + all-gather of the updated parameters.
    * ZeRO-2: reduce-scatter on every micro-step (gradients are partitioned as they are produced) +
      all-gather of the updated parameters once.
    * ZeRO-3 / FSDP full-shard: all-gather of all parameters (frozen ones too) in forward, again in
      backward, reduce-scatter of the trainable gradients, every micro-step (accelerate's ``no_sync`` under
      FSDP would skip the non-final reduce-scatters at a memory cost: errs high there).
    * FSDP shard-grad-op: one all-gather per micro-step (kept for backward) + reduce-scatter.
    Single GPU: none.
    """
    if world_size <= 1:
        return []
    psi_t = facts.trainable.trainable
    g = grad_comm_bytes(setup)
    grads = psi_t * g
    label = setup.sharding_label
    if label == "DDP":
        return [Collective("gradient all-reduce", "all-reduce", grads, False, "backward")]
    updated = psi_t * PARAM_GATHER_BYTES
    if label == "ZeRO-1":
        return [
            Collective("gradient reduce-scatter", "reduce-scatter", grads, False, "backward"),
            Collective("updated-parameter all-gather", "all-gather", updated, False, "none"),
        ]
    if label == "ZeRO-2":
        return [
            Collective("gradient reduce-scatter", "reduce-scatter", grads, True, "backward"),
            Collective("updated-parameter all-gather", "all-gather", updated, False, "none"),
        ]
    params = gathered_param_bytes(facts, setup)
    if label in ("ZeRO-3", "FSDP full-shard"):
        return [
            Collective("parameter all-gather (forward)", "all-gather", params, True, "forward+backward"),
            Collective("parameter all-gather (backward)", "all-gather", params, True, "forward+backward"),
            Collective("gradient reduce-scatter", "reduce-scatter", grads, True, "forward+backward"),
        ]
    return [  # FSDP shard-grad-op
        Collective("parameter all-gather", "all-gather", params, True, "forward+backward"),
        Collective("gradient reduce-scatter", "reduce-scatter", grads, True, "forward+backward"),
    ]


def communication_bytes_per_gpu(facts: ModelFacts, setup: Setup, world_size: int) -> float:
    """Bytes each GPU sends per optimizer step: ``sum ring_factor * payload * (grad_accum if per micro-step)``
    (eqs. S10, S12)."""
    return sum(
        ring_factor(c.op, world_size) * c.payload_bytes * (setup.grad_accum if c.per_micro_step else 1)
        for c in collectives(facts, setup, world_size)
    )


def ring_bandwidth_bytes_per_s(cluster: Cluster) -> float:
    """Eq. S11: per-GPU bandwidth of a ring over the cluster, one direction (before the achieved-fraction
    factor of eq. S23).

    One node: the GPU's NVLink / xGMI / PCIe figure (``intra_node_bandwidth_gb_s``, per GPU, one direction).
    Several nodes: NCCL runs one ring (channel) per NIC, so each node boundary is crossed by all rings
    together at the node's network bandwidth, while each GPU's own link carries its ring's share: the ring
    moves at ``min(intra, inter-node per node)`` (nccl-tests ``doc/PERFORMANCE.md``: bus bandwidth; multi-node
    all-reduce on 8-GPU nodes with one NIC per GPU reaches a bus bandwidth close to the node's network
    figure). Latency is the separate per-call term of eq. S23.
    """
    intra = cluster.gpu.intra_node_bandwidth_gb_s * 1e9
    if cluster.nodes <= 1:
        return intra
    return min(intra, cluster.inter_node_bandwidth_bytes_per_s)


def exposed_seconds(comm_s: float, window_s: float, overlap: float) -> float:
    """Eq. S13: communication left exposed after hiding behind compute, ``max(0, comm - f * window)``."""
    return max(0.0, comm_s - overlap * window_s)


