"""A cheap front for the engine's per-setup caches (the plan search evaluates hundreds of setups).

:func:`planner.engine.activations.layer_inventory`, :func:`planner.engine.speed.flops.flops_per_token` and
:func:`planner.engine.speed.kernels.micro_step_work` memoise on the setup with the fields that do not matter to them
reset to fixed values (``setup.model_copy(update=...)``), so that setups differing only in those fields share one
entry. Building that copy, then hashing and comparing a 40-field pydantic model, cost more than a cache hit saves
in the search. :class:`SetupMemo` keys on the tuple of the *other* fields instead: two setups with equal other
fields have equal normalised copies (``model_copy`` validates nothing, and a frozen model's equality and hash are
its field values), so the front returns exactly what the memoised function returns for the normalised copy, which
it still receives (the formulas and their own caches are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, Generic, TypeVar

R = TypeVar("R")

MAX_ENTRIES = 4096
"""Entries kept before the front is emptied (a bound on memory across many searches in one process)."""


class SetupMemo(Generic[R]):
    """``memo(facts, setup, *rest)`` = ``fn(facts, setup.model_copy(update=normalise), *rest)``, cached on
    ``(facts, the setup's fields not in normalise, *rest)``."""

    def __init__(self, fn: Callable[..., R], normalise: dict[str, Any]) -> None:
        from planner.engine.setup import Setup

        unknown = set(normalise) - set(Setup.model_fields)
        if unknown:  # a renamed field would silently widen the key's equivalence classes
            raise ValueError(f"not Setup fields: {sorted(unknown)}")
        self.fn = fn
        self.normalise = dict(normalise)
        self._key = attrgetter(*(n for n in Setup.model_fields if n not in normalise))
        self._cache: dict[tuple, R] = {}

    def __call__(self, facts: Any, setup: Any, *rest: Any) -> R:
        key = (facts, self._key(setup), *rest)
        try:
            return self._cache[key]
        except KeyError:
            pass
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        out = self._cache[key] = self.fn(facts, setup.model_copy(update=self.normalise), *rest)
        return out

    def uncached(self, facts: Any, setup: Any, *rest: Any) -> R:
        """The memoised function on the normalised copy, without this front (what the tests compare against)."""
        return self.fn(facts, setup.model_copy(update=self.normalise), *rest)
