"""The measurement record of one validation run: how far it got (:class:`RunState`) and
:func:`make_record`, which turns that state, the probe's phases and the engine's estimate into a
:class:`~validation.measurement.Measurement`. Shared by the in-process runner and the launcher.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import uuid

import torch

from validation.build import Built
from validation.compare import estimates
from validation.environment import device_gpu_profile, device_name, versions
from validation.measurement import Measurement, PhaseMemory
from validation.probe import Probe
from validation.spec import RunSpec


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunState:
    """How far a run got, updated as it goes (so an OOM can say where it happened)."""

    def __init__(self) -> None:
        self.reached = "start"
        self.built: Built | None = None
        self.step_times: list[float] = []
        self.tokens_per_step: int | None = None
        self.real_tokens: list[int] = []
        self.inventory: dict[str, int] = {}
        self.profiled = None
        self.notes: list[str] = []
        self.device_used: tuple[int | None, int | None, str] | None = None
        self.implementation: dict[str, str] = {}


def _steady_state(phases: dict[str, PhaseMemory]) -> PhaseMemory | None:
    parts = [phases[p] for p in ("forward", "backward", "optimizer_step") if p in phases]
    if not parts:
        return None
    last = parts[-1].model_dump()
    for k in list(last):
        if k.startswith("peak_"):
            vals = [getattr(p, k) for p in parts if getattr(p, k) is not None]
            last[k] = max(vals) if vals else None
    return PhaseMemory(**last)


def _max(values: list[int | None]) -> int | None:
    v = [x for x in values if x is not None]
    return max(v) if v else None


def new_run_id(spec: RunSpec) -> str:
    return f"{spec.slug()}-{uuid.uuid4().hex[:6]}"


def record_failure(spec: RunSpec, run_id: str, error: str, launcher: str, rank: int = 0) -> Measurement:
    """A record for a run that produced none itself (a launcher that failed before any rank reported)."""
    return make_record(spec, run_id, utc_now(), "error", error, RunState(), Probe(spec.device), rank, launcher)


def make_record(spec: RunSpec, run_id: str, started: str, status: str, error: str | None, st: RunState,
                probe: Probe, rank: int, launcher: str) -> Measurement:
    mem_est, speed_est, est_err = estimates(spec.model, spec.cluster, spec.setup)
    phases = dict(probe.phases)
    ss = _steady_state(phases)
    if ss is not None:
        phases["steady_state"] = ss
    cuda = spec.device == "cuda" and torch.cuda.is_available()
    used = st.device_used or (None, None, "")
    notes = list(st.notes)
    if used[2]:
        notes.append(f"device used memory read via {used[2]}")
    times = st.step_times
    med = statistics.median(times) if times else None
    dev_name = device_name("cuda" if cuda else "cpu")
    return Measurement(
        run_id=run_id,
        label=spec.label,
        started_at=started,
        finished_at=utc_now(),
        status=status,  # type: ignore[arg-type]
        reached=st.reached,
        error=error,
        model=spec.model.name,
        model_profile=spec.model.model_dump(mode="json"),
        cluster={"gpu": spec.cluster.gpu.name, "gpus_per_node": spec.cluster.gpus_per_node,
                 "nodes": spec.cluster.nodes},
        setup=spec.setup.model_dump(mode="json"),
        device=spec.device,
        device_name=dev_name,
        device_gpu=device_gpu_profile(dev_name) if cuda else None,
        rank=rank,
        world_size=spec.world_size if launcher != "in-process" else 1,
        launcher=launcher,
        steps=spec.steps,
        warmup=spec.warmup,
        data=f"jsonl:{spec.dataset}:{'packed' if spec.setup.packing else 'padded'}" if spec.dataset else "synthetic",
        weights=spec.weights or "random",
        implementation=dict(st.implementation),
        phases=phases,
        peak_tensor_bytes=_max([p.peak_tensor_bytes for p in phases.values()] + [p.tensor_bytes for p in phases.values()]),
        peak_allocated_bytes=_max([p.peak_allocated_bytes for p in phases.values()]),
        peak_reserved_bytes=_max([p.peak_reserved_bytes for p in phases.values()]),
        peak_active_bytes=_max([p.peak_active_bytes for p in phases.values()]),
        device_used_bytes=used[0],
        device_total_bytes=used[1],
        peak_rss_bytes=_max([p.peak_rss_bytes for p in phases.values()]),
        inventory=st.inventory,
        profiled=st.profiled,
        step_times_s=times,
        step_time_s=med,
        tokens_per_step=st.tokens_per_step,
        real_tokens_per_step=int(statistics.median(st.real_tokens)) if st.real_tokens else None,
        tokens_per_s=(st.tokens_per_step / med) if (med and st.tokens_per_step) else None,
        estimate=mem_est,
        speed_estimate=speed_est,
        estimate_error=est_err,
        versions=versions("cuda" if cuda else "cpu"),
        notes=notes + _device_notes(spec, cuda),
    )


def _device_notes(spec: RunSpec, cuda: bool) -> list[str]:
    notes = []
    if not cuda:
        notes.append(
            f"measured on the CPU for a plan on {spec.cluster.gpu.name}: tensor bytes compare, allocator figures "
            "(reserved, active, framework overhead) and speed do not"
        )
    return notes


