"""Exact tensor memory of a training step without a GPU: the real model code under ``FakeTensorMode``.

``trace_memory(model, cluster, setup)`` builds the transformers model of a profile on fake tensors (no
weights, no download), applies the setup (precision recipe, LoRA / DoRA / freeze, activation checkpointing,
attention kernel, loss, optimizer, ZeRO / FSDP share), runs two training steps and counts every live tensor
storage. The result is a :class:`~planner.engine.results.MemoryEstimate` of traced bytes (``plan trace``), the
yardstick the analytic engine is tested against (``benchmarks/accuracy_vs_trace.py``). See docs/trace.md.

This package imports torch only when a trace runs; :class:`TraceUnavailable` says how to install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from validation.trace.errors import NotTraceable, TraceUnavailable
from validation.trace.plan import ADAM_IMPLS, AdamImpl, Substitution, TracePlan, plan_trace

if TYPE_CHECKING:
    from planner.engine.setup import Setup
    from profiles.cluster import Cluster
    from profiles.schema import ModelProfile
    from validation.trace.result import TraceResult

INSTALL_HINT = "pip install 'tuneplan[validate]'"

__all__ = ["ADAM_IMPLS", "INSTALL_HINT", "AdamImpl", "NotTraceable", "Substitution", "TracePlan",
           "TraceUnavailable", "plan_trace", "require_torch", "trace_memory"]


def require_torch(peft: bool = False, accelerate: bool = False) -> None:
    """Raise :class:`TraceUnavailable` with the install command when the tracing libraries are missing
    (accelerate for FSDP: the trace shards the model with accelerate's own ``fsdp2_prepare_model``)."""
    import importlib.util

    wanted = ("torch", "transformers") + (("peft",) if peft else ()) + (("accelerate",) if accelerate else ())
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        raise TraceUnavailable(f"tracing needs {', '.join(missing)}: {INSTALL_HINT}")


def trace_memory(
    model: "ModelProfile",
    cluster: "Cluster",
    setup: "Setup",
    steps: int = 2,
    adam_impl: AdamImpl = "fused",
    num_layers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> "TraceResult":
    """Trace ``steps`` training steps of ``setup`` and return the bytes per GPU rank.

    ``adam_impl`` picks torch's AdamW implementation (the HF Trainer default ``adamw_torch_fused`` is
    ``fused``; ``foreach`` is torch's default on CUDA when no name is given). ``num_layers`` traces a model
    with fewer blocks (for very large MoE models); the result says so. ``progress(label, done, total)`` is
    called as blocks run forward and backward. Raises :class:`~planner.engine.setup.SetupError` for setups the
    engine rejects too, and :class:`TraceUnavailable` without torch.
    """
    from planner.engine.rules import validate_setup

    if steps < 1:
        raise NotTraceable(f"steps must be at least 1, got {steps}")
    if not model.transformers_buildable:
        raise NotTraceable(f"{model.name} cannot be traced: {model.not_buildable_reason}")
    if num_layers is not None and not 1 <= num_layers <= model.num_layers:
        raise NotTraceable(f"num_layers {num_layers} is not within 1..{model.num_layers} for {model.name}")
    validate_setup(setup, model, cluster)
    require_torch(peft=setup.method in ("lora", "qlora"), accelerate=setup.fsdp is not None)
    from validation.trace.runner import run_trace

    return run_trace(model, cluster, setup, steps=steps, adam_impl=adam_impl, num_layers=num_layers,
                     progress=progress)
