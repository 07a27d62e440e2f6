"""Run a plan for real, a few steps, and record what it took: :func:`run_one` (one process) and
:func:`run_all` (a list of runs, with progress, appending each record as it finishes, and the report).

One run: build (phase ``after_load``), then ``warmup + steps`` optimizer steps, plus one extra profiled step
when a timeline is wanted. Step 0 records the ``first_*`` phases; every later step merges into the
steady-state ``forward`` / ``backward`` / ``optimizer_step`` phases. Timed steps are those after warm-up,
excluding the profiled one (the profiler slows it). An out-of-memory error at any point is a result:
status ``oom``, with the phases reached so far. Plans with more than one GPU go through
:mod:`validation.launch` (torchrun / deepspeed), which calls :func:`run_one` in every rank.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from validation import faults
from validation.build import build, inventory, not_runnable_reason, uses_deepspeed
from validation.data import batches
from validation.measurement import Measurement, PhaseMemory, append_measurement
from validation.probe import Probe, StepProfiler, device_used_bytes, memory_history, write_profile_outputs
from validation.records import RunState, utc_now, make_record, new_run_id
from validation.spec import RunSpec

OOM_MESSAGE_CHARS = 2000
"""How much of an out-of-memory message's first line a record keeps: torch's CUDA message is one line of about 450
characters, and its figures (validation.measurement.cuda_oom_figures) come last."""

StepCallback = Callable[[int, int], None]


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _ensure_single_process_env() -> None:
    """DeepSpeed needs a process group even on one device: a world of one on localhost."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _train(spec: RunSpec, device: str, out_dir: Path, run_dir: Path, st: RunState, probe: Probe,
           on_step: StepCallback | None, ds_config: dict[str, Any] | None) -> None:
    s = spec.setup
    ga = s.grad_accum
    label = spec.label
    probe.begin()
    faults.maybe_oom("load", label)
    ds_source = None
    if uses_deepspeed(s):
        _ensure_single_process_env()
        if ds_config is None:
            from validation.launch import deepspeed_config

            ds_config, ds_source = deepspeed_config(spec)
    st.built = built = build(spec, device, ds_config)
    st.implementation = dict(built.implementation)
    if ds_source:
        st.implementation["deepspeed_config"] = ds_source
    data = batches(spec)
    it = iter(data)
    pm = probe.boundary("after_load")
    inv = inventory(built)
    st.inventory = dict(inv)
    if device == "cpu":  # no allocator statistics: what is live after loading is the tensor inventory
        probe.phases["after_load"] = PhaseMemory(**{**pm.model_dump(), "tensor_bytes": sum(inv.values()),
                                                   "source": "inventory"})
    st.reached = "after_load"
    st.tokens_per_step = s.micro_batch * s.seq_len * ga
    prof_step = spec.profiled_step
    total = spec.total_steps
    for step in range(total):
        first = step == 0
        names = ("first_forward", "first_backward", "first_optimizer_step") if first else (
            "forward", "backward", "optimizer_step")
        timeline = step == prof_step
        profile_cpu_first = device == "cpu" and first and spec.warmup >= 1 and not timeline
        use_profiler = timeline or profile_cpu_first
        if step == 1:
            faults.maybe_oom("steady", label)
        sp = StepProfiler(device) if use_profiler else None
        snap_path = run_dir / "allocator_snapshot.pickle"
        hist = memory_history(timeline and spec.snapshot and device == "cuda", snap_path)
        real = 0
        t = time.perf_counter()
        with hist as written, (sp if sp is not None else contextlib.nullcontext()):
            for micro in range(ga):
                batch = _to_device(next(it), device)
                real += data.real_tokens(batch)
                if first and micro == 0:
                    faults.maybe_oom("forward", label)
                loss = built.loss(batch, device)
                if micro == 0:
                    probe.boundary(names[0], merge=not first)
                    if sp:
                        sp.mark(names[0])
                    if first:
                        st.reached = names[0]
                if first and micro == 0:
                    faults.maybe_oom("backward", label)
                built.backward(loss, ga)
                del loss, batch
                if micro < ga - 1:
                    built.after_micro_batch()
            probe.boundary(names[1], merge=not first)
            if sp:
                sp.mark(names[1])
            if first:
                st.reached = names[1]
            if step == min(1, total - 1) and not st.inventory.get("gradients"):
                st.inventory["gradients"] = inventory(built)["gradients"]
            if first:
                faults.maybe_oom("optimizer", label)
            if built.engine is not None:
                built.after_micro_batch()
            else:
                built.step()
            probe.boundary(names[2], merge=not first)
            if sp:
                sp.mark(names[2])
            if first:
                st.reached = names[2]
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        st.real_tokens.append(real)
        if step >= spec.warmup and not use_profiler:
            st.step_times.append(dt)
        if sp is not None and sp.error:
            st.notes.append(f"step {step}: {sp.error}; no timeline for it")
        if sp is not None and sp.result is not None:
            for name, (cur, peak) in sp.result.phase_figures().items():
                if device == "cpu":
                    probe.set_profiled(name, cur, peak, merge=not first)
            if timeline:
                snap = str(snap_path.relative_to(out_dir)) if written else None
                st.profiled = write_profile_outputs(sp, run_dir, out_dir, step, device, snap)
        if first:
            inv2 = inventory(built)
            st.inventory["optimizer_states"] = inv2["optimizer_states"]
            st.inventory["master_weights"] = inv2["master_weights"]
        if on_step:
            on_step(step + 1, total)
        if not first:
            st.reached = "steady_state"
    if total == 1:
        st.reached = "first_optimizer_step"
    if device == "cuda":
        st.device_used = device_used_bytes()


def run_one(spec: RunSpec, out_dir: str | Path, on_step: StepCallback | None = None, rank: int = 0,
            launcher: str = "in-process", ds_config: dict[str, Any] | None = None,
            run_id: str | None = None) -> Measurement:
    """Run ``spec`` in this process and return its :class:`Measurement` (never raises for OOM or an
    unrunnable setup; ``KeyboardInterrupt`` propagates, the unfinished run is not recorded)."""
    out = Path(out_dir)
    run_id = run_id or new_run_id(spec)
    run_dir = out / "runs" / run_id / (f"rank{rank}" if launcher != "in-process" else "")
    run_dir.mkdir(parents=True, exist_ok=True)
    device = spec.device
    started = utc_now()
    st = RunState()
    probe = Probe(device)
    status, error = "ok", None
    reason = not_runnable_reason(spec)
    if reason:
        status, error = "not_runnable", reason
    else:
        try:
            _train(spec, device, out, run_dir, st, probe, on_step, ds_config)
        except torch.OutOfMemoryError as e:
            status, error = "oom", str(e).strip().splitlines()[0][:OOM_MESSAGE_CHARS]
            e.__traceback__ = None
            if device == "cuda" and torch.cuda.is_available():
                try:  # the peak up to the failed allocation, while the tensors of the failed phase still exist
                    probe.boundary("at_oom")
                except RuntimeError:
                    pass
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a run that fails for another reason is recorded, the matrix goes on
            status, error = "error", f"{type(e).__name__}: {str(e).strip()[:500]}"
            st.notes.append("traceback: " + "".join(traceback.format_exception(e, limit=-6))[-3000:])
            e.__traceback__ = None
        finally:
            st.built = None
            gc.collect()
            if device == "cuda" and torch.cuda.is_available():
                torch.cuda.synchronize()
    m = make_record(spec, run_id, started, status, error, st, probe, rank, launcher)
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return m


def run_all(specs: list[RunSpec], out_dir: str | Path, quiet: bool = False, console: Any = None,
            launch: Callable[..., list[Measurement]] | None = None, report: bool = True,
            time_budget_s: float | None = None, skipped: list[str] | None = None) -> list[Measurement]:
    """Run every spec in order with a progress bar, append each record to ``measurements.jsonl`` as it
    finishes, and (re)write ``report.md`` with its figures. A ``KeyboardInterrupt`` stops after writing the
    report of what finished; finished records are never lost. With ``time_budget_s`` no run starts after
    that many seconds; the labels not started are appended to ``skipped``."""
    t_start = time.monotonic()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    done: list[Measurement] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=quiet, transient=False)
    try:
        with progress:
            runs_task = progress.add_task("runs", total=len(specs))
            steps_task = progress.add_task("steps", total=1)
            for i, spec in enumerate(specs):
                faults.maybe_interrupt(i)
                if time_budget_s is not None and time.monotonic() - t_start > time_budget_s:
                    if skipped is not None:
                        skipped.extend(s.label for s in specs[i:])
                    break
                progress.update(steps_task, description=f"steps: {spec.label}", completed=0,
                                total=spec.total_steps)

                def on_step(k: int, n: int) -> None:
                    progress.update(steps_task, completed=k, total=n)

                if spec.world_size > 1:
                    from validation.launch import run_distributed

                    records = (launch or run_distributed)(spec, out, quiet=quiet)
                else:
                    records = [run_one(spec, out, on_step=on_step)]
                for r in records:
                    append_measurement(out, r)
                    done.append(r)
                progress.update(runs_task, advance=1)
                if not quiet:
                    r = records[0]
                    console.print(f"  {spec.label}: {r.status}" + (f" ({r.error})" if r.error else ""))
    finally:
        if report:
            from validation.report import write_report

            write_report(out)
    return done
