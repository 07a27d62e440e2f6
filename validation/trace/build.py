"""Build the transformers model of a profile on fake tensors and shape it as the setup trains it.

Nothing is downloaded and no weight is materialised: ``AutoModelForCausalLM.from_config`` runs inside
``FakeTensorMode`` on device ``cpu``, directly in the dtype the recipe stores weights in (``nn.Module.to`` cannot
swap fake parameters in torch 2.13, see ``shared/reference/tracing.md``; :func:`fake_safe_module_apply` makes
the ``.to()`` calls peft makes safe). Then: freeze / LoRA / DoRA through peft with the setup's targets, rank and
dropout; trainable parameters re-created in their recipe dtype (fp32 under AMP); activation checkpointing
through transformers' ``activation_checkpointing_enable`` (``use_reentrant=False``, every k-th layer), or, for
``selective``, a checkpoint around the attention kernel only; ``op``, torchtitan's per-op policy
(:mod:`validation.sac`) around every block. The model-shaping helpers shared with the GPU
validation (the block list, the attention kernel name, trainable-parameter recasting) come from
:mod:`validation.build`, so a trace and a real run shape the model the same way.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from planner.engine.facts import model_facts
from planner.engine.setup import Setup
from profiles.schema import ModelProfile
from validation.build import _recast_trainable, attn_implementation, decoder_layers
from validation.trace.plan import TracePlan

__all__ = ["build_model", "decoder_layers", "fake_safe_module_apply", "real_run_semantics"]


def hf_config_dict(model: ModelProfile) -> dict[str, Any]:
    """The Hugging Face config of ``model`` (one place: :func:`profiles.hf_config.to_hf_config`)."""
    from profiles.hf_config import to_hf_config

    return to_hf_config(model)


@contextlib.contextmanager
def fake_safe_module_apply() -> Iterator[None]:
    """Make ``nn.Module._apply`` (``.to()``, ``.float()``) work on fake parameters.

    torch 2.13 always swaps fake parameters in place (``torch.utils.swap_tensors``), which fails on the weak
    references fake tensors carry. While building, a conversion that returns the same tensor is skipped and
    one that returns a new tensor replaces the parameter (the pre-``swap_tensors`` behaviour); the model is
    not referenced by an optimizer yet, so nothing holds the old parameters.
    """
    original = nn.Module._apply

    def _apply(self: nn.Module, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        if recurse:
            for child in self.children():
                child._apply(fn)
        for key, param in list(self._parameters.items()):
            if param is None:
                continue
            with torch.no_grad():
                applied = fn(param)
            if applied is not param:
                self._parameters[key] = nn.Parameter(applied, requires_grad=param.requires_grad)
        for key, buf in list(self._buffers.items()):
            if buf is not None:
                self._buffers[key] = fn(buf)
        return self

    nn.Module._apply = _apply  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module._apply = original  # type: ignore[method-assign]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build_model(model: ModelProfile, setup: Setup, plan: TracePlan, num_layers: int | None = None,
                layers: list[int] | None = None) -> nn.Module:
    """The causal LM as the setup trains it, on fake tensors (call inside ``FakeTensorMode``). ``layers`` (a
    derived profile only) builds just those blocks, in order (validation.derive traces one of each kind)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = False
    if model.derived is not None:  # a derived profile rebuilds from the very config it was derived from
        from validation.derive.config import profile_config

        hf_cfg = profile_config(model, num_layers, layers)
        remote = model.derived.trust_remote_code
    else:
        cfg = hf_config_dict(model)
        cfg = {**cfg, "use_cache": False}
        if num_layers is not None:
            cfg["num_hidden_layers"] = num_layers
            for key in ("layer_types", "mlp_only_layers"):
                if isinstance(cfg.get(key), list):
                    cfg[key] = cfg[key][:num_layers]
        model_type = cfg.pop("model_type")
        hf_cfg = AutoConfig.for_model(model_type, **cfg)
    # the GPU validation's own choice of kernel (selective checkpointing wraps the attention kernel)
    attn = attn_implementation(setup.model_copy(update={"attention": plan.attention}))
    weight_dtype = getattr(torch, plan.weight_dtype)
    with fake_safe_module_apply(), default_dtype(weight_dtype):
        net = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attn, dtype=weight_dtype,
                                               **({"trust_remote_code": True} if remote else {}))
        net.train()
        if setup.checkpointing == "full":
            net.activation_checkpointing_enable(
                every_n_layers=setup.checkpoint_every, offload=setup.activation_offload)
        elif setup.checkpointing == "op":  # torchtitan's per-op SAC around every block (validation.sac)
            from validation.sac import op_sac_checkpoint_kwargs

            net.activation_checkpointing_enable(op_sac_checkpoint_kwargs())
        trainable = getattr(torch, plan.trainable_dtype)
        if plan.method == "freeze":
            layers = decoder_layers(net)
            keep = {id(p) for layer in layers[-setup.freeze_layers:] for p in layer.parameters()}
            for p in net.parameters():
                p.requires_grad_(id(p) in keep)
            _recast_trainable(net, trainable)
        elif plan.method == "lora":
            net = _apply_lora(net, model, setup, plan)
            _recast_trainable(net, trainable)
    return net


def _apply_lora(net: nn.Module, model: ModelProfile, setup: Setup, plan: TracePlan) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # the names LLaMA-Factory / a peft user passes (all-linear = the nn.Linear modules); peft 0.21 itself moves
    # expert projection names onto the fused 3-D expert parameters for the qwen2_moe family
    # (planner.engine.lora_targets)
    targets = model_facts(model, setup).lora.passed_to_peft()
    modules_to_save = []
    if setup.lora_train_embeddings:
        modules_to_save.append("embed_tokens")
    if setup.lora_train_lm_head:
        modules_to_save.append("lm_head")
    config = LoraConfig(
        r=setup.lora_rank,
        lora_alpha=setup.lora_alpha,
        lora_dropout=setup.lora_dropout,
        target_modules=targets,
        use_dora=setup.dora,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    # peft keeps adapters in fp32 under AMP (autocast_adapter_dtype=True); DeepSpeed / pure bf16 cast them
    amp = plan.autocast_dtype is not None
    return get_peft_model(net, config, autocast_adapter_dtype=amp)


@contextlib.contextmanager
def real_run_semantics() -> Iterator[None]:
    """Make transformers behave under fake tensors as it does on real ones.

    * ``find_packed_sequence_indices`` treats fake tensors as "being traced" and reports packed sequences,
      which builds a full s x s mask and leaves SDPA's grouped-query path (tracing.md). The trace feeds plain
      ``arange`` position ids, for which a real run returns None.
    * MoE experts: torch's ``grouped_mm`` meta kernel accepts bf16 only (as the CUDA kernel does), so experts
      stored in fp32 (AMP full fine-tuning) go through transformers' own ``grouped_mm_fallback`` op, which
      returns the same tensors.
    """
    import transformers.integrations.moe as moe
    import transformers.masking_utils as mu

    original_packed = mu.find_packed_sequence_indices
    original_can = moe._can_use_grouped_mm

    def can_use_grouped_mm(input, weight, offs):  # type: ignore[no-untyped-def]
        return weight.dtype == torch.bfloat16 and original_can(input, weight, offs)

    mu.find_packed_sequence_indices = lambda position_ids: None
    moe._can_use_grouped_mm = can_use_grouped_mm
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = original_packed
        moe._can_use_grouped_mm = original_can
