"""FLOPs per token of one training step, by phase and part (docs/speed.md eqs. S1-S6).

Hardware FLOPs (what the GPU executes: eager attention's full square, FlashAttention's backward recompute,
checkpointed recompute) and model FLOPs (what MFU counts). Pure arithmetic over :class:`ModelFacts`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from planner.engine.activations import effective_attention
from planner.engine.facts import ModelFacts
from planner.engine.memo import SetupMemo
from planner.engine.op_sac import recomputed_matmuls
from planner.engine.setup import Setup
from profiles.params import LinearLayer
from profiles.schema import ModelProfile

PARTS = ("attention", "attention_core", "mlp", "moe", "lm_head", "lora")
"""FLOPs parts: attention projections, attention scores + PV, dense MLP, MoE (router, routed experts actually
used, shared experts), the LM head, LoRA adapters."""
FLASH_BACKWARD_FACTOR = 2.5
"""FlashAttention's backward does 2.5x the forward's attention FLOPs: it recomputes QK^T from the saved
log-sum-exp (5 matmuls against the forward's 2). Source: Dao-AILab/flash-attention
``benchmarks/benchmark_flash_attention.py``, ``flops()``: ``2.5 * f if mode == "bwd"``. Hardware FLOPs
only; the model FLOPs use 2x (eq. S4)."""

class FlopsBreakdown(BaseModel):
    """FLOPs per token (a processed, possibly padded, token) by phase and part (:data:`PARTS`).

    ``forward`` / ``backward`` / ``recompute`` are *hardware* FLOPs, what the GPU executes (eager attention
    computes the full causal square, FlashAttention's backward recomputes QK^T). ``model_forward`` /
    ``model_backward`` are the *useful* FLOPs that MFU counts (causal half, backward = 2x forward, no
    recompute) (eqs. S1-S6).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

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


@dataclass(frozen=True)
class _BlockLinear:
    """One linear layer kind as it appears in one block: instances and token-visited instances per block."""

    layer: LinearLayer
    instances: float
    active: float


def _block_linears(facts: ModelFacts) -> tuple[list[_BlockLinear], list[_BlockLinear], list[_BlockLinear], int]:
    """Split the model's linear layers (``facts.linears``) into per-block lists: attention, dense-MLP, MoE-MLP.

    Returns (attention, dense, moe, dense_blocks): blocks ``0 .. dense_blocks-1`` use the dense MLP, the
    rest the MoE MLP (DeepSeek ``first_k_dense_replace``); a dense model has ``dense_blocks = num_layers``.
    """
    model = facts.model
    L = model.num_layers
    dense_blocks = model.moe.dense_layers if model.moe is not None else L
    moe_blocks = L - dense_blocks
    attn: list[_BlockLinear] = []
    dense: list[_BlockLinear] = []
    moe: list[_BlockLinear] = []
    for x in facts.linears:
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
    windows are ignored: errs high for s > window (Mistral-7B-v0.1, Gemma-2's local layers). A derived profile
    counts per block kind instead, windows and chunks included (:func:`planner.engine.derived.attention_core_flops`,
    docs/memory.md eq. D5).
    """
    if model.derived is not None:
        from planner.engine.derived import attention_core_flops as derived_core

        return derived_core(model, seq_len, causal_full_square)
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
    """Whether the LM head weight receives a gradient (full FT, LISA too, but not BAdam; LoRA with
    ``--lora-train-lm-head``, or with ``--lora-train-embeddings`` when the head is tied to the embedding)."""
    if setup.method == "full":
        return not setup.badam
    if setup.trains_adapters:
        return setup.lora_train_lm_head or (model.tie_embeddings and setup.lora_train_embeddings)
    return False  # freeze: LLaMA-Factory trains only the selected blocks


def block_backward_factors(model: ModelProfile, setup: Setup) -> tuple[tuple[float, float, float], ...]:
    """Eq. S4b: per block, the expected number of (input-gradient, weight-gradient, recompute) passes per step.

    Full fine-tuning, LoRA: (1, 1 or 0, checkpointed). Freeze: blocks below the trained ones run no backward.
    BAdam (Luo et al. 2024; ``block_optim.py``): one block ``a`` trains; backward runs from the top down to ``a``
    (blocks above pass input gradients, ``a`` computes its weight gradients, nothing below runs) and the active
    block cycles through all ``L`` blocks (``switch_mode`` ascending / descending / random: each equally often), so
    block ``i`` has an input-gradient pass with probability ``(i + 1) / L`` and a weight-gradient pass with ``1 / L``
    (the active block's own input gradient is counted: errs high by ``1 / L`` of one block, as eq. S4 does).
    LISA (Pan et al. 2024): the embeddings train, so every block passes input gradients; ``n`` of ``L`` blocks
    compute weight gradients. Recompute happens in blocks that run a backward."""
    L = model.num_layers
    ckpt = set(checkpointed_blocks(model, setup))
    out = []
    if setup.method == "full" and setup.badam:
        for i in range(L):
            ig = (i + 1) / L
            out.append((ig, 1.0 / L, ig if i in ckpt else 0.0))
        return tuple(out)
    if setup.method == "full" and setup.lisa_layers:
        wg = min(setup.lisa_layers, L) / L
        return tuple((1.0, wg, 1.0 if i in ckpt else 0.0) for i in range(L))
    first = first_backward_block(model, setup)
    weights_train = setup.method in ("full", "freeze")
    for i in range(L):
        has = i >= first
        out.append((1.0 if has else 0.0, 1.0 if (has and weights_train) else 0.0, 1.0 if i in ckpt else 0.0))
    return tuple(out)


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


def flops_per_token(facts: ModelFacts, setup: Setup) -> FlopsBreakdown:
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
    attention core only; torchtitan's per-op SAC (eq. S6b, :mod:`planner.engine.op_sac`) re-runs the matmuls whose
    outputs it did not save (every second ``mm``, biased ``addmm``, routed experts) and, with eager attention only,
    the attention core (SDPA / flash outputs are saved).
    """
    # FLOPs per token depend only on the fields not in _FLOPS_KEY: memoise on them (the search evaluates hundreds
    # of setups)
    return _FLOPS_MEMO(facts, setup)


_FLOPS_KEY = {"micro_batch": 1, "grad_accum": 1, "zero": 0, "fsdp": None, "offload": "none", "optimizer": "adamw",
              "recipe": "bf16", "loss": "plain", "packing": True, "compile": False, "galore_rank": None,
              "galore_layerwise": False, "fp8": "none", "tp": 1, "cp": 1, "async_tp": False,
              "optimizer_in_backward": False, "activation_offload": False}


@functools.lru_cache(maxsize=512)
def _flops_per_token(facts: ModelFacts, setup: Setup) -> FlopsBreakdown:
    model = facts.model
    attn, dense, moe, dense_blocks = _block_linears(facts)
    adapted = {id(x) for x in facts.adapted}
    s = setup.seq_len
    eager = effective_attention(model, setup) == "eager"  # Gemma-2: transformers runs eager for sdpa
    core_model = attention_core_flops(model, s, causal_full_square=False)
    core_hw = attention_core_flops(model, s, causal_full_square=eager)
    core_bwd_factor_hw = 2.0 if eager else FLASH_BACKWARD_FACTOR
    factors = block_backward_factors(model, setup)

    fwd = dict.fromkeys(PARTS, 0.0)
    bwd = dict.fromkeys(PARTS, 0.0)
    rec = dict.fromkeys(PARTS, 0.0)
    mfwd = dict.fromkeys(PARTS, 0.0)
    mbwd = dict.fromkeys(PARTS, 0.0)

    for i in range(model.num_layers):
        ig, wg, rc = factors[i]  # expected input-gradient, weight-gradient and recompute passes (eq. S4b)
        mlp_part, mlp_layers = ("mlp", dense) if i < dense_blocks else ("moe", moe)
        block_fwd = dict.fromkeys(PARTS, 0.0)
        block_rec = dict.fromkeys(PARTS, 0.0)  # per-op SAC: the matmuls its backward re-runs (eq. S6b)
        op_rec = recomputed_matmuls(facts, setup, i < dense_blocks) if setup.checkpointing == "op" else frozenset()
        for part, layers in (("attention", attn), (mlp_part, mlp_layers)):
            for bl in layers:
                x = bl.layer
                block_fwd[part] += matmul_flops(x.in_features, x.out_features) * bl.active
                if (x.name, "base") in op_rec:
                    block_rec[part] += matmul_flops(x.in_features, x.out_features) * bl.active
                if id(x) in adapted:
                    block_fwd["lora"] += lora_adapter_flops(x.in_features, x.out_features, setup.lora_rank) * bl.active
                    block_rec["lora"] += sum(matmul_flops(*io) * bl.active for kind, io in (
                        ("lora_a", (x.in_features, setup.lora_rank)), ("lora_b", (setup.lora_rank, x.out_features)))
                        if (x.name, kind) in op_rec)
        matmul_bwd_factor = ig + wg
        for part in ("attention", "mlp", "moe"):
            fwd[part] += block_fwd[part]
            mfwd[part] += block_fwd[part]
            bwd[part] += matmul_bwd_factor * block_fwd[part]
            mbwd[part] += matmul_bwd_factor * block_fwd[part]
        fwd["lora"] += block_fwd["lora"]
        mfwd["lora"] += block_fwd["lora"]
        bwd["lora"] += 2.0 * ig * block_fwd["lora"]
        mbwd["lora"] += 2.0 * ig * block_fwd["lora"]
        fwd["attention_core"] += core_hw
        mfwd["attention_core"] += core_model
        bwd["attention_core"] += ig * core_bwd_factor_hw * core_hw
        mbwd["attention_core"] += ig * 2.0 * core_model
        if rc:
            if setup.checkpointing == "full":
                for part in ("attention", "mlp", "moe", "lora"):
                    rec[part] += rc * block_fwd[part]
                rec["attention_core"] += rc * core_hw
            elif setup.checkpointing == "op":  # the un-saved matmuls; the attention core only if eager
                for part in ("attention", "mlp", "moe", "lora"):
                    rec[part] += rc * block_rec[part]
                if eager:
                    rec["attention_core"] += rc * core_hw
            else:  # selective: scores + softmax + PV only
                rec["attention_core"] += rc * core_hw

    head = lm_head_flops(model)
    fwd["lm_head"] = mfwd["lm_head"] = head
    head_bwd = (1.0 + (1.0 if _lm_head_trains(model, setup) else 0.0)) * head
    bwd["lm_head"] = mbwd["lm_head"] = head_bwd
    return FlopsBreakdown(forward=fwd, backward=bwd, recompute=rec, model_forward=mfwd, model_backward=mbwd)


_FLOPS_MEMO = SetupMemo(_flops_per_token, _FLOPS_KEY)
