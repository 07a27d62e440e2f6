"""Memory measurement on the device: per-phase figures, the profiler's memory timeline, the allocator snapshot.

* CUDA: ``torch.cuda.memory_stats`` at every phase boundary (allocated / reserved / active, current and the
  peak since the previous boundary, whose counters are then reset), the driver's view of the process
  (NVML, else ``mem_get_info``), and for one chosen step the allocator history
  (``torch.cuda.memory._record_memory_history``; the pickle opens in https://pytorch.org/memory_viz).
* CPU: torch has no allocator statistics for the CPU, so the live tensor bytes come from torch.profiler's
  memory profile (``profile_memory=True``): the profiled steps give exact per-phase current and peak tensor
  bytes; the other phases record the process RSS only. Peak RSS per phase comes from ``VmHWM`` after
  resetting it through ``/proc/self/clear_refs`` (Linux), else the process-lifetime ``ru_maxrss``.
* Both: torch.profiler's memory timeline of one step (``export_memory_timeline`` to HTML) and the bytes per
  profiler category (parameter, optimizer state, gradient, activation, temporary, ...) at its peak.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from validation.measurement import PhaseMemory, ProfiledStep

TIMELINE_POINTS = 1500
"""Points kept in the downsampled timeline JSON (the peak is always kept)."""


def rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported platform
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if os.uname().sysname == "Darwin" else 1024)


def cuda_stats() -> dict[str, int]:
    st = torch.cuda.memory_stats()
    return {
        "allocated_bytes": int(st.get("allocated_bytes.all.current", 0)),
        "peak_allocated_bytes": int(st.get("allocated_bytes.all.peak", 0)),
        "reserved_bytes": int(st.get("reserved_bytes.all.current", 0)),
        "peak_reserved_bytes": int(st.get("reserved_bytes.all.peak", 0)),
        "active_bytes": int(st.get("active_bytes.all.current", 0)),
        "peak_active_bytes": int(st.get("active_bytes.all.peak", 0)),
    }


def device_used_bytes() -> tuple[int | None, int | None, str]:
    """(bytes this process holds on the GPU as the driver sees it, total device bytes, how it was read)."""
    free, total = torch.cuda.mem_get_info()
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            if p.pid == os.getpid() and p.usedGpuMemory:
                return int(p.usedGpuMemory), int(total), "NVML per-process used memory"
    except Exception:  # no NVML or no per-process accounting (containers)
        pass
    return int(total - free), int(total), "total - free (mem_get_info; includes other processes)"


@dataclass
class Probe:
    """Records :class:`PhaseMemory` at phase boundaries; steady-state phases merge over steps."""

    device: str
    t0: float = field(default_factory=time.perf_counter)
    phases: dict[str, PhaseMemory] = field(default_factory=dict)
    rss_resettable: bool = False
    samples: list[tuple[float, str, int | None, int | None]] = field(default_factory=list)
    """(t_s, phase, current tensor bytes, peak tensor bytes in the phase) at every boundary (CUDA)"""

    def begin(self) -> None:
        """Start of the run: reset the peak counters."""
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.rss_resettable = reset_peak_rss()

    def boundary(self, phase: str, merge: bool = False) -> PhaseMemory:
        """End of ``phase``: read current and peak figures, reset the peaks for the next phase."""
        data: dict[str, Any] = {"t_s": time.perf_counter() - self.t0, "rss_bytes": rss_bytes(),
                                "peak_rss_bytes": peak_rss_bytes()}
        if self.device == "cuda":
            torch.cuda.synchronize()
            data.update(cuda_stats())
            data["tensor_bytes"] = data["allocated_bytes"]
            data["peak_tensor_bytes"] = data["peak_allocated_bytes"]
            data["source"] = "cuda"
            torch.cuda.reset_peak_memory_stats()
        else:
            data["source"] = "rss"
        if self.rss_resettable:
            reset_peak_rss()
        pm = PhaseMemory(**data)
        self.samples.append((pm.t_s or 0.0, phase, pm.tensor_bytes, pm.peak_tensor_bytes))
        if merge and phase in self.phases:
            pm = merge_phase(self.phases[phase], pm)
        self.phases[phase] = pm
        return pm

    def set_profiled(self, phase: str, current: int, peak: int, merge: bool = False) -> None:
        """Fill a phase's tensor figures from the profiler (CPU runs)."""
        old = self.phases.get(phase)
        base = old.model_dump() if old else {}
        if merge and old is not None and old.source == "profiler" and old.peak_tensor_bytes is not None:
            peak = max(peak, old.peak_tensor_bytes)
        base.update(tensor_bytes=current, peak_tensor_bytes=peak, source="profiler")
        self.phases[phase] = PhaseMemory(**base)


def merge_phase(old: PhaseMemory, new: PhaseMemory) -> PhaseMemory:
    """Current figures from ``new``, peaks the larger of the two."""
    d = new.model_dump()
    for k in d:
        if k.startswith("peak_"):
            a, b = getattr(old, k), getattr(new, k)
            d[k] = max(x for x in (a, b) if x is not None) if (a is not None or b is not None) else None
    return PhaseMemory(**d)


CATEGORY_NAMES = ("PARAMETER", "OPTIMIZER_STATE", "INPUT", "TEMPORARY", "ACTIVATION", "GRADIENT",
                  "AUTOGRAD_DETAIL", "UNKNOWN")


@dataclass
class StepProfile:
    """One profiled step: the coalesced timeline and the phase marks taken during it (wall-clock us)."""

    times_us: list[int]
    sizes: list[list[int]]
    """per point: bytes per category in CATEGORY_NAMES order"""
    marks: list[tuple[str, int]]
    start_us: int
    prof: Any = None

    def totals(self) -> list[int]:
        return [sum(s) for s in self.sizes]

    def peak(self) -> tuple[int, dict[str, int]]:
        tot = self.totals()
        if not tot:
            return 0, {}
        i = max(range(len(tot)), key=tot.__getitem__)
        return tot[i], dict(zip(CATEGORY_NAMES, self.sizes[i]))

    def phase_figures(self) -> dict[str, tuple[int, int]]:
        """phase -> (live bytes at its end, peak during it), from the marks. The first phase starts at
        ``start_us`` with what existed before the step."""
        out: dict[str, tuple[int, int]] = {}
        tot = self.totals()
        if not tot:
            return out
        prev = self.start_us
        for name, t in self.marks:
            inside = [tot[i] for i, x in enumerate(self.times_us) if prev <= x <= t]
            before = [tot[i] for i, x in enumerate(self.times_us) if x <= t]
            current = before[-1] if before else tot[0]
            at_start = [tot[i] for i, x in enumerate(self.times_us) if x <= prev]
            peak = max(inside + at_start[-1:] + [current])
            out[name] = (current, peak)
            prev = t
        return out


def now_us() -> int:
    """Wall-clock microseconds, the time base of the profiler's memory timeline (``time.time_ns`` / 1000)."""
    return time.time_ns() // 1000


KINETO_NOISE_PREFIX = b"USDT:"
"""libkineto (torch 2.13) writes ``USDT:<time> <pid> SyncActivityProfilerHandler.cpp:52] profiler_start`` and
``... profiler_stop`` to stderr each time a profiler starts and stops (``USDT_EMIT_START_TRACE`` /
``USDT_EMIT_STOP_TRACE`` in libkineto's ``Logger.h``). Its severity, ``LoggerOutputType::USDT = 5``, ranks
above ``ERROR = 4``, so the only switch, ``KINETO_LOG_LEVEL=6``, would silence kineto's real errors with them;
:func:`without_kineto_markers` drops exactly these lines instead."""


@contextlib.contextmanager
def without_kineto_markers() -> Iterator[None]:
    """Around a profiler's start or stop: whatever reaches file descriptor 2 meanwhile is held in a temporary
    file, then written back to the real stderr without the lines that start with :data:`KINETO_NOISE_PREFIX`.
    Everything else (kineto's warnings and errors, Python's own output) gets through, in order. A no-op when
    descriptor 2 is closed."""
    fd = 2  # where libkineto's C++ std::cerr writes, whatever Python's sys.stderr is
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = [ln for ln in held.read().splitlines(keepends=True) if not ln.startswith(KINETO_NOISE_PREFIX)]
            if kept:
                os.write(fd, b"".join(kept))


class StepProfiler:
    """``with StepProfiler(device) as sp: ...; sp.mark('forward') ...`` profiles memory for that block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.marks: list[tuple[str, int]] = []
        self.result: StepProfile | None = None
        self._prof: Any = None
        self._start = 0
        self.error: str | None = None

    def mark(self, name: str) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.marks.append((name, now_us()))

    def __enter__(self) -> "StepProfiler":
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self._prof = profile(activities=acts, profile_memory=True, record_shapes=True, with_stack=True)
        with without_kineto_markers():
            self._prof.__enter__()
        self._start = now_us()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        with without_kineto_markers():
            self._prof.__exit__(*exc)
        if exc[0] is not None:
            return
        from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

        dev = f"cuda:{torch.cuda.current_device()}" if self.device == "cuda" else "cpu"
        try:
            tl = MemoryProfileTimeline(self._prof._memory_profile())
            times, sizes = tl._coalesce_timeline(dev)
        except Exception as e:  # the profiler's data-flow analysis rejects some graphs (DeepSpeed's in-place casts)
            self.error = f"torch.profiler memory analysis failed ({type(e).__name__}: {str(e)[:160]})"
            return
        # _coalesce_timeline: sizes[i][0] is unused; index k + 1 is category with _CATEGORY_TO_INDEX == k
        order = sorted(_CATEGORY_TO_INDEX.items(), key=lambda kv: kv[1])
        names = [("UNKNOWN" if c is None else c.name) for c, _ in order]
        remap = [CATEGORY_NAMES.index(n) for n in names]
        rows = []
        for s in sizes:
            row = [0] * len(CATEGORY_NAMES)
            for k, idx in enumerate(remap):
                row[idx] += int(s[k + 1])
            rows.append(row)
        self.result = StepProfile(list(times), rows, list(self.marks), self._start, self._prof)
        self._timeline = tl


def write_profile_outputs(sp: StepProfiler, out_dir: Path, rel_to: Path, step: int, device: str,
                          snapshot: str | None = None) -> ProfiledStep:
    """Write the timeline HTML and a downsampled JSON; return the :class:`ProfiledStep` record."""
    assert sp.result is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    res = sp.result
    peak, cats = res.peak()
    html = out_dir / "memory_timeline.html"
    dev = f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu"
    html_rel: str | None = None
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sp._timeline.export_memory_timeline_html(str(html), dev)
        html_rel = str(html.relative_to(rel_to))
    except Exception:  # HTML export needs matplotlib; the JSON below still carries the data
        html_rel = None
    js = out_dir / "memory_timeline.json"
    tot = res.totals()
    n = len(tot)
    keep = set(range(0, n, max(1, n // TIMELINE_POINTS)))
    if tot:
        keep.add(max(range(n), key=tot.__getitem__))
        keep.add(n - 1)
    t0 = res.times_us[0] if res.times_us else 0
    points = [[(res.times_us[i] - t0) / 1e6, res.sizes[i]] for i in sorted(keep)]
    marks = [[name, (t - t0) / 1e6] for name, t in res.marks]
    js.write_text(json.dumps({"categories": list(CATEGORY_NAMES), "points": points, "marks": marks}), encoding="utf-8")
    return ProfiledStep(step=step, peak_bytes=int(peak), categories_at_peak=cats, timeline_html=html_rel,
                        timeline_json=str(js.relative_to(rel_to)), snapshot=snapshot)


@contextlib.contextmanager
def memory_history(enabled: bool, path: Path) -> Iterator[list[str]]:
    """Record the CUDA allocator's history for the block and dump the snapshot pickle to ``path``."""
    written: list[str] = []
    if not enabled or not torch.cuda.is_available():
        yield written
        return
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        yield written
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(path))
        written.append(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
