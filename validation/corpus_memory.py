"""Memory against published real-GPU runs: every memory record of the evidence corpus (``profiles/evidence/``)
held against the engine's figure of the same kind, the one fitted runtime term fitted leave-one-source-out, and
published out-of-memory runs held against the engine's fit verdict.

Which figure a record is compared with (docs/memory.md eq. R1-R7):

========== ======================================================================================
kind       engine figure
========== ======================================================================================
allocated  ``allocated_peak_bytes``: tensors + cuBLAS workspaces (``torch.cuda.max_memory_allocated``)
active     the same (``active_bytes.all.peak`` differs from allocated by the 512-byte rounding only)
reserved   ``reserved_peak_bytes``: allocated + segment rounding + the fragmented share of the step's churn
device     ``peak_bytes``: reserved + CUDA context + NCCL buffers (nvidia-smi)
unknown    reserved: a source that says "peak memory" without the kind reads torch's counters far more
           often than nvidia-smi [assumption]; these rows are reported apart and never fitted
========== ======================================================================================

The fitted term is the fragmentation fraction of eq. R3, one per
:func:`~planner.engine.runtime_memory.fragmentation_class` (static shapes, padded batches of changing shape,
parameters gathered on a side stream): the share of the memory freed and re-allocated within a step that the
caching allocator keeps cached in blocks it cannot reuse. It is fitted on what isolates
it: runs whose source publishes both ``max_memory_allocated`` and nvidia-smi, so that the measured gap
(device - allocated) is held against the engine's (fragmented churn + segment rounding + CUDA context + NCCL),
free of the engine's tensor error. Each such source is predicted by a fit that did not see it (leave one source
out). A class with no such pair that :data:`~planner.engine.runtime_memory.RESERVED_FITTED` names (FSDP2) is fitted
to its runs' reserved and nvidia-smi figures instead, each source again predicted by a fit without it; that fraction
absorbs the engine's tensor errors on those runs too. Other records never enter a fit. Allocated and active figures
involve no fitted term.

The second fitted term is eq. R3c's stranded share of the card (:func:`fit_stranded`), which decides the
out-of-memory verdict near the card: fitted to the published verdicts it changes, on the engine's own tensors,
each source's verdicts predicted by shares fitted without it.

Pure: no torch, no file I/O (benchmarks/memory_vs_corpus.py renders and writes).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from planner.engine.evaluate import evaluate, usable_bytes
from planner.engine.memory import run_fragmentation_class
import planner.engine.runtime_memory as rm
from planner.engine.runtime_memory import (
    FRAGMENTATION_CLASSES,
    FRAGMENTATION_PRIOR,
    RESERVED_FITTED,
    STRANDED_PRIOR,
    cublas_workspace_bytes,
    reserved_bytes,
    retry_floor_bytes,
)
from profiles.evidence import memory_bytes
from validation.corpus import Corpus, MemoryCase

FITTED_KINDS = ("reserved", "device")
"""Record kinds whose engine figure depends on the fragmentation fractions."""
FRACTION_GRID = tuple(i / 100 for i in range(0, 61))
"""Fragmentation fractions searched, 0-60 % in 1 % steps [assumption: a search bound, not a physical limit; the cap
at the card (eq. R3) bounds what stays cached]. A fit at the bound would say the bound is too tight."""


@dataclass(frozen=True)
class MemoryRow:
    """One published memory record against the engine."""

    id: str
    source: str
    kind: str
    measured_bytes: float | None
    """None: an out-of-memory record without a measured figure"""
    measured_device_bytes: float | None
    """nvidia-smi beside an allocated figure (``memory_other``): the records that fit the runtime term"""
    oom: bool
    capacity_bytes: int
    tensors: dict[str, int]
    """tensor bytes at each phase's peak"""
    once_bytes: int
    """weights, master weights and optimizer states: allocated once, never churned"""
    cublas_bytes: int
    overhead_bytes: int
    """outside the allocator: CUDA context + NCCL"""
    frag_class: str
    """which fragmentation fraction applies (runtime_memory.fragmentation_class)"""
    fit: bool
    """False: anomaly flagged in the record; reported, never fitted"""
    label: str
    notes: tuple[str, ...] = ()
    error: str | None = None
    """set when the engine refused the setup"""
    token_churn: dict[str, int] = field(default_factory=dict)
    """each phase's tensor bytes that grow with the tokens (activations, logits): eq. R3b's share of the churn"""
    residual_bytes: int = 0
    """one bf16 residual-stream tensor of a micro-batch on one GPU: eq. R3b's activation size"""
    measured_allocated_bytes: float | None = None
    """the allocated peak a source publishes beside a reserved or nvidia-smi figure (``memory_other``): reported
    against the engine's allocated figure, so that a miss of the primary figure can be told apart from a miss of the
    tensors; never fitted"""

    def _frag(self, phase: str) -> dict[str, int]:
        return dict(token_churn_bytes=self.token_churn.get(phase, 0), residual_bytes=self.residual_bytes)

    @property
    def allocated(self) -> int:
        return max(self.tensors.values()) + self.cublas_bytes

    def reserved(self, fractions: dict[str, float]) -> int:
        """Eq. R3 at each phase, as the engine computes it, with ``fractions`` by fragmentation class."""
        f = fractions[self.frag_class]
        limit = self.capacity_bytes - self.overhead_bytes
        return max(reserved_bytes(t + self.cublas_bytes, t - self.once_bytes, f, limit=limit, **self._frag(ph))
                   for ph, t in self.tensors.items())

    def device(self, fractions: dict[str, float]) -> int:
        return self.reserved(fractions) + self.overhead_bytes

    def figure(self, fractions: dict[str, float]) -> int:
        """The engine's figure of this record's kind."""
        if self.kind in ("allocated", "active"):
            return self.allocated
        if self.kind == "device":
            return self.device(fractions)
        return self.reserved(fractions)

    def rel_error(self, fractions: dict[str, float]) -> float | None:
        """(estimate - measured) / measured; None without a measured figure."""
        if not self.measured_bytes:
            return None
        return self.figure(fractions) / self.measured_bytes - 1

    @property
    def measured_gap_bytes(self) -> float | None:
        """nvidia-smi minus max_memory_allocated, as published (None unless both are)."""
        if self.kind != "allocated" or not self.measured_bytes or not self.measured_device_bytes:
            return None
        return self.measured_device_bytes - self.measured_bytes

    def gap_error(self, fractions: dict[str, float]) -> float | None:
        """(estimated gap - measured gap) / measured device: what the runtime terms alone add to the error of the
        nvidia-smi figure."""
        gap = self.measured_gap_bytes
        if gap is None:
            return None
        est_gap = self.device(fractions) - self.allocated
        return (est_gap - gap) / self.measured_device_bytes

    def device_uncapped(self, fractions: dict[str, float]) -> int:
        """The nvidia-smi figure without eq. R3's cap at the card: as if the fragmented share could not be freed
        and retried (the second verdict rule the report gives beside the engine's)."""
        f = fractions[self.frag_class]
        return max(reserved_bytes(t + self.cublas_bytes, t - self.once_bytes, f, limit=None, **self._frag(ph))
                   for ph, t in self.tensors.items()) + self.overhead_bytes

    def floor(self, fractions: dict[str, float], stranded: dict[str, float]) -> int:
        """Eq. R3c at each phase, as the engine computes it, + the overhead: what the process holds after the
        allocator's retry."""
        f, s = fractions[self.frag_class], stranded[self.frag_class]
        return max(retry_floor_bytes(t + self.cublas_bytes, t - self.once_bytes, f, s, self.capacity_bytes,
                                     **self._frag(ph))
                   for ph, t in self.tensors.items()) + self.overhead_bytes

    def predicted_fits(self, fractions: dict[str, float], stranded: dict[str, float] | None = None) -> bool:
        """The engine's verdict against the whole card (no headroom: the run either went out of memory or not):
        the capped device figure and the retry floor (eq. R3c) both fit."""
        return self.device(fractions) <= self.capacity_bytes and (
            stranded is None or self.floor(fractions, stranded) <= self.capacity_bytes)

    def plan_fits(self, fractions: dict[str, float], stranded: dict[str, float], headroom: float) -> bool:
        """``plan``'s verdict at ``headroom`` (:attr:`planner.engine.results.Plan.fits_gpu`): the nvidia-smi figure
        within :func:`~planner.engine.evaluate.usable_bytes` (capacity x (1 - headroom)), and the run's own verdict
        (:meth:`predicted_fits`). At 0 this is the engine's verdict; ``plan`` refuses a headroom of 0
        (:func:`~planner.engine.evaluate.check_headroom`), so the report gives 0 as the engine's verdict only."""
        usable = self.capacity_bytes if headroom == 0 else usable_bytes(self.capacity_bytes, headroom)
        return self.device(fractions) <= usable and self.predicted_fits(fractions, stranded)

    def stranded_bound(self, fractions: dict[str, float]) -> float | None:
        """The share of the card at which this record's verdict flips (eq. R3c): the run is predicted out of memory
        when the stranded share exceeds it. None when no share flips it (the tensors alone exceed the card, or the
        fragmented churn is too small to reach it)."""
        f = fractions[self.frag_class]
        bounds = []
        for ph, t in self.tensors.items():
            room = self.capacity_bytes - self.overhead_bytes - t - self.cublas_bytes
            if room < 0:
                return None  # out of memory whatever the share
            if rm.fragmented_bytes(t - self.once_bytes, f, **self._frag(ph)) > room:
                bounds.append(room / self.capacity_bytes)
        return min(bounds) if bounds else None


@dataclass
class MemoryReport:
    rows: list[MemoryRow]
    fit: dict[str, float]
    """fragmentation fraction by class, fitted to every source that publishes allocated + nvidia-smi pairs (and, for
    the classes of RESERVED_FITTED, to their reserved and nvidia-smi records)"""
    held_out: dict[str, dict[str, float]]
    """source -> the fractions fitted without it (only the sources that fit them)"""
    refused: list[MemoryRow] = field(default_factory=list)
    stranded: dict[str, float] = field(default_factory=lambda: dict(STRANDED_PRIOR))
    """eq. R3c's stranded share of the card by class, fitted to every source's deciding verdicts"""
    stranded_held_out: dict[str, dict[str, float]] = field(default_factory=dict)
    """source -> the shares fitted without it"""

    def terms(self, row: MemoryRow, held_out: bool = True) -> tuple[dict[str, float], dict[str, float]]:
        """The fragmentation fractions and stranded shares ``row`` is computed with: held out, those fitted without
        its source; else the all-source fit."""
        if not held_out:
            return self.fit, self.stranded
        return self.held_out.get(row.source, self.fit), self.stranded_held_out.get(row.source, self.stranded)

    def figure(self, row: MemoryRow, held_out: bool = True) -> int:
        """The engine's figure of the kind the row's source measured, with the fractions :meth:`terms` gives."""
        return row.figure(self.terms(row, held_out)[0])

    def error(self, row: MemoryRow, held_out: bool = True) -> float | None:
        """The row's signed relative error; held out: with the fractions fitted without its source."""
        return row.rel_error(self.terms(row, held_out)[0])

    def fits(self, row: MemoryRow, held_out: bool = True, capped: bool = True) -> bool:
        """The engine's verdict (``capped``: eq. R3 as the engine computes it) or the uncapped one."""
        f, s = self.terms(row, held_out)
        return row.predicted_fits(f, s) if capped else row.device_uncapped(f) <= row.capacity_bytes

    def verdict_rows(self) -> tuple[list[MemoryRow], list[MemoryRow]]:
        """The counted published verdicts: the out-of-memory runs, and the runs that fitted with a measured peak
        (records the corpus flags as anomalous are left out)."""
        return ([r for r in self.rows if r.oom and r.fit],
                [r for r in self.rows if r.measured_bytes and not r.oom and r.fit])


def rows_from(corpus: Corpus) -> tuple[list[MemoryRow], list[MemoryRow]]:
    """Each memory case evaluated once by :func:`planner.engine.evaluate.evaluate` (uncalibrated), and the ones
    the engine refuses (kept, with the reason)."""
    rows, refused = [], []
    for case in corpus.memory:
        rows_or_refused = _row(case)
        (refused if rows_or_refused.error else rows).append(rows_or_refused)
    return rows, refused


def _row(case: MemoryCase) -> MemoryRow:
    device = [memory_bytes(m) for m in case.other if m.kind == "device"]
    allocated = [memory_bytes(m) for m in case.other if m.kind == "allocated"]
    base = dict(id=case.id, source=case.source, kind=case.kind, measured_bytes=case.measured_bytes, oom=case.oom,
                measured_device_bytes=device[0] if device else None,
                measured_allocated_bytes=allocated[0] if allocated else None,
                capacity_bytes=case.cluster.gpu.memory_bytes,
                frag_class=run_fragmentation_class(case.cluster, case.setup),
                fit=case.fit,
                label=f"{case.model.name} · {case.cluster.label()} · {case.setup.short()} · seq {case.setup.seq_len}",
                notes=case.notes)
    try:
        est = evaluate(case.model, case.cluster, case.setup, explain=False).memory
    except ValueError as e:  # SetupError is a ValueError
        return MemoryRow(**base, tensors={"none": 0}, once_bytes=0, cublas_bytes=0, overhead_bytes=0,
                         error=str(e).splitlines()[0])
    c = est.categories
    once = c["weights_trainable"] + c["weights_frozen"] + c["optimizer_states"] + c["master_weights"]
    return MemoryRow(**base, tensors=dict(est.phase_tensors), once_bytes=int(once),
                     cublas_bytes=cublas_workspace_bytes(est.gpu), overhead_bytes=int(c["framework_overhead"]),
                     token_churn=dict(est.phase_token_churn), residual_bytes=est.residual_tensor_bytes)


def _loss(rows: list[MemoryRow], fractions: dict[str, float]) -> float:
    """Median |gap error| (:meth:`MemoryRow.gap_error`)."""
    xs = [abs(r.gap_error(fractions)) for r in rows]
    return statistics.median(xs) if xs else 0.0


def _figure_loss(rows: list[MemoryRow], fractions: dict[str, float]) -> float:
    """Median |error| of the rows' reserved or nvidia-smi figures (:meth:`MemoryRow.rel_error`)."""
    xs = [abs(r.rel_error(fractions)) for r in rows]
    return statistics.median(xs) if xs else 0.0


def figure_fit_rows(rows: list[MemoryRow], cls: str) -> list[MemoryRow]:
    """The rows that fit a :data:`~planner.engine.runtime_memory.RESERVED_FITTED` class: its measured reserved and
    nvidia-smi records, anomalies never."""
    return [r for r in rows if r.frag_class == cls and r.fit and r.measured_bytes and r.kind in FITTED_KINDS]


def fit_fractions(rows: list[MemoryRow], prior: dict[str, float] | None = None) -> dict[str, float]:
    """The fragmentation fraction of each class minimising the median |gap error| of that class's rows among
    those publishing both allocated and nvidia-smi figures. A class without such rows that
    :data:`~planner.engine.runtime_memory.RESERVED_FITTED` names minimises the median |error| of its reserved and
    nvidia-smi records instead. Classes never share a row, so each is fitted alone; a class without rows keeps
    ``prior`` (the engine's documented assumption, never the shipped fit)."""
    prior = dict(prior or FRAGMENTATION_PRIOR)
    usable = [r for r in rows if r.fit and r.measured_gap_bytes is not None]
    out = {}
    for cls in FRAGMENTATION_CLASSES:
        mine = [r for r in usable if r.frag_class == cls]
        figures = figure_fit_rows(rows, cls) if cls in RESERVED_FITTED and not mine else []
        if mine:
            out[cls] = min(FRACTION_GRID, key=lambda f: (_loss(mine, {cls: f}), f))
        elif figures:
            out[cls] = min(FRACTION_GRID, key=lambda f: (_figure_loss(figures, {cls: f}), f))
        else:
            out[cls] = prior[cls]
    return out


STRANDED_STEP = 0.005
"""Step of the stranded shares searched (eq. R3c): 0.5 % of the card."""


def stranded_grid(fragmentation: float) -> tuple[float, ...]:
    """The stranded shares that can change a verdict: 0 up to the class's fragmentation fraction in
    :data:`STRANDED_STEP` steps. Above it nothing changes: a run whose verdict depends on the share has its tensors
    within the card, so its churn is below the card and its fragmented churn below ``fragmentation`` of it, and the
    stranded bytes are the smaller of the two (eq. R3c)."""
    return tuple(round(i * STRANDED_STEP, 4) for i in range(int(fragmentation / STRANDED_STEP + 1e-9) + 1))


def stranded_verdicts(rows: list[MemoryRow], fractions: dict[str, float], cls: str) -> list[tuple[float, bool]]:
    """The (bound, went out of memory) pairs of the class's rows whose verdict the stranded share decides
    (:meth:`MemoryRow.stranded_bound`): published out-of-memory runs and runs that fitted with a measured figure;
    anomalies never."""
    out = []
    for r in rows:
        if r.frag_class != cls or not r.fit or not (r.oom or r.measured_bytes):
            continue
        b = r.stranded_bound(fractions)
        if b is not None:
            out.append((b, r.oom))
    return out


def fit_stranded(rows: list[MemoryRow], fractions: dict[str, float],
                 prior: dict[str, float] | None = None) -> dict[str, float]:
    """Eq. R3c's stranded share per class: among the shares that can change a verdict (:func:`stranded_grid`, up to
    the class's fragmentation fraction in ``fractions``), those that get the most of the class's deciding verdicts
    right (an out-of-memory run needs a share above its bound, a run that fitted one at or below it), and of those
    the centre (the largest margin to both kinds, or to the one kind and the end of the range). When the best shares
    fall in separate ranges (verdicts that conflict, so that each range gets a different one wrong), the centre is
    taken in the widest range, never between them, where more verdicts would be wrong. A class with no deciding
    verdict keeps ``prior`` (:data:`~planner.engine.runtime_memory.STRANDED_PRIOR`)."""
    prior = dict(prior or STRANDED_PRIOR)
    out = {}
    for cls in FRAGMENTATION_CLASSES:
        v = stranded_verdicts(rows, fractions, cls)
        if not v:
            out[cls] = prior[cls]
            continue
        grid = stranded_grid(fractions[cls])
        wrong = {s: sum((s > b) != oom for b, oom in v) for s in grid}
        least = min(wrong.values())
        runs: list[list[float]] = []  # consecutive grid shares that all get the fewest verdicts wrong
        for i, s in enumerate(grid):
            if wrong[s] == least:
                if runs and runs[-1][-1] == grid[i - 1]:
                    runs[-1].append(s)
                else:
                    runs.append([s])
        best = max(runs, key=len)  # the widest range (the first of equals)
        out[cls] = round((best[0] + best[-1]) / 2, 4)
    return out


def gap_sources(rows: list[MemoryRow]) -> list[str]:
    """Sources whose records fit the runtime term: allocated + nvidia-smi pairs, and the reserved and nvidia-smi
    records of the classes fitted on them (:data:`~planner.engine.runtime_memory.RESERVED_FITTED`)."""
    pairs = [r for r in rows if r.fit and r.measured_gap_bytes is not None]
    paired = {r.frag_class for r in pairs}
    figures = {r.source for cls in RESERVED_FITTED if cls not in paired for r in figure_fit_rows(rows, cls)}
    return sorted({r.source for r in rows if r.measured_gap_bytes is not None} | figures)


def evaluate_corpus(corpus: Corpus) -> MemoryReport:
    """Every memory record against the engine, with the fragmentation fractions fitted to all sources and, for
    each source with reserved / device records, refitted without it."""
    rows, refused = rows_from(corpus)
    fit = fit_fractions(rows)
    held_out = {}
    for src in gap_sources(rows):
        held_out[src] = fit_fractions([r for r in rows if r.source != src])
    stranded = fit_stranded(rows, fit)
    stranded_held_out = {}
    for src in sorted({r.source for r in rows}):
        stranded_held_out[src] = fit_stranded([r for r in rows if r.source != src], held_out.get(src, fit))
    return MemoryReport(rows=rows, fit=fit, held_out=held_out, refused=refused, stranded=stranded,
                        stranded_held_out=stranded_held_out)


def summary(report: MemoryReport, kinds: tuple[str, ...] | None = None, held_out: bool = True) -> dict:
    """n, median and max |error|, the worst record, and the fit-verdict conflicts, over the records the corpus does
    not flag as anomalous (an anomaly names why its figure cannot be the stated setup's; they are listed, not
    counted; ``anomalies`` says how many)."""
    rows = [r for r in report.rows if r.measured_bytes and r.fit and (kinds is None or r.kind in kinds)]
    errs = [(abs(report.error(r, held_out)), r) for r in rows]
    worst = max(errs, key=lambda x: x[0], default=(0.0, None))
    ooms, ran = report.verdict_rows()
    return {
        "n": len(rows),
        "anomalies": sum(1 for r in report.rows if not r.fit and (kinds is None or r.kind in kinds)),
        "median_abs": statistics.median([e for e, _ in errs]) if errs else 0.0,
        "max_abs": worst[0],
        "worst": worst[1].id if worst[1] else None,
        "within_8": sum(e <= 0.08 for e, _ in errs),
        "within_25": sum(e <= 0.25 for e, _ in errs),
        "oom_total": len(ooms),
        "oom_predicted_to_fit": [r.id for r in ooms if report.fits(r, held_out)],
        "ran_total": len(ran),
        "ran_predicted_not_to_fit": [r.id for r in ran if not report.fits(r, held_out)],
        "uncapped_oom_predicted_to_fit": [r.id for r in ooms if report.fits(r, held_out, capped=False)],
        "uncapped_ran_predicted_not_to_fit": [r.id for r in ran if not report.fits(r, held_out, capped=False)],
    }


def headroom_verdicts(report: MemoryReport, headrooms: tuple[float, ...], held_out: bool = True) -> list[dict]:
    """What ``--headroom`` buys against the published verdicts: at each headroom, the published out-of-memory runs
    ``plan`` would still accept and the published runs that fitted it would refuse (:meth:`MemoryRow.plan_fits`,
    each source with the terms fitted without it), over the records the corpus does not flag as anomalous.
    Accepted OOMs can only fall and refused runs only rise as the headroom grows."""
    ooms, ran = report.verdict_rows()
    out = []
    for h in headrooms:
        def ok(r: MemoryRow) -> bool:
            return r.plan_fits(*report.terms(r, held_out), h)
        out.append({"headroom": h, "oom_total": len(ooms), "ran_total": len(ran),
                    "oom_accepted": [r.id for r in ooms if ok(r)],
                    "ran_refused": [r.id for r in ran if not ok(r)]})
    return out


def with_fractions(report: MemoryReport, fractions: dict[str, float]) -> MemoryReport:
    """The report re-read at fixed fractions (no fit), e.g. the engine's prior assumptions, for comparison (the
    stranded shares as fitted)."""
    return replace(report, fit=dict(fractions), held_out={k: dict(fractions) for k in report.held_out})
