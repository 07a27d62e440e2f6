"""Golden snapshots: every file ``plan configs --trainer all`` writes for a handful of hand-made plans, stored
under tests/planner/emit/snapshots/<case>/. A difference in what a trainer *reads* fails the test; nothing is ever
rewritten silently.

What is compared is the settings, not the prose (a wording edit must not break it): JSON and YAML files as
parsed data without comments, ``_comment`` keys or the plan's ``reasons`` / ``assumptions`` text; shell
scripts without comment and ``echo`` lines. PLAN.md is prose and is checked by tests/planner/emit/test_plan_md.py.

To accept a deliberate change, regenerate and review the diff:

    TUNEPLAN_UPDATE_SNAPSHOTS=1 python -m pytest tests/planner/emit/test_snapshots.py
    git diff tests/planner/emit/snapshots
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from planner.emit import build_files, trainers_for
from tests.planner.emit.data.emit_cases import CASES, target

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("TUNEPLAN_UPDATE_SNAPSHOTS") == "1"


PROSE_KEYS = ("_comment", "reasons", "assumptions")


def _strip(x):  # noqa: ANN001, ANN202
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if not str(k).startswith(PROSE_KEYS)}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def settings(rel: str, text: str) -> str | None:
    """What a trainer reads from a generated file, as comparable text (None: prose, not compared here)."""
    if rel.endswith(".md"):
        return None
    if rel.endswith(".json"):
        return json.dumps(_strip(json.loads(text)), indent=1, sort_keys=True) + "\n"
    if rel.endswith((".yaml", ".yml")):
        return json.dumps(_strip(yaml.safe_load(text)), indent=1, sort_keys=True, default=str) + "\n"
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "echo "))]
    return "\n".join(lines) + "\n"


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
        old, text = settings(rel, (folder / rel).read_text(encoding="utf-8")), settings(rel, text)
        if old != text:
            diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), f"snapshot/{rel}", f"now/{rel}"))
            pytest.fail(f"{case}/{rel} changed (TUNEPLAN_UPDATE_SNAPSHOTS=1 to accept):\n{diff[:4000]}")
