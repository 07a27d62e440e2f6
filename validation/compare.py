"""Estimate versus measurement: which numbers are compared with which, computed once for the report and
for calibration.

The estimate comes from :func:`planner.engine.evaluate.evaluate`
(uncalibrated, for the plan's cluster). Three comparisons:

* **Peaks**: the estimate's allocated peak (total less framework overhead and allocator margin,
  :func:`planner.engine.memory.allocated_bytes`) against ``max_memory_allocated`` (CPU: the profiler's peak live
  tensor bytes); the estimate less overhead against ``max_memory_reserved``; the whole estimate against the
  driver's used memory (CUDA).
* **Phases**: the estimate's ``after_load`` / ``forward_peak`` / ``backward_peak`` / ``optimizer_peak`` (less
  overhead and margin) against the measured steady-state phase peaks.
* **Categories** (:data:`GROUPS`): the engine's categories and torch.profiler's memory categories do not
  map one to one, so both are summed into groups that do: weights, gradients, optimizer states (with the
  fp32 master copy), activations (with logits and loss, which the profiler counts as activations),
  temporaries (with communication buffers and what the profiler could not categorise), and the CUDA-only
  framework overhead (driver-used minus reserved) and allocator margin (reserved minus allocated).
  Model-state groups also have an exact measured value from the tensor inventory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from validation.measurement import ESTIMATE_PHASE, Measurement

GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "weights": (("weights_trainable", "weights_frozen"), ("PARAMETER",)),
    "gradients": (("gradients",), ("GRADIENT",)),
    "optimizer_states": (("optimizer_states", "master_weights"), ("OPTIMIZER_STATE",)),
    "activations": (("activations", "logits_loss"), ("ACTIVATION", "AUTOGRAD_DETAIL", "INPUT")),
    "temporaries": (("temporaries", "comm_buffers"), ("TEMPORARY", "UNKNOWN")),
    "framework_overhead": (("framework_overhead",), ()),
    "allocator_margin": (("allocator_margin",), ()),
}
"""group -> (engine categories summed, profiler categories summed)."""

INVENTORY_GROUPS = {"weights": ("weights_trainable", "weights_frozen", "buffers"), "gradients": ("gradients",),
                    "optimizer_states": ("optimizer_states", "master_weights")}


def estimates(model: Any, cluster: Any, setup: Any) -> tuple[dict | None, dict | None, str | None]:
    """(MemoryEstimate JSON, SpeedEstimate JSON, why missing) for the plan, uncalibrated."""
    from planner.engine.evaluate import evaluate

    try:
        plan = evaluate(model, cluster, setup)
    except ValueError as e:
        return None, None, f"no estimate: {e}"
    return plan.memory.to_json(), plan.speed.to_json(), None


def est_tensors(est: dict) -> int:
    """The estimate's peak tensor bytes (what a CPU trace or the profiler's tensor timeline measures): no cuBLAS
    workspace, no allocator rounding. Estimates written before per-phase tensors: the total less overhead and margin."""
    g = est["per_gpu"]
    tensors = g.get("phase_tensor_bytes") or {}
    if tensors:
        return int(max(tensors.values()))
    return g["peak_bytes"] - g["categories"]["framework_overhead"] - g["categories"]["allocator_margin"]


def est_allocated(est: dict) -> int:
    """The estimate's peak as max_memory_allocated would show it (eq. R1-R2: tensors plus cuBLAS workspaces);
    estimates written before the field existed: the total less overhead and margin."""
    g = est["per_gpu"]
    if g.get("allocated_peak_bytes"):
        return int(g["allocated_peak_bytes"])
    return g["peak_bytes"] - g["categories"]["framework_overhead"] - g["categories"]["allocator_margin"]


def est_reserved(est: dict) -> int:
    """The estimate's peak as max_memory_reserved would show it (eq. R3); estimates written before the field
    existed: the total less the framework overhead."""
    g = est["per_gpu"]
    if g.get("reserved_peak_bytes"):
        return int(g["reserved_peak_bytes"])
    return g["peak_bytes"] - g["categories"]["framework_overhead"]


def est_phase_allocated(est: dict, phase: str) -> int:
    """An estimate phase's allocated bytes: its tensor bytes plus what allocated adds to the peak phase's tensors
    (the cuBLAS workspaces, constant). Older estimates without per-phase tensors: the peak phase's ratio applied."""
    g = est["per_gpu"]
    c = g["categories"]
    tensors = g.get("phase_tensor_bytes") or {}
    if phase in tensors and g.get("allocated_peak_bytes"):
        peak_tensors = g["peak_bytes"] - c["framework_overhead"] - c["allocator_margin"]
        return int(tensors[phase] + max(0, g["allocated_peak_bytes"] - max(tensors.values(), default=peak_tensors)))
    total = g["phases"][phase]
    overhead = c["framework_overhead"]
    peak_alloc = g["peak_bytes"] - overhead - c["allocator_margin"]
    factor = (g["peak_bytes"] - overhead) / peak_alloc if peak_alloc > 0 else 1.0
    return int(round((total - overhead) / factor))


@dataclass(frozen=True)
class Row:
    """One compared quantity: estimate, measurement, and the relative error (estimate / measured - 1)."""

    name: str
    estimated: int | float | None
    measured: int | float | None
    source: str = ""

    @property
    def rel_error(self) -> float | None:
        if self.estimated is None or self.measured in (None, 0):
            return None
        return self.estimated / self.measured - 1  # type: ignore[operator]


def peak_rows(m: Measurement) -> list[Row]:
    est = m.estimate
    rows = []
    e_alloc = est_allocated(est) if est else None
    if m.device == "cuda":
        rows.append(Row("peak allocated", e_alloc, m.peak_allocated_bytes, "max_memory_allocated"))
        rows.append(Row("peak reserved", est_reserved(est) if est else None, m.peak_reserved_bytes, "max_memory_reserved"))
        rows.append(Row("device used", est["per_gpu"]["peak_bytes"] if est else None, m.device_used_bytes,
                        "driver (NVML / mem_get_info)"))
    else:
        # a CPU run has no cuBLAS workspace: its live tensors are the estimate's tensor bytes
        rows.append(Row("peak tensors", est_tensors(est) if est else None, m.peak_tensor_bytes,
                        "torch.profiler live tensor bytes"))
    return rows


def _est_phase(est: dict, phase: str, device: str) -> int:
    """The estimate's phase figure to hold against a measured one: on CUDA what the allocator reports (cuBLAS
    workspaces included), on a CPU run the tensor bytes alone."""
    tensors = est["per_gpu"].get("phase_tensor_bytes") or {}
    if device != "cuda" and phase in tensors:
        return int(tensors[phase])
    return est_phase_allocated(est, phase)


def phase_rows(m: Measurement) -> list[Row]:
    """The estimate's phases (steady state) against the measured ones. The estimate's ``after_load`` is the
    start of a steady-state step (optimizer states exist), i.e. what is live at the end of an optimizer step."""
    est = m.estimate
    rows = []
    for measured, est_phase in ESTIMATE_PHASE.items():
        if measured == "after_load":
            pm = m.phases.get("optimizer_step") or m.phases.get("first_optimizer_step")
            value = pm.tensor_bytes if pm else None
            name = "step start (vs after_load)"
        else:
            pm = m.phases.get(measured)
            value = pm.peak_tensor_bytes if pm else None
            name = f"{measured} peak (vs {est_phase})"
        rows.append(Row(name, _est_phase(est, est_phase, m.device) if est else None, value, pm.source if pm else ""))
    return rows


def measured_groups(m: Measurement) -> dict[str, tuple[int | None, str]]:
    """group -> (measured bytes at the peak, where it came from)."""
    out: dict[str, tuple[int | None, str]] = {}
    cats = m.profiled.categories_at_peak if m.profiled else None
    for g, (_, prof_cats) in GROUPS.items():
        if prof_cats and cats is not None:
            out[g] = (sum(int(cats.get(c, 0)) for c in prof_cats), f"profiler, step {m.profiled.step} peak")  # type: ignore[union-attr]
        elif g in INVENTORY_GROUPS and m.inventory:
            out[g] = (sum(m.inventory.get(k, 0) for k in INVENTORY_GROUPS[g]), "tensor inventory")
        else:
            out[g] = (None, "")
    ss = m.phases.get("steady_state")
    if m.device == "cuda" and m.device_used_bytes is not None and ss is not None and ss.reserved_bytes is not None:
        out["framework_overhead"] = (m.device_used_bytes - ss.reserved_bytes, "driver used - reserved")
    if m.peak_reserved_bytes is not None and m.peak_allocated_bytes is not None:
        out["allocator_margin"] = (m.peak_reserved_bytes - m.peak_allocated_bytes, "peak reserved - peak allocated")
    return out


def category_rows(m: Measurement) -> list[Row]:
    est = m.estimate
    meas = measured_groups(m)
    rows = []
    for g, (est_cats, _) in GROUPS.items():
        e = sum(est["per_gpu"]["categories"][c] for c in est_cats) if est else None
        v, src = meas[g]
        rows.append(Row(g, e, v, src))
    return rows


INVENTORY_MOMENTS = {
    "weights_trainable": "after load",
    "weights_frozen": "after load",
    "gradients": "after backward, before the optimizer step",
    "optimizer_states": "after the first optimizer step",
    "master_weights": "after the first optimizer step",
}
"""When the runner takes each model-state inventory (validation/runner.py)."""


def engine_model_states(m: Measurement) -> Any:
    """The engine's model states (eq. M5) for the run's model, cluster and setup: the bytes a rank holds
    between phases, independent of which phase is the peak. None when they cannot be recomputed."""
    from planner.engine.dtypes import recipe_bytes
    from planner.engine.facts import model_facts
    from planner.engine.memory import model_states
    from planner.engine.setup import Setup
    from profiles.cluster import make_cluster
    from profiles.registry import get_gpu
    from profiles.schema import ModelProfile

    try:
        model = ModelProfile.model_validate(m.model_profile)
        setup = Setup(**m.setup)
        c = m.cluster
        cluster = make_cluster(get_gpu(str(c["gpu"])), int(c["gpus_per_node"]), int(c["nodes"]))
        return model_states(model_facts(model, setup), cluster, setup, recipe_bytes(setup))
    except (ValueError, KeyError, TypeError):
        return None


def inventory_rows(m: Measurement) -> list[Row]:
    """Model states: the exact tensor inventory against the engine's figure *for the same moment*.

    The inventory is taken between phases (:data:`INVENTORY_MOMENTS`); the estimate's categories are those at
    its peak phase, where the gradients may not exist yet (a forward peak) or are already freed. So each row
    compares with the engine's model states (eq. M5), which hold between phases. Where the inventory cannot
    see what the engine counts, the row says "not comparable" instead of an error: DeepSpeed keeps gradients
    in its own flat buffers (``p.grad`` stays empty); optimizer-in-backward frees each gradient as it steps.
    Buffers (RoPE tables and the like) are listed on their own: the engine does not count them."""
    ms = engine_model_states(m) if m.estimate else None
    setup = m.setup
    deepspeed = setup.get("zero", 0) > 0 or setup.get("recipe") == "deepspeed-bf16"
    rows = []
    for cat, when in INVENTORY_MOMENTS.items():
        v = m.inventory.get(cat) if m.inventory else None
        e = getattr(ms, cat) if ms is not None else None
        source = f"tensor inventory, {when}"
        if cat == "gradients" and deepspeed:
            e, source = None, "not comparable: DeepSpeed holds gradients in its own buffers, not p.grad"
        elif cat == "gradients" and setup.get("optimizer_in_backward"):
            e, source = None, "not comparable: optimizer-in-backward frees each gradient as it steps"
        rows.append(Row(cat, e, v, source))
    if m.inventory and "buffers" in m.inventory:
        rows.append(Row("buffers", None, m.inventory["buffers"], "not estimated: the engine leaves buffers out"))
    return rows


def speed_row(m: Measurement) -> Row:
    """Measured tokens/s (processed, padding included, as the estimate counts them at packing) against the
    estimate per GPU. A CPU run is not compared with a GPU plan's speed."""
    if m.device == "cpu":
        return Row("tokens/s per GPU", None, m.tokens_per_s, "CPU run: not comparable with the GPU estimate")
    e = m.speed_estimate["tokens_per_s_per_gpu"] if m.speed_estimate else None
    return Row("tokens/s per GPU", e, m.tokens_per_s, f"median of {len(m.step_times_s)} timed steps")
