"""The per-op time inventory of one micro-step on one GPU (docs/speed.md eqs. S20-S26), mirroring the memory
engine's tensor inventory: every matmul at a shape-dependent efficiency, attention by kernel, memory-bound
work at HBM bandwidth, and the host time that launches it all.

Two halves, so the corpus fit can re-time the same work under other parameters cheaply:

* :func:`micro_step_work` - *what* one micro-step does, independent of any fitted parameter: the matmul
  FLOPs grouped by the rows that reach each weight, attention FLOPs and score bytes, the bytes of
  memory-bound work (fusable elementwise ops apart from the rest), and the kernels launched.
* :func:`micro_step_time` - *how long* it takes on a GPU under :class:`~planner.engine.speed.params.SpeedParams`:

  - GEMMs (S20): ``FLOPs / (peak x eta_arch x m / (m + m_half))``, ``m`` the rows reaching the weight (tokens
    per micro-batch; tokens per expert for routed experts), so small micro-batches and sparse experts run
    below the architecture's ceiling;
  - attention (S21): FlashAttention / SDPA at the kernel's measured fraction of peak; eager attention as two
    batched GEMMs plus the score traffic of mask, softmax and casts at HBM bandwidth;
  - memory-bound work (S22): ``passes x`` each block's activation inventory for the elementwise ops (less
    under kernel fusion: torch.compile, Liger), autocast's weight casts, LoRA adapters (thin matmuls that
    stream their inputs and outputs), QLoRA dequantisation, the logits and loss, at the achieved HBM
    bandwidth;
  - host time (S26): the kernels' launches, which the GPU waits for when kernels are small
    (:func:`planner.engine.speed.step.estimate_speed` takes the larger of the two per micro-step).

Pure arithmetic over :class:`~planner.engine.facts.ModelFacts`; no torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from planner.engine.activations import effective_attention, layer_inventory
from planner.engine.dtypes import recipe_bytes
from planner.engine.facts import ModelFacts
from planner.engine.memo import SetupMemo
from planner.engine.op_sac import recomputed_matmuls
from planner.engine.setup import Setup
from planner.engine.speed.compute import qlora_dequant_bytes_per_pass
from planner.engine.speed.flops import (
    FLASH_BACKWARD_FACTOR,
    _block_linears,
    attention_core_flops,
    block_backward_factors,
    lm_head_flops,
)
from planner.engine.techniques import fp8_linears
from planner.engine.speed.params import SpeedParams
from profiles.schema import GpuProfile

EAGER_SCORE_BYTES_FORWARD = 20
"""Eq. S21: HBM bytes per attention score per head in an eager forward (transformers
``eager_attention_forward``): the QK^T output written in bf16 (2), the mask add read and written (4), softmax
in fp32 reading bf16 and writing fp32 (6), the cast back to bf16 (6), PV reading the probabilities (2)."""
EAGER_SCORE_BYTES_BACKWARD = 24
"""Eq. S21: the eager backward per score per head: the probabilities' gradient written (2), softmax backward
reading the fp32 output and the gradient and writing the fp32 input gradient (4 + 2 + 4 + 4), casts (6),
the QK^T backward reading it (2)."""
LOSS_BYTES_PER_VOCAB = 36
"""Eq. S22: HBM bytes per token per vocabulary entry of HF's ``ForCausalLMLoss`` (and torchtune's chunked
loss, which moves the same bytes chunk by chunk): logits written in bf16 (2), the fp32 upcast read and
written (6), log-softmax read and written (8), the gradient written (4), softmax backward reading output and
gradient and writing (12), the logits' gradient cast to bf16 (4)."""
LIGER_LOSS_BYTES_PER_VOCAB = 6
"""Eq. S22: Liger's fused linear cross-entropy writes and reads one chunk of bf16 logits and its gradient in
place (2 + 2 + 2), never the fp32 copies."""
LORA_PASSES = 3
"""Eq. S22: a LoRA adapter streams, per token, its input (``in`` features) and three times its output (``out``:
B's output written, scaled and added to the base output) in forward, and twice that in backward: bytes per
token = ``3 x c x (in + 3 out)`` with ``c`` the compute dtype size."""
BASE_KERNELS_PER_BLOCK = 120
"""Eq. S26: CUDA kernels an eager transformers decoder block launches per micro-step: about 40 in forward (two
RMSNorms of ~7 kernels each, 7 projections, RoPE ~10, attention, SwiGLU, residual adds) and twice that in
backward (``modeling_llama.py``, counted op by op). The unit of the per-block host overhead."""
FP8_CAST_BYTES: dict[str, float] = {"tensorwise": 5.0, "rowwise": 5.0, "te": 4.0}
"""Eq. S28: HBM bytes per element cast to FP8 for a linear's GEMM. torchao dynamic scaling (``tensorwise``,
``rowwise``; ``torchao/float8/float8_scaling_utils.py``): an amax reduction reads the bf16 tensor (2), the cast
reads it again (2) and writes 1 byte. TransformerEngine delayed scaling (``te``) casts with last step's amax in one
pass that also records the new one, writing both layouts on Hopper: read 2, write 1 + 1. Fused into the producer
under torch.compile (the fused-kernel factor applies)."""
ADAPTER_KERNELS = 18
"""Eq. S26: kernels one LoRA adapter adds per micro-step (A, B, scale, add and autocast casts forward, ~6;
twice that in backward)."""


ADAPTER_UNIT_FRAMEWORKS = frozenset({"hf", "torchtune", "other"})
"""Eq. S26b: trainers whose FSDP1 wrapping makes every LoRA A and B matrix a unit of its own: transformers' Trainer
hands a PEFT model peft's ``fsdp_auto_wrap_policy`` (transformers 4.44 ``Trainer._fsdp_qlora_plugin_updates``,
trainer.py:4707-4722; peft 0.12 ``utils/other.py:440-455``: every leaf whose weight trains), torchtune 0.1's recipes
``lora_fsdp_wrap_policy`` (``torchtune/utils/_distributed.py`` at 20747cd: "wrap individual LoRA A & B submodules in
their own FSDP units"), and Answer.AI's fsdp_qlora the same lambda policy (``other``). LitGPT and the FSDP2 trainers
shard whole blocks."""


def fsdp1_units(facts: ModelFacts, setup: Setup) -> int:
    """Eq. S26b: FSDP1 units whose hooks run every micro-step: one per block, the root (embedding, final norm, LM
    head), and under :data:`ADAPTER_UNIT_FRAMEWORKS` one per LoRA A and B matrix (and DoRA magnitude). 0 for FSDP2,
    DeepSpeed and DDP: their per-unit host work is not priced beyond eq. S26's per-block overhead (FSDP2 has no rate
    limiter and lighter hooks; DeepSpeed ZeRO-3's hooks were measured on the CPU and not adopted, docs/speed.md S23)."""
    if setup.fsdp is None or setup.fsdp_version != 1:
        return 0
    units = facts.model.num_layers + 1
    if setup.trains_adapters and setup.framework in ADAPTER_UNIT_FRAMEWORKS:
        units += (3 if setup.dora else 2) * sum(x.count for x in facts.adapted)
    return units


@dataclass(frozen=True)
class MicroWork:
    """What one micro-step does on one GPU, free of fitted parameters (eqs. S20-S22, S26)."""

    gemm_flops: tuple[tuple[float, float], ...]
    """(rows reaching the weight, FLOPs) of every forward and backward matmul group, recompute excluded"""
    recompute_gemm_flops: tuple[tuple[float, float], ...]
    attention_flops: float
    """FlashAttention / SDPA hardware FLOPs (forward + backward), 0 under eager"""
    recompute_attention_flops: float
    eager_gemm_flops: float
    """eager attention's QK^T and PV FLOPs (forward + backward), batched GEMMs over ``seq_len`` rows"""
    recompute_eager_gemm_flops: float
    eager_rows: float
    score_bytes: float
    """eager attention's mask / softmax / cast traffic (forward + backward)"""
    recompute_score_bytes: float
    elementwise_bytes: float
    """the blocks' elementwise traffic in units of their activation inventory (x passes, x fused factor)"""
    recompute_elementwise_bytes: float
    memory_bytes: float
    """other memory-bound bytes: adapters, casts, dequantisation, logits and loss"""
    recompute_memory_bytes: float
    kernel_units: float
    """launched kernels in units of one plain block's (forward + backward), recompute included"""
    fused: bool
    fp8_gemm_flops: tuple[tuple[float, float], ...] = ()
    """(rows, FLOPs) of the FP8-converted linears' matmuls (forward + backward), eq. S28"""
    recompute_fp8_gemm_flops: tuple[tuple[float, float], ...] = ()
    fp8_cast_bytes: float = 0.0
    """bytes of the FP8 casts (forward + backward), eq. S28"""
    recompute_fp8_cast_bytes: float = 0.0
    attention_kernel: str = "sdpa"
    """the kernel that runs attention (:func:`~planner.engine.activations.effective_attention`), which sets its
    efficiency (eq. S21, S21b)"""
    fp8: str = "none"

    @property
    def matmul_flops(self) -> float:
        return sum(f for _, f in self.gemm_flops)


@dataclass(frozen=True)
class MicroStep:
    """GPU seconds of one micro-step by kind, and the host seconds that launch it."""

    gemm_s: float
    attention_s: float
    memory_s: float
    recompute_s: float
    host_s: float

    @property
    def gpu_s(self) -> float:
        return self.gemm_s + self.attention_s + self.memory_s + self.recompute_s


def gemm_efficiency(rows: float, arch: str, params: SpeedParams) -> float:
    """Eq. S20: achieved fraction of the dense peak of a GEMM whose weight sees ``rows`` input rows:
    ``eta_arch x rows / (rows + m_half)``. Tile and wave quantisation leave small-M GEMMs below the ceiling;
    the smooth form errs fast for shapes just past a wave boundary and slow for shapes that fill the last one."""
    if rows <= 0:
        return params.matmul(arch)
    return params.matmul(arch) * rows / (rows + params.gemm_half_rows)


def micro_step_work(facts: ModelFacts, setup: Setup) -> MicroWork:
    """The parameter-free work of one micro-step (memoised on the fields that decide it)."""
    return _WORK_MEMO(facts, setup)


_WORK_KEY = {"grad_accum": 1, "zero": 0, "fsdp": None, "offload": "none", "optimizer": "adamw", "framework": "hf",
             "padding_efficiency": 1.0, "activation_offload": False, "optimizer_in_backward": False,
             "galore_rank": None, "galore_layerwise": False, "async_tp": False}
"""the fields that do not change a micro-step's work, and the values :func:`micro_step_work` resets them to"""


@functools.lru_cache(maxsize=2048)
def _work(facts: ModelFacts, setup: Setup) -> MicroWork:
    model = facts.model
    rb = recipe_bytes(setup)
    c = rb.compute
    # per GPU (eq. S29): context parallelism splits every row's tokens over cp ranks; tensor parallelism splits
    # every matmul's weight, the attention heads and the sequence-sharded elementwise work over tp ranks (applied
    # to the totals below); each rank still launches every kernel
    tokens = setup.micro_batch * setup.seq_len // setup.cp
    L = model.num_layers
    factors = block_backward_factors(model, setup)
    full_ckpt = setup.checkpointing == "full"
    adapted = {id(x) for x in facts.adapted}
    converted = {id(x) for x in fp8_linears(facts)} if setup.fp8 != "none" else set()
    attn, dense, moe, dense_blocks = _block_linears(facts)
    cast_b = FP8_CAST_BYTES.get(setup.fp8, 0.0)

    def block(layers: list, only: frozenset | None = None
              ) -> tuple[dict[float, float], float, float, dict[float, float], float, float]:
        """(rows -> forward FLOPs, adapter bytes, adapters, rows -> FP8 forward FLOPs, FP8 forward cast bytes,
        FP8 backward cast bytes) of one block's linear layers; ``only``: just the ``(name, kind)`` matmuls that
        per-op SAC recomputes (eq. S6b)."""
        flops: dict[float, float] = {}
        f8: dict[float, float] = {}
        ad_bytes = n_ad = cast_f = cast_b_bwd = 0.0
        for bl in layers:
            x = bl.layer
            if bl.instances <= 0:
                continue
            if only is not None:
                share = sum((x.name, k) in only for k in ("lora_a", "lora_b")) / 2 if id(x) in adapted else 0.0
                if share:
                    n_ad += share * bl.instances
                    ad_bytes += share * LORA_PASSES * c * (x.in_features + 3 * x.out_features) * (
                        tokens * bl.active / bl.instances) * bl.instances
                if (x.name, "base") not in only:
                    continue
            rows = tokens * bl.active / bl.instances  # tokens reaching each instance (routed experts: fewer)
            target = f8 if id(x) in converted else flops
            target[rows] = target.get(rows, 0.0) + 2.0 * rows * x.in_features * x.out_features * bl.instances
            if id(x) in converted:
                # forward casts input and weight; backward grad_output, and torchao re-casts the saved bf16 input
                # and weight (TransformerEngine saved them in FP8): eq. S28
                w, i_el, o_el = x.in_features * x.out_features, rows * x.in_features, rows * x.out_features
                cast_f += cast_b * (i_el + w) * bl.instances
                cast_b_bwd += cast_b * (o_el + (0 if setup.fp8 == "te" else i_el + w)) * bl.instances
            if id(x) in adapted and only is None:
                n_ad += bl.instances
                ad_bytes += LORA_PASSES * c * (x.in_features + 3 * x.out_features) * rows * bl.instances
                if setup.dora:  # the magnitude's weight norm reads the frozen weight, forward and backward
                    ad_bytes += 2 * 2.0 * x.in_features * x.out_features * bl.instances
        return flops, ad_bytes, n_ad, f8, cast_f, cast_b_bwd

    blocks = {"attn": block(attn), "dense": block(dense),
              "moe": block(moe) if moe else ({}, 0.0, 0.0, {}, 0.0, 0.0)}
    op_rec: dict[bool, tuple] = {}
    if setup.checkpointing == "op":  # what per-op SAC re-runs in each block kind (eq. S6b)
        for is_dense in {True, not moe}:
            only = recomputed_matmuls(facts, setup, is_dense)
            op_rec[is_dense] = (block(attn, only), block(dense if is_dense else moe, only))

    s = setup.seq_len
    eager = effective_attention(model, setup) == "eager"
    core = attention_core_flops(model, s, causal_full_square=eager) * tokens  # forward, one block
    scores = tokens * s * model.num_heads if eager else 0.0

    # one block's activation inventory as eager kernels save it: the traffic proxy of eq. S22, whose fused-kernel
    # factor carries what Liger's kernels save (their smaller saved set, eq. A10b, would count that twice)
    eager_setup = setup.model_copy(update={"fused_kernels": False}) if setup.fused_kernels else setup
    inv = layer_inventory(facts, eager_setup, rb, True)
    ew_block = (inv.per_token + inv.transient_per_token) * tokens

    gemm: dict[float, float] = {}
    rec: dict[float, float] = {}
    f8g: dict[float, float] = {}
    rec_f8: dict[float, float] = {}
    attn_f = rec_attn = eager_f = rec_eager = score_b = rec_score = 0.0
    ew = rec_ew = mem = rec_mem = cast = rec_cast = 0.0
    kernel_units = 0.0

    def add(d: dict[float, float], src: dict[float, float], k: float) -> None:
        for rows, f in src.items():
            d[rows] = d.get(rows, 0.0) + f * k

    fwd_units = 1.0 / 3.0  # a forward is a third of a block's kernels, forward + backward
    # blocks with the same backward factors and MLP kind do the same work: add each group once, times its size
    groups: dict[tuple, int] = {}
    for i in range(L):
        key = (factors[i], i < dense_blocks)
        groups[key] = groups.get(key, 0) + 1
    for ((ig, wg, rc), is_dense), n in groups.items():
        # ig, wg, rc: expected input-gradient, weight-gradient, recompute passes (eq. S4b); n blocks alike
        mlp = blocks["dense"] if is_dense else blocks["moe"]
        bwd_share = fwd_units + (1.0 - fwd_units) * ig  # kernels and elementwise work: forward, plus backward
        for flops, ad_bytes, n_ad, f8, c_f, c_b in (blocks["attn"], mlp):
            add(gemm, flops, n * (1.0 + ig + wg))
            add(f8g, f8, n * (1.0 + ig + wg))
            cast += n * (c_f + c_b * ig)
            mem += n * ad_bytes * bwd_share
            kernel_units += n * n_ad * ADAPTER_KERNELS / BASE_KERNELS_PER_BLOCK * bwd_share
        kernel_units += n * bwd_share
        if eager:
            eager_f += n * core * (1.0 + 2.0 * ig)
            score_b += n * scores * (EAGER_SCORE_BYTES_FORWARD + EAGER_SCORE_BYTES_BACKWARD * ig)
        else:
            attn_f += n * core * (1.0 + FLASH_BACKWARD_FACTOR * ig)
        ew += n * ew_block * bwd_share
        r = n * rc
        if r:
            if full_ckpt or op_rec:
                # full: every GEMM and the attention core again; per-op SAC: the un-saved matmuls, every
                # memory-bound op, the core only if eager
                gemms = (blocks["attn"], mlp) if full_ckpt else op_rec[is_dense]
                for flops, ad_bytes, n_ad, f8, c_f, _ in gemms:
                    add(rec, flops, r)
                    add(rec_f8, f8, r)
                    rec_cast += c_f * r
                    rec_mem += ad_bytes / 3.0 * r
                    kernel_units += n_ad * ADAPTER_KERNELS / BASE_KERNELS_PER_BLOCK * fwd_units * r
                rec_ew += ew_block / 3.0 * r
                kernel_units += fwd_units * r
                if eager:
                    rec_eager += core * r
                    rec_score += scores * EAGER_SCORE_BYTES_FORWARD * r
                elif full_ckpt:
                    rec_attn += core * r
            elif eager:  # selective: the attention core only
                rec_eager += core * r
                rec_score += scores * EAGER_SCORE_BYTES_FORWARD * r
            else:
                rec_attn += core * r

    # the LM head and the loss
    head_trains = (setup.method == "full" and not setup.badam) or (setup.trains_adapters and (
        setup.lora_train_lm_head or (model.tie_embeddings and setup.lora_train_embeddings)))
    gemm[float(tokens)] = gemm.get(float(tokens), 0.0) + lm_head_flops(model) * tokens * (2.0 + float(head_trains))
    loss_b = LIGER_LOSS_BYTES_PER_VOCAB if setup.loss == "liger" else LOSS_BYTES_PER_VOCAB
    mem += loss_b * model.vocab_size * tokens
    # autocast's per-use casts of fp32 trainable weights: read 4 B, write 2 B per element, each forward
    if rb.autocast:
        mem += 6.0 * facts.trainable.trainable_linear
    # QLoRA dequantisation (S7): forward and backward, and the recompute of checkpointed blocks
    dq = qlora_dequant_bytes_per_pass(facts, setup)
    if dq:
        mem += 2 * dq
        n_rec = sum(rc for _, _, rc in factors)
        if full_ckpt and n_rec:
            rec_mem += dq * n_rec / L
    t = float(setup.tp)

    def per_rank(d: dict[float, float]) -> tuple[tuple[float, float], ...]:
        return tuple(sorted((rows, f / t) for rows, f in d.items()))

    return MicroWork(
        gemm_flops=per_rank(gemm), recompute_gemm_flops=per_rank(rec),
        attention_flops=attn_f / t, recompute_attention_flops=rec_attn / t,
        eager_gemm_flops=eager_f / t, recompute_eager_gemm_flops=rec_eager / t, eager_rows=float(s),
        score_bytes=score_b / t, recompute_score_bytes=rec_score / t,
        elementwise_bytes=ew / t, recompute_elementwise_bytes=rec_ew / t,
        memory_bytes=mem / t, recompute_memory_bytes=rec_mem / t,
        kernel_units=kernel_units, fused=setup.compile or setup.fused_kernels,
        fp8_gemm_flops=per_rank(f8g), recompute_fp8_gemm_flops=per_rank(rec_f8),
        fp8_cast_bytes=cast / t, recompute_fp8_cast_bytes=rec_cast / t, fp8=setup.fp8,
        attention_kernel=effective_attention(model, setup),
    )


def micro_step_time(work: MicroWork, gpu: GpuProfile, framework: str, peak: float, params: SpeedParams) -> MicroStep:
    """Seconds of one micro-step's work on ``gpu`` under ``params`` (eqs. S20-S22, S26)."""
    arch = gpu.arch
    hbm = gpu.hbm_bandwidth_gb_s * 1e9 * params.hbm_efficiency

    def gemms(groups: tuple[tuple[float, float], ...]) -> float:
        return sum(f / (peak * gemm_efficiency(rows, arch, params)) for rows, f in groups if f)

    fuse = params.fused_memory_factor if work.fused else 1.0
    attn_eff = params.attention(arch, framework, work.attention_kernel)
    eager_eff = gemm_efficiency(work.eager_rows, arch, params)

    def attention(flops: float, eager_flops: float, score_bytes: float) -> float:
        return flops / (peak * attn_eff) + (eager_flops / (peak * eager_eff) if eager_flops else 0.0) + score_bytes / hbm

    def memory(ew: float, other: float) -> float:
        return (params.memory_passes * ew * fuse + other) / hbm

    def fp8_gemms(groups: tuple[tuple[float, float], ...]) -> float:
        """Eq. S28: converted linears at the FP8 dense peak, the GEMM ceiling scaled by the recipe's ratio."""
        if not groups:
            return 0.0
        f8_peak = (gpu.fp8_tflops or 0.0) * 1e12 or peak
        ratio = params.fp8(work.fp8, arch)
        return sum(f / (f8_peak * ratio * gemm_efficiency(rows, arch, params)) for rows, f in groups if f)

    gemm_s = gemms(work.gemm_flops) + fp8_gemms(work.fp8_gemm_flops)
    attn_s = attention(work.attention_flops, work.eager_gemm_flops, work.score_bytes)
    mem_s = memory(work.elementwise_bytes, work.memory_bytes) + work.fp8_cast_bytes * fuse / hbm
    rec_s = (gemms(work.recompute_gemm_flops) + fp8_gemms(work.recompute_fp8_gemm_flops)
             + attention(work.recompute_attention_flops, work.recompute_eager_gemm_flops, work.recompute_score_bytes)
             + memory(work.recompute_elementwise_bytes, work.recompute_memory_bytes)
             + work.recompute_fp8_cast_bytes * fuse / hbm)
    host_s = params.layer_overhead(framework) * work.kernel_units * fuse
    return MicroStep(gemm_s, attn_s, mem_s, rec_s, host_s)


_WORK_MEMO = SetupMemo(_work, _WORK_KEY)
