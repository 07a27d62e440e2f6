"""Shared test helpers (imported as ``tests.helpers``)."""

from __future__ import annotations

from planner.app.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the ``plan`` CLI in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def read_only(monkeypatch, folder) -> None:  # noqa: ANN001
    """Make ``folder`` (and everything below it) behave like a read-only file system for this test, even when
    the tests run as root (which ignores permission bits): ``os.access`` says not writable, and creating,
    opening for writing, renaming or replacing anything below it raises ``EROFS``."""
    import builtins
    import errno
    import io
    import os
    from pathlib import Path

    root = Path(folder).resolve()

    def below(path) -> bool:  # noqa: ANN001
        try:
            p = Path(os.fsdecode(path)).absolute().resolve()
        except (TypeError, ValueError):
            return False
        return p == root or root in p.parents

    def refuse(path) -> OSError:  # noqa: ANN001
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_access, real_mkdir, real_open, real_rename, real_replace = os.access, os.mkdir, os.open, os.rename, os.replace
    real_io_open = io.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def access(path, mode, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if mode & os.W_OK and below(path):
            return False
        return real_access(path, mode, *a, **kw)

    def mkdir(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if below(path):
            raise refuse(path)
        return real_mkdir(path, *a, **kw)

    def os_open(path, flags, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if flags & write_flags and below(path):
            raise refuse(path)
        return real_open(path, flags, *a, **kw)

    def rename(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if below(src) or below(dst):
            raise refuse(dst)
        return real_rename(src, dst, *a, **kw)

    def replace(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if below(src) or below(dst):
            raise refuse(dst)
        return real_replace(src, dst, *a, **kw)

    def io_open(file, mode="r", *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and below(file):
            raise refuse(file)
        return real_io_open(file, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(builtins, "open", io_open)
    monkeypatch.setattr(io, "open", io_open)


def proportioned(name: str, **kw):  # noqa: ANN003, ANN201
    """A small copy of a shipped profile whose vocabulary-to-width ratio is a real model's (the LM head outweighs
    a block, as in the full model): width 512, 2 blocks, vocabulary 32,768."""
    from profiles.registry import get_model

    upd = dict(hidden_size=512, intermediate_size=1408, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128,
               vocab_size=32768)
    upd.update(kw)
    return get_model(name).model_copy(update=upd)


def load_script(relpath: str):  # noqa: ANN201
    """A script of the repository (``benchmarks/...py``) imported as a module named after its file, and registered
    in ``sys.modules`` (dataclasses and pickling look their module up there)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod
