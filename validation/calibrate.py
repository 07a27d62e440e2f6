"""Fit :class:`planner.engine.calibration.Calibration` from validation measurements, per GPU kind and recipe.

For every finished CUDA run (status ``ok``) of one GPU kind and precision recipe:

* allocator factor ``f_i = max_memory_reserved / max_memory_allocated``;
* fixed overhead ``o_i = driver-used - reserved`` at the end of the steady state (the driver's view minus what
  PyTorch's caching allocator holds: CUDA context, cuBLAS / cuDNN workspaces, NCCL buffers);
* efficiency ``e_i``: the ``efficiency`` for which :func:`planner.engine.evaluate.evaluate`, on the device's GPU
  profile, gives the measured step time (bisection; step time falls monotonically as efficiency rises).

Each fitted value is the median over the runs (robust to one odd run). Generalisation is checked by leave-one-
out: each run is predicted from a fit on all the others, and the mean and largest relative errors are
reported for reserved bytes, driver-used bytes, tokens/s and, through the whole engine
(:func:`planner.engine.memory.estimate_memory` with the held-out calibration), the total per-GPU peak against the
driver's figure. Runs on the CPU, runs that did not finish, and runs whose device matches no GPU profile are
skipped with the reason.
"""

from __future__ import annotations

import datetime as _dt
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from planner.engine.calibration import Calibration, HoldoutError, calibration_filename
from planner.fileio import atomic_write_text
from validation.measurement import Measurement, measurements_path, read_measurements

EFFICIENCY_BOUNDS = (1e-4, 1.0)


@dataclass(frozen=True)
class Sample:
    """One usable run: what the fit needs from it."""

    source: str
    run: Measurement
    gpu: str
    allocated: int
    reserved: int
    reserved_end: int | None
    device_used: int | None
    step_s: float | None

    @property
    def ref(self) -> str:
        return f"{self.source}#{self.run.run_id}" + (f"/rank{self.run.rank}" if self.run.world_size > 1 else "")


@dataclass
class FitResult:
    gpu: str
    recipe: str
    calibration: Calibration
    path: Path | None = None
    per_run: list[dict] = field(default_factory=list)


def missing_sources(sources: Sequence[str | Path]) -> list[str]:
    """The sources that hold no measurements file at all (not records: nothing to skip)."""
    return [str(src) for src in sources if not measurements_path(src).is_file()]


def collect(sources: Sequence[str | Path], gpu: str | None = None) -> tuple[list[Sample], list[str]]:
    """Usable samples from measurement files or folders, and one line per skipped *record* (a source without
    a measurements file has no records: :func:`missing_sources` names those)."""
    samples: list[Sample] = []
    skipped: list[str] = []
    for src in sources:
        path = measurements_path(src)
        if not path.is_file():
            continue
        for m in read_measurements(path):
            why = None
            if m.status != "ok":
                why = f"status {m.status}"
            elif m.device != "cuda":
                why = "measured on the CPU (no CUDA allocator figures)"
            elif not m.peak_allocated_bytes or not m.peak_reserved_bytes:
                why = "no allocator peaks recorded"
            g = gpu or m.device_gpu
            if why is None and not g:
                why = f"device {m.device_name!r} matches no GPU profile; pass --gpu NAME"
            if why:
                skipped.append(f"{path}#{m.run_id} ({m.label}): {why}")
                continue
            ss = m.phases.get("steady_state")
            samples.append(Sample(str(path), m, str(g), int(m.peak_allocated_bytes or 0), int(m.peak_reserved_bytes or 0),
                                  ss.reserved_bytes if ss else None, m.device_used_bytes, m.step_time_s))
    return samples, skipped


def _loo(values: list[float], predict: Callable[[int, float], float], actual: list[float], quantity: str) -> HoldoutError:
    """Leave-one-out: fit (median) without run i, predict run i, compare."""
    n = len(values)
    if n < 2:
        return HoldoutError(quantity=quantity, n=0)
    errs = []
    for i in range(n):
        rest = values[:i] + values[i + 1:]
        pred = predict(i, statistics.median(rest))
        if actual[i]:
            errs.append(abs(pred / actual[i] - 1))
    if not errs:
        return HoldoutError(quantity=quantity, n=0)
    return HoldoutError(quantity=quantity, n=len(errs), mean_abs_rel=sum(errs) / len(errs), max_abs_rel=max(errs))


def _engine_inputs(s: Sample):  # type: ignore[no-untyped-def]
    from planner.engine.setup import Setup
    from profiles.cluster import make_cluster
    from profiles.registry import get_gpu
    from profiles.schema import ModelProfile

    m = s.run
    per_node = int(m.cluster.get("gpus_per_node", 1)) if m.world_size > 1 else 1
    nodes = int(m.cluster.get("nodes", 1)) if m.world_size > 1 else 1
    return (ModelProfile.model_validate(m.model_profile), make_cluster(get_gpu(s.gpu), per_node, nodes),
            Setup.model_validate(m.setup))


def achieved_efficiency(s: Sample) -> float | None:
    """The speed model's efficiency that reproduces the run's measured step time (None if not solvable)."""
    if not s.step_s:
        return None
    try:
        from planner.engine.evaluate import evaluate

        model, cluster, setup = _engine_inputs(s)

        def step(e: float) -> float:
            return evaluate(model, cluster, setup, efficiency=e).speed.step_s

        lo, hi = EFFICIENCY_BOUNDS
        if step(lo) <= step(hi) * (1 + 1e-6):  # the step does not depend on the GEMM ceiling: the host's
            return None  # launches bind (docs/speed.md S26), so the run says nothing about GEMM efficiency
        if step(hi) >= s.step_s:  # even at 100 % the model is slower than measured
            return hi
        if step(lo) <= s.step_s:
            return lo
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            if step(mid) > s.step_s:
                lo = mid
            else:
                hi = mid
        return (lo * hi) ** 0.5
    except (ImportError, ValueError, KeyError):
        return None


def _predicted_step(s: Sample, e: float) -> float:
    from planner.engine.evaluate import evaluate

    model, cluster, setup = _engine_inputs(s)
    return evaluate(model, cluster, setup, efficiency=e).speed.step_s


def fit_group(samples: list[Sample], gpu: str, recipe: str, now: str | None = None) -> FitResult:
    """Fit one GPU kind and recipe from its samples (at least one)."""
    notes: list[str] = []
    factors = [s.reserved / s.allocated for s in samples]
    alloc_factor = max(1.0, statistics.median(factors))
    holdout: dict[str, HoldoutError] = {}
    holdout["allocator_factor"] = _loo(factors, lambda i, f: max(1.0, f) * samples[i].allocated,
                                       [float(s.reserved) for s in samples], "max_memory_reserved")
    ov_samples = [s for s in samples if s.device_used is not None and s.reserved_end is not None]
    overheads = [float(s.device_used - s.reserved_end) for s in ov_samples]  # type: ignore[operator]
    if overheads:
        fixed = int(max(0.0, statistics.median(overheads)))
        holdout["fixed_overhead"] = _loo(overheads, lambda i, o: ov_samples[i].reserved_end + max(0.0, o),  # type: ignore[operator]
                                         [float(s.device_used) for s in ov_samples], "device used bytes")  # type: ignore[arg-type]
    else:
        fixed = 0
        notes.append("no run recorded the driver's used memory: fixed overhead set to 0")
    eff_pairs = [(s, achieved_efficiency(s)) for s in samples]
    eff_pairs = [(s, e) for s, e in eff_pairs if e is not None]
    mfu = statistics.median([e for _, e in eff_pairs]) if eff_pairs else None
    if eff_pairs:
        # predicted vs measured steps per second (= tokens/s over the same tokens per step)
        holdout["mfu"] = _loo([e for _, e in eff_pairs], lambda i, e: 1.0 / _predicted_step(eff_pairs[i][0], e),
                              [1.0 / s.step_s for s, _ in eff_pairs], "tokens/s")  # type: ignore[operator]
    else:
        notes.append("no speed estimate could be matched to the step times: mfu left unset")
    per_run = [{"run": s.ref, "label": s.run.label, "allocator_factor": f, "fixed_overhead_bytes": None,
                "efficiency": None} for s, f in zip(samples, factors)]
    for s, o in zip(ov_samples, overheads):
        for r in per_run:
            if r["run"] == s.ref:
                r["fixed_overhead_bytes"] = int(o)
    for s, e in eff_pairs:
        for r in per_run:
            if r["run"] == s.ref:
                r["efficiency"] = e
    first = samples[0].run
    base = dict(gpu=gpu, recipe=recipe, fixed_overhead_bytes=fixed, allocator_factor=alloc_factor, mfu=mfu,
                n_runs=len(samples), runs=tuple(s.ref for s in samples),
                devices=tuple(sorted({s.run.device_name for s in samples})),
                versions={k: v for k, v in first.versions.items() if v},
                fitted_at=now or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                notes=tuple(notes))
    peak = _holdout_peak(samples, base)
    if peak is not None:
        holdout["peak_total"] = peak
    if len(samples) < 2:
        notes.append("one run only: no hold-out error; validate more setups before trusting this calibration")
        base["notes"] = tuple(notes)
    cal = Calibration(holdout_error=holdout, **base)
    return FitResult(gpu, recipe, cal, per_run=per_run)


def _holdout_peak(samples: list[Sample], base: dict) -> HoldoutError | None:
    """The engine's calibrated per-GPU total (each run held out of its own calibration) vs the driver's used
    memory: how well a calibrated estimate predicts an unseen run end to end."""
    usable = [s for s in samples if s.device_used]
    if len(usable) < 2:
        return None
    from planner.engine.calibration import CalibrationBook
    from planner.engine.evaluate import evaluate

    errs = []
    for s in usable:
        rest = [x for x in samples if x is not s]
        f = max(1.0, statistics.median([x.reserved / x.allocated for x in rest]))
        ov = [x.device_used - x.reserved_end for x in rest if x.device_used is not None and x.reserved_end is not None]
        cal = Calibration(**{**base, "allocator_factor": f, "fixed_overhead_bytes": int(max(0, statistics.median(ov)))
                             if ov else 0, "n_runs": len(rest), "runs": tuple(x.ref for x in rest) or ("-",)})
        try:
            model, cluster, setup = _engine_inputs(s)
            est = evaluate(model, cluster, setup, CalibrationBook((cal,))).memory
        except (ValueError, KeyError):
            continue
        errs.append(abs(est.peak_bytes / s.device_used - 1))  # type: ignore[operator]
    if not errs:
        return None
    return HoldoutError(quantity="estimated total per GPU vs driver used", n=len(errs),
                        mean_abs_rel=sum(errs) / len(errs), max_abs_rel=max(errs))


def fit(sources: Sequence[str | Path], gpu: str | None = None, recipe: str | None = None
        ) -> tuple[list[FitResult], list[str]]:
    """Fit every (GPU, recipe) group found in ``sources`` (optionally only one GPU / recipe)."""
    samples, skipped = collect(sources, gpu)
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        r = str(s.run.setup.get("recipe"))
        if recipe and r != recipe:
            continue
        groups.setdefault((s.gpu, r), []).append(s)
    results = [fit_group(v, g, r) for (g, r), v in sorted(groups.items())]
    return results, skipped


def write(result: FitResult, out_dir: str | Path) -> Path:
    path = Path(out_dir) / calibration_filename(result.gpu, result.recipe)
    atomic_write_text(path, result.calibration.model_dump_json(indent=2) + "\n")
    result.path = path
    return path
