"""The version of tuneplan that is running: ``plan --version`` and the reports' provenance lines."""

from __future__ import annotations

import functools
import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def tuneplan_version() -> str:
    """``[project] version`` of the source tree this code runs from (a checkout), else the installed
    distribution's version, else ``unknown``. The checkout wins: an editable install elsewhere may be another
    version than the code actually running."""
    try:
        text = PYPROJECT.read_text(encoding="utf-8")
    except OSError:
        text = ""
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if project:
        m = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
        if m:
            return m.group(1)
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("tuneplan")
    except PackageNotFoundError:
        return "unknown"
