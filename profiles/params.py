"""Exact parameter counts and linear-layer shapes, derived from a :class:`ModelProfile` in one place.

The counts follow the module structure of the Hugging Face implementation of each ``model_type`` (e.g.
``transformers/models/llama/modeling_llama.py``): embeddings, per-layer attention projections (with QKV
bias where the config says so, MLA's low-rank projections and their norms), the dense or MoE MLP (router,
routed experts, shared experts and their gate), per-layer norms (including Qwen3's q/k norms), the final
norm and an untied LM head. ``tests/profiles/test_params_meta.py`` checks every buildable profile against
``AutoModelForCausalLM`` on the meta device for exact equality, total and per group.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from profiles.schema import ModelProfile

GROUPS = ("embedding", "attention", "mlp", "moe", "norms", "lm_head")
"""Parameter groups. ``mlp`` is dense MLPs; ``moe`` is routers, routed experts and shared experts."""


@dataclass(frozen=True)
class LinearLayer:
    """One linear layer kind: ``count`` instances in the model, each ``in_features x out_features``.

    ``name`` is the module name used for LoRA targets (``q_proj``, ``gate_proj``, ...). ``group`` is one of
    :data:`GROUPS`. ``experts`` > 1 marks routed-expert matrices (``count`` already includes them);
    ``active_count`` is how many instances one token passes through (top-k for routed experts).
    """

    name: str
    in_features: int
    out_features: int
    bias: bool
    count: int
    group: str
    active_count: int
    adaptable: bool | None = None
    """whether LoRA can adapt it; None: by name (routers ``gate`` / ``shared_expert_gate`` and routed experts
    ``experts.*`` cannot: they are not ``nn.Linear`` in transformers >= 5, or are excluded like routers)"""

    @property
    def lora_adaptable(self) -> bool:
        if self.adaptable is not None:
            return self.adaptable
        return not (self.name in ("gate", "shared_expert_gate") or self.name.startswith("experts."))

    @property
    def routed_expert(self) -> bool:
        """A routed-expert matrix (``count`` includes every expert of every MoE layer)."""
        return self.name.startswith("experts.")

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params_each(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    @property
    def params(self) -> int:
        return self.params_each * self.count


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by group; ``total`` is their sum, ``active`` what one token uses (MoE: top-k experts)."""

    embedding: int
    attention: int
    mlp: int
    moe: int
    norms: int
    lm_head: int
    active: int

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.moe + self.norms + self.lm_head

    def as_dict(self) -> dict[str, int]:
        return {g: getattr(self, g) for g in GROUPS} | {"total": self.total, "active": self.active}


def _norm_params(m: ModelProfile, width: int) -> int:
    """Parameters of one norm over ``width`` features: RMSNorm has a weight, LayerNorm weight and bias."""
    return {"rmsnorm": width, "layernorm": 2 * width, "layernorm-nonparametric": 0}[m.norm_kind]


def _mlp_layers(m: ModelProfile, width: int, count: int, group: str, active: int, prefix: str = "") -> list[LinearLayer]:
    """The matrices of one MLP of intermediate ``width`` (gated: gate/up/down; else up/down)."""
    h, b = m.hidden_size, m.mlp_bias
    if m.gated and m.fused_gate_up:
        ups = [LinearLayer(prefix + "gate_up_proj", h, 2 * width, b, count, group, active)]
    elif m.gated:
        ups = [
            LinearLayer(prefix + "gate_proj", h, width, b, count, group, active),
            LinearLayer(prefix + "up_proj", h, width, b, count, group, active),
        ]
    else:
        ups = [LinearLayer(prefix + "up_proj", h, width, b, count, group, active)]
    return ups + [LinearLayer(prefix + "down_proj", width, h, b, count, group, active)]


def attention_layers(m: ModelProfile) -> list[LinearLayer]:
    """Attention projections of all layers (MLA: its low-rank q/kv projections)."""
    h, L = m.hidden_size, m.num_layers
    if m.mla is not None:
        a = m.mla
        nope_rope = a.qk_nope_head_dim + a.qk_rope_head_dim
        out: list[LinearLayer] = []
        if a.q_lora_rank is None:
            out.append(LinearLayer("q_proj", h, m.num_heads * nope_rope, False, L, "attention", L))
        else:
            out.append(LinearLayer("q_a_proj", h, a.q_lora_rank, m.qkv_bias, L, "attention", L))
            out.append(LinearLayer("q_b_proj", a.q_lora_rank, m.num_heads * nope_rope, False, L, "attention", L))
        out.append(
            LinearLayer("kv_a_proj_with_mqa", h, a.kv_lora_rank + a.qk_rope_head_dim, m.qkv_bias, L, "attention", L)
        )
        out.append(
            LinearLayer(
                "kv_b_proj", a.kv_lora_rank, m.num_heads * (a.qk_nope_head_dim + a.v_head_dim), False, L, "attention", L
            )
        )
        out.append(LinearLayer("o_proj", m.num_heads * a.v_head_dim, h, m.o_bias, L, "attention", L))
        return out
    if m.fused_qkv:
        qkv = [LinearLayer("qkv_proj", h, m.q_width + 2 * m.kv_width, m.qkv_bias, L, "attention", L)]
    else:
        qkv = [
            LinearLayer("q_proj", h, m.q_width, m.qkv_bias, L, "attention", L),
            LinearLayer("k_proj", h, m.kv_width, m.qkv_bias, L, "attention", L),
            LinearLayer("v_proj", h, m.kv_width, m.qkv_bias, L, "attention", L),
        ]
    return qkv + [LinearLayer("o_proj", m.q_width, h, m.o_bias, L, "attention", L)]


def mlp_layers(m: ModelProfile) -> list[LinearLayer]:
    """Dense MLPs, routers, routed experts and shared experts of all layers."""
    L = m.num_layers
    if m.moe is None:
        return _mlp_layers(m, m.intermediate_size, L, "mlp", L)
    e = m.moe
    dense = e.dense_layers
    moe_layers = L - dense
    out: list[LinearLayer] = []
    if dense:
        out += _mlp_layers(m, m.intermediate_size, dense, "mlp", dense)
    if moe_layers:
        out.append(LinearLayer("gate", m.hidden_size, e.num_experts, e.router_bias, moe_layers, "moe", moe_layers))
        out += _mlp_layers(
            m,
            e.expert_intermediate_size,
            moe_layers * e.num_experts,
            "moe",
            moe_layers * e.experts_per_token,
            prefix="experts.",
        )
        if e.shared_experts:
            out += _mlp_layers(m, e.shared_expert_intermediate_size, moe_layers, "moe", moe_layers, "shared_experts.")
        if e.shared_expert_gate:
            out.append(LinearLayer("shared_expert_gate", m.hidden_size, 1, False, moe_layers, "moe", moe_layers))
    return out


@functools.lru_cache(maxsize=256)
def linear_layers(m: ModelProfile) -> tuple[LinearLayer, ...]:
    """Every linear layer of the transformer blocks (not the LM head), with counts: what LoRA can target.

    A derived profile (``m.derived``) carries the layers read off the built model instead."""
    if m.derived is not None:
        return tuple(
            LinearLayer(x.name, x.in_features, x.out_features, x.bias, x.count, x.group, x.active_count,
                        adaptable=x.role == "linear")
            for x in m.derived.linear_layers
        )
    return tuple(attention_layers(m) + mlp_layers(m))


@functools.lru_cache(maxsize=256)
def norm_params(m: ModelProfile) -> int:
    """All norm weights: per-layer norms, Qwen3's q/k norms, MLA's latent norms, the final norm."""
    if m.derived is not None:
        return m.derived.params.norms
    per_layer = m.norms_per_layer * _norm_params(m, m.hidden_size)
    if m.qk_norm and m.qk_norm_scope == "head":
        per_layer += 2 * _norm_params(m, m.head_dim)
    elif m.qk_norm:  # OLMo-2: q_norm over heads x head_dim, k_norm over kv_heads x head_dim
        per_layer += _norm_params(m, m.q_width) + _norm_params(m, m.kv_width)
    if m.mla is not None:
        per_layer += _norm_params(m, m.mla.kv_lora_rank)
        if m.mla.q_lora_rank is not None:
            per_layer += _norm_params(m, m.mla.q_lora_rank)
    final = _norm_params(m, m.hidden_size) if m.final_norm else 0
    return per_layer * m.num_layers + final


@functools.lru_cache(maxsize=256)
def param_counts(m: ModelProfile) -> ParamCounts:
    """Exact parameter counts by group, total and active (what one token passes through).

    A derived profile carries the counts of the model transformers built (exact by construction)."""
    if m.derived is not None:
        d = m.derived.params
        return ParamCounts(d.embedding, d.attention, d.mlp, d.moe, d.norms, d.lm_head, d.active)
    emb = m.vocab_size * m.hidden_size
    head = 0 if m.tie_embeddings else m.vocab_size * m.hidden_size
    layers = linear_layers(m)
    attn = sum(x.params for x in layers if x.group == "attention")
    mlp = sum(x.params for x in layers if x.group == "mlp")
    moe = sum(x.params for x in layers if x.group == "moe")
    norms = norm_params(m)
    inactive = sum(x.params_each * (x.count - x.active_count) for x in layers)
    total = emb + attn + mlp + moe + norms + head
    return ParamCounts(emb, attn, mlp, moe, norms, head, active=total - inactive)


@functools.lru_cache(maxsize=256)
def largest_layer_params(m: ModelProfile) -> int:
    """Parameters of the largest single module, the unit ZeRO-3 gathers at once.

    Mirrors DeepSpeed's ``estimate_zero3_model_states_mem_needs_all_live``: the max over modules of the
    module's own (non-recursive) parameters. That is usually the embedding or LM head (V x h). For MoE models
    in transformers >= 5 the routed experts of a layer are one module holding 3-D tensors, so one layer's
    experts are gathered together. A derived profile carries the largest module of the built model.
    """
    if m.derived is not None:
        return m.derived.params.largest_module
    cands = [m.vocab_size * m.hidden_size]
    for x in linear_layers(m):
        if x.name.startswith("experts.") and m.moe is not None:
            continue
        cands.append(x.params_each)
    if m.moe is not None:
        experts = [x for x in linear_layers(m) if x.name.startswith("experts.")]
        per_layer = sum(x.params_each for x in experts) * m.moe.num_experts
        cands.append(per_layer)
    return max(cands)


@functools.lru_cache(maxsize=256)
def layer_params(m: ModelProfile) -> int:
    """Parameters of one transformer block on average (all blocks, without embeddings / head / final norm)."""
    if m.derived is not None:
        d = m.derived
        return sum(d.blocks[k].params for k in d.layer_kinds) // m.num_layers
    c = param_counts(m)
    final = _norm_params(m, m.hidden_size) if m.final_norm else 0
    return (c.attention + c.mlp + c.moe + c.norms - final) // m.num_layers
