"""``planner.engine.results.unchecked`` builds the same objects as pydantic's ``model_construct`` (the independent
truth it replaces in the search's hot loop)."""

from __future__ import annotations

import pytest

from planner.engine.evaluate import evaluate
from planner.engine.results import MemoryEstimate, Plan, SpeedEstimate, unchecked
from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model


def _same(a, b) -> None:  # noqa: ANN001
    assert type(a) is type(b)
    assert a.__dict__ == b.__dict__
    assert a.model_fields_set == b.model_fields_set
    assert a.__pydantic_extra__ == b.__pydantic_extra__ and a.__pydantic_private__ == b.__pydantic_private__
    assert a == b


@pytest.mark.parametrize("setup", [
    Setup(method="lora", seq_len=1024, micro_batch=2),
    Setup(method="full", zero=3, offload="optimizer", checkpointing="full"),
    Setup(method="qlora", optimizer="paged-adamw-8bit"),
])
def test_unchecked_is_model_construct(setup):
    plan = evaluate(get_model("llama3-8b"), parse_cluster("8xA800"), setup)
    for obj in (plan.memory, plan.speed, plan):
        values = {k: getattr(obj, k) for k in obj.model_fields_set}
        _same(unchecked(type(obj), **values), type(obj).model_construct(**values))
        fewer = {k: v for k, v in values.items() if k not in ("assumptions", "rank", "phase_tensors", "reasons")}
        _same(unchecked(type(obj), **fewer), type(obj).model_construct(**fewer))  # defaults filled alike


def test_the_search_path_equals_the_checked_path():
    """explain=False (unchecked objects) gives the same figures as the validated objects."""
    model, cluster = get_model("qwen3-30b-a3b"), parse_cluster("8xH100")
    for s in (Setup(method="lora"), Setup(method="full", recipe="hf-amp", fsdp="full-shard", checkpointing="full")):
        fast, slow = evaluate(model, cluster, s, explain=False), evaluate(model, cluster, s)
        assert fast.memory.categories == slow.memory.categories and fast.memory.phases == slow.memory.phases
        assert fast.speed.tokens_per_s == slow.speed.tokens_per_s and fast.fits == slow.fits
        assert isinstance(fast, Plan) and isinstance(fast.memory, MemoryEstimate)
        assert isinstance(fast.speed, SpeedEstimate)
