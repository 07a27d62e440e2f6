"""The ranking rules of planner/search/rank.py: 1 % speed buckets, the complexity tie-break, the larger
micro-batch tie-break, one plan per family, the best plan of every searched method, rejections and suggestions,
the request's own checks, and the explanations (faster candidates that did not fit, the communication a
sharded plan pays, from the speed model's own bytes)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.engine.evaluate import evaluate
from planner.engine.setup import Setup, SetupError
from planner.search.rank import (
    SearchError,
    SearchRequest,
    _score,
    complexity,
    search,
    sharding_traffic_note,
    speed_bucket,
)
from profiles.cluster import parse_cluster
from profiles.registry import get_model

LLAMA8, A800 = get_model("llama3-8b"), parse_cluster("8xA800")


@pytest.fixture(scope="module")
def result():
    return search(LLAMA8, A800, SearchRequest(top=5))


# ---- 1 % buckets --------------------------------------------------------------------------------------------


@given(st.floats(min_value=1.0, max_value=1e9), st.floats(min_value=0.0, max_value=0.5))
def test_speed_buckets_are_one_percent_wide(x, rel):
    y = x * (1 + rel)
    if y >= 1.01 * x * (1 + 1e-12):
        assert speed_bucket(y) > speed_bucket(x)  # 1 % or more apart: never a tie
    assert speed_bucket(y) >= speed_bucket(x)  # monotone
    assert speed_bucket(y) - speed_bucket(x) <= math.ceil(math.log(1 + rel) / math.log(1.01)) + 1


def test_plans_follow_the_score(result):
    keys = [_score(p, "throughput") for p in result.plans[:5]]
    assert keys == sorted(keys)
    for a, b in zip(result.plans, result.plans[1:5]):
        if speed_bucket(a.speed.tokens_per_s) == speed_bucket(b.speed.tokens_per_s):
            assert complexity(a.setup) <= complexity(b.setup)  # a tie goes to the simpler plan
            assert any("as fast as plan" in r for r in b.reasons)


def test_complexity_orders_the_machinery():
    base = Setup(recipe="hf-amp")
    ladder = [base, base.model_copy(update={"zero": 1, "recipe": "deepspeed-bf16"}),
              base.model_copy(update={"zero": 2, "recipe": "deepspeed-bf16"}),
              base.model_copy(update={"fsdp": "full-shard"}),
              base.model_copy(update={"zero": 3, "recipe": "deepspeed-bf16"}),
              base.model_copy(update={"zero": 3, "recipe": "deepspeed-bf16", "offload": "optimizer"})]
    assert [complexity(s) for s in ladder] == sorted(complexity(s) for s in ladder)
    assert len({complexity(s) for s in ladder}) == len(ladder)


def test_equal_speed_and_machinery_prefer_the_larger_micro_batch():
    """Two plans in the same 1 % speed bucket with the same machinery: the larger micro-batch (fewer
    accumulation steps) ranks first. (The speed model itself makes small micro-batches slower: S20, S26.)"""
    small = evaluate(LLAMA8, A800, Setup(method="lora", recipe="hf-amp", micro_batch=1, grad_accum=8))
    large = small.model_copy(update={"setup": small.setup.model_copy(update={"micro_batch": 2, "grad_accum": 4})})
    assert speed_bucket(small.speed.tokens_per_s) == speed_bucket(large.speed.tokens_per_s)
    assert _score(large, "throughput") < _score(small, "throughput")
    real_large = evaluate(LLAMA8, A800, large.setup)
    assert real_large.speed.tokens_per_s > small.speed.tokens_per_s  # and it is faster in fact


def test_memory_objective_ranks_by_peak():
    r = search(LLAMA8, A800, SearchRequest(objective="memory", top=5))
    peaks = [p.memory.peak_bytes for p in r.plans[:5]]
    assert peaks == sorted(peaks)


# ---- families and methods -------------------------------------------------------------------------------------


def test_one_plan_per_family(result):
    keys = [(p.setup.method, p.setup.zero, p.setup.fsdp, p.setup.offload, p.setup.checkpointing)
            for p in result.plans]
    assert len(keys) == len(set(keys))
    assert [p.rank for p in result.plans] == list(range(1, len(result.plans) + 1))


def test_the_best_plan_of_every_method_is_shown():
    """Every method the search tries has its best plan shown, GaLore / BAdam / LISA counted apart from plain full
    fine-tuning (``Setup.method_label``)."""
    r = search(LLAMA8, A800, SearchRequest(top=1))
    labels = {p.setup.method_label for p in r.plans}
    assert {"full", "lora", "qlora"} <= labels  # every method fits on 8xA800
    assert len(labels) == len(r.plans)  # one plan per method beyond the top 1
    for p in r.plans[1:]:
        assert f"the best {p.setup.method_label} plan, shown beyond the top 1" in p.reasons
    # and it is the best of its method: no plan of that method in a deeper search beats it
    deep = search(LLAMA8, A800, SearchRequest(top=100))
    for p in r.plans:
        first = next(q for q in deep.plans if q.setup.method_label == p.setup.method_label)
        assert first.setup == p.setup


def test_fixed_dimensions_are_not_searched():
    r = search(LLAMA8, A800, SearchRequest(fixed={"method": "lora", "zero": 2, "seq_len": 2048}, top=10))
    assert r.plans and all(p.setup.method == "lora" and p.setup.zero == 2 for p in r.plans)


# ---- rejections and suggestions -------------------------------------------------------------------------------


def test_rejections_say_why_and_the_winner_names_the_faster_misfit(result):
    usable = result.usable_bytes
    gpu = [r for r in result.rejected if "host RAM" not in r.reason]
    assert gpu and all(r.peak_bytes > usable and "per GPU >" in r.reason for r in gpu)
    faster = [r for r in gpu if speed_bucket(r.tokens_per_s) > speed_bucket(result.plans[0].speed.tokens_per_s)]
    if faster:
        assert any(x.startswith("faster but did not fit") for x in result.plans[0].reasons)


def test_nothing_fits_gives_numbers_to_act_on():
    r = search(get_model("llama3-70b"), parse_cluster("4090"), SearchRequest())
    assert r.plans == [] and r.rejected
    assert r.suggestions and r.suggestions[0].startswith("closest on GPU memory")
    gib = re.search(r"([\d.]+) GiB over the usable", r.suggestions[0])
    closest = min(x.peak_bytes for x in r.rejected if x.peak_bytes and "host RAM" not in x.reason)
    assert gib and float(gib.group(1)) == pytest.approx((closest - r.usable_bytes) / 2**30, abs=0.06)
    assert any(s.startswith("more GPUs:") for s in r.suggestions)


# ---- the request's own checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_kw, message", [
    ({"objective": "speed"}, "unknown --objective 'speed'"),
    ({"headroom": 0.95}, "headroom 0.95 is outside"),
    ({"headroom": 0.0}, "headroom 0.0 is outside"),
    ({"price_per_gpu_hour": float("inf")}, "not a finite price"),
    ({"price_per_gpu_hour": float("nan")}, "not a finite price"),
    ({"price_per_gpu_hour": -1.0}, "not a finite price"),
    ({"efficiency": 0.0}, "efficiency 0.0 is outside"),
    ({"global_batch": 63}, "not divisible by the data-parallel size 8"),
    ({"fixed": {"zero": 2, "fsdp": "full-shard"}}, "choose ZeRO or FSDP"),
    ({"fixed": {"micro_batch": 3}}, "not divisible into micro-batch 3"),
    ({"fixed": {"grad_accum": 3}}, "not divisible into accumulation 3"),
    ({"fixed": {"micro_batch": 2, "grad_accum": 2}, "global_batch": 64}, "global batch 64 != micro-batch 2"),
])
def test_request_checks(request_kw, message):
    with pytest.raises((SearchError, SetupError)) as e:
        search(LLAMA8, A800, SearchRequest(**request_kw))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_explicit_flag_no_family_uses_is_refused():
    with pytest.raises(SetupError, match="--freeze-layers is not used by any plan the search tries"):
        search(LLAMA8, A800, SearchRequest(explicit=frozenset({"freeze_layers"})))
    search(LLAMA8, A800, SearchRequest(explicit=frozenset({"lora_rank"}), top=1))  # LoRA plans use it


# ---- what sharding costs, from the speed model's own bytes ---------------------------------------------------


def _ratio(note: str) -> float:
    return float(re.search(r"([\d,.]+)x the", note).group(1).replace(",", ""))


def test_full_fine_tuning_zero3_moves_1_5x_zero2_per_micro_step():
    """Rajbhandari et al. 2020 (ZeRO, arXiv:1910.02054) sec. 7: ZeRO-3 moves 3 Psi per step where ZeRO-2 moves
    2 Psi, 1.5x, for full fine-tuning at one micro-step; the note derives the same from collectives()."""
    s = Setup(zero=3, recipe="deepspeed-bf16", grad_accum=1)
    assert _ratio(sharding_traffic_note(LLAMA8, s, 8)) == pytest.approx(1.5, abs=0.05)
    # accumulation repeats the gathers but not ZeRO-2's final all-gather: more than 1.5x
    assert _ratio(sharding_traffic_note(LLAMA8, s.model_copy(update={"grad_accum": 4}), 8)) > 2


def test_adapter_plans_pay_far_more_than_1_5x():
    """LoRA under ZeRO-3 / FSDP gathers the whole frozen base twice per micro-step, while ZeRO-2 reduces only
    the adapters' gradients: the fixed 1.5x phrase was wrong by two orders of magnitude."""
    for s in (Setup(method="lora", zero=3, recipe="deepspeed-bf16"), Setup(method="lora", fsdp="full-shard",
                                                                           recipe="hf-amp")):
        note = sharding_traffic_note(LLAMA8, s, 8)
        assert "frozen base too" in note and _ratio(note) > 100
    assert sharding_traffic_note(LLAMA8, Setup(zero=2, recipe="deepspeed-bf16"), 8) is None
    assert sharding_traffic_note(LLAMA8, Setup(zero=3, recipe="deepspeed-bf16"), 1) is None


def test_sharded_plans_in_a_search_carry_the_note(result):
    sharded = [p for p in result.plans if p.setup.zero == 3 or p.setup.fsdp == "full-shard"]
    assert sharded
    for p in sharded:
        note = next(r for r in p.reasons if r.startswith("parameters sharded"))
        assert note == sharding_traffic_note(LLAMA8, p.setup, 8)


# ---- bisection over the micro-batch ---------------------------------------------------------------------------


def _walk_outcomes(kinds: list[str]):
    """A fake family: the outcome kind of each micro-batch (index), and a counter of how often each was asked."""
    from planner.search.rank import _Outcome

    asked: list[int] = []

    def outcome(mb: int) -> _Outcome:
        asked.append(mb)
        return _Outcome(kinds[mb])  # type: ignore[arg-type]

    return outcome, asked


@given(st.integers(min_value=1, max_value=7), st.data())
def test_bisection_reports_what_the_linear_walk_reports(n, data):
    """Memory is monotone in the micro-batch: the first k fit, the rest do not (out of memory). Bisection then
    reports the same largest fit and the same first miss as trying every micro-batch in turn (and some of the
    smaller fits on the way), and asks for at most 2 + ceil(log2 n) of them."""
    from planner.search.rank import _bisect_walk, _linear_walk

    k = data.draw(st.integers(min_value=0, max_value=n))
    kinds = ["fit"] * k + ["oom"] * (n - k)
    mbs = list(range(n))
    linear = _linear_walk(mbs, _walk_outcomes(kinds)[0])
    outcome, asked = _walk_outcomes(kinds)
    bisected = _bisect_walk(mbs, outcome)
    if k == 0:
        assert bisected is None  # the smallest does not fit: the linear walk stops there anyway
        return
    assert set(bisected) <= set(linear)
    assert bisected[-2:] == linear[-2:] if k < n else bisected[-1] == linear[-1] == n - 1
    assert max(mb for mb in bisected if kinds[mb] == "fit") == k - 1
    assert len(set(asked)) <= 2 + math.ceil(math.log2(n))


@pytest.mark.parametrize("kind", ["error", "excluded"])
def test_bisection_falls_back_to_the_linear_walk_on_an_invalid_micro_batch(kind):
    from planner.search.rank import _bisect_walk

    outcome, _ = _walk_outcomes(["fit", "fit", kind, "oom"])
    assert _bisect_walk([0, 1, 2, 3], outcome) is None


@pytest.mark.parametrize(
    "model, gpus, fixed",
    [
        ("llama3-8b", "8xA800", {}),
        ("llama3-8b", "1xRTX4090", {}),
        ("qwen2.5-7b", "2xA100-40GB", {"seq_len": 4096}),
        ("qwen3-30b-a3b", "8xH100", {}),
        ("llama3-70b", "8xH100", {"method": "full"}),
        ("mistral-7b", "1xH100", {"method": "lora", "seq_len": 1024}),
    ],
)
def test_bisection_finds_the_plans_trying_every_micro_batch_finds(model, gpus, fixed):
    """The search's bisection (:func:`planner.search.rank.bisect_ok`) rests on the speed model being
    non-decreasing in the micro-batch; this holds the ranked plans, their numbers and their reasons equal to the
    search that tries every micro-batch, across models, GPUs and fixed fields."""
    m, c = get_model(model), parse_cluster(gpus)
    req = SearchRequest(fixed=fixed, top=5)
    fast, full = search(m, c, req, bisect=True), search(m, c, req, bisect=False)
    assert fast.plans, "the case should have plans to compare"
    assert [(p.setup, p.speed.tokens_per_s, p.memory.peak_bytes, p.reasons) for p in fast.plans] == [
        (p.setup, p.speed.tokens_per_s, p.memory.peak_bytes, p.reasons) for p in full.plans]
    assert fast.considered <= full.considered
