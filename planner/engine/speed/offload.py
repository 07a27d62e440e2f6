"""Offload: PCIe traffic of ZeRO-Offload / FSDP CPU offload, the host optimizer step and activation
offload (docs/speed.md eqs. S14-S16)."""

from __future__ import annotations

from planner.engine.facts import ModelFacts
from planner.engine.setup import Setup
from planner.engine.speed.comm import PARAM_GATHER_BYTES, gathered_param_bytes, grad_comm_bytes
from planner.engine.speed.compute import optimizer_step_bytes_per_param
from planner.engine.speed.flops import checkpointed_blocks
from profiles.cluster import Cluster

HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S = 25e9
"""Effective host-memory bandwidth one node's CPU optimizer step achieves (DeepSpeed CPU Adam under
ZeRO-Offload), shared by all ranks of the node. [assumption, to be calibrated] Theoretical DDR bandwidth
is 200-460 GB/s per socket (reference/hardware.md), but measured ZeRO-Offload steps imply far less:
ZenFlow blog (DeepSpeed ``blogs/deepspeed-zenflow``): Llama-2-7B on 4xA100, step 0.5 s -> >7 s with
ZeRO-Offload, i.e. ~6.5 s for 6.7B params x 30 B = ~31 GB/s; DeepSpeed issue #6695: llama2-1.2B, CPU Adam
1.5 s per step = ~24 GB/s; chenyaofo's A800x8 LLaMA-7B gist (seq 4096, ZeRO-2 + ckpt 4.19 vs + optimizer
offload 1.81 throughput, GA 8) implies ~11 GB/s. 25 GB/s sits between them; thread pinning
(``--bind_cores_to_rank``, DeepSpeed PR #7474: 1.3x) and NUMA placement move it by 2x either way."""

HOST_OPTIMIZER_PUBLISHED_GB_S = (11.0, 570.0)
"""The range of host optimizer throughputs (GB/s of optimizer bytes per node) that published ZeRO-Offload steps imply,
for the explanation of eq. S15 (docs/speed.md S15): 11-13 GB/s from the 8xA800 runs of Zhang et al. 2023 and the
chenyaofo gist, about 115 GB/s (at least 80) from ml-engineering's 8xH200 / 8xB200 runs (insights/when-to-upgrade-gpus
at 2943345: 8.03B parameters x 30 B stepped within a 2.99 s step), about 570 GB/s from ETH LSAIE's 4x GH200 node
(four Grace CPUs, one per GPU over NVLink-C2C; profiles/evidence/lsaie-deepspeed-gh200-2025-12.yaml: 8.05B x 30 B in the
0.42 s the offload added to a 0.56 s step). The fitted value sits inside it; the host decides
where (threads per rank, DRAM), so a plan that offloads its optimizer names the range and the flag that replaces the
fit (``--host-optimizer-gbs``)."""

def offload_pcie_bytes_per_gpu(facts: ModelFacts, setup: Setup, world_size: int) -> dict[str, float]:
    """Eq. S14: bytes each GPU moves over its PCIe host link per optimizer step under ZeRO-Offload.

    Source: Ren et al. 2021 (ZeRO-Offload, arXiv:2101.06840) sec. 4; DeepSpeed
    ``runtime/zero/stage_1_and_2.py`` (``async_accumulate_grad_in_cpu_via_gpu``,
    ``async_inplace_copy_grad_to_fp32_buffer_from_gpu``). For this rank's partition ``Psi_t / N``:

    * ``grads_to_host``: ZeRO-2/3/FSDP partition gradients every micro-step; with accumulation the non-final
      micro-steps copy the 16-bit partition to a pinned CPU buffer, the boundary copies fp32 (4 B);
      ZeRO-1 copies fp32 once at the boundary.
    * ``grads_from_host``: micro-steps 1..GA-1 bring the CPU-accumulated 16-bit partition back to add to it.
    * ``params_to_gpu``: the updated 16-bit partition after the host step (not under parameter offload,
      where parameters live on the host).
    * ``param_fetch``: parameter offload (ZeRO-3 ``offload_param``): the partition crosses to the GPU before
      the forward all-gather and again before the backward one, every micro-step.

    Each GPU has its own x16 link (not shared): errs low (fast) on HGX boards where two GPUs share a PCIe
    switch uplink.
    """
    if setup.offload == "none":
        return {}
    ga = setup.grad_accum
    part = facts.trainable.trainable / world_size
    g16 = grad_comm_bytes(setup)
    out: dict[str, float] = {}
    if setup.zero == 1:
        out["grads_to_host"] = part * 4.0
        out["grads_from_host"] = 0.0
    else:
        out["grads_to_host"] = part * ((ga - 1) * g16 + 4.0)
        out["grads_from_host"] = part * (ga - 1) * g16
    if setup.offload == "optimizer+params":
        out["params_to_gpu"] = 0.0
        out["param_fetch"] = 2.0 * ga * gathered_param_bytes(facts, setup) / world_size
    else:
        out["params_to_gpu"] = part * PARAM_GATHER_BYTES
        out["param_fetch"] = 0.0
    return out


def host_optimizer_seconds(facts: ModelFacts, cluster: Cluster, setup: Setup,
                           host_bytes_per_s: float = HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S) -> float:
    """Eq. S15: the CPU optimizer step under ZeRO-Offload, ``(Psi_t / nodes) * bytes_per_param / B_host``.

    All ranks of a node step their partitions at once and share the node's DRAM bandwidth
    (:data:`HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S`); CPU Adam's arithmetic (~20 FLOPs per parameter, AVX) is
    negligible against it. Not overlapped with the next forward (DeepSpeed's delayed parameter update,
    Ren et al. 2021 sec. 5, is off by default).
    """
    if setup.offload == "none":
        return 0.0
    node_params = facts.trainable.trainable / cluster.nodes
    return node_params * optimizer_step_bytes_per_param(setup, on_gpu=False) / host_bytes_per_s


def activation_offload_bytes_per_micro_step(facts: ModelFacts, setup: Setup) -> float:
    """Eq. S16: PCIe bytes per micro-step of activation offload: each checkpointed block's input
    (``b * s * h`` in bf16) goes to the host in forward and returns in backward."""
    if not setup.activation_offload:
        return 0.0
    n = len(checkpointed_blocks(facts.model, setup))
    tokens = setup.micro_batch * setup.seq_len // setup.cp / setup.tp  # sequence-sharded block inputs (eq. T1)
    return 2.0 * n * tokens * facts.model.hidden_size * 2


