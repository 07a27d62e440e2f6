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


def test_summary_counts_what_the_report_counts():
    """`plan calibrate --corpus` leads with the same figures as docs/accuracy.md: a record whose anomaly doubts its
    throughput (Zhang et al.'s "no ZeRO" row, which no 80 GB card can hold) is predicted but not counted."""
    from planner.engine.speed.params import PRIORS
    from validation.corpus_fit import Prediction, SpeedFit

    cases = {c.id: c for c in load().speed}
    flagged = cases["zhang2023-dissecting/llama2-7b-no-zero"]
    normal = cases["zhang2023-dissecting/llama2-7b-zero2"]
    assert flagged.record.record.doubts("speed") and not normal.record.record.doubts("speed")
    preds = [Prediction(flagged, 10 * flagged.tokens_per_s, 10 * flagged.tokens_per_s),
             Prediction(normal, 1.1 * normal.tokens_per_s, 1.2 * normal.tokens_per_s)]
    s = SpeedFit(PRIORS, preds).summary()
    assert s["records"] == 1 and s["anomalies"] == 1
    assert abs(s["loso_median_abs_error"] - 0.2) < 1e-9 and abs(s["in_sample_median_abs_error"] - 0.1) < 1e-9
