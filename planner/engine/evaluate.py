"""The one path from a setup to a verdict: :func:`evaluate` checks the setup, derives the model facts once,
estimates memory and speed with the calibration that applies, and judges the fit.

The search, ``plan estimate``, ``plan capacity``, ``plan configs`` and validation all call it; none of them
estimates memory or speed, picks a calibration or applies the headroom rule by itself.
"""

from __future__ import annotations

from functools import partial

from planner.engine.calibration import CalibrationBook
from planner.engine.dataset import WORST_CASE_PADDING, DatasetShape, memory_setup, speed_setup
from planner.engine.facts import model_facts
from planner.engine.memory import estimate_memory
from planner.engine.results import MemoryEstimate, Plan, unchecked
from planner.engine.rules import validate_setup
from planner.engine.setup import Setup, SetupError
from planner.engine.speed.step import estimate_speed
from profiles.cluster import Cluster
from profiles.schema import ModelProfile

DEFAULT_HEADROOM = 0.10
"""Fraction of GPU memory kept free by default (issue 5: "default 10 % of GPU memory"), for what the engine
cannot see: fragmentation beyond the allocator margin, kernel workspaces, data-loader pinned buffers."""
MAX_HEADROOM = 0.9
"""Headroom must stay below this: at 90 % nothing but the smallest setups could fit."""


def check_headroom(headroom: float) -> float:
    """The headroom rule, in one place: a fraction in (0, :data:`MAX_HEADROOM`)."""
    if not 0 < headroom < MAX_HEADROOM:
        raise SetupError(
            f"headroom {headroom!r} is outside (0, {MAX_HEADROOM}); e.g. --headroom 0.1 keeps 10 % free"
        )
    return headroom


def check_efficiency(efficiency: float) -> float:
    """An achieved fraction of the dense peak: in (0, 1]."""
    if not 0 < efficiency <= 1:
        raise SetupError(f"efficiency {efficiency!r} is outside (0, 1]; e.g. --efficiency 0.45")
    return efficiency


def usable_bytes(memory_bytes: int, headroom: float) -> int:
    """Per-GPU memory a plan may use: ``memory x (1 - headroom)``."""
    return int(memory_bytes * (1 - check_headroom(headroom)))


def paged_overflow_bytes(memory: MemoryEstimate, limit_bytes: int | None = None) -> int:
    """Optimizer state of a paged optimizer that does not fit the GPU beside everything else (docs/memory.md
    M4b): the unified-memory states (``host_categories["paged_optimizer"]``, per node, divided over its GPUs)
    less what the peak leaves free below ``limit_bytes`` (default: the usable memory at the default headroom; the
    headroom is kept for what the engine cannot see, so resident pages may not count on it), at least 0 (0 for
    other optimizers). These bytes are what the driver pages in for the step and out again for the next forward
    (docs/speed.md S16b)."""
    managed = memory.host_categories.get("paged_optimizer", 0) // max(1, memory.gpus_per_node)
    if not managed:
        return 0
    limit = limit_bytes if limit_bytes is not None else int(memory.capacity_bytes * (1 - DEFAULT_HEADROOM))
    return max(0, min(managed, managed - (limit - memory.peak_bytes)))


def evaluate(
    model: ModelProfile,
    cluster: Cluster,
    setup: Setup,
    calibration: CalibrationBook | None = None,
    *,
    headroom: float = DEFAULT_HEADROOM,
    efficiency: float | None = None,
    data: DatasetShape | None = None,
    explain: bool = True,
) -> Plan:
    """Memory, speed and fit of ``setup`` on ``cluster``: an unranked :class:`Plan`.

    ``calibration``: every calibration known (the app layer reads ``profiles/calibration/``); the entry for
    this GPU kind and recipe, if any, replaces the engine's defaults in both memory (eq. F1-F2) and speed
    (eq. S8). ``efficiency``: an explicit override of the speed model's large-GEMM ceiling. ``data``: a measured
    dataset (``--dataset``): memory at its longest padded batch and speed at its padding or packing
    (:mod:`planner.engine.dataset`); the plan keeps ``setup`` as given. ``explain=False`` leaves out the
    assumption lines (text only; the search re-evaluates the plans it shows with them).
    Raises :class:`SetupError` (one line) for an impossible setup.
    """
    validate_setup(setup, model, cluster)
    if efficiency is not None:
        check_efficiency(efficiency)
    facts = model_facts(model, setup)
    book = calibration or CalibrationBook()
    cal = book.lookup(cluster.gpu.name, setup.recipe)
    mem_setup, mem_note = memory_setup(setup, data) if data is not None else (setup, None)
    speed_s, speed_note = speed_setup(setup, data) if data is not None else (setup, None)
    memory = estimate_memory(facts, cluster, mem_setup, cal, explain=explain)
    speed = estimate_speed(facts, cluster, speed_s, cal, book.speed, efficiency=efficiency,
                           paged_bytes=paged_overflow_bytes(memory, usable_bytes(cluster.gpu.memory_bytes, headroom)),
                           explain=explain)
    if mem_note:
        kept = tuple(a for a in memory.assumptions if not a.startswith(WORST_CASE_PADDING))
        memory = memory.model_copy(update={"setup": setup, "assumptions": (*kept, mem_note)})
    if speed_note:
        speed = speed.model_copy(update={"assumptions": (*speed.assumptions, speed_note)})
    make = Plan if explain else partial(unchecked, Plan)  # explain=False: the search's candidates, re-made checked when shown
    return make(
        setup=setup,
        memory=memory,
        speed=speed,
        usable_bytes=usable_bytes(cluster.gpu.memory_bytes, headroom),
        host_capacity_bytes=cluster.host_ram_bytes_per_node,
    )
