"""Golden snapshots: every file ``plan configs --trainer all`` writes for a handful of hand-made plans, stored
under tests/planner/snapshots/<case>/. A difference fails the test; nothing is ever rewritten silently.

To accept a deliberate change, regenerate and review the diff:

    TUNEPLAN_UPDATE_SNAPSHOTS=1 python -m pytest tests/planner/test_emit_snapshots.py
    git diff tests/planner/snapshots
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest

from planner.emit import build_files, trainers_for
from tests.planner.data.emit_cases import CASES, target

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("TUNEPLAN_UPDATE_SNAPSHOTS") == "1"


@pytest.mark.parametrize("case", list(CASES))
def test_snapshot(case):
    t = target(case)
    files = build_files(t, trainers_for(t, "all")).files
    folder = SNAPSHOTS / case
    if UPDATE:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for rel, text in files.items():
            (folder / rel).write_text(text, encoding="utf-8")
        return
    if not folder.is_dir():
        pytest.fail(f"no snapshot for {case}; create it with TUNEPLAN_UPDATE_SNAPSHOTS=1 and review it")
    stored = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert stored == set(files), f"files differ: missing {sorted(stored - set(files))}, new {sorted(set(files) - stored)}"
    for rel, text in files.items():
        old = (folder / rel).read_text(encoding="utf-8")
        if old != text:
            diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), f"snapshot/{rel}", f"now/{rel}"))
            pytest.fail(f"{case}/{rel} changed (TUNEPLAN_UPDATE_SNAPSHOTS=1 to accept):\n{diff[:4000]}")
