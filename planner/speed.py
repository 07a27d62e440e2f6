"""The speed model: FLOPs per token, compute / communication / offload time, tokens/s and MFU.

Pure arithmetic: no printing, no files, no torch. Every formula lives in exactly one function below, whose
docstring names its source, its assumptions and whether it errs high or low; ``docs/speed.md`` carries
the derivations under the equation ids (S1, S2, ...) the docstrings cite.

Public API:

* :func:`estimate_speed` -> :class:`planner.results.SpeedEstimate` (step time split into the exposed
  seconds of compute / communication / offload / recompute, tokens per step, model and hardware FLOPs).
* :func:`flops_per_token` -> :class:`FlopsBreakdown` (forward, backward, recompute, by part).
* :func:`train_time` -> :class:`TrainTime` (seconds, GPU-hours, cost for a dataset and a number of epochs).
* :func:`collectives`, :func:`communication_bytes_per_gpu`: what each data-parallel strategy moves.

Units: FLOPs are floating-point operations (a multiply-add is 2), bytes are bytes, times are seconds,
bandwidths are bytes per second. Conversion to TFLOPS / GB/s happens only in the constants' names.
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.activations import effective_attention
from planner.dtypes import recipe_bytes
from planner.memory import quantized_frozen_bytes, trainable_counts
from planner.results import SpeedEstimate
from planner.setup import Setup, SetupError, lora_target_names
from profiles.cluster import Cluster
from profiles.params import LinearLayer, linear_layers, param_counts
from profiles.schema import GpuProfile, ModelProfile

PARTS = ("attention", "attention_core", "mlp", "moe", "lm_head", "lora")
"""FLOPs parts: attention projections, attention scores + PV, dense MLP, MoE (router, routed experts actually
used, shared experts), the LM head, LoRA adapters."""

# --------------------------------------------------------------------------------------------------------
# Constants. Each is an assumption or a sourced figure; estimate_speed lists the ones it used.
# --------------------------------------------------------------------------------------------------------

FLASH_BACKWARD_FACTOR = 2.5
"""FlashAttention's backward does 2.5x the forward's attention FLOPs: it recomputes QK^T from the saved
log-sum-exp (5 matmuls against the forward's 2). Source: Dao-AILab/flash-attention
``benchmarks/benchmark_flash_attention.py``, ``flops()``: ``2.5 * f if mode == "bwd"``. Hardware FLOPs
only; the model FLOPs use 2x (eq. S4)."""

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

HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S = 25e9
"""Effective host-memory bandwidth one node's CPU optimizer step achieves (DeepSpeed CPU Adam under
ZeRO-Offload), shared by all ranks of the node. [assumption, to be calibrated] Theoretical DDR bandwidth
is 200-460 GB/s per socket (reference/hardware.md), but measured ZeRO-Offload steps imply far less:
ZenFlow blog (DeepSpeed ``blogs/deepspeed-zenflow``): Llama-2-7B on 4xA100, step 0.5 s -> >7 s with
ZeRO-Offload, i.e. ~6.5 s for 6.7B params x 30 B = ~31 GB/s; DeepSpeed issue #6695: llama2-1.2B, CPU Adam
1.5 s per step = ~24 GB/s; chenyaofo's A800x8 LLaMA-7B gist (seq 4096, ZeRO-2 + ckpt 4.19 vs + optimizer
offload 1.81 throughput, GA 8) implies ~11 GB/s. 25 GB/s sits between them; thread pinning
(``--bind_cores_to_rank``, DeepSpeed PR #7474: 1.3x) and NUMA placement move it by 2x either way."""

CommOp = Literal["all-reduce", "reduce-scatter", "all-gather"]
Window = Literal["backward", "forward+backward", "none"]


# --------------------------------------------------------------------------------------------------------
# Result types of this module
# --------------------------------------------------------------------------------------------------------


class FlopsBreakdown(BaseModel):
    """FLOPs per token (a processed, possibly padded, token) by phase and part (:data:`PARTS`).

    ``forward`` / ``backward`` / ``recompute`` are *hardware* FLOPs, what the GPU executes (eager attention
    computes the full causal square, FlashAttention's backward recomputes QK^T). ``model_forward`` /
    ``model_backward`` are the *useful* FLOPs that MFU counts (causal half, backward = 2x forward, no
    recompute) (eqs. S1-S6).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    forward: dict[str, float]
    backward: dict[str, float]
    recompute: dict[str, float]
    model_forward: dict[str, float]
    model_backward: dict[str, float]

    @property
    def forward_total(self) -> float:
        return sum(self.forward.values())

    @property
    def backward_total(self) -> float:
        return sum(self.backward.values())

    @property
    def recompute_total(self) -> float:
        return sum(self.recompute.values())

    @property
    def hardware_total(self) -> float:
        """Executed FLOPs per token: forward + backward + recompute."""
        return self.forward_total + self.backward_total + self.recompute_total

    @property
    def model_total(self) -> float:
        """Useful FLOPs per token (what MFU divides): model forward + model backward, no recompute."""
        return sum(self.model_forward.values()) + sum(self.model_backward.values())


class TrainTime(BaseModel):
    """Wall time, GPU-hours and cost of a training run at a :class:`SpeedEstimate`'s throughput (eq. S19)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: float = Field(gt=0, description="dataset tokens x epochs")
    optimizer_steps: int = Field(ge=1, description="ceil(tokens / tokens_per_step)")
    seconds: float = Field(gt=0)
    gpu_hours: float = Field(gt=0)
    cost: float | None = Field(None, description="gpu_hours x price per GPU-hour; None without a price")

    def to_json(self) -> dict:
        return self.model_dump()

    def __str__(self) -> str:
        """One display line: ``2.00e+09 tokens in 12.3 h (98.4 GPU-hours, cost 147.60)``."""
        cost = "" if self.cost is None else f", cost {self.cost:,.2f}"
        return (
            f"{self.tokens:.3g} tokens in {self.seconds / 3600:,.1f} h "
            f"({self.gpu_hours:,.1f} GPU-hours{cost}; {self.optimizer_steps:,} optimizer steps)"
        )


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


# --------------------------------------------------------------------------------------------------------
# FLOPs (eqs. S1-S6)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BlockLinear:
    """One linear layer kind as it appears in one block: instances and token-visited instances per block."""

    layer: LinearLayer
    instances: float
    active: float


def _block_linears(model: ModelProfile) -> tuple[list[_BlockLinear], list[_BlockLinear], list[_BlockLinear], int]:
    """Split :func:`profiles.params.linear_layers` into per-block lists: attention, dense-MLP, MoE-MLP.

    Returns (attention, dense, moe, dense_blocks): blocks ``0 .. dense_blocks-1`` use the dense MLP, the
    rest the MoE MLP (DeepSeek ``first_k_dense_replace``); a dense model has ``dense_blocks = num_layers``.
    """
    L = model.num_layers
    dense_blocks = model.moe.dense_layers if model.moe is not None else L
    moe_blocks = L - dense_blocks
    attn: list[_BlockLinear] = []
    dense: list[_BlockLinear] = []
    moe: list[_BlockLinear] = []
    for x in linear_layers(model):
        if x.group == "attention":
            attn.append(_BlockLinear(x, x.count / L, x.active_count / L))
        elif x.group == "mlp":
            dense.append(_BlockLinear(x, x.count / dense_blocks, x.active_count / dense_blocks))
        else:
            moe.append(_BlockLinear(x, x.count / moe_blocks, x.active_count / moe_blocks))
    return attn, dense, moe, dense_blocks


def matmul_flops(in_features: int, out_features: int) -> float:
    """Eq. S1: forward FLOPs of one token through one ``in x out`` linear layer: ``2 * in * out``.

    Source: one multiply-add per weight per token (Kaplan et al. 2020, arXiv:2001.08361, Table 1, "2N";
    Narayanan et al. 2021, arXiv:2104.04473, sec. 5.1). Biases, norms, activations, RoPE, softmax and
    residual adds are elementwise and ignored: errs low by well under 1% at h >= 1024.
    """
    return 2.0 * in_features * out_features


def attention_core_flops(model: ModelProfile, seq_len: int, causal_full_square: bool) -> float:
    """Eq. S2: forward FLOPs per token per layer of QK^T and PV: ``2 * s_eff * heads * (d_qk + d_v)``.

    Each query attends ``s_eff`` keys: QK^T costs ``2 * s_eff * d_qk`` and PV ``2 * s_eff * d_v`` per head.
    Causal masking leaves ``s_eff = s / 2`` useful keys on average (the FlashAttention benchmark convention,
    ``flops(..., causal)`` divides by 2; the exact mean is (s+1)/2, errs low by 1/s). Eager attention
    materialises and multiplies the full ``s x s`` square (``causal_full_square=True``, ``s_eff = s``);
    FlashAttention / SDPA skip the masked tiles (tile-granular: errs low by about one tile per row). GQA
    does not change it (queries use all heads); MLA uses d_qk = nope + rope, d_v = v_head_dim. Sliding
    windows are ignored: errs high for s > window (Mistral-7B-v0.1, Gemma-2's local layers).
    """
    if model.mla is not None:
        d_qk = model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
        d_v = model.mla.v_head_dim
    else:
        d_qk = d_v = model.head_dim
    s_eff = seq_len if causal_full_square else seq_len / 2
    return 2.0 * s_eff * model.num_heads * (d_qk + d_v)


def lm_head_flops(model: ModelProfile) -> float:
    """Eq. S3: forward FLOPs per token of the LM head, ``2 * h * V`` (tied or not: the matmul runs).

    The input embedding is a lookup (0 FLOPs). Source: Kaplan et al. 2020 Table 1 (they drop it; we keep it,
    it is 6.8% of Llama-3-8B's forward).
    """
    return matmul_flops(model.hidden_size, model.vocab_size)


def lora_adapter_flops(in_features: int, out_features: int, rank: int) -> float:
    """Eq. S5: forward FLOPs per token of one LoRA adapter, ``2 * r * (in + out)`` (A: in->r, B: r->out).

    Backward is 2x (weight and input gradients of A and B), so 3x in all. The base matmul is counted
    separately (eq. S1). Dropout, the alpha/r scale and DoRA's per-step weight-norm (``O(in * out)`` per
    micro-batch, not per token) are ignored: errs low for DoRA (Hu et al. 2021, arXiv:2106.09685, sec. 4).
    """
    return 2.0 * rank * (in_features + out_features)


def _adapted(setup: Setup, model: ModelProfile) -> set[str]:
    """The LoRA target base names of ``setup`` (empty for full / freeze)."""
    return set(lora_target_names(setup, model)) if setup.trains_adapters else set()


def _is_adapted(x: LinearLayer, targets: set[str]) -> bool:
    """Whether LoRA adapts ``x``: its base name is a target; never the router, and never routed experts, which
    are 3-D tensors rather than ``nn.Linear`` in transformers >= 5 (the rule of
    :func:`planner.memory.lora_adapter_params`)."""
    if x.name in ("gate", "shared_expert_gate") or x.name.startswith("experts."):
        return False
    return x.name.split(".")[-1] in targets


def first_backward_block(model: ModelProfile, setup: Setup) -> int:
    """Eq. S4: index of the lowest block that any gradient flows through.

    Full fine-tuning, LoRA and QLoRA (adapters in every block): 0. Freeze (LLaMA-Factory
    ``finetuning_type: freeze``, the last ``freeze_layers`` blocks train): ``L - freeze_layers``; the blocks
    below need no backward at all (nothing under them trains, the embedding is frozen).
    """
    if setup.method == "freeze":
        return model.num_layers - setup.freeze_layers
    return 0


def _lm_head_trains(model: ModelProfile, setup: Setup) -> bool:
    """Whether the LM head weight receives a gradient (full FT; LoRA with ``--lora-train-lm-head``, or with
    ``--lora-train-embeddings`` when the head is tied to the embedding)."""
    if setup.method == "full":
        return True
    if setup.trains_adapters:
        return setup.lora_train_lm_head or (model.tie_embeddings and setup.lora_train_embeddings)
    return False  # freeze: LLaMA-Factory trains only the selected blocks


def checkpointed_blocks(model: ModelProfile, setup: Setup) -> list[int]:
    """Eq. S6: the blocks whose forward is recomputed in backward.

    HF ``gradient_checkpointing`` wraps every decoder layer; ``checkpoint_every k`` wraps blocks with
    ``index % k == 0`` (torchtune's ``ac_every_n_layers`` convention): ``ceil(L / k)`` blocks. Only blocks
    that run a backward recompute (freeze: blocks below the trainable ones never do).
    """
    if setup.checkpointing == "none":
        return []
    first = first_backward_block(model, setup)
    return [i for i in range(model.num_layers) if i % setup.checkpoint_every == 0 and i >= first]


def flops_per_token(model: ModelProfile, setup: Setup) -> FlopsBreakdown:
    """FLOPs per processed token of one training step, by phase and part (eqs. S1-S6).

    Forward: every matmul of every block (eq. S1, per token-visited instance: MoE counts ``top-k`` routed
    experts plus router and shared experts via ``active_count``), the attention core (eq. S2), the LM head
    (eq. S3), LoRA adapters (eq. S5). Backward (eq. S4): a matmul whose weight trains costs 2x its forward
    (weight gradient + input gradient); a frozen one costs 1x (input gradient only) in and above the first
    block a gradient flows through, 0 below it. The attention core's backward is 2x (model) or 2.5x under
    FlashAttention/SDPA (hardware, :data:`FLASH_BACKWARD_FACTOR`). The first backward block's own input
    gradient is counted (errs high by at most its QKV projections' input gradient, < 1/L of backward; HF's
    ``enable_input_require_grads`` under PEFT + checkpointing computes it anyway). Recompute (eq. S6): full
    checkpointing re-runs the forward of each checkpointed block (not the LM head); selective re-runs the
    attention core only.
    """
    # FLOPs per token depend only on these fields: memoise on them (the search evaluates hundreds of setups)
    key = setup.model_copy(
        update={"micro_batch": 1, "grad_accum": 1, "zero": 0, "fsdp": None, "offload": "none", "optimizer": "adamw",
                "recipe": "bf16", "loss": "plain", "packing": True, "compile": False}
    )
    return _flops_per_token(model, key)


@functools.lru_cache(maxsize=512)
def _flops_per_token(model: ModelProfile, setup: Setup) -> FlopsBreakdown:

    attn, dense, moe, dense_blocks = _block_linears(model)
    targets = _adapted(setup, model)
    s = setup.seq_len
    eager = effective_attention(model, setup) == "eager"  # Gemma-2: transformers runs eager for sdpa
    core_model = attention_core_flops(model, s, causal_full_square=False)
    core_hw = attention_core_flops(model, s, causal_full_square=eager)
    core_bwd_factor_hw = 2.0 if eager else FLASH_BACKWARD_FACTOR
    first = first_backward_block(model, setup)
    ckpt = set(checkpointed_blocks(model, setup))
    weights_train = setup.method in ("full", "freeze")

    fwd = dict.fromkeys(PARTS, 0.0)
    bwd = dict.fromkeys(PARTS, 0.0)
    rec = dict.fromkeys(PARTS, 0.0)
    mfwd = dict.fromkeys(PARTS, 0.0)
    mbwd = dict.fromkeys(PARTS, 0.0)

    for i in range(model.num_layers):
        has_bwd = i >= first
        w_trains = weights_train and has_bwd  # freeze: exactly the blocks with backward train
        mlp_part, mlp_layers = ("mlp", dense) if i < dense_blocks else ("moe", moe)
        block_fwd = dict.fromkeys(PARTS, 0.0)
        for part, layers in (("attention", attn), (mlp_part, mlp_layers)):
            for bl in layers:
                block_fwd[part] += matmul_flops(bl.layer.in_features, bl.layer.out_features) * bl.active
                if _is_adapted(bl.layer, targets):
                    block_fwd["lora"] += (
                        lora_adapter_flops(bl.layer.in_features, bl.layer.out_features, setup.lora_rank) * bl.active
                    )
        matmul_bwd_factor = (1.0 if has_bwd else 0.0) + (1.0 if w_trains else 0.0)
        for part in ("attention", "mlp", "moe"):
            fwd[part] += block_fwd[part]
            mfwd[part] += block_fwd[part]
            bwd[part] += matmul_bwd_factor * block_fwd[part]
            mbwd[part] += matmul_bwd_factor * block_fwd[part]
        fwd["lora"] += block_fwd["lora"]
        mfwd["lora"] += block_fwd["lora"]
        if has_bwd:
            bwd["lora"] += 2.0 * block_fwd["lora"]
            mbwd["lora"] += 2.0 * block_fwd["lora"]
        fwd["attention_core"] += core_hw
        mfwd["attention_core"] += core_model
        if has_bwd:
            bwd["attention_core"] += core_bwd_factor_hw * core_hw
            mbwd["attention_core"] += 2.0 * core_model
        if i in ckpt:
            if setup.checkpointing == "full":
                for part in ("attention", "mlp", "moe", "lora"):
                    rec[part] += block_fwd[part]
                rec["attention_core"] += core_hw
            else:  # selective: scores + softmax + PV only
                rec["attention_core"] += core_hw

    head = lm_head_flops(model)
    fwd["lm_head"] = mfwd["lm_head"] = head
    head_bwd = (1.0 + (1.0 if _lm_head_trains(model, setup) else 0.0)) * head
    bwd["lm_head"] = mbwd["lm_head"] = head_bwd
    return FlopsBreakdown(forward=fwd, backward=bwd, recompute=rec, model_forward=mfwd, model_backward=mbwd)


# --------------------------------------------------------------------------------------------------------
# Parameters that train, and the bytes that move
# --------------------------------------------------------------------------------------------------------


def trainable_params(model: ModelProfile, setup: Setup) -> int:
    """Parameters that receive gradients: :func:`planner.memory.trainable_counts` (eq. M2 of docs/memory.md),
    the one place that rule lives (full: all; freeze: the last ``freeze_layers`` blocks; LoRA / QLoRA:
    adapters plus trained embedding / LM-head copies)."""
    return trainable_counts(model, setup).trainable


def grad_comm_bytes(setup: Setup) -> int:
    """Bytes per gradient element as reduced across ranks: the recipe's 16-bit gradient where one exists,
    else its fp32 gradient (:func:`planner.dtypes.recipe_bytes`, eq. M1).

    DeepSpeed bf16/fp16 (``communication_data_type`` defaults to the model dtype) and pure bf16: 2. HF AMP
    and fp16 AMP keep fp32 weights, so DDP / FSDP reduce fp32 gradients: 4 (errs high when an FSDP
    mixed-precision policy reduces in bf16).
    """
    rb = recipe_bytes(setup)
    return rb.grad16 if rb.grad16 else rb.grad32


PARAM_GATHER_BYTES = 2
"""Bytes per parameter element in ZeRO-1/2 updated-parameter all-gathers and ZeRO-3/FSDP gathers: the
compute dtype (DeepSpeed's bf16/fp16 parameters; FSDP ``MixedPrecision(param_dtype=bf16)`` casts the shard
before gathering, as accelerate configures it)."""


def gathered_param_bytes(model: ModelProfile, setup: Setup) -> float:
    """Bytes of all parameters (adapters included) as ZeRO-3 / FSDP gather them: QLoRA's frozen linear
    weights in NF4 storage (:func:`planner.memory.quantized_frozen_bytes`, 0.5 B + constants), everything
    else at :data:`PARAM_GATHER_BYTES`."""
    c = trainable_counts(model, setup)
    total = param_counts(model).total + c.adapter
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


def collectives(model: ModelProfile, setup: Setup, world_size: int) -> list[Collective]:
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
    psi_t = trainable_params(model, setup)
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
    params = gathered_param_bytes(model, setup)
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


def communication_bytes_per_gpu(model: ModelProfile, setup: Setup, world_size: int) -> float:
    """Bytes each GPU sends per optimizer step: ``sum ring_factor * payload * (grad_accum if per micro-step)``
    (eqs. S10, S12)."""
    return sum(
        ring_factor(c.op, world_size) * c.payload_bytes * (setup.grad_accum if c.per_micro_step else 1)
        for c in collectives(model, setup, world_size)
    )


def ring_bandwidth_bytes_per_s(cluster: Cluster) -> float:
    """Eq. S11: per-GPU bandwidth of a ring over the cluster, one direction.

    One node: the GPU's NVLink / xGMI / PCIe figure (``intra_node_bandwidth_gb_s``, per GPU, one
    direction). Several nodes: a ring crosses the network, whose per-node bandwidth the node's GPUs share
    (NCCL runs one ring per NIC / channel), so the bottleneck is ``inter_node / gpus_per_node`` when lower.
    A ring, not a tree: NCCL's tree all-reduce has the same bandwidth term and a log(N) latency term, and
    we ignore latency (eq. S10). Errs low (fast) where NCCL does not reach the link's figure (busBw is
    typically 80-90% of it).
    """
    intra = cluster.gpu.intra_node_bandwidth_gb_s * 1e9
    if cluster.nodes <= 1:
        return intra
    return min(intra, cluster.inter_node_bandwidth_bytes_per_s / cluster.gpus_per_node)


# --------------------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------------------


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


def qlora_dequant_bytes_per_pass(model: ModelProfile, setup: Setup) -> float:
    """Eq. S7: HBM bytes one QLoRA dequantisation pass moves (0 unless QLoRA).

    bitsandbytes dequantises every NF4 linear weight of the blocks to bf16 before its matmul, in the
    forward, again for the backward's input gradient, and again in a checkpointed recompute: it reads
    its NF4 storage (:func:`planner.memory.quantized_frozen_bytes`: 0.5 B + constants; Dettmers et al. 2023,
    arXiv:2305.14314) and writes 2 B per weight (the matmul's own read of the bf16 copy is part of the
    GEMM). All routed experts are counted (with thousands of tokens per micro-batch every expert is hit).
    Memory-bound, time = bytes / HBM bandwidth with no efficiency factor: errs low (fast); measured QLoRA
    runs are 1.3-1.8x slower than LoRA (ms-swift ``docs/source/LLM/Benchmark.md``, int4 bnb vs bf16),
    far more than this term, so calibration absorbs the rest.
    """
    if setup.method != "qlora":
        return 0.0
    frozen_linear = trainable_counts(model, setup).frozen_linear
    return quantized_frozen_bytes(frozen_linear, setup.double_quant) + 2.0 * frozen_linear


def optimizer_step_bytes_per_param(setup: Setup) -> float:
    """Bytes one optimizer step reads and writes per trainable parameter (GPU HBM or host DRAM).

    With ``s`` the recipe's state element size (:func:`planner.dtypes.recipe_bytes`: 4; 2 under pure bf16):
    AdamW reads param, grad, m, v and writes param, m, v: ``7 s`` (+2 for the 16-bit copy written back from
    an fp32 master, DeepSpeed); 8-bit
    AdamW: ``3 s + 4``; SGD ``3 s``; SGD with momentum ``5 s``; Adafactor ``3 s`` (factored second moment
    is O(rows + cols)). Assumes each tensor streams through memory once (fused / multi-tensor kernels):
    errs low (fast) for unfused optimizers.
    """
    rb = recipe_bytes(setup)
    s = float(rb.state)
    copy = 2.0 if rb.master else 0.0
    return {
        "adamw": 7 * s + copy,
        "adamw-8bit": 3 * s + 4 + copy,
        "paged-adamw": 7 * 4.0 + copy,
        "paged-adamw-8bit": 3 * s + 4 + copy,
        "sgd": 3 * s + copy,
        "sgd-momentum": 5 * s + copy,
        "adafactor": 3 * s + copy,
    }[setup.optimizer]


def optimizer_shards(setup: Setup, world_size: int) -> int:
    """How many ranks the optimizer states are partitioned over: N under ZeRO-1/2/3 and FSDP, 1 under DDP."""
    return world_size if (setup.zero > 0 or setup.fsdp is not None) else 1


def gpu_optimizer_seconds(model: ModelProfile, cluster: Cluster, setup: Setup) -> float:
    """Eq. S8b: memory-bound GPU optimizer step, ``(Psi_t / shards) * bytes_per_param / HBM bandwidth``.
    Zero when the optimizer is offloaded (it runs on the host, eq. S15)."""
    if setup.offload != "none":
        return 0.0
    local = trainable_params(model, setup) / optimizer_shards(setup, cluster.world_size)
    return local * optimizer_step_bytes_per_param(setup) / (cluster.gpu.hbm_bandwidth_gb_s * 1e9)


def exposed_seconds(comm_s: float, window_s: float, overlap: float) -> float:
    """Eq. S13: communication left exposed after hiding behind compute, ``max(0, comm - f * window)``."""
    return max(0.0, comm_s - overlap * window_s)


def offload_pcie_bytes_per_gpu(model: ModelProfile, setup: Setup, world_size: int) -> dict[str, float]:
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
    part = trainable_params(model, setup) / world_size
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
        out["param_fetch"] = 2.0 * ga * gathered_param_bytes(model, setup) / world_size
    else:
        out["params_to_gpu"] = part * PARAM_GATHER_BYTES
        out["param_fetch"] = 0.0
    return out


def host_optimizer_seconds(model: ModelProfile, cluster: Cluster, setup: Setup) -> float:
    """Eq. S15: the CPU optimizer step under ZeRO-Offload, ``(Psi_t / nodes) * bytes_per_param / B_host``.

    All ranks of a node step their partitions at once and share the node's DRAM bandwidth
    (:data:`HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S`); CPU Adam's arithmetic (~20 FLOPs per parameter, AVX) is
    negligible against it. Not overlapped with the next forward (DeepSpeed's delayed parameter update,
    Ren et al. 2021 sec. 5, is off by default).
    """
    if setup.offload == "none":
        return 0.0
    node_params = trainable_params(model, setup) / cluster.nodes
    return node_params * optimizer_step_bytes_per_param(setup) / HOST_OPTIMIZER_BANDWIDTH_BYTES_PER_S


def activation_offload_bytes_per_micro_step(model: ModelProfile, setup: Setup) -> float:
    """Eq. S16: PCIe bytes per micro-step of activation offload: each checkpointed block's input
    (``b * s * h`` in bf16) goes to the host in forward and returns in backward."""
    if not setup.activation_offload:
        return 0.0
    n = len(checkpointed_blocks(model, setup))
    return 2.0 * n * setup.micro_batch * setup.seq_len * model.hidden_size * 2


def tokens_per_step(setup: Setup, world_size: int, padding_efficiency: float = 1.0) -> int:
    """Eq. S17: useful tokens per optimizer step, ``micro_batch * seq_len * grad_accum * world_size``.

    Packed rows are full. Without packing, ``padding_efficiency`` (real tokens / padded tokens, default
    1.0, i.e. rows assumed full) scales the useful tokens; the GPU still computes the padded rows.
    """
    processed = setup.micro_batch * setup.seq_len * setup.grad_accum * world_size
    eff = 1.0 if setup.packing else padding_efficiency
    return max(1, round(processed * eff))


def estimate_speed(
    model: ModelProfile,
    cluster: Cluster,
    setup: Setup,
    *,
    efficiency: float | None = None,
    calibration_label: str = "uncalibrated",
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

    ``efficiency`` defaults to ``cluster.gpu.default_mfu``. MFU (``SpeedEstimate.mfu``) is model FLOPs
    (no recompute) over ``step_s x peak x GPUs`` (eq. S9). Errs low (fast) overall: no kernel-launch,
    data-loading, logging or small-batch inefficiency terms; calibration fits ``efficiency``.
    """
    eff = cluster.gpu.default_mfu if efficiency is None else efficiency
    if not 0 < eff <= 1:
        raise SetupError(f"efficiency must be in (0, 1], got {eff!r}")
    if not 0 < padding_efficiency <= 1:
        raise SetupError(f"padding efficiency must be in (0, 1], got {padding_efficiency!r}")
    gpu = cluster.gpu
    n = cluster.world_size
    ga = setup.grad_accum
    peak = peak_flops(gpu, setup)
    fb = flops_per_token(model, setup)
    micro_tokens = setup.micro_batch * setup.seq_len
    hbm = gpu.hbm_bandwidth_gb_s * 1e9

    # compute-side times of one micro-step (S7, S8)
    dq = qlora_dequant_bytes_per_pass(model, setup) / hbm
    dq_recompute = dq if (setup.checkpointing == "full" and checkpointed_blocks(model, setup)) else 0.0
    t_fwd = compute_seconds(fb.forward_total * micro_tokens, peak, eff) + dq
    t_bwd = compute_seconds(fb.backward_total * micro_tokens, peak, eff) + dq
    t_rec = compute_seconds(fb.recompute_total * micro_tokens, peak, eff) + dq_recompute
    t_opt = gpu_optimizer_seconds(model, cluster, setup)
    compute_s = ga * (t_fwd + t_bwd) + t_opt
    recompute_s = ga * t_rec

    # communication (S10-S13)
    bw = ring_bandwidth_bytes_per_s(cluster)
    overlap = OVERLAP_FRACTION[setup.sharding_label]
    windows = {"backward": t_bwd + t_rec, "forward+backward": t_fwd + t_bwd + t_rec, "none": 0.0}
    per_micro: dict[str, float] = {}
    per_step: dict[str, float] = {}
    colls = collectives(model, setup, n)
    for c in colls:
        t = ring_factor(c.op, n) * c.payload_bytes / bw
        bucket = per_micro if c.per_micro_step else per_step
        bucket[c.window] = bucket.get(c.window, 0.0) + t
    comm_s = ga * sum(exposed_seconds(t, windows[w], overlap) for w, t in per_micro.items()) + sum(
        exposed_seconds(t, windows[w], overlap) for w, t in per_step.items()
    )

    # offload (S14-S16)
    pcie = gpu.pcie_bandwidth_gb_s * 1e9
    pcie_bytes = offload_pcie_bytes_per_gpu(model, setup, n)
    host_s = host_optimizer_seconds(model, cluster, setup)
    act_s = activation_offload_bytes_per_micro_step(model, setup) / pcie
    offload_s = sum(pcie_bytes.values()) / pcie + host_s + ga * exposed_seconds(act_s, t_fwd + t_bwd + t_rec, 1.0)

    breakdown = {"compute": compute_s, "communication": comm_s, "offload": offload_s, "recompute": recompute_s}
    step_s = sum(breakdown.values())
    useful_tokens = tokens_per_step(setup, n, padding_efficiency)
    processed_tokens = micro_tokens * ga * n

    assumptions = _assumptions(
        model, cluster, setup, eff, efficiency is None, padding_efficiency, bool(colls), overlap, bw
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
        calibration=calibration_label,
        assumptions=tuple(assumptions),
    )


def _assumptions(
    model: ModelProfile,
    cluster: Cluster,
    setup: Setup,
    eff: float,
    eff_is_default: bool,
    padding_efficiency: float,
    has_comm: bool,
    overlap: float,
    bw: float,
) -> list[str]:
    """The constants and conventions an estimate used, one line each (rendered by the report layer)."""
    gpu = cluster.gpu
    src = f"{gpu.name} default_mfu" if eff_is_default else "given"
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


def train_time(
    speed: SpeedEstimate, dataset_tokens: float, epochs: float = 1.0, price_per_gpu_hour: float | None = None
) -> TrainTime:
    """Eq. S19: time and cost of ``epochs`` passes over ``dataset_tokens``.

    ``seconds = tokens / tokens_per_s`` (the last partial optimizer step counted fractionally);
    ``gpu_hours = seconds * world_size / 3600``; ``cost = gpu_hours * price`` (None without a price).
    Excludes start-up, checkpoint saving and evaluation: errs low.
    """
    if not dataset_tokens > 0:
        raise SetupError(f"--dataset-tokens must be a positive number, got {dataset_tokens!r}")
    if not epochs > 0:
        raise SetupError(f"--epochs must be positive, got {epochs!r}")
    if price_per_gpu_hour is not None and not price_per_gpu_hour >= 0:
        raise SetupError(f"--price-per-gpu-hour must be >= 0, got {price_per_gpu_hour!r}")
    tokens = float(dataset_tokens) * float(epochs)
    seconds = tokens / speed.tokens_per_s
    gpu_hours = seconds * speed.world_size / 3600.0
    return TrainTime(
        tokens=tokens,
        optimizer_steps=max(1, math.ceil(tokens / speed.tokens_per_step)),
        seconds=seconds,
        gpu_hours=gpu_hours,
        cost=None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour,
    )
