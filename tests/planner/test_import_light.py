"""The planner answers without torch: importing it (and running the main job) loads no heavy package."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "deepspeed", "accelerate", "peft", "pandas", "matplotlib"]


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(m for m in %r if m in sys.modules)))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_planner_does_not_import_torch():
    assert _loaded_after("import planner, planner.engine.memory, planner.engine.speed, planner.search.rank, planner.engine.setup") == []


def test_data_and_select_modules_are_light():
    """The pure statistics and rules, and the commands' modules, import neither torch nor transformers (the reader
    imports transformers only inside the function that loads a tokenizer)."""
    mods = ("planner.engine.datastats", "planner.engine.dataset", "planner.engine.hparams", "planner.search.select", "planner.app.data_io",
            "planner.app.commands.data", "planner.app.commands.select", "profiles.languages")
    assert _loaded_after("import " + ", ".join(mods)) == []


def test_main_job_does_not_import_torch():
    code = (
        "import io, contextlib\nfrom planner.app.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n    main(['--model', 'llama3-8b', '--gpus', '8xA800', '--json'])\n"
    )
    assert _loaded_after(code) == []


def test_a_derived_profile_plans_without_torch(tmp_path, monkeypatch):
    """Issue 13: once derived (plan profiles add), a profile is data: plan uses it without importing torch."""
    from pathlib import Path

    src = Path(__file__).parents[1] / "profiles" / "data" / "derived" / "cohere.yaml"
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / "cohere-0.yaml").write_text(src.read_text())
    monkeypatch.setenv("TUNEPLAN_CACHE", str(tmp_path))
    code = (
        "import io, contextlib\nfrom planner.app.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n    rc = main(['--model', 'cohere', '--gpus', 'A800', '--json'])\n"
        "assert rc == 0, buf.getvalue()\n"
    )
    assert _loaded_after(code) == []
