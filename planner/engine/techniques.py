"""Memory terms of the recipe-book techniques (issue 12; docs/memory.md eqs. M4b, M4c, M4d, F8, T1-T4): paged
optimizers, GaLore, FP8 training, tensor and context parallelism. BAdam and LISA change *which* parameters train
per step and live in :mod:`planner.engine.facts` (eq. M2c) and :mod:`planner.engine.dtypes` (eq. M1c).

Pure functions over :class:`~planner.engine.facts.ModelFacts`; :mod:`planner.engine.memory` calls them. Each says
its source, what it assumes and which way it errs.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.engine.activations import LayerInventory
from planner.engine.bnb import BNB_8BIT_BLOCK, BNB_MIN_8BIT_SIZE, BNB_PAGED_MIN_NUMEL
from planner.engine.dtypes import RecipeBytes
from planner.engine.facts import ModelFacts
from planner.engine.setup import Setup
from profiles.params import LinearLayer

def _projected(layer: LinearLayer) -> bool:
    """GaLore's targets: every ``nn.Linear`` of the blocks (LLaMA-Factory ``galore_target: all`` =
    ``find_all_linear_modules``, which leaves out the LM head). Routed experts are 3-D parameter tensors in
    transformers >= 5, not ``nn.Linear``: not projected."""
    return not layer.name.startswith("experts.")


def trainable_tensor_sizes(facts: ModelFacts, setup: Setup) -> list[tuple[int, int]]:
    """(elements, count) of every trainable tensor (an optimizer keeps its states per tensor; eq. M2, M2b, M2c).

    Full / freeze / BAdam / LISA: the block matrices and their biases, the norm vectors, and (full, LISA) the
    embeddings, LM head and final norm; BAdam's active block only, LISA's ``n`` sampled blocks. Adapters:
    LoRA's A and B per adapted linear, DoRA's magnitude vector, peft's stacked expert factors, and the
    embeddings / LM head when they train."""
    model = facts.model
    h, V, L = model.hidden_size, model.vocab_size, model.num_layers
    out: list[tuple[int, int]] = []
    if setup.trains_adapters:
        r = setup.lora_rank
        for x in facts.adapted:
            out += [(r * x.in_features, x.count), (x.out_features * r, x.count)]
            if setup.dora:
                out.append((x.out_features, x.count))
        t = facts.lora
        if t.experts and model.moe is not None:
            e, f = model.moe.num_experts, model.moe.expert_intermediate_size
            n = L - model.moe.dense_layers
            if t.expert_gate_up:
                out += [(e * 2 * r * h, n), (2 * f * e * 2 * r, n)]
            if t.expert_down:
                out += [(e * r * f, n), (h * e * r, n)]
        extra = int(setup.lora_train_embeddings) + int(setup.lora_train_lm_head)
        return out + ([(V * h, extra)] if extra else [])
    blocks = {"full": L, "freeze": setup.freeze_layers}.get(setup.method, L)
    if setup.badam:
        blocks = 1
    elif setup.lisa_layers:
        blocks = setup.lisa_layers
    norms_per_block = max(model.norms_per_layer, 2)
    for x in facts.linears:
        n = x.count * blocks // L
        if n:
            out.append((x.weight_params, n))
            if x.bias:
                out.append((x.out_features, n))
    out.append((h, norms_per_block * blocks))
    if setup.method == "full" and not setup.badam:  # embeddings, LM head, final norm train (LISA too)
        out.append((V * h, 1 if model.tie_embeddings else 2))
        out.append((h, 1))
    return [t for t in out if t[1] > 0]


def paged_state_bytes(facts: ModelFacts, setup: Setup) -> tuple[int, int]:
    """bitsandbytes optimizers, paged or not (eq. M4b): (bytes through torch's allocator on the GPU, bytes in
    CUDA unified memory).

    ``get_state_buffer`` allocates a state with ``cudaMallocManaged`` (``cget_managed_ptr``, wrapped by
    ``torch.frombuffer`` as a *CPU* tensor, so torch's CUDA statistics never see it) for tensors of at least 1e5
    elements, else with ``torch.zeros_like`` on the GPU. ``paged-adamw``: fp32 m and v whatever the parameter
    dtype (``Optimizer2State.init_state`` with ``optim_bits=32``): 8 B per element. ``adamw-8bit`` /
    ``paged-adamw-8bit``: uint8 m and v (2 B), fp32 states under 4096 elements, and one fp32 absmax per 256 values
    per state, always ordinary GPU tensors. LoRA adapters of rank 8 are mostly under 1e5 elements, so their
    states are not paged at all. Exact per tensor for bitsandbytes 0.49.2; the unified part is resident on the
    GPU only while free memory lets it be (the driver evicts managed pages, never ``cudaMalloc`` memory)."""
    eight = setup.optimizer in ("adamw-8bit", "paged-adamw-8bit")
    paged = setup.optimizer in ("paged-adamw", "paged-adamw-8bit")
    gpu = managed = 0
    for n, count in trainable_tensor_sizes(facts, setup):
        if eight and n >= BNB_MIN_8BIT_SIZE:
            state, absmax = 2 * n, 2 * 4 * -(-n // BNB_8BIT_BLOCK)
        else:
            state, absmax = 8 * n, 0
        if paged and n >= BNB_PAGED_MIN_NUMEL:
            managed += state * count
            gpu += absmax * count
        else:
            gpu += (state + absmax) * count
    return gpu, managed


@dataclass(frozen=True)
class GaloreBytes:
    """GaLore's optimizer memory (eq. M4c)."""

    states: int
    """Adam (or 8-bit / Adafactor) states: low-rank for projected matrices, full for every other trainable tensor"""
    projectors: int
    """one ``r x min(m, n)`` projection matrix per projected matrix, in the gradient's dtype"""
    svd_workspace: int
    """the fp32 SVD of the largest projected matrix at a projection update (transient)"""
    projected_params: int
    """parameters whose gradients are projected"""


def _state_bytes_per_element(setup: Setup, rb: RecipeBytes) -> float:
    """Both Adam states of one element: the recipe's state dtype, or 8-bit with one fp32 absmax per 256 values."""
    if setup.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        return 2 * (1 + 4 / BNB_8BIT_BLOCK)
    return 2.0 * rb.state


def galore_bytes(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> GaloreBytes:
    """GaLore (Zhao et al. 2024, arXiv:2403.03507, Alg. 1; ``galore_torch/galore_projector.py`` at 2cc66f88, eq. M4c).

    For each projected ``m x n`` gradient (``m = out``, ``n = in``) with ``proj_type="std"`` the projector is
    ``Vh[:r]`` (``r x n``) when ``m >= n`` else ``U[:, :r]`` (``m x r``): Adam's states are ``r x max(m, n)`` each
    (``torch.zeros_like(low_rank_grad)``, the gradient's dtype: fp32 under AMP, bf16 under pure bf16) and the
    projector ``r x min(m, n)``; a rank above ``min(m, n)`` keeps ``min(m, n)`` (the SVD has no more components).
    Every other trainable tensor (embeddings, LM head, norms, biases, routed experts) gets the same optimizer without
    projection: full states (LLaMA-Factory ``_create_galore_optimizer``). Adafactor factors the low-rank gradient:
    ``r + max(m, n)`` fp32 elements. The projector update runs ``torch.linalg.svd(matrix.float())``: an fp32 copy of
    the matrix plus ``U``, ``S``, ``Vh`` (thin) for the largest matrix, transient. Exact for the state tensors; errs
    low by cuSOLVER's SVD workspace."""
    r = setup.galore_rank or 0
    per_state = _state_bytes_per_element(setup, rb)
    grad_b = rb.grad16 or rb.grad32
    projected = [x for x in facts.linears if _projected(x)]
    states = proj = P_proj = svd = 0.0
    for x in projected:
        m, n = x.out_features, x.in_features
        k = min(m, n)
        rr = min(r, k)
        if setup.optimizer == "adafactor":
            states += x.count * 4 * (rr + max(m, n))
        else:
            states += x.count * per_state * rr * max(m, n)
        proj += x.count * grad_b * rr * k
        P_proj += x.count * x.weight_params
        svd = max(svd, 4.0 * (m * n + m * k + k + k * n))
    rest = max(0, facts.trainable.trainable - int(P_proj))
    if setup.optimizer == "adafactor":
        states += 4 * rest  # vectors keep a full second moment; the embedding's factored form is smaller (errs high)
    else:
        states += per_state * rest
    return GaloreBytes(int(states), int(proj), int(svd), int(P_proj))


# ---- FP8 (eq. F8) -----------------------------------------------------------------------------------------

def fp8_linears(facts: ModelFacts) -> tuple[LinearLayer, ...]:
    """The linear layers FP8 training converts: every ``nn.Linear`` of the blocks whose two dimensions are
    multiples of 16 (torchtitan ``components/quantization/utils.py`` ``module_filter_fn``; LLaMA-Factory
    ``fp8_utils.py`` the same rule). The LM head stays bf16 (torchtitan's shipped TOMLs set ``filter_fqns =
    ["output"]``; LLaMA-Factory skips ``lm_head``); routed experts are grouped GEMMs, not ``nn.Linear``."""
    return tuple(x for x in facts.linears if _projected(x) and x.in_features % 16 == 0 and x.out_features % 16 == 0)


def fp8_weight_params(facts: ModelFacts) -> int:
    """Weight elements of the converted linears, all blocks."""
    return sum(x.weight_params * x.count for x in fp8_linears(facts))


def fp8_temporary_bytes(facts: ModelFacts, setup: Setup, tokens: int, arch: str) -> tuple[int, int]:
    """FP8 transients (forward, backward) per GPU (eq. F8).

    torchao float8 (``tensorwise`` / ``rowwise``, ``torchao/float8/float8_linear.py`` v0.16.0:
    ``matmul_with_hp_or_float8_args`` saves the *high-precision* input and weight): the fp8 copies of one linear's
    input and weight live during its forward matmul, and in backward its fp8 grad_output with the re-cast input
    and weight: 1 B per element of the largest converted linear, transient; activations unchanged (torchao's own
    table: 47.65 GB bf16 vs 47.77 GB tensorwise, Llama3-8B 8xH100). Scales are one fp32 per tensor (tensorwise) or
    per row (rowwise): negligible.

    TransformerEngine (``te``, ``transformer_engine/pytorch/module/linear.py`` v2.18): the quantised weight of every
    linear stays alive from its forward to its backward (it is what the dgrad GEMM reads), in row- and column-wise
    layouts on Hopper (FP8 GEMMs there are TN-only) and one layout on Ada / Blackwell: 2 or 1 B per converted weight
    element, for the whole forward and backward [derived from the module's save path; errs high where TE's
    fp8_model_init keeps FP8 primary weights instead]."""
    lin = fp8_linears(facts)
    if not lin:
        return 0, 0
    tp = setup.tp
    if setup.fp8 == "te":
        layouts = 2 if arch == "hopper" else 1
        w = layouts * fp8_weight_params(facts) // tp
        return w, w
    big = max(lin, key=lambda x: x.weight_params)
    fwd = (tokens * big.in_features + big.weight_params) // tp
    bwd = (tokens * (big.in_features + big.out_features) + big.weight_params) // tp
    return int(fwd), int(bwd)


def te_saved_input_saving(inv: LayerInventory, compute_bytes: int) -> int:
    """Bytes per token per block TransformerEngine saves less than bf16 training (eq. F8): each converted linear
    keeps its input quantised, 1 B per element instead of ``compute_bytes`` (``linear.py``: the quantised
    ``inputmat`` is what ``save_for_backward`` receives unless ``save_original_input``). The inputs are the
    inventory's ``input:*`` items (eq. A3)."""
    saved_inputs = sum(v for k, v in inv.items.items() if k.startswith("input:"))
    return int(saved_inputs * (compute_bytes - 1) / compute_bytes)


# ---- tensor and context parallelism (eqs. T1-T4) ----------------------------------------------------------

REPLICATED_INPUTS = ("input:attn_in", "input:mlp_in")
"""Under torchtitan's TP plan the normed hidden states are all-gathered along the sequence before wq/wk/wv and
w1/w3 (``PrepareModuleInput(Shard(1) -> Replicate())``, ``models/llama3/infra/parallelize.py`` v0.2.2), and that
gathered tensor is what those matmuls save: two ``T x h`` tensors per block that TP does not divide."""


def tp_layer_bytes_per_token(inv: LayerInventory, tp: int) -> float:
    """Eq. T1: saved bytes per (CP-local) token of one block under TP with sequence parallelism (torchtitan):
    the two all-gathered block inputs (:data:`REPLICATED_INPUTS`) in full, everything else divided by ``tp`` (norms
    and residual adds sharded along the sequence; q/k/v, attention output, MLP intermediates sharded by heads /
    width). Korthikanti et al. 2022 (arXiv:2205.05198) Table 2's TP+SP row divides *everything* by t because
    Megatron re-gathers the inputs in backward; torchtitan's DTensor plan keeps them (errs high against
    Megatron's layout, by design: this is torchtitan)."""
    if tp <= 1:
        return float(inv.per_token)
    rep = sum(v for k, v in inv.items.items() if k.startswith(REPLICATED_INPUTS))
    return rep + (inv.per_token - rep) / tp


def cp_kv_gather_bytes(facts: ModelFacts, setup: Setup, compute_bytes: int) -> int:
    """Eq. T3: context parallelism's transient all-gathered K and V of one layer: ``2 x b x s x kv_w x c / tp``
    (torch's ring attention with ``context_parallel_rotate_method = "allgather"``, torchtitan's default, gathers
    every rank's K / V shard before the attention loop; key/value heads are split by TP). Zero without CP."""
    if setup.cp <= 1:
        return 0
    m = facts.model
    return int(2 * setup.micro_batch * setup.seq_len * m.kv_width * compute_bytes // setup.tp)
