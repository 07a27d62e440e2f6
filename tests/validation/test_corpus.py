"""validation/corpus.py: a record is read as one setup, its own keys over its source's ``setup_defaults``, by every
part of the mapping (the Setup, the unpacked-row handling, the throughput conversion)."""

from __future__ import annotations

import pytest

from profiles.evidence import corpus_records
from validation.corpus import load


def _moved_to_source(rec, key: str):
    """The same record with ``key`` given by its source's setup_defaults instead of by the record."""
    setup = dict(rec.record.setup)
    value = setup.pop(key)
    source = rec.source.model_copy(update={"setup_defaults": {**rec.source.setup_defaults, key: value}})
    return rec.model_copy(update={"source": source, "record": rec.record.model_copy(update={"setup": setup})})


def _first(pred):
    return next(r for r in corpus_records() if r.record.measured.throughput is not None and not r.record.unmappable
                and pred(r.record.setup, r.record.measured.throughput.unit))


@pytest.mark.parametrize("key, pick", [
    # samples/s of packed rows becomes tokens/s through seq_len (the throughput conversion)
    ("seq_len", lambda s, unit: unit == "samples/s" and s.get("packing", True) and "seq_len" in s),
    # unpacked rows with a known real / padded ratio are processed at avg_tokens / padding_efficiency (speed_setup)
    ("padding_efficiency", lambda s, unit: s.get("packing") is False and "padding_efficiency" in s),
], ids=["seq_len", "padding_efficiency"])
def test_a_source_default_counts_like_the_records_own_key(key, pick):
    """Moving a key from the record to its source's defaults changes neither the throughput nor the Setup (before
    2026-12 the conversion and the unpacked-row handling read the record's own keys alone)."""
    rec = _first(pick)
    (a,), (b,) = load([rec]).speed, load([_moved_to_source(rec, key)]).speed
    assert b.tokens_per_s == a.tokens_per_s > 0
    assert b.setup == a.setup
