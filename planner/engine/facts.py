"""Facts about a model under one setup's choice of what trains, derived once and passed down (design.md,
"ModelFacts"; docs/memory.md eq. M2).

Before this module the engine asked :mod:`profiles.params` for the linear layers, and resolved the LoRA
targets, in every formula that needed them (six visits each per estimate). :func:`model_facts` computes the
inventory once per model and *training choice* (method, LoRA targets / rank / DoRA, freeze depth, trained
embeddings / head) and memoises it; every formula receives the same :class:`ModelFacts`.

The rules that live here, each in one place: which parameters train and how many (:class:`TrainableCounts`,
eq. M2) and LoRA adapter sizes (:func:`lora_adapter_params`). Which layers carry an adapter is
:mod:`planner.engine.lora_targets`' decision (peft's own resolution), made once here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from planner.engine.lora_targets import (
    LoraTargets,
    adapter_applies,
    expert_adapter_params,
    lora_targets,
    resolve_lora_targets,
)
from planner.engine.setup import Setup
from profiles.params import (
    LinearLayer,
    ParamCounts,
    largest_layer_params,
    layer_params,
    linear_layers,
    param_counts,
)
from profiles.schema import ModelProfile

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
    """trainable parameters that sit in ``nn.Linear`` layers (what autocast casts per use; routed experts only where
    they run through autocast-enabled ops, ``MoE.experts_autocast``)"""


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
    lora: LoraTargets
    """what peft adapts (``nn.Linear`` module names and the routed experts' fused projections); empty unless
    the method trains adapters"""
    adapted: tuple[LinearLayer, ...]
    """the ``nn.Linear`` layer kinds that carry an adapter"""
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

    lora_targets: tuple[str, ...] = ()
    """the ``nn.Linear`` module names that carry an adapter, in the order the user gave them (what the
    emitters list)"""

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
    # routed experts run through grouped_mm, which autocast does not cast (transformers integrations/moe.py,
    # eq. A7a): only the nn.Linear weights (and the LM head) get a per-use low-precision copy; experts with their
    # own torch.bmm forward (Llama 4) or nn.Linear experts are cast like any linear (MoE.experts_autocast)
    cast_experts = model.moe is not None and model.moe.experts_autocast
    lin_cast = sum(x.params for x in linears if cast_experts or not x.name.startswith("experts."))
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
        lin = lin_cast + head  # a tied embedding is still cast per use as the LM head's weight
        return TrainableCounts(counts.total, counts.total, 0, 0, 0, lin)
    if method == "freeze":
        train = layer_params(model) * freeze_layers
        lin_train = lin_cast * freeze_layers // model.num_layers
        return TrainableCounts(train, train, 0, counts.total - train,
                               lin_total - lin_total * freeze_layers // model.num_layers, lin_train)
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
def _model_facts(model: ModelProfile, method: str, targets: str, rank: int, dora: bool, freeze_layers: int,
                 train_embeddings: bool, train_lm_head: bool, subspace: str = "none", lisa_layers: int = 0) -> ModelFacts:
    linears = linear_layers(model)
    counts = param_counts(model)
    lora = lora_targets(model, targets) if method in ("lora", "qlora") else LoraTargets(frozenset())
    adapted = tuple(x for x in linears if adapter_applies(x, lora.modules))
    adapter = lora_adapter_params(adapted, rank, dora) + expert_adapter_params(model, lora, rank)
    trainable = _trainable_counts(model, counts, linears, method, freeze_layers, adapter, train_embeddings, train_lm_head,
                                  subspace, lisa_layers)
    return ModelFacts(
        model=model,
        counts=counts,
        linears=linears,
        lora=lora,
        lora_targets=tuple(n for n in resolve_lora_targets(model, targets) if n in lora.modules) if targets else (),
        adapted=adapted,
        trainable=trainable,
        largest_module_params=largest_layer_params(model),
        block_params=layer_params(model),
        largest_linear_weight=max((x.weight_params for x in linears), default=0),
    )
