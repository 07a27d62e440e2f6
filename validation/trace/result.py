"""The trace's result: a :class:`~planner.engine.results.MemoryEstimate` built from traced bytes, plus the detail.

``TraceResult.to_json()`` has exactly the keys of ``MemoryEstimate.to_json()`` (``plan estimate --json``), so
the two diff line by line; ``to_json(detail=True)`` adds a ``trace`` key with every phase of every step, the
substitutions, the timings and the library versions. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.engine.results import CATEGORIES, PHASES, MemoryEstimate
from planner.engine.setup import Setup
from profiles.cluster import Cluster
from profiles.schema import ModelProfile
from validation.trace.plan import PHASE_OF, TracePlan
from validation.trace.tracker import PhaseRecord


def _full(cats: dict[str, int]) -> dict[str, int]:
    return {k: int(cats.get(k, 0)) for k in CATEGORIES}


@dataclass
class TraceResult:
    """Traced bytes per GPU rank as a MemoryEstimate, with the per-step phase records behind it."""

    estimate: MemoryEstimate
    records: list[PhaseRecord]
    plan: TracePlan
    seconds: float
    ops: int
    versions: dict[str, str] = field(default_factory=dict)
    layers_traced: int = 0

    @property
    def peak_bytes(self) -> int:
        return self.estimate.peak_bytes

    def phase_records(self, step: int | None = None) -> list[PhaseRecord]:
        last = max(r.step for r in self.records)
        want = last if step is None else step
        return [r for r in self.records if r.step == want]

    def to_json(self, detail: bool = False) -> dict:
        out = self.estimate.to_json()
        if detail:
            out["trace"] = {
                "seconds": round(self.seconds, 3),
                "dispatched_ops": self.ops,
                "versions": self.versions,
                "layers_traced": self.layers_traced,
                "substitutions": [vars(s) for s in self.plan.substitutions],
                "steps": [
                    {"step": r.step, "phase": PHASE_OF[r.phase], "peak_bytes": r.peak_bytes,
                     "end_bytes": r.end_bytes, "categories": _full(r.categories),
                     "host_peak_bytes": r.host_peak_bytes}
                    for r in self.records
                ],
            }
        return out


def build_estimate(model: ModelProfile, cluster: Cluster, setup: Setup, plan: TracePlan,
                   records: list[PhaseRecord], versions: dict[str, str]) -> MemoryEstimate:
    """Per phase: the largest peak over all traced steps (and micro-batches); the categories of the overall
    peak; host RAM per node = one rank's offloaded bytes x GPUs per node."""
    best: dict[str, PhaseRecord] = {}
    for r in records:
        ph = PHASE_OF[r.phase]
        if ph not in best or r.peak_bytes > best[ph].peak_bytes:
            best[ph] = r
    phases = {ph: (best[ph].peak_bytes if ph in best else 0) for ph in PHASES}
    peak_phase = max(PHASES, key=lambda ph: phases[ph])
    cats = _full(best[peak_phase].categories)
    host_rec = max(records, key=lambda r: r.host_peak_bytes)
    per_node = cluster.gpus_per_node
    host_cats = {k: v * per_node for k, v in host_rec.host_categories.items() if v}
    versions_line = ", ".join(f"{k} {v}" for k, v in versions.items())
    assumptions = [s.line() for s in plan.substitutions] + list(plan.assumptions)
    return MemoryEstimate(
        model=model.name,
        gpu=cluster.gpu.name,
        gpus_per_node=cluster.gpus_per_node,
        nodes=cluster.nodes,
        setup=setup,
        categories=cats,
        phases=phases,
        peak_phase=peak_phase,
        capacity_bytes=cluster.gpu.memory_bytes,
        host_bytes=sum(host_cats.values()),
        host_categories=host_cats,
        assumptions=tuple(assumptions),
        calibration=f"trace (FakeTensorMode; {versions_line})",
    )
