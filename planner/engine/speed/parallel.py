"""Model parallelism and the subspace optimizers in the step time (docs/speed.md eqs. S29-S31): tensor- and
context-parallel collectives as torchtitan 0.2.2 runs them, and GaLore's projection and SVD.

Pure arithmetic over :class:`~planner.engine.facts.ModelFacts`; :func:`planner.engine.speed.step.estimate_speed`
adds them to the step.
"""

from __future__ import annotations

from planner.engine.dtypes import recipe_bytes
from planner.engine.facts import ModelFacts
from planner.engine.setup import Setup
from planner.engine.speed.comm import ring_factor
from planner.engine.speed.flops import block_backward_factors
from planner.engine.techniques import galore_bytes


def tp_collectives_per_micro_step(facts: ModelFacts, setup: Setup) -> tuple[float, int]:
    """Eq. S30: (bytes each GPU sends, collective calls) per micro-step for tensor parallelism with sequence
    parallelism, as torchtitan's plan runs it (``models/llama3/infra/parallelize.py`` v0.2.2 ``apply_tp``).

    Per block and micro-step, forward: an all-gather of the normed hidden states before the attention and before
    the MLP (``PrepareModuleInput(Shard(1) -> Replicate())``) and a reduce-scatter after ``wo`` and after ``w2``
    (``RowwiseParallel(output_layouts=Shard(1))``); backward: their transposes (2 reduce-scatters + 2
    all-gathers); a fully checkpointed block re-runs its forward ones. Plus the embedding's reduce-scatter and the
    LM head's all-gather, forward and backward. Each moves the whole ``b x s/cp x h`` activation in the compute
    dtype; a ring sends ``(t-1)/t`` of it (eq. S10). Korthikanti et al. 2022 (arXiv:2205.05198) sec. 4.2.2 count
    the same 4 collectives per block forward and 4 backward for TP with sequence parallelism. torchtitan 0.2.2
    keeps TP collectives in bf16 even under float8 tensorwise (its ``enable_float8_linear`` test looks for the
    v0.1 converter name ``"float8"``, not ``"quantize.linear.float8"``). Errs low by the loss-parallel all-reduces
    of two scalars per token."""
    t = setup.tp
    if t <= 1:
        return 0.0, 0
    m = facts.model
    c = recipe_bytes(setup).compute
    payload = setup.micro_batch * setup.seq_len // setup.cp * m.hidden_size * c
    rec = sum(rc for _, _, rc in block_backward_factors(m, setup)) if setup.checkpointing in ("full", "op") else 0.0
    # per-op SAC saves the reduce-scatters' outputs and re-runs the two all-gathers (eq. S6b); full re-runs all four
    calls = 8 * m.num_layers + int(round((2 if setup.checkpointing == "op" else 4) * rec)) + 4
    return calls * ring_factor("all-gather", t) * payload, calls


def cp_collectives_per_micro_step(facts: ModelFacts, setup: Setup) -> tuple[float, int]:
    """Eq. S30b: (bytes each GPU sends, calls) per micro-step for context parallelism with torchtitan's default
    ``context_parallel_rotate_method = "allgather"`` (torch ring attention's all-gather rotater): per block an
    all-gather of every rank's K and V shard in forward (and again in a recompute), a reduce-scatter of their
    gradients in backward. The payload is the full sequence's K and V: ``2 x b x s x kv_w x c``, key/value heads
    divided over TP. [derived from the rotate method's description; torch's ring-attention internals not read]"""
    cp = setup.cp
    if cp <= 1:
        return 0.0, 0
    m = facts.model
    c = recipe_bytes(setup).compute
    payload = 2 * setup.micro_batch * setup.seq_len * m.kv_width * c / setup.tp
    rec = sum(rc for _, _, rc in block_backward_factors(m, setup)) if setup.checkpointing == "full" else 0.0
    calls = 2 * m.num_layers + int(round(rec))
    return calls * ring_factor("all-gather", cp) * payload, calls


def galore_step_work(facts: ModelFacts, setup: Setup) -> tuple[float, float, float]:
    """Eq. S31: GaLore's optimizer-step work per GPU: (projection FLOPs per step, extra HBM bytes per step, SVD FLOPs
    per projection update).

    Each step, per projected ``m x n`` gradient: the projection ``P^T G`` (or ``G P``) and the projection back of
    the rank-``r`` update, ``2 x 2 r m n`` FLOPs, streaming the full gradient twice and writing and reading the
    full-size update (``galore_torch/adamw.py``: ``grad = state["projector"].project(grad, ...)``, ``norm_grad =
    ...project_back(norm_grad)``, then ``p.add_``): ``4 g`` bytes per element beyond a plain step's weight traffic,
    while the low-rank states replace the full ones (their traffic is negligible). Every ``update_proj_gap`` steps a
    thin fp32 SVD of every projected matrix: about ``6 m n k + 20 k^3`` FLOPs (Golub & Van Loan, Matrix Computations
    4th ed., Fig. 8.6.1, R-SVD with U1 and V; ``k = min(m, n)``)."""
    r = setup.galore_rank or 0
    rb = recipe_bytes(setup)
    g = float(rb.grad16 or rb.grad32)
    gb = galore_bytes(facts, setup, rb)
    proj_flops = svd_flops = 0.0
    for x in facts.linears:
        if x.name.startswith("experts."):
            continue
        m, n = x.out_features, x.in_features
        k = min(m, n)
        rr = min(r, k)
        proj_flops += x.count * 4.0 * rr * m * n
        svd_flops += x.count * (6.0 * m * n * k + 20.0 * k**3)
    return proj_flops, 4.0 * g * gb.projected_params, svd_flops
