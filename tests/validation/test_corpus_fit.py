"""validation/corpus_fit.py: which parameters a fit may move (docs/speed.md, "Parameters, the fit and its error")."""

from __future__ import annotations

from validation.corpus import load
from validation.corpus_fit import FREE, _relevant


def _free(label: str):
    return next(f for f in FREE if f.label == label)


def test_cdna3_fp8_factor_is_freed_only_by_cdna3_fp8_runs():
    """Eq. S28b: the factor moves only when the training set has MI300X FP8 runs. Today those are torchao's alone, so
    the fold that leaves torchao out keeps the prior (docs/speed.md S28b says so; this guards the statement)."""
    cases = load().speed
    fr = _free("fp8_arch_ratio[cdna3]")
    cdna3_fp8 = {c.source for c in cases if c.cluster.gpu.arch == "cdna3" and c.setup.fp8 != "none" and c.fit}
    assert cdna3_fp8 == {"torchao-float8-readme-2025"}
    assert _relevant(fr, cases)
    assert not _relevant(fr, [c for c in cases if c.source not in cdna3_fp8])
    assert not _relevant(fr, [c for c in cases if c.cluster.gpu.arch != "cdna3"])


def test_the_shipped_fit_is_labelled_as_the_fit():
    """Every estimate prints the speed parameters' ``source``; a fit document must not carry the priors' label on
    (the fitted values in profiles/calibration/speed.json once said "priors (docs/speed.md)")."""
    from planner.engine.speed.params import PRIORS
    from validation.corpus_fit import SpeedFit, fit_document

    cases = load().speed[:3]
    doc = fit_document(SpeedFit(PRIORS, [], {}), cases)
    assert doc["params"]["source"].startswith("corpus fit ")
    assert f"{len(cases)} throughput records" in doc["params"]["source"]
    assert PRIORS.source == "priors (docs/speed.md)"  # the priors themselves keep theirs
