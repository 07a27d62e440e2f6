"""A regular install (README's first command, ``pip install .``) carries every data file the code reads: each
non-Python file under ``profiles/`` and ``validation/`` matches a ``[tool.setuptools.package-data]`` pattern.
(Before: ``profiles/models/derived/*.yaml`` was left out, so Gemma 3, Llama 4, gpt-oss, Qwen3-Next and GLM-4.5 were
unknown models outside an editable install.)"""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked(package: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", package], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if not p.endswith(".py")]


def test_every_tracked_data_file_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]
    missing = []
    for package, globs in patterns.items():
        files = _tracked(package)
        assert files, package
        for f in files:
            rel = f[len(package) + 1:]
            # setuptools' globs do not cross '/' (fnmatch's '*' does): compare the parts one by one
            if not any(len(g.split("/")) == len(rel.split("/")) and all(
                    fnmatch.fnmatchcase(a, b) for a, b in zip(rel.split("/"), g.split("/"))) for g in globs):
                missing.append(f)
    assert not missing, f"data files a regular install would leave out: {missing}"
