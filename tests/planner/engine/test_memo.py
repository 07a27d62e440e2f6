"""The engine's memo fronts (planner/engine/memo.py) return what the memoised formulas return on the normalised
setup: checked against the unmemoised path (``model_copy`` + the formula), and end to end against a search run
without the fronts."""

from __future__ import annotations

import pytest

from planner.engine import memo
from planner.engine.activations import _LAYER_MEMO
from planner.engine.dtypes import recipe_bytes
from planner.engine.facts import model_facts
from planner.engine.setup import Setup
from planner.engine.speed.flops import _FLOPS_MEMO
from planner.engine.speed.kernels import _WORK_MEMO
from planner.search.rank import SearchRequest, candidate_families, search
from profiles.cluster import parse_cluster
from profiles.registry import get_model

CASES = [("llama3-8b", "8xA800"), ("qwen3-30b-a3b", "8xH100"), ("gemma-3-12b", "8xA800"), ("qwen2.5-7b", "4090")]


def _setups(model, cluster):
    out = []
    for fields in candidate_families(model, cluster, SearchRequest()):
        for mb in (1, 4):
            try:
                out.append(Setup(**dict(fields, micro_batch=mb, grad_accum=1)))
            except ValueError:
                continue
    return out


@pytest.mark.parametrize("name,gpus", CASES)
def test_fronts_equal_the_unmemoised_formulas(name, gpus):
    model, cluster = get_model(name), parse_cluster(gpus)
    setups = _setups(model, cluster)
    assert len(setups) > 50
    for s in setups:
        facts, rb = model_facts(model, s), recipe_bytes(s)
        for trains in (True, False):
            assert _LAYER_MEMO(facts, s, rb, trains) == _LAYER_MEMO.uncached(facts, s, rb, trains)
        assert _FLOPS_MEMO(facts, s) == _FLOPS_MEMO.uncached(facts, s)
        assert _WORK_MEMO(facts, s) == _WORK_MEMO.uncached(facts, s)


@pytest.mark.parametrize("name,gpus", CASES[:3])
def test_search_with_and_without_the_fronts_agree(name, gpus, monkeypatch):
    model, cluster = get_model(name), parse_cluster(gpus)

    def run():
        r = search(model, cluster, SearchRequest())
        return [p.to_json() for p in r.plans], [(x.setup, x.reason, x.peak_bytes, x.tokens_per_s) for x in r.rejected], r.notes

    with_fronts = run()
    monkeypatch.setattr(memo.SetupMemo, "__call__", memo.SetupMemo.uncached)
    assert run() == with_fronts


def test_a_normalised_name_that_is_not_a_setup_field_is_refused():
    with pytest.raises(ValueError, match="not Setup fields"):
        memo.SetupMemo(lambda *a: a, {"micro_batches": 1})


@pytest.mark.parametrize("name,gpus", [("gemma-3-12b", "8xA800"), ("qwen3-next-80b-a3b", "8xH100")])
def test_derived_activation_front_ignores_only_fields_it_never_reads(name, gpus):
    """The derived engine's front (planner.engine.derived._ACT_MEMO) against the formula on the setup as given (not
    normalised): equal on every candidate family of the search, so the normalised fields are truly unread."""
    from planner.engine.derived import _activation_terms, activation_terms, unsupported

    model, cluster = get_model(name), parse_cluster(gpus)
    setups = [s for s in _setups(model, cluster) if unsupported(s) is None]
    assert len(setups) > 50
    for s in setups:
        facts, rb = model_facts(model, s), recipe_bytes(s)
        assert activation_terms(facts, s, rb) == _activation_terms(facts, s, rb)
