"""Fit the speed model's physical parameters to the evidence corpus, and say how well it predicts what it has
not seen (docs/speed.md, "Fitting and its error").

* :func:`fit_speed` fits the free parameters of :class:`~planner.engine.speed.params.SpeedParams` to the
  corpus's throughput records by minimising the source-weighted mean of ``|log(predicted / measured)|`` (each
  source weighs the same, however many rows it has; a small pull towards the priors keeps the values
  physical), with Powell's method in a log / logit space that respects each parameter's bounds.
* :func:`leave_one_source_out` refits without each source in turn and predicts that source: the error
  reported everywhere. The in-sample error is reported only beside it.

Records the fit should not lean on (an assumption marked in :mod:`validation.corpus`) are predicted and
reported but carry no weight. Parameters a training set has no data for (a framework or an architecture
it does not contain) stay at their priors in that fit.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from planner.engine.evaluate import evaluate, paged_overflow_bytes
from planner.engine.facts import model_facts
from planner.engine.speed.step import estimate_speed
from planner.engine.speed.params import PRIORS, SpeedParams
from validation.corpus import SpeedCase, gpu_family

PRIOR_WEIGHT = 0.02
"""Weight of the pull towards the priors, per parameter, on the squared log ratio (the data term is a mean
absolute log error of order 0.1-0.3): enough to pin a parameter the data do not constrain, too little to
override one they do."""


@dataclass(frozen=True)
class Free:
    """One free parameter: a field of SpeedParams (``dict_key`` for per-framework / per-architecture maps),
    its bounds, and whether it is a fraction (fitted in logit space) or a positive scale (log space)."""

    name: str
    lo: float
    hi: float
    dict_key: str | None = None
    fraction: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}[{self.dict_key}]" if self.dict_key else self.name

    def get(self, p: SpeedParams) -> float:
        v = getattr(p, self.name)
        return v.get(self.dict_key, 0.0) if self.dict_key else v

    def set(self, p: SpeedParams, value: float) -> SpeedParams:
        if self.dict_key:
            return p.model_copy(update={self.name: {**getattr(p, self.name), self.dict_key: value}})
        return p.model_copy(update={self.name: value})

    def to_x(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)
        u = (math.log(v) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        u = min(max(u, 1e-6), 1 - 1e-6)
        return math.log(u / (1 - u))

    def from_x(self, x: float) -> float:
        u = 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))
        return math.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo)))


FREE: tuple[Free, ...] = (
    Free("gemm_half_rows", 8.0, 16384.0),
    Free("memory_passes", 1.0, 40.0),
    Free("fused_memory_factor", 0.1, 1.0, fraction=True),
    Free("step_overhead_s", 1e-3, 3.0, "hf"),
    Free("step_overhead_s", 1e-3, 3.0, "torchtune"),
    Free("step_overhead_s", 1e-3, 3.0, "other"),
    Free("fsdp1_unit_s", 1e-4, 2e-2),
    Free("zero3_block_host_s", 1e-4, 3e-2),
    Free("link_efficiency", 0.05, 1.0, fraction=True),
    Free("pcie_link_efficiency", 0.02, 1.0, fraction=True),
    Free("host_optimizer_bytes_per_s", 1e9, 400e9, "deepspeed"),
    Free("host_optimizer_bytes_per_s", 1e9, 400e9, "fsdp"),
    Free("matmul_efficiency", 0.3, 0.869, "ampere"),  # at most A100's maximum achievable matmul (params.py)
    Free("matmul_efficiency", 0.3, 0.803, "hopper"),  # at most H100's
    Free("matmul_efficiency", 0.3, 0.98, "ada"),  # no published ceiling
    # at most MI300X's (params.py); two sources since issue 10. Floor 0.2, below the others' 0.3: each source alone
    # gives 0.30 (torchao's) and 0.34 (SemiAnalysis'), so a 0.3 floor would decide the first fold's value
    Free("matmul_efficiency", 0.2, 0.514, "cdna3"),
    # CDNA3's FP8 GEMMs relative to NVIDIA's recipe ratios (eq. S28b): from half to 1.2x of them
    Free("fp8_arch_ratio", 0.3, 1.2, "cdna3"),
)
"""What the corpus fit may move. The large-GEMM ceilings start at their sourced 'maximum achievable
matmul' values and may only fall below what a tuned benchmark reaches where training runs show it (Blackwell,
whose only runs are Megatron's and a power-limited card's, keeps its own; CDNA3 is freed with two sources, torchao's
torchtitan rows and SemiAnalysis' FSDP1 harness, so each is predicted from the other); the attention-kernel efficiencies, HBM and PCIe efficiencies and the
collective latency stay at their sourced values; a framework's or architecture's parameter is freed only when the training set has runs of it. The
per-block host overhead is not fitted: no run in the corpus is launch-bound at the priors (the fit could not
move it), so it stays at its kernel-count prior. FSDP1's per-unit host time (eq. S26b) is freed when the training set
has multi-GPU FSDP1 runs, whose short rows are host-bound; DeepSpeed ZeRO-3's hook time per block (S26c) when it has
ZeRO-3 runs; the CDNA3 FP8 factor (S28b) when it has MI300X FP8 runs."""


def _relevant(free: Free, cases: Sequence[SpeedCase]) -> bool:
    if free.name in ("layer_overhead_s", "step_overhead_s"):
        return any(c.framework == free.dict_key for c in cases)
    if free.name == "matmul_efficiency":
        return any(c.cluster.gpu.arch == free.dict_key for c in cases)
    if free.name == "fsdp1_unit_s":
        return any(c.setup.fsdp is not None and c.setup.fsdp_version == 1 and c.cluster.world_size > 1 for c in cases)
    if free.name == "zero3_block_host_s":
        return any(c.setup.zero == 3 for c in cases)
    if free.name == "fp8_arch_ratio":
        return any(c.cluster.gpu.arch == free.dict_key and c.setup.fp8 != "none" for c in cases)
    if free.name == "fused_memory_factor":
        return any(c.setup.compile or c.setup.fused_kernels for c in cases)
    if free.name == "host_optimizer_bytes_per_s":
        return any(c.setup.offload != "none" and (c.setup.fsdp is not None) == (free.dict_key == "fsdp")
                   for c in cases)
    if free.name == "link_efficiency":
        return any(c.cluster.world_size > 1 and (c.cluster.gpu.interconnect != "pcie" or c.cluster.nodes > 1)
                   for c in cases)
    if free.name == "pcie_link_efficiency":
        return any(c.cluster.world_size > 1 and c.cluster.gpu.interconnect == "pcie" and c.cluster.nodes == 1
                   for c in cases)
    return True


@functools.lru_cache(maxsize=4096)
def _paged(case: SpeedCase) -> int:
    """The paged-optimizer overflow of ``case`` (from the memory estimate, which no speed parameter moves)."""
    return paged_overflow_bytes(evaluate(case.model, case.cluster, case.setup).memory)


def predict(case: SpeedCase, params: SpeedParams) -> float:
    """Predicted real tokens/s of the whole job for ``case`` under ``params``: the speed half of
    :func:`planner.engine.evaluate.evaluate` (the memory half does not depend on ``params``, so it is computed
    once per case)."""
    return estimate_speed(model_facts(case.model, case.setup), case.cluster, case.setup, None, params,
                          paged_bytes=_paged(case), explain=False).tokens_per_s


def _objective(cases: Sequence[SpeedCase], weights: Sequence[float], frees: Sequence[Free],
               base: SpeedParams) -> Callable[[Sequence[float]], float]:
    def f(x: Sequence[float]) -> float:
        p = base
        for fr, xi in zip(frees, x):
            p = fr.set(p, fr.from_x(xi))
        err = sum(w * abs(math.log(predict(c, p) / c.tokens_per_s)) for c, w in zip(cases, weights))
        prior = sum((math.log(fr.get(p) / fr.get(PRIORS))) ** 2 for fr in frees if fr.get(PRIORS) > 0)
        return err / sum(weights) + PRIOR_WEIGHT * prior
    return f


def _weights(cases: Sequence[SpeedCase]) -> list[float]:
    """Each source weighs the same in total, however many rows it has (a 49-row table weighs no more than a
    7-row one); records the fit should not lean on weigh nothing."""
    n: dict[str, int] = defaultdict(int)
    for c in cases:
        if c.fit:
            n[c.source] += 1
    return [1.0 / n[c.source] if c.fit else 0.0 for c in cases]


def fit_speed(cases: Sequence[SpeedCase], base: SpeedParams = PRIORS, max_evals: int = 3000) -> SpeedParams:
    """Fit the relevant free parameters to ``cases``; the others keep ``base``'s values."""
    from scipy.optimize import minimize  # noqa: PLC0415  (validation's own dependency)

    weights = _weights(cases)
    use = [c for c, w in zip(cases, weights) if w > 0]
    frees = [fr for fr in FREE if _relevant(fr, use)]
    if not use or not frees:
        return base
    f = _objective(cases, weights, frees, base)
    x0 = [fr.to_x(fr.get(base)) for fr in frees]
    res = minimize(f, x0, method="Powell", options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-5})
    p = base
    for fr, xi in zip(frees, res.x):
        p = fr.set(p, round(fr.from_x(xi), 6 if fr.from_x(xi) < 1 else 3))
    return p.model_copy(update={"fitted": tuple(fr.label for fr in frees)})


@dataclass
class Prediction:
    case: SpeedCase
    in_sample: float
    held_out: float
    """predicted by a fit that did not see this case's source"""

    @property
    def error(self) -> float:
        """Signed relative error of the held-out prediction: (predicted - measured) / measured."""
        return self.held_out / self.case.tokens_per_s - 1

    @property
    def error_in_sample(self) -> float:
        return self.in_sample / self.case.tokens_per_s - 1


@dataclass
class SpeedFit:
    params: SpeedParams
    predictions: list[Prediction]
    per_source_params: dict[str, SpeedParams] = field(default_factory=dict)

    def summary(self) -> dict:
        """The figures docs/accuracy.md leads with, by the same rule (``Record.doubts``): a record whose anomaly
        puts its throughput in doubt is predicted but not counted."""
        counted = [p for p in self.predictions if not p.case.record.record.doubts("speed")]
        errs = [abs(p.error) for p in counted]
        ins = [abs(p.error_in_sample) for p in counted]
        fam: dict[str, list[float]] = defaultdict(list)
        for p in counted:
            fam[gpu_family(p.case)].append(p.error)
        return {
            "records": len(counted),
            "anomalies": len(self.predictions) - len(counted),
            "sources": len({p.case.source for p in counted}),
            "loso_median_abs_error": statistics.median(errs) if errs else None,
            "loso_max_abs_error": max(errs) if errs else None,
            "in_sample_median_abs_error": statistics.median(ins) if ins else None,
            "family_median_error": {k: statistics.median(v) for k, v in sorted(fam.items())},
            "family_records": {k: len(v) for k, v in sorted(fam.items())},
        }


def leave_one_source_out(cases: Sequence[SpeedCase], progress: Callable[[str], None] | None = None,
                         max_evals: int = 3000) -> SpeedFit:
    """The fit on every case, and each source predicted by a fit without it."""
    full = fit_speed(cases, max_evals=max_evals)
    held: dict[str, SpeedParams] = {}
    for src in sorted({c.source for c in cases}):
        rest = [c for c in cases if c.source != src]
        held[src] = fit_speed(rest, max_evals=max_evals)
        if progress:
            progress(src)
    preds = [Prediction(c, predict(c, full), predict(c, held[c.source])) for c in cases]
    summary_src = (f"corpus fit {_dt.date.today().isoformat()}: {len(cases)} throughput records from "
                   f"{len({c.source for c in cases})} sources (validation/corpus_fit.py)")
    return SpeedFit(full.model_copy(update={"source": summary_src}), preds, held)


def fit_document(fit: SpeedFit, cases: Sequence[SpeedCase] = ()) -> dict:
    """The shipped fit (``profiles/calibration/speed.json``): the parameters, what they were fitted from and
    the held-out error that goes with them (from :func:`leave_one_source_out`'s predictions, or the caller's)."""
    n_records = len(cases) or len(fit.predictions)
    sources = sorted({c.source for c in cases} or {p.case.source for p in fit.predictions})
    # the label every estimate prints ("speed parameters: ..."): the fit, never the priors it started from
    params = fit.params.model_copy(update={"source": f"corpus fit {_dt.date.today().isoformat()}: {n_records} "
                                                     f"throughput records from {len(sources)} sources "
                                                     "(profiles/calibration/speed.json)"})
    return {
        "schema_version": 1,
        "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": "Powell on source-weighted mean |log(predicted / measured)|, pulled towards the priors "
                  f"(weight {PRIOR_WEIGHT}); validation/corpus_fit.py",
        "records": n_records,
        "sources": sources,
        "params": params.model_dump(mode="json"),
    }
