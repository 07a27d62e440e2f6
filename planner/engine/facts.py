"""Facts about a model under one setup's choice of what trains, derived once and passed down (design.md,
"ModelFacts"; docs/memory.md eq. M2).

Before this module the engine asked :mod:`profiles.params` for the linear layers, and resolved the LoRA
targets, in every formula that needed them (six visits each per estimate). :func:`model_facts` computes the
inventory once per model and *training choice* (method, LoRA targets / rank / DoRA, freeze depth, trained
embeddings / head) and memoises it; every formula receives the same :class:`ModelFacts`.

The rules that live here, each in one place:

* which linear layers carry a LoRA adapter (:func:`adapter_applies`);
* resolving ``--lora-targets`` to the model's layer names (:func:`resolve_lora_targets`);
* which parameters train and how many (:class:`TrainableCounts`, eq. M2), and LoRA adapter sizes
  (:func:`lora_adapter_params`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from planner.engine.setup import Setup, SetupError
from profiles.params import (
    LinearLayer,
    ParamCounts,
    largest_layer_params,
    layer_params,
    linear_layers,
    param_counts,
)
from profiles.schema import ModelProfile

ROUTER_NAMES = ("gate", "shared_expert_gate")
"""Router projections: ``nn.Linear`` modules that peft's ``all-linear`` never adapts (they are excluded as
classifier-like outputs of one or a few features) and that LoRA targets never name."""
ALL_LINEAR = ("all-linear", "all")
"""The values of ``--lora-targets`` that mean every adaptable linear layer (peft ``target_modules="all-linear"``,
LLaMA-Factory ``lora_target: all``)."""


def adapter_applies(layer: LinearLayer, targets: frozenset[str] | set[str]) -> bool:
    """Whether LoRA adapts ``layer`` given the resolved target base names.

    Never the router (:data:`ROUTER_NAMES`) and never routed experts, which are 3-D parameter tensors rather
    than ``nn.Linear`` modules in transformers >= 5 (``modeling_qwen3_moe.py`` ``Qwen3MoeExperts``), so peft
    cannot wrap them; otherwise when the layer's base name (``q_proj``, ``shared_experts.down_proj`` ->
    ``down_proj``) is a target.
    """
    if layer.name in ROUTER_NAMES or layer.name.startswith("experts."):
        return False
    return layer.name.split(".")[-1] in targets


def targetable_names(layers: tuple[LinearLayer, ...]) -> tuple[str, ...]:
    """The base names ``--lora-targets`` may list for a model, sorted."""
    return tuple(sorted({x.name.split(".")[-1] for x in layers if x.name not in ROUTER_NAMES}))


def resolve_lora_targets(model: ModelProfile, lora_targets: str) -> tuple[str, ...]:
    """``all-linear`` (or ``all``) -> every targetable base name; a comma list -> those names, each checked.

    Raises :class:`SetupError` naming the bad target and the valid ones."""
    base = targetable_names(linear_layers(model))
    if lora_targets.strip() in ALL_LINEAR:
        return base
    wanted = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    bad = [t for t in wanted if t not in base]
    if bad or not wanted:
        raise SetupError(
            f"LoRA target {', '.join(bad) or repr(lora_targets)!s} is not a linear layer of {model.name}; "
            f"valid: all-linear or a comma list of {', '.join(base)}"
        )
    return wanted


@dataclass(frozen=True)
class TrainableCounts:
    """Parameter counts by role (eq. M2). ``frozen`` excludes parameters that train."""

    trainable: int
    """all trainable parameters (full weights, or adapters + trained embeddings / head)"""
    trainable_base: int
    """base-model parameters that train (full / freeze / LoRA-trained embeddings and head)"""
    adapter: int
    frozen: int
    frozen_linear: int
    """frozen parameters inside linear layers (what QLoRA quantises)"""
    trainable_linear: int
    """trainable parameters that sit in linear layers (what autocast casts per use)"""


def lora_adapter_params(adapted: tuple[LinearLayer, ...], rank: int, dora: bool) -> int:
    """LoRA adapter parameters: ``r * (in + out)`` per adapted linear (Hu et al. 2021, arXiv:2106.09685,
    sec. 4), plus DoRA's magnitude vector of ``out`` per adapted linear (Liu et al. 2024, arXiv:2402.09353).
    Golden: rank 8 on a 4096 x 11008 matrix gives 8 * (4096 + 11008) = 120,832."""
    return sum((rank * (x.in_features + x.out_features) + (x.out_features if dora else 0)) * x.count for x in adapted)


@dataclass(frozen=True, eq=False)
class ModelFacts:
    """One model's parameter and layer inventory under one choice of what trains. Computed once by
    :func:`model_facts` (memoised, so equal inputs give the same object); every engine formula reads it
    instead of re-deriving it. Compared and hashed by identity: a cheap key for the engine's caches."""

    model: ModelProfile
    counts: ParamCounts
    """exact parameter counts by group (:func:`profiles.params.param_counts`)"""
    linears: tuple[LinearLayer, ...]
    """every linear layer kind of the blocks, with counts"""
    lora_targets: tuple[str, ...]
    """resolved LoRA target base names; empty unless the method trains adapters"""
    adapted: tuple[LinearLayer, ...]
    """the linear layer kinds that carry an adapter"""
    trainable: TrainableCounts
    largest_module_params: int
    """the largest single module's own parameters (the unit ZeRO-3 gathers)"""
    block_params: int
    """parameters of one transformer block on average"""
    largest_linear_weight: int
    """weight elements of the largest linear layer (QLoRA's dequantised copy, autocast's per-use cast)"""

    @property
    def name(self) -> str:
        return self.model.name

    def out_features(self, base_name: str) -> int:
        """Output width of the linear layer with this base name (the hidden size when absent)."""
        for x in self.linears:
            if x.name.split(".")[-1] == base_name:
                return x.out_features
        return self.model.hidden_size


def _trainable_counts(model: ModelProfile, counts: ParamCounts, linears: tuple[LinearLayer, ...], method: str,
                      freeze_layers: int, adapter: int, train_embeddings: bool, train_lm_head: bool,
                      subspace: str = "none", lisa_layers: int = 0) -> TrainableCounts:
    """Which parameters train under ``method`` (eq. M2), and per step under BAdam / LISA (eq. M2c)."""
    lin_total = sum(x.params for x in linears)
    head = model.vocab_size * model.hidden_size
    if method == "full" and subspace == "badam":
        # one decoder block per step; embeddings and LM head never train (BAdam block_optim.py, include_embedding /
        # include_lm_head False as LLaMA-Factory passes them)
        block = layer_params(model)
        return TrainableCounts(block, block, 0, counts.total - block, lin_total - lin_total // model.num_layers,
                               lin_total // model.num_layers)
    if method == "full" and subspace == "lisa":
        # LMFlow DynamicLayerActivationCallback: n sampled blocks, plus embeddings, final norm and LM head always
        always = counts.embedding + counts.lm_head + (counts.norms - layer_params_norms(model))
        train = layer_params(model) * lisa_layers + always
        lin_train = lin_total * lisa_layers // model.num_layers + head
        return TrainableCounts(train, train, 0, counts.total - train, lin_total - lin_train + head, lin_train)
    if method == "full":
        lin = lin_total + head  # a tied embedding is still cast per use as the LM head's weight
        return TrainableCounts(counts.total, counts.total, 0, 0, 0, lin)
    if method == "freeze":
        train = layer_params(model) * freeze_layers
        lin_train = lin_total * freeze_layers // model.num_layers
        return TrainableCounts(train, train, 0, counts.total - train, lin_total - lin_train, lin_train)
    extra = (head if train_embeddings else 0) + (head if train_lm_head else 0)  # peft modules_to_save copies
    return TrainableCounts(adapter + extra, extra, adapter, counts.total, lin_total, adapter)


def layer_params_norms(model: ModelProfile) -> int:
    """Norm parameters inside the decoder blocks (all blocks): the model's norms less the final norm."""
    counts = param_counts(model)
    per_width = {"rmsnorm": 1, "layernorm": 2, "layernorm-nonparametric": 0}[model.norm_kind]
    final = model.hidden_size * per_width if model.final_norm else 0
    return max(0, counts.norms - final)


def model_facts(model: ModelProfile, setup: Setup) -> ModelFacts:
    """The :class:`ModelFacts` of ``model`` under ``setup``'s training choice (memoised on the fields that
    decide it). Raises :class:`SetupError` for LoRA targets the model does not have."""
    adapters = setup.trains_adapters
    sub = setup.subspace_optimizer if setup.method == "full" else "none"
    return _model_facts(
        model,
        setup.method,
        setup.lora_targets if adapters else "",
        setup.lora_rank if adapters else 0,
        setup.dora and adapters,
        setup.freeze_layers if setup.method == "freeze" else 0,
        setup.lora_train_embeddings and adapters,
        setup.lora_train_lm_head and adapters,
        sub if sub in ("badam", "lisa") else "none",
        (setup.lisa_layers or 0) if sub == "lisa" else 0,
    )


@functools.lru_cache(maxsize=1024)
def _model_facts(model: ModelProfile, method: str, lora_targets: str, rank: int, dora: bool, freeze_layers: int,
                 train_embeddings: bool, train_lm_head: bool, subspace: str = "none", lisa_layers: int = 0) -> ModelFacts:
    linears = linear_layers(model)
    counts = param_counts(model)
    targets = resolve_lora_targets(model, lora_targets) if method in ("lora", "qlora") else ()
    tset = frozenset(targets)
    adapted = tuple(x for x in linears if adapter_applies(x, tset))
    adapter = lora_adapter_params(adapted, rank, dora) if targets else 0
    trainable = _trainable_counts(model, counts, linears, method, freeze_layers, adapter, train_embeddings, train_lm_head,
                                  subspace, lisa_layers)
    return ModelFacts(
        model=model,
        counts=counts,
        linears=linears,
        lora_targets=targets,
        adapted=adapted,
        trainable=trainable,
        largest_module_params=largest_layer_params(model),
        block_params=layer_params(model),
        largest_linear_weight=max((x.weight_params for x in linears), default=0),
    )
