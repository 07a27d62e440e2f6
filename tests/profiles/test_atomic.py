"""profiles.atomic.write_atomic, the one atomic writer (planner.fileio, the profile cache and --plot use it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from profiles.atomic import write_atomic


def test_text_and_bytes_round_trip_with_the_usual_permissions(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a" / "t.txt", "héllo\n")
        write_atomic(tmp_path / "b.bin", b"\x00\xff")
    finally:
        os.umask(umask)
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644


def test_private_files_keep_0600(tmp_path: Path):
    write_atomic(tmp_path / "p.yaml", "x", private=True)
    assert stat.S_IMODE((tmp_path / "p.yaml").stat().st_mode) == 0o600


def test_a_failed_replace_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "f.txt"
    write_atomic(target, "old")

    def broken(src, dst):  # noqa: ANN001
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
