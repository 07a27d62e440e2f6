"""The one atomic writer: every file tuneplan writes goes through :func:`write_files` (a folder of files) or
:func:`atomic_write_text` (one file). Used by the application layer (``plan configs``, ``plan capacity --out``,
``plan profiles add``) and by :mod:`validation` (measurements, reports, calibration files); it imports nothing
of ours but the error base class.

``write_files`` is atomic per folder: everything is written into a temporary folder, then moved into place.

* A new folder: the temporary folder is made beside it and renamed to it.
* An existing *empty* folder (a fresh mount point, a folder made by hand): the temporary folder is made
  *inside* it (same file system, even for a mount point) and its entries are moved up; the folder itself is
  never renamed, so mount points and folders others hold open work.
* An existing non-empty folder needs ``force``; its old entries are first moved into a hidden folder inside it,
  the new ones moved in, and only then the old ones deleted (on a failure the old entries are put back).
  A folder that holds the current working directory is refused: replacing it would delete where you stand.

Errors are one-line :class:`OutputError` messages naming the path: an empty path, a path that is a file (or
lies below one), a folder that cannot be written (permissions, a read-only file system), a refused
replacement. :func:`check_writable` and :func:`check_output_folder` say so before any work is done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from profiles.atomic import write_atomic
from profiles.errors import InputError

EXECUTABLE = (".sh",)
"""Suffixes written with the executable bit."""


class OutputError(InputError):
    """An output path that cannot be written as asked (one line, names the path)."""


def _check_relative(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"refusing to write {rel!r}: paths must stay inside the output folder")
    return p


def _os_error(what: str, path: Path, e: OSError) -> OutputError:
    return OutputError(f"cannot write {what} {path}: {e.strerror or e}")


def check_writable(out_dir: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse, before any work, a folder that cannot be written: an empty path, a path that is a file or lies
    below one, a folder (or, for a new one, the nearest existing folder above it) without write permission or
    on a read-only file system. Creates nothing. Returns the path."""
    if not str(out_dir).strip():
        raise OutputError(f"{what} is empty; give a folder, e.g. {what} runs/plan1")
    dest = Path(out_dir)
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{what} {dest} exists and is not a folder; choose another path")
    base = dest.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"{what} {dest}: {base} is a file, not a folder; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(base) else "no write permission"
        raise OutputError(f"cannot write {what} {dest}: {base} is not writable ({why}); choose another folder")
    return dest


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_output_folder(out_dir: str | os.PathLike[str], force: bool, what: str = "--out") -> Path:
    """Refuse, before any work, what :func:`write_files` would refuse: what :func:`check_writable` refuses,
    a non-empty folder without ``force``, a folder holding the working directory. Returns the path."""
    dest = check_writable(out_dir, what)
    if dest.is_dir():
        try:
            non_empty = any(dest.iterdir())
        except OSError as e:
            raise _os_error(what, dest, e) from None
        if non_empty and not force:
            raise OutputError(f"{what} {dest} exists and is not empty; pass --force to replace it, or choose another folder")
        if non_empty and Path.cwd().resolve().is_relative_to(dest.resolve()):
            raise OutputError(f"{what} {dest} holds the current folder; replacing it would delete where you stand; "
                              "choose a new folder")
    return dest


def write_files(files: Mapping[str, str | bytes], out_dir: str | os.PathLike[str], force: bool = False,
                what: str = "--out") -> list[Path]:
    """Write ``files`` (relative path -> text or bytes) into ``out_dir`` atomically; return the written paths
    (sorted). See the module docstring for what happens to an existing folder."""
    dest = check_output_folder(out_dir, force, what)
    rels = {rel: _check_relative(rel) for rel in files}
    try:
        if dest.is_dir():
            _write_into_existing(files, rels, dest)
        else:
            parent = dest.resolve().parent
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
            try:
                _mode_like_mkdir(tmp)
                _fill(tmp, files, rels)
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as e:
        raise _os_error(what, dest, e) from None
    return sorted(dest.joinpath(*rels[r].parts) for r in files)


def _mode_like_mkdir(path: Path) -> None:
    """``mkdtemp`` makes folders private (0700); give the result the mode ``mkdir`` would."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def _fill(folder: Path, files: Mapping[str, str | bytes], rels: Mapping[str, PurePosixPath]) -> None:
    for rel, content in files.items():
        path = folder.joinpath(*rels[rel].parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.suffix in EXECUTABLE:
            path.chmod(0o755)


def _write_into_existing(files: Mapping[str, str | bytes], rels: Mapping[str, PurePosixPath], dest: Path) -> None:
    """Stage inside ``dest``, move the old entries aside inside ``dest``, move the new ones up, drop the old."""
    tmp = Path(tempfile.mkdtemp(prefix=".tuneplan-new-", dir=dest))
    old = Path(tempfile.mkdtemp(prefix=".tuneplan-old-", dir=dest))
    staging = {tmp.name, old.name}
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        _mode_like_mkdir(tmp)
        _fill(tmp, files, rels)
        for entry in list(dest.iterdir()):
            if entry.name not in staging:
                os.rename(entry, old / entry.name)
                moved_old.append(entry.name)
        for entry in list(tmp.iterdir()):
            os.rename(entry, dest / entry.name)
            moved_new.append(entry.name)
    except BaseException:
        for name in moved_new:
            target = dest / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        for name in moved_old:
            os.rename(old / name, dest / name)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``: a reader sees
    the old file or the new one, never half of either. A file system error is a one-line :class:`OutputError`
    naming the path."""
    path = Path(path)
    try:
        _atomic_write_text(path, text)
    except OSError as e:
        raise _os_error("file", path, e) from None


def _atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, text)
