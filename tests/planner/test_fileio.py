"""The writer: atomic (temporary folder next to DIR, then rename), refuses a non-empty DIR without --force,
and an error halfway leaves nothing behind (nor touches an existing DIR)."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
import stat

import pytest

from planner.fileio import write_files
from planner.fileio import OutputError
from profiles.errors import InputError as CliError  # every one-line input error

FILES = {"PLAN.md": "# plan\n", "launch.sh": "#!/usr/bin/env bash\n", "sub/ds.json": "{}\n"}


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_writes_new_folder(tmp_path):
    out = tmp_path / "run"
    written = write_files(FILES, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(FILES)
    assert (out / "sub" / "ds.json").read_text() == "{}\n"
    assert os.access(out / "launch.sh", os.X_OK) and not os.access(out / "PLAN.md", os.X_OK)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert _leftovers(tmp_path) == []


def test_empty_existing_folder_is_fine(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_files(FILES, out)
    assert (out / "PLAN.md").exists()


def test_non_empty_folder_refused_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(CliError) as e:
        write_files(FILES, out)
    assert "--force" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert _leftovers(tmp_path) == []


def test_force_replaces_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    write_files(FILES, out, force=True)
    assert not (out / "old.txt").exists() and (out / "PLAN.md").exists()
    assert _leftovers(tmp_path) == []


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(CliError, match="not a folder"):
        write_files(FILES, tmp_path / "run", force=True)


def _failing_open(after: int):
    real = builtins.open
    calls = {"n": 0}

    def fake(file, mode="r", *a, **k):
        if "w" in mode:
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(28, "No space left on device")
        return real(file, mode, *a, **k)

    return fake


def test_failure_halfway_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(builtins, "open", _failing_open(after=1))
    with pytest.raises(OutputError, match="cannot write --out .*: No space left on device"):
        write_files(FILES, out)
    monkeypatch.undo()
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_failure_with_force_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    monkeypatch.setattr(builtins, "open", _failing_open(after=2))
    with pytest.raises(OutputError, match="No space"):
        write_files(FILES, out, force=True)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path) == []


def test_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real = os.rename
    state = {"n": 0}

    def flaky(src, dst):
        state["n"] += 1
        if state["n"] == 2:  # 1: old DIR aside; 2: new folder in -> fails
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OutputError, match="rename failed"):
        write_files(FILES, out, force=True)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", ["../escape.txt", "/abs.txt", "", "a/../../b"])
def test_paths_must_stay_inside(tmp_path, bad):
    with pytest.raises(ValueError, match="inside the output folder"):
        write_files({bad: "x"}, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_empty_existing_folder_is_filled_in_place_not_renamed(tmp_path, monkeypatch):
    """A fresh mount point cannot be renamed away: an empty --out is filled where it is, without --force."""
    out = tmp_path / "mnt"
    out.mkdir()
    inode = out.stat().st_ino
    real = os.rename

    def no_renaming_out(src, dst):
        if Path(src) == out:
            raise OSError(16, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", no_renaming_out)
    write_files(FILES, out)
    monkeypatch.undo()
    assert out.stat().st_ino == inode and (out / "PLAN.md").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_replacing_the_folder_you_stand_in_is_refused(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="holds the current folder"):
        write_files(FILES, ".", force=True)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_a_read_only_place_is_one_line(tmp_path, monkeypatch):
    """Permissions and read-only file systems (simulated: this suite may run as root, who ignores modes)."""
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(OutputError, match="cannot write --out .*run: Permission denied"):
        write_files(FILES, tmp_path / "run")
    monkeypatch.undo()
    assert not (tmp_path / "run").exists()
