"""torchtitan's per-op selective activation checkpointing (``--checkpointing op``): what each block saves and
what its backward recomputes (docs/memory.md eq. A12, docs/speed.md S6b).

Source: torchtitan ``torchtitan/models/llama3/infra/parallelize.py`` at 6fc499f6 (2025-08; the same policy at
9dec370 ``torchtitan/parallelisms/parallelize_llama.py``, e7c0cae ``torchtitan/models/llama3/parallelize_llama.py``,
157a12c, v0.2.2 (the version the TOML emitter writes for; its list adds the cudnn / math / overrideable SDPA ops
and flex / varlen attention) and HEAD b5bcd76 ``torchtitan/distributed/activation_checkpoint.py``). With ``[activation_checkpoint]
mode = "selective"``, ``selective_ac_option = "op"`` every transformer block is wrapped in a non-reentrant
``checkpoint`` whose ``context_fn`` builds ``create_selective_checkpoint_contexts(policy)`` with a fresh counter
(``meta = defaultdict(int)``) on every call, so the counter restarts in every block and every forward, and the
recompute keeps its own counter (``recompute_mm_count``): the parity is the same in every block and every step.
The policy marks ``MUST_SAVE`` the outputs of the ops in ``_save_list`` (``aten.mm``, the SDPA flash / efficient
(/ cudnn at HEAD) attention ops, ``_c10d_functional.reduce_scatter_tensor``, ``aten.max``; 9dec370 also
``aten.abs``) except every second ``aten.mm`` of the block (``mm_count % 2 == 0``), and ``PREFER_RECOMPUTE``
everything else: norms, RoPE, SiLU, products, casts, all-gathers, ``addmm``, ``bmm``, ``_grouped_mm``.

So one block keeps, per token:

* its input (the checkpoint keeps the arguments to re-run the block), residual dtype x h;
* the outputs of the 1st, 3rd, 5th, ... ``aten.mm`` in the order the block runs them (:func:`block_matmuls`):
  a linear layer without bias on a 3-D input is ``aten.mm`` (through ``matmul``'s folding); with a bias it is
  ``aten.addmm`` (``at::linear`` -> ``_flatten_nd_linear``), which neither counts nor is saved; routed experts run
  ``_grouped_mm`` (neither); a peft LoRA layer runs base, ``lora_A``, ``lora_B`` (three mms, in that order);
* the attention kernel's output and its log-sum-exp (SDPA / FlashAttention; eager attention's ``bmm`` /
  softmax are not in the list, so nothing of it is saved and all of it is recomputed);
* under tensor parallelism: the row-parallel projections' (``o_proj``, ``down_proj``) ``mm`` outputs whole
  (they are partial sums before the reduce-scatter) and each reduce-scatter's output (``h / tp``); everything else
  of the block per rank (column-parallel outputs and heads split by ``tp``, the block input sequence-sharded).

Llama (torchtitan's and transformers' block order q, k, v, o, gate (w1), up (w3), down (w2)): saved q, v,
gate and down outputs; k, o and up recomputed: ``r*h + c*(q_w + kv_w + F + h) + c*q_w + 4*a`` bytes per token.

Assumptions: the block runs its linear layers in :class:`~profiles.params.LinearLayer` order (attention, then the
MLP; MoE: router, routed experts, shared experts, shared-expert gate), which is transformers' forward order for
the dense models; a MoE block whose shared experts run before the router (Qwen2-MoE) flips the parity of the
shared experts' mms (the saved bytes change by one shared projection's output). FP8 (torchao float8): the
``Float8Linear`` mm is seen as ``aten.mm`` (the policy's mode runs before the float8 subclass), parity unchanged;
the tiny ``max`` outputs (amax scalars) are ignored, and 9dec370's saved ``abs`` outputs (one input-sized bf16
tensor per float8 linear) are not modelled: errs low for FP8 runs of that torchtitan version. Errs low by the
allocator's view of the SAC cache (none) and by the CUDA flash kernel's tiny RNG-state outputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from planner.engine.dtypes import RecipeBytes
from planner.engine.facts import ModelFacts
from planner.engine.setup import Setup
from profiles.params import LinearLayer

ROW_PARALLEL = ("o_proj", "down_proj")
"""Linear layers torchtitan's TP plan makes row-parallel (``wo``, ``w2``): their output is reduce-scattered."""


@dataclass(frozen=True)
class BlockMatmul:
    """One ``aten.mm`` of a block's forward, in order: which linear layer, which part of it, whether op-SAC
    saves its output."""

    layer: LinearLayer
    kind: str
    """``base`` (the layer's own weight), ``lora_a`` (in -> r) or ``lora_b`` (r -> out)"""
    out_features: int
    saved: bool


def _block_layers(facts: ModelFacts, dense: bool) -> list[LinearLayer]:
    """The linear layers one block runs, in forward order (attention, then the dense MLP or the MoE layer)."""
    out = [x for x in facts.linears if x.group == "attention"]
    out += [x for x in facts.linears if x.group == ("mlp" if dense else "moe")]
    return out


def block_matmuls(facts: ModelFacts, setup: Setup, dense: bool = True) -> tuple[BlockMatmul, ...]:
    """The ``aten.mm`` calls of one block's forward with torchtitan's parity rule applied (odd ones saved).

    ``dense``: a dense-MLP block (every block of a dense model; DeepSeek's first ``dense_layers`` blocks);
    otherwise a MoE block. Linear layers with a bias (``addmm``) and routed experts (``_grouped_mm``) are skipped:
    the counter never sees them."""
    return _block_matmuls(facts, setup.trains_adapters, setup.lora_rank, dense)


@functools.lru_cache(maxsize=1024)
def _block_matmuls(facts: ModelFacts, adapters: bool, rank: int, dense: bool) -> tuple[BlockMatmul, ...]:
    adapted = set(facts.adapted) if adapters else set()
    calls: list[tuple[LinearLayer, str, int]] = []
    for x in _block_layers(facts, dense):
        if x.name.startswith("experts."):
            continue  # routed experts: _grouped_mm
        if not x.bias:
            calls.append((x, "base", x.out_features))
        if x in adapted:
            calls.append((x, "lora_a", rank))
            calls.append((x, "lora_b", x.out_features))
    return tuple(BlockMatmul(x, kind, out, saved=(i % 2 == 0)) for i, (x, kind, out) in enumerate(calls))


def _attention_saved_per_token(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> float:
    """The attention kernel's saved outputs per token (SDPA / flash: output + fp32 log-sum-exp; eager: none)."""
    from planner.engine.activations import effective_attention

    model = facts.model
    if effective_attention(model, setup) == "eager":
        return 0.0
    if model.mla is not None:  # HF pads v to the qk head dim for SDPA / flash
        width = model.num_heads * (model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim)
    else:
        width = model.q_width
    return rb.compute * width + 4 * model.num_heads


def _block_saved_per_token(facts: ModelFacts, setup: Setup, rb: RecipeBytes, dense: bool) -> float:
    """Eq. A12 for one block kind, per local token on one rank (without the block input)."""
    c, tp, h = rb.compute, setup.tp, facts.model.hidden_size
    total = _attention_saved_per_token(facts, setup, rb) / tp
    for mm in block_matmuls(facts, setup, dense):
        row_parallel = tp > 1 and mm.kind == "base" and mm.layer.name in ROW_PARALLEL
        if mm.saved:
            total += c * mm.out_features / (1 if row_parallel else tp)
        if row_parallel:
            total += c * h / tp  # the reduce-scatter's output: always in the save list
    return total


def op_sac_saved_per_token(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> float:
    """Eq. A12: bytes one (average) block keeps per local token under torchtitan's per-op SAC, on one rank: the
    block input (``residual x h``, sequence-sharded under TP) plus the saved op outputs. Dense and MoE blocks are
    averaged in the model's proportion, as the layer inventory is (eq. A7)."""
    model = facts.model
    inp = rb.residual * model.hidden_size / setup.tp
    if model.moe is None:
        return inp + _block_saved_per_token(facts, setup, rb, True)
    moe_frac = (model.num_layers - model.moe.dense_layers) / model.num_layers
    dense_part = _block_saved_per_token(facts, setup, rb, True) if moe_frac < 1 else 0.0
    return inp + (1 - moe_frac) * dense_part + moe_frac * _block_saved_per_token(facts, setup, rb, False)


def op_sac_block_bytes(facts: ModelFacts, setup: Setup, rb: RecipeBytes, tokens: int) -> tuple[float, float]:
    """(bytes one block keeps for ``tokens`` local tokens, the block input's share of them): eq. A12."""
    return (op_sac_saved_per_token(facts, setup, rb) * tokens,
            rb.residual * facts.model.hidden_size / setup.tp * tokens)


def recomputed_matmuls(facts: ModelFacts, setup: Setup, dense: bool = True) -> frozenset[tuple[str, str]]:
    """The ``(layer name, kind)`` matmuls one block's backward re-runs (eq. S6b): every un-saved ``mm`` (kind
    ``base``, ``lora_a``, ``lora_b``), and every biased layer's ``addmm`` and routed expert's ``_grouped_mm``, which
    the policy never saves. The recompute re-runs the block's forward up to its last needed op, so these are all
    of its forward matmuls but the saved ones."""
    return _recomputed(facts, setup.trains_adapters, setup.lora_rank, dense)


@functools.lru_cache(maxsize=1024)
def _recomputed(facts: ModelFacts, adapters: bool, rank: int, dense: bool) -> frozenset[tuple[str, str]]:
    mms = _block_matmuls(facts, adapters, rank, dense)
    saved = {(mm.layer.name, mm.kind) for mm in mms if mm.saved}
    out = {(mm.layer.name, mm.kind) for mm in mms if not mm.saved}
    out |= {(x.name, "base") for x in _block_layers(facts, dense) if (x.name, "base") not in saved}
    return frozenset(out)
