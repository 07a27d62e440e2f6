"""What a validation run measured, and the append-only ``measurements.jsonl`` it is kept in.

One :class:`Measurement` per run (per rank, for multi-GPU runs), serialised as one JSON line. Sizes are
integer bytes, times float seconds. Fields a device cannot measure are ``None`` (CUDA allocator figures on
the CPU), never zero.

Writing is crash-safe: :func:`append_measurement` writes the whole file to a temporary file in the same
folder, fsyncs it and ``os.replace``-s it over the old one, so a run killed at any moment leaves either the
old file or the new one, and every finished record survives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.fileio import atomic_write_text

SCHEMA_VERSION = 1
MEASUREMENTS_FILE = "measurements.jsonl"

Status = Literal["ok", "oom", "not_runnable", "error"]
STATUSES: dict[str, str] = {
    "ok": "every step ran",
    "oom": "out of memory; `reached` says how far the run got",
    "not_runnable": "this setup cannot run on this device or with the installed packages (reason in `error`)",
    "error": "the run failed for another reason (message in `error`)",
}

PHASES: dict[str, str] = {
    "after_load": "model built on the device, optimizer created (states not yet allocated)",
    "first_forward": "first forward pass of the first step",
    "first_backward": "first backward pass (all micro-batches of the first step)",
    "first_optimizer_step": "first optimizer step (optimizer states allocated here)",
    "forward": "forward passes of the steady-state steps",
    "backward": "backward passes of the steady-state steps",
    "optimizer_step": "optimizer steps of the steady-state steps",
    "steady_state": "the whole steady state: every step after the first",
    "at_oom": "CUDA only: figures read right after an out-of-memory error (the peak is the failed phase's)",
}
"""Phases recorded per run, in order. ``forward`` / ``backward`` / ``optimizer_step`` compare with the estimate's
``forward_peak`` / ``backward_peak`` / ``optimizer_peak`` (the engine models a steady-state step)."""

ESTIMATE_PHASE = {"after_load": "after_load", "forward": "forward_peak", "backward": "backward_peak",
                  "optimizer_step": "optimizer_peak"}
"""Measured steady-state phase -> the MemoryEstimate phase it is compared with."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PhaseMemory(_Frozen):
    """Memory at the end of one phase and its peak during the phase.

    ``tensor_bytes`` is the one figure every device gives: live tensor bytes (CUDA: ``memory_allocated``;
    CPU: the live bytes torch.profiler's memory profile attributes to tensors). CUDA-only fields are None on
    the CPU; RSS is the process's resident set (host memory, both devices).
    """

    t_s: float | None = Field(None, description="seconds since the run started, at the end of the phase")
    tensor_bytes: int | None = None
    peak_tensor_bytes: int | None = None
    allocated_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    reserved_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    active_bytes: int | None = None
    peak_active_bytes: int | None = None
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    source: str = Field("", description="'cuda' (torch.cuda.memory_stats), 'profiler' or 'rss'")


class ProfiledStep(_Frozen):
    """The profiler's memory timeline of one chosen step (torch.profiler, ``profile_memory=True``)."""

    step: int
    peak_bytes: int = Field(description="largest live tensor bytes during the step")
    categories_at_peak: dict[str, int] = Field(description="profiler category -> bytes live at that moment")
    timeline_html: str | None = Field(None, description="export_memory_timeline HTML, relative to the output folder")
    timeline_json: str | None = Field(None, description="downsampled [t_s, {category: bytes}] points")
    snapshot: str | None = Field(None, description="_record_memory_history pickle (CUDA), for PyTorch memory_viz")


class Measurement(_Frozen):
    """Everything one validation run recorded. Serialised as one line of ``measurements.jsonl``."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    label: str
    started_at: str
    finished_at: str
    status: Status
    reached: str = Field(description="last phase completed ('start' if none)")
    error: str | None = None
    model: str
    model_profile: dict[str, Any] = Field(description="the ModelProfile, so estimates can be recomputed")
    cluster: dict[str, Any] = Field(description="{'gpu', 'gpus_per_node', 'nodes'} of the plan")
    setup: dict[str, Any]
    device: Literal["cuda", "cpu"]
    device_name: str
    device_gpu: str | None = Field(None, description="GPU profile the device resolves to (None: unknown or CPU)")
    rank: int = 0
    world_size: int = 1
    launcher: str = "in-process"
    steps: int
    warmup: int
    data: str = Field(description="'synthetic' or 'jsonl:<file>:packed|padded'")
    weights: str = Field(description="'random' or the checkpoint path")
    implementation: dict[str, str] = Field(default_factory=dict, description="what actually ran (optimizer impl, ...)")
    phases: dict[str, PhaseMemory] = Field(default_factory=dict)
    peak_tensor_bytes: int | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    peak_active_bytes: int | None = None
    device_used_bytes: int | None = Field(None, description="driver view of this process's GPU memory (CUDA)")
    device_total_bytes: int | None = None
    peak_rss_bytes: int | None = None
    inventory: dict[str, int] = Field(
        default_factory=dict, description="exact storage bytes: weights_trainable, weights_frozen, gradients, "
        "optimizer_states, master_weights, buffers"
    )
    profiled: ProfiledStep | None = None
    step_times_s: list[float] = Field(default_factory=list, description="timed steps after warm-up")
    step_time_s: float | None = Field(None, description="median of step_times_s")
    tokens_per_step: int | None = Field(None, description="tokens processed per optimizer step on this rank")
    real_tokens_per_step: int | None = Field(None, description="non-padding tokens per step on this rank")
    tokens_per_s: float | None = None
    estimate: dict[str, Any] | None = Field(None, description="MemoryEstimate.to_json() for the plan (uncalibrated)")
    speed_estimate: dict[str, Any] | None = Field(None, description="SpeedEstimate.to_json() (uncalibrated)")
    estimate_error: str | None = Field(None, description="why there is no estimate, if there is none")
    versions: dict[str, str | None] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), sort_keys=False)


_SIZE = r"([0-9.]+) (bytes|KiB|MiB|GiB|TiB)"
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
OOM_FIELDS = {
    "requested_bytes": r"Tried to allocate " + _SIZE,
    "capacity_bytes": r"total capacity of " + _SIZE,
    "free_bytes": r"of which " + _SIZE + r" is free",
    "allocated_bytes": r"Of the allocated memory " + _SIZE + r" is allocated by PyTorch",
    "reserved_unallocated_bytes": r"and " + _SIZE + r" is reserved by PyTorch but unallocated",
}
"""The figures torch's out-of-memory message states (c10/cuda/CUDACachingAllocator.cpp, ``malloc``: "Tried to
allocate ... GPU n has a total capacity of ... of which ... is free. ... Of the allocated memory ... is allocated by
PyTorch, and ... is reserved by PyTorch but unallocated."), each formatted by ``format_size`` (bytes, KiB, MiB or
GiB with two decimals, so each is exact to 0.005 of its unit). The message is composed after the allocator has freed
its unused cached segments and retried (``release_cached_blocks``), so "reserved but unallocated" is what the retry
could not give back: the quantity of eq. R3c (docs/memory.md)."""


def cuda_oom_figures(message: str | None) -> dict[str, int] | None:
    """The byte figures of a CUDA out-of-memory message (:data:`OOM_FIELDS`), or None when it is not one or states
    none of them. Fields the message lacks (older torch versions word some differently) are left out."""
    import re

    if not message or "out of memory" not in message:
        return None
    out = {}
    for key, pat in OOM_FIELDS.items():
        hit = re.search(pat, message)
        if hit:
            out[key] = int(round(float(hit.group(1)) * _UNITS[hit.group(2)]))
    return out or None


def append_measurement(out_dir: str | Path, m: Measurement) -> Path:
    """Append ``m`` to ``out_dir/measurements.jsonl`` atomically (rewrite-and-replace); returns the path."""
    path = Path(out_dir) / MEASUREMENTS_FILE
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"  # a foreign partial line stays on its own line
    atomic_write_text(path, old + m.to_line() + "\n")
    return path


def measurements_path(arg: str | Path) -> Path:
    """A measurements file from a folder holding one or the file itself."""
    p = Path(arg)
    return p / MEASUREMENTS_FILE if p.is_dir() else p


def read_measurements(arg: str | Path, strict: bool = False) -> list[Measurement]:
    """Every valid record of a ``measurements.jsonl`` (a folder holding one, or the file). Lines that do not
    parse are skipped (``strict=True``: raise ``ValueError`` naming the line)."""
    path = measurements_path(arg)
    out: list[Measurement] = []
    if not path.exists():
        return out
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Measurement.model_validate_json(line))
        except ValueError as e:
            if strict:
                raise ValueError(f"{path}:{i}: not a measurement record ({str(e).splitlines()[0]})") from None
    return out
