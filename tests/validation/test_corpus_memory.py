"""The memory-vs-published evaluation (validation/corpus_memory.py): the fit recovers a known fraction, a held-out
source never enters its own fit, and the engine ships the fit the corpus gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.engine.runtime_memory import FRAGMENTATION, FRAGMENTATION_PRIOR, STRANDED, STRANDED_PRIOR, reserved_bytes
from validation.corpus import load
from validation.corpus_memory import (
    FRACTION_GRID,
    MemoryRow,
    evaluate_corpus,
    fit_fractions,
    fit_stranded,
    stranded_grid,
    summary,
)

GiB = 2**30
ROOT = Path(__file__).resolve().parents[2]


def _row(source: str, tensors: int, once: int, frac: float, cls: str = "static", overhead: int = GiB // 2,
         capacity: int = 80 * GiB) -> MemoryRow:
    """A run whose published nvidia-smi is exactly what eq. R3 gives at ``frac`` (synthetic truth)."""
    alloc = tensors  # no cuBLAS workspace: keeps the arithmetic visible
    device = reserved_bytes(alloc, tensors - once, frac, limit=capacity - overhead) + overhead
    return MemoryRow(id=f"{source}/{tensors}", source=source, kind="allocated", measured_bytes=float(alloc),
                     measured_device_bytes=float(device), oom=False, capacity_bytes=capacity,
                     tensors={"backward_peak": tensors}, once_bytes=once, cublas_bytes=0, overhead_bytes=overhead,
                     frag_class=cls, fit=True, label="synthetic")


def test_fit_recovers_a_known_fraction_per_class():
    rows = [_row("a", t * GiB, 10 * GiB, 0.31) for t in (20, 30, 40)]
    rows += [_row("a", t * GiB, 10 * GiB, 0.5, "sharded") for t in (15, 25)]
    fit = fit_fractions(rows)
    assert fit["static"] == pytest.approx(0.31) and fit["sharded"] == pytest.approx(0.5)
    assert fit["dynamic"] == FRAGMENTATION_PRIOR["dynamic"]  # no data: the prior, never the shipped fit


def test_the_cap_at_the_card_is_what_the_fit_sees():
    # near the card the allocator frees its cache: a larger fraction changes nothing once capped
    capped = _row("a", 75 * GiB, 10 * GiB, 0.9, capacity=80 * GiB)
    assert capped.measured_device_bytes == 80 * GiB
    assert capped.gap_error({"static": 0.9}) == capped.gap_error({"static": 0.6}) == 0


def test_leave_one_source_out_never_sees_the_source(monkeypatch):
    import validation.corpus_memory as cm

    rows = [_row("a", t * GiB, 10 * GiB, 0.2) for t in (20, 30, 40)] + [_row("b", t * GiB, 5 * GiB, 0.4) for t in (20, 30)]
    monkeypatch.setattr(cm, "rows_from", lambda corpus: (rows, []))
    rep = evaluate_corpus(None)
    assert rep.held_out["a"]["static"] == pytest.approx(0.4) and rep.held_out["b"]["static"] == pytest.approx(0.2)
    # held-out errors are real errors: source a predicted at b's fraction misses its gaps
    assert all(rep.error(r) == 0 for r in rows)  # allocated figures involve no fitted term
    assert all(abs(r.gap_error(rep.held_out[r.source])) > 0 for r in rows)
    # a reserved figure is computed with the fraction fitted without its source (b's 0.4 for a's row, a's 0.2 for b's),
    # in sample with the all-source fit
    import dataclasses

    for row, other, own in ((rows[0], 0.4, 0.2), (rows[-1], 0.2, 0.4)):  # whichever the all-source fit is
        res = dataclasses.replace(row, kind="reserved")
        assert rep.figure(res) == res.reserved({"static": other}) != res.reserved({"static": own})
        assert rep.figure(res, held_out=False) == res.reserved(rep.fit)


def test_every_memory_record_is_evaluated_or_refused_with_a_reason():
    corpus = load()
    rep = evaluate_corpus(corpus)
    assert len(rep.rows) + len(rep.refused) == len(corpus.memory)
    assert all(r.error for r in rep.refused)
    for r in rep.rows:
        f = rep.held_out.get(r.source, rep.fit)
        assert r.allocated <= r.reserved(f) <= r.device(f)
    s = summary(rep)
    counted = [r for r in rep.rows if r.fit]  # anomalies are listed, not counted
    assert s["n"] == sum(1 for r in counted if r.measured_bytes) and s["oom_total"] == sum(r.oom for r in counted)
    assert s["anomalies"] == len(rep.rows) - len(counted)


def test_the_engine_ships_the_fit():
    """planner/engine/runtime_memory.py FRAGMENTATION is the all-source fit of the corpus shipped with it, and the
    file the report was rendered from says so (regenerate: python benchmarks/memory_vs_corpus.py)."""
    rep = evaluate_corpus(load())
    assert rep.fit == FRAGMENTATION
    assert all(v < max(FRACTION_GRID) for v in rep.fit.values())  # a fit at the search bound would be no fit
    stored = json.loads((ROOT / "benchmarks/results/memory_fit.json").read_text())
    assert stored["fit"] == FRAGMENTATION and stored["prior"] == FRAGMENTATION_PRIOR
    assert rep.stranded == STRANDED and stored["stranded"] == STRANDED and stored["stranded_prior"] == STRANDED_PRIOR


def _verdict_row(source: str, left_gib: float, oom: bool, cls: str = "sharded") -> MemoryRow:
    """A run with ``left_gib`` of an 80 GiB card free beside its tensors and overhead, and a fragmented churn larger
    than that (so the stranded share decides its verdict)."""
    tensors = int((80 - 0.5 - left_gib) * GiB)
    return MemoryRow(id=f"{source}/{left_gib}", source=source, kind="allocated", measured_bytes=None if oom else 1.0,
                     measured_device_bytes=None, oom=oom, capacity_bytes=80 * GiB, tensors={"backward_peak": tensors},
                     once_bytes=0, cublas_bytes=0, overhead_bytes=GiB // 2, frag_class=cls, fit=True, label="synthetic")


def test_the_stranded_share_is_the_centre_of_the_shares_that_get_the_verdicts_right():
    rows = [_verdict_row("a", 8, True), _verdict_row("b", 16, False)]  # out of memory with 10 % left; fitted with 20 %
    fr = {"static": 0.3, "dynamic": 0.3, "sharded": 0.43}
    assert [r.stranded_bound(fr) for r in rows] == [pytest.approx(0.1), pytest.approx(0.2)]
    fit = fit_stranded(rows, fr)
    assert fit["sharded"] == pytest.approx(0.15, abs=0.003)
    assert fit["static"] == STRANDED_PRIOR["static"]  # nothing decides it: the prior
    assert not rows[0].predicted_fits(fr, fit) and rows[1].predicted_fits(fr, fit)
    assert rows[0].predicted_fits(fr, STRANDED_PRIOR)  # the cap alone never predicts this out-of-memory
    # only out-of-memory runs: the centre of the range up to the fragmentation fraction, which bounds what can strand
    only = fit_stranded(rows[:1], fr)
    assert only["sharded"] == pytest.approx((0.105 + 0.43) / 2, abs=0.003) and max(stranded_grid(0.43)) <= 0.43


def test_conflicting_verdicts_put_the_share_in_the_widest_best_range_never_between_two():
    # out of memory with 10 % and 17 % left, fitted with 14 % and 18 % left: every share gets one verdict wrong at best,
    # in (0.10, 0.14] (the 17 % one) or in (0.17, 0.18] (the 14 % one); between them both would be wrong
    rows = [_verdict_row("a", 8, True), _verdict_row("b", 13.6, True), _verdict_row("c", 11.2, False),
            _verdict_row("d", 14.4, False)]
    fr = {"static": 0.3, "dynamic": 0.3, "sharded": 0.43}
    bounds = sorted(r.stranded_bound(fr) for r in rows)
    assert bounds == [pytest.approx(0.10), pytest.approx(0.14), pytest.approx(0.17), pytest.approx(0.18)]
    share = fit_stranded(rows, fr)["sharded"]
    assert 0.10 < share <= 0.14  # the wider of the two best ranges, not the gap between them
    assert sum(r.predicted_fits(fr, {"sharded": share}) == r.oom for r in rows) == 1  # one verdict wrong, not two


def test_a_record_whose_tensors_exceed_the_card_or_whose_churn_is_small_decides_nothing():
    fr = {"static": 0.3, "dynamic": 0.3, "sharded": 0.43}
    over = _verdict_row("a", -1, True)
    small = MemoryRow(**{**_verdict_row("a", 8, True).__dict__, "once_bytes": int(70 * GiB)})
    assert over.stranded_bound(fr) is None and small.stranded_bound(fr) is None


def test_each_source_s_verdicts_come_from_a_stranded_fit_without_it(monkeypatch):
    import validation.corpus_memory as cm

    rows = [_verdict_row("a", 8, True), _verdict_row("b", 16, False), _verdict_row("c", 15.2, True)]
    monkeypatch.setattr(cm, "rows_from", lambda corpus: (rows, []))
    rep = evaluate_corpus(None)
    for src in "abc":
        assert rep.stranded_held_out[src] == fit_stranded([r for r in rows if r.source != src], rep.fit)
    # c (19 % left) went out of memory: with it the share is 19-20 %; without it a and b put it at 15 %, under which
    # c is predicted to fit, and that held-out miss is what the report counts
    assert not rep.fits(rows[2], held_out=False) and rep.fits(rows[2])


def test_an_anomaly_doubts_only_the_figures_it_names():
    """``anomaly_affects`` decides which figure leaves the fit and the counts: a speed-only anomaly (hardware below
    its spec, profiles/evidence/torchtitan-mxfp8-b200-2025.yaml) keeps the memory figure counted, and a memory-only
    one (chenyaofo's bs8x128 row) keeps the throughput fitted."""
    from profiles.evidence import corpus_records

    recs = {rec.id: rec.record for rec in corpus_records()}
    corpus = load()
    mem = {c.id: c for c in corpus.memory}
    speed = {c.id: c for c in corpus.speed}
    speed_only = [i for i, r in recs.items() if r.anomaly and r.anomaly_affects == ("speed",) and i in mem]
    memory_only = [i for i, r in recs.items() if r.anomaly and r.anomaly_affects == ("memory",) and i in speed]
    both = [i for i, r in recs.items() if r.doubts("memory") and r.doubts("speed") and i in mem]
    assert speed_only and memory_only and both
    for i in speed_only:
        assert mem[i].fit and (i not in speed or not speed[i].fit)
    for i in memory_only:
        assert i in mem and not mem[i].fit
        assert speed[i].fit
    for i in both:
        assert not mem[i].fit and (i not in speed or not speed[i].fit)


def _reserved_row(source: str, tensors: int, once: int, frac: float, cls: str) -> MemoryRow:
    """A run whose published reserved peak is exactly eq. R3 at ``frac`` (synthetic truth), no allocated figure."""
    reserved = reserved_bytes(tensors, tensors - once, frac, limit=80 * GiB - GiB // 2)
    return MemoryRow(id=f"{source}/{cls}/{tensors}", source=source, kind="reserved", measured_bytes=float(reserved),
                     measured_device_bytes=None, oom=False, capacity_bytes=80 * GiB,
                     tensors={"backward_peak": tensors}, once_bytes=once, cublas_bytes=0, overhead_bytes=GiB // 2,
                     frag_class=cls, fit=True, label="synthetic")


def test_fsdp2_without_pairs_is_fitted_to_its_reserved_figures_and_dynamic_is_not(monkeypatch):
    """RESERVED_FITTED: a class with no allocated + nvidia-smi pair may be fitted to its reserved records (fsdp2 is,
    dynamic keeps its prior), each source held out of its own fit."""
    import validation.corpus_memory as cm

    rows = [_reserved_row("a", t * GiB, 10 * GiB, 0.2, "fsdp2") for t in (30, 40, 50)]
    rows += [_reserved_row("b", t * GiB, 10 * GiB, 0.1, "fsdp2") for t in (30, 50)]
    rows += [_reserved_row("c", t * GiB, 10 * GiB, 0.5, "dynamic") for t in (30, 40)]
    fit = fit_fractions(rows)
    assert fit["fsdp2"] == pytest.approx(0.2) and fit["dynamic"] == FRAGMENTATION_PRIOR["dynamic"]
    monkeypatch.setattr(cm, "rows_from", lambda corpus: (rows, []))
    rep = evaluate_corpus(None)
    assert rep.held_out["a"]["fsdp2"] == pytest.approx(0.1) and rep.held_out["b"]["fsdp2"] == pytest.approx(0.2)
    assert "c" not in rep.held_out  # a source that fits nothing has no held-out fit
    assert all(abs(rep.error(r)) > 0 for r in rows if r.source in "ab")  # held out, each source misses


@pytest.fixture(scope="module")
def corpus_report():
    corpus = load()
    return corpus, evaluate_corpus(corpus)


def test_plan_s_verdict_at_a_headroom_is_the_planner_s_own(corpus_report):
    """MemoryRow.plan_fits at the shipped terms is what ``plan`` decides (Plan.fits_gpu from evaluate() with that
    headroom), record by record: the report's headroom table speaks for the planner, not for a copy of its rule."""
    from planner.engine.evaluate import evaluate

    corpus, rep = corpus_report
    rows = {r.id: r for r in rep.rows}
    checked = 0
    for case in corpus.memory:
        row = rows.get(case.id)
        if row is None:
            continue
        for h in (0.05, 0.10):
            plan = evaluate(case.model, case.cluster, case.setup, headroom=h, explain=False)
            assert row.plan_fits(FRAGMENTATION, STRANDED, h) == plan.fits_gpu, (case.id, h)
        checked += 1
    assert checked == len(rep.rows)


def test_more_headroom_accepts_fewer_ooms_and_refuses_more_runs(corpus_report):
    from validation.corpus_memory import headroom_verdicts

    _, rep = corpus_report
    sweep = headroom_verdicts(rep, (0.0, 0.02, 0.05, 0.10, 0.15, 0.20))
    s = summary(rep)
    assert sweep[0]["oom_accepted"] == s["oom_predicted_to_fit"]  # at 0: the engine's own verdict
    assert sweep[0]["ran_refused"] == s["ran_predicted_not_to_fit"]
    for lo, hi in zip(sweep, sweep[1:]):
        assert set(hi["oom_accepted"]) <= set(lo["oom_accepted"])
        assert set(lo["ran_refused"]) <= set(hi["ran_refused"])
    assert len(sweep[-1]["ran_refused"]) > len(sweep[0]["ran_refused"])  # the sweep is not flat: headroom has a price


def test_an_allocated_peak_published_beside_a_reserved_one_is_carried_and_never_fitted(monkeypatch):
    """Answer.AI's fsdp_qlora text gives the allocated peaks (8.28 / 9.16 GiB, benchmarks_03_2024.md) of two runs whose
    table gives reserved ones: the row carries the second figure, and the fit is the same without it."""
    import dataclasses

    import validation.corpus_memory as cm

    corpus = load()
    rows, _ = cm.rows_from(corpus)
    second = {r.id: r.measured_allocated_bytes for r in rows if r.measured_allocated_bytes}
    assert second == {"fsdp-qlora-benchmarks-2024-03/llama2-7b-lora-fsdp-bs1-ctx512": pytest.approx(8.28 * GiB),
                      "fsdp-qlora-benchmarks-2024-03/llama2-7b-lora-fsdp-bs1-ctx2048": pytest.approx(9.16 * GiB)}
    for r in rows:
        if r.measured_allocated_bytes:
            assert r.kind == "reserved" and r.measured_bytes != r.measured_allocated_bytes
    stripped = [dataclasses.replace(r, measured_allocated_bytes=None) for r in rows]
    assert fit_fractions(stripped) == fit_fractions(rows)


def test_the_report_shows_each_pair_with_its_kind_and_the_engines_allocated_figure():
    """The rendered table: one row per record with a published allocated peak beside its own figure, naming that
    figure's kind, the measured allocated peak (8.28 / 9.16 GiB, Answer.AI benchmarks_03_2024.md) and the engine's."""
    from tests.helpers import load_script

    rep = evaluate_corpus(load())
    text = load_script("benchmarks/memory_vs_corpus.py").memory_section(rep, FRAGMENTATION_PRIOR, 0.0)
    section = text.split("### The allocated peak published beside the record's figure", 1)[1].split("\n### ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| fsdp-qlora")]
    assert len(rows) == 2
    for ln in rows:
        row = next(r for r in rep.rows if r.id in ln)
        assert f"(reserved) {row.measured_bytes / GiB:.2f} / {rep.figure(row) / GiB:.2f}" in ln
        assert f"{row.measured_allocated_bytes / GiB:.2f} / {row.allocated / GiB:.2f}" in ln
