"""README's two commands are the set-up: CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)]


def test_readme_opens_with_two_commands():
    blocks = _blocks()
    assert "plan --model llama3-8b --gpus 8xA800" in blocks[0]
    assert "pytest" in blocks[1]
    text = (ROOT / "README.md").read_text()
    # the two commands come before any other code block
    assert text.index(blocks[0]) < text.index(blocks[1]) < text.index("## ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "blocks[1]" in ci and "README.md" in ci


def test_torch_pinned():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()
