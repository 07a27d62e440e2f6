"""The one place ``plan configs`` (and ``plan data --out``) touch the file system: write a ``{relative path: text
or bytes}`` mapping into DIR.

Atomic per DIR: everything is written into a fresh temporary folder next to DIR (same file system), then that
folder is renamed to DIR. A failure before the rename removes the temporary folder and leaves DIR as it was.
An existing non-empty DIR is refused unless ``force``; with ``force`` the old DIR is moved aside, the new one
renamed in, and only then the old one deleted (if the rename fails, the old DIR is put back).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from planner.errors import CliError

EXECUTABLE = (".sh",)


def _check_relative(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"refusing to write {rel!r}: paths must stay inside the output folder")
    return p


def write_files(files: Mapping[str, str | bytes], out_dir: str | os.PathLike[str], force: bool = False) -> list[Path]:
    """Write ``files`` into ``out_dir`` atomically; return the written paths (sorted).

    Raises :class:`CliError` (one line) when ``out_dir`` exists and is not empty and ``force`` is false, or
    when it exists and is not a folder.
    """
    dest = Path(out_dir)
    rels = {rel: _check_relative(rel) for rel in files}
    if dest.exists() and not dest.is_dir():
        raise CliError(f"--out {dest} exists and is not a folder; choose another path")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise CliError(f"--out {dest} exists and is not empty; pass --force to replace it, or choose another folder")
    parent = dest.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private (0700); the result is an ordinary folder
        for rel, text in files.items():
            path = tmp.joinpath(*rels[rel].parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            binary = isinstance(text, bytes)  # figures (PNG) travel as bytes
            with open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": "\n"})) as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if path.suffix in EXECUTABLE:
                path.chmod(0o755)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(dest.joinpath(*rels[r].parts) for r in files)


def _swap_in(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.resolve().parent))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
