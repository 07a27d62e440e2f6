"""benchmarks/accuracy_vs_corpus.py's what-if option (``--weigh-nothing``): a source's records stay predicted
and counted but weigh nothing in any fit, the shipped files are never written, and bad input is one line.

The fits themselves take minutes (the report's own run); these tests check the weighting the fit reads
(:func:`validation.corpus_fit._weights`) and the argument checks, which return before any fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from validation.corpus import load
from validation.corpus_fit import _weights

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
avc = load_script("benchmarks/accuracy_vs_corpus.py")

SOURCE = "zhang2023-dissecting"


@pytest.fixture(scope="module")
def cases():
    return load().speed


def test_weigh_nothing_zeroes_only_that_source_and_keeps_every_record(cases):
    out = avc.weigh_nothing(cases, frozenset({SOURCE}))
    assert [c.id for c in out] == [c.id for c in cases]  # still predicted and counted
    before, after = _weights(cases), _weights(out)
    assert any(w > 0 for c, w in zip(cases, before) if c.source == SOURCE)  # the source did weigh before
    for c, w0, w1 in zip(cases, before, after):
        if c.source == SOURCE:
            assert w1 == 0.0
        else:
            assert w1 == w0  # every other source keeps its weight (each source weighs the same in total)
    assert avc.weigh_nothing(cases, frozenset()) == list(cases)


def test_unknown_source_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        avc.main(["--weigh-nothing", "zhang2023", "--out", "/tmp/x.md"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown source with speed records 'zhang2023'; did you mean 'zhang2023-dissecting'?" in err


@pytest.mark.parametrize("extra", [[], ["--reuse", "--out", "/tmp/x.md"], ["--out", "/tmp/x.json"],
                                   ["--out", str(ROOT / "benchmarks" / "results" / "speed_loso.md")]])
def test_what_if_never_writes_the_shipped_section(extra, capsys):
    shipped = (ROOT / "benchmarks" / "results" / "speed.md").read_bytes()
    with pytest.raises(SystemExit) as e:
        avc.main(["--weigh-nothing", SOURCE, *extra])
    assert e.value.code == 2
    assert "what-if run" in capsys.readouterr().err
    assert (ROOT / "benchmarks" / "results" / "speed.md").read_bytes() == shipped


def test_family_table_splits_off_the_cpu_optimizer_records_and_keeps_the_target_on_all():
    """The family medians (the issue's target) count every record; the split column leaves out those whose optimizer
    steps on the CPU (eq. S15, a host property). The rows carry ``Setup.short()`` as the report writes them
    (``run_fit`` in benchmarks/accuracy_vs_corpus.py), so a change to that label that hid the offload would fail here.
    Measured and estimated values are made up to check the arithmetic, not corpus figures."""
    from planner.engine.setup import Setup

    def row(i, fam, setup, est):
        return {"id": f"s/{i}", "source": "s", "gpu_family": fam, "setup": setup.short(), "measured": 100.0,
                "held_out": est, "in_sample": est, "framework": "hf", "parallelism": setup.parallelism_class(8)}
    rows = [row(1, "blackwell", Setup(method="full", zero=3, offload="optimizer"), 20.0),
            row(2, "blackwell", Setup(method="full", zero=3, offload="optimizer+params"), 40.0),
            row(3, "blackwell", Setup(method="full"), 110.0),
            row(4, "hopper", Setup(method="full", fsdp="full-shard", checkpointing="full", activation_offload=True), 90.0)]
    s = avc.speed_summary({"rows": rows}, flagged={})
    assert s["families"]["blackwell"] == (3, pytest.approx(-0.6))
    assert s["families_without_host_optimizer"]["blackwell"] == (1, pytest.approx(0.1))
    assert s["families_without_host_optimizer"]["hopper"] == (1, pytest.approx(-0.1))  # activation offload stays
    # the same records by parallelism class: (records, median signed, median |error|)
    assert s["parallelism"]["CPU offload"] == (2, pytest.approx(-0.7), pytest.approx(0.7))
    assert s["parallelism"]["DDP"] == (1, pytest.approx(0.1), pytest.approx(0.1))
    assert s["parallelism"]["FSDP2"] == (1, pytest.approx(-0.1), pytest.approx(0.1))
    assert s["frameworks"]["hf"][0] == 4
