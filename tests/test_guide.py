"""docs/guide.md says about its example output only what that output shows: the prose between
``<!-- gen:... -->`` markers is written by benchmarks/regen_guide.py from the same run, and the guide's own
tables agree with it (micro-batches, the communication phrase of sharded adapter plans)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import load_script, run

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"


def _regen():  # noqa: ANN202
    return load_script("benchmarks/regen_guide.py")


@pytest.fixture(scope="module")
def regen():  # noqa: ANN201
    return _regen()


def _micro_batches_claimed(text: str) -> set[int]:
    m = re.search(r"every plan above runs micro-batch (\d+)", text)
    if m:
        return {int(m.group(1))}
    m = re.search(r"the plans above run micro-batch ([\d, ]+) or (\d+)", text)
    assert m, text
    return {int(x) for x in m.group(1).split(",") if x.strip()} | {int(m.group(2))}


def test_takeaways_state_the_runs_micro_batches(regen, capsys):
    code, out, _ = run(["--model", "llama3-8b", "--gpus", "8xA800", "--json"], capsys)
    d = json.loads(out)
    assert _micro_batches_claimed(regen.takeaways(d)) == {p["setup"]["micro_batch"] for p in d["plans"]}
    one = json.loads(out)
    for p in one["plans"]:
        p["setup"]["micro_batch"] = 1
    assert "every plan above runs micro-batch 1" in regen.takeaways(one)


def _section_1(text: str) -> tuple[str, str]:
    start = text.index("## 1.")
    end = text.index("## 2.")
    return text[start:end], re.search(r"```console\n(.*?)```", text[start:end], re.S).group(1)


def test_guide_prose_agrees_with_its_table():
    text = GUIDE.read_text(encoding="utf-8")
    section, console = _section_1(text)
    rows = re.findall(r"^\d+ │ (.+?) +│", console, re.M)
    assert rows
    table_mbs = {int(re.search(r"\b(\d+)x\d+\b", r).group(1)) for r in rows}
    spans = dict(re.findall(r"<!-- gen:(\w+)[^>]*-->(.*?)<!-- /gen -->", section, re.S))
    assert set(spans) == {"label_example", "frozen_example", "takeaways"} and all(spans.values())
    assert _micro_batches_claimed(spans["takeaways"]) == table_mbs
    assert spans["label_example"].startswith(f"`{rows[0].strip()}`")


def test_sharded_adapter_plans_do_not_claim_the_full_fine_tuning_ratio():
    """The ZeRO paper's 1.5x holds for full fine-tuning at one micro-step; adapter plans gather the frozen base
    while ZeRO-2 would reduce only the adapters' gradients. The guide's panels carry the speed model's own
    bytes for each plan."""
    _, console = _section_1(GUIDE.read_text(encoding="utf-8"))
    panels = re.findall(r"╭─ plan \d+ ─+╮\n(.*?)╰", console, re.S)
    sharded = [p for p in panels if "parameters sharded" in p]
    assert sharded
    for p in sharded:
        flat = " ".join(ln.strip("│ ") for ln in p.splitlines())
        assert "1.5x the communication of ZeRO-2" not in flat
        if re.match(r"q?lora", flat):
            ratio = float(re.search(r"([\d,.]+)x the [\d.,]+ GiB ZeRO-2 would send", flat).group(1).replace(",", ""))
            assert ratio > 10, flat
