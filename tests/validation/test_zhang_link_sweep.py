"""benchmarks/evidence_scripts/zhang_link_sweep.py: the sweep docs/speed.md (S23) quotes. Bad input is one line,
and the physics it rests on holds: ZeRO-3 moves 1.5x ZeRO-2's bytes (ZeRO paper, sec. 7), so as the link
slows, the 7B ZeRO-3 record falls below the ZeRO-2 one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
sweep = load_script("benchmarks/evidence_scripts/zhang_link_sweep.py")


def _rows(out: str) -> dict[str, list[float]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| llama"):
            rows[cells[0]] = [float(c.replace(",", "")) for c in cells[1:]]
    return rows


def test_slower_link_puts_zero3_below_zero2_at_7b(capsys):
    assert sweep.main(["--efficiency", "0.9", "0.1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 7  # every throughput record of the source
    z2, z3 = rows["llama2-7b-zero2"], rows["llama2-7b-zero3"]
    assert z2[2] > z3[2]  # columns: measured, link 0.9, link 0.1; at 0.1 ZeRO-3 is the slower
    assert z2[2] < z2[1] and z3[2] < z3[1]  # a slower link never speeds a run up


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2"])
def test_bad_efficiency_is_one_line_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--efficiency", bad])
    assert e.value.code == 2
    assert f"--efficiency {float(bad):g} is not a fraction in (0, 1]" in capsys.readouterr().err
