"""Parsed profile YAML, kept as JSON in the per-user cache so that ``plan`` does not parse (or import) YAML.

Every ``plan`` run reads the catalogue: about 50 hand-written model profiles, 24 GPU profiles, the headers of the
shipped derived profiles and, for a derived model, its traced inventories. Parsing that YAML (libyaml) and
importing PyYAML took about 0.1 s of a run (0.15 s for a derived model; measured 2026-12-01 on the 2-core
development machine, docs/planner.md "Speed of the planner"); loading the same data as JSON takes a few ms.

What is cached is the *parsed data* (what ``yaml.load`` returned, or what a header reader returned), never a
validated profile: the pydantic models still validate it on every run, so a schema change can never be hidden by
a stale cache. One JSON file per source folder (or per single file), under ``<cache dir>/parsed/`` (the folder
:func:`profiles.cache.cache_dir` names), maps each source file's name to its size, modification time in
nanoseconds and parsed data. A source file whose size or modification time differs from the entry, a new or a
removed file, is parsed again and the JSON rewritten (atomically). The same rule as Python's own bytecode cache
(which keys on the source's size and its modification time in whole seconds); an edit that keeps both the size
and the nanosecond modification time is not seen.

Data is cached only when it survives the JSON round trip unchanged (``json.loads(json.dumps(d)) == d``: no
integer mapping keys, dates or NaN); otherwise that folder is parsed from YAML on every run, as before. A cache
that cannot be read or written (read-only home, a corrupt file) is ignored: the YAML is parsed. Set
``TUNEPLAN_NO_PARSED_CACHE=1`` to bypass the cache altogether.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable

FORMAT = 1
"""Bumped when what the parsers return changes shape (so old cache files are parsed again)."""

Parse = Callable[[Path], Any]


def read_yaml(path: Path) -> Any:
    """The whole file through libyaml's safe loader (PyYAML's pure-Python one when libyaml is absent)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def _enabled() -> bool:
    return os.environ.get("TUNEPLAN_NO_PARSED_CACHE", "") in ("", "0")


def _cache_file(source: Path, kind: str) -> Path:
    """``<cache dir>/parsed/<kind>-<readable tail of the source path>-<crc32 of the whole path>.json``."""
    from profiles.cache import cache_dir

    full = str(source.resolve())
    tail = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(Path(full).parts[-2:])).strip("-")[-60:]
    return cache_dir() / "parsed" / f"{kind}-{tail}-{zlib.crc32(full.encode('utf-8')):08x}.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_cache(cache: Path, kind: str) -> dict[str, Any]:
    try:
        blob = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("kind") != kind:
        return {}
    files = blob.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(cache: Path, kind: str, files: dict[str, Any]) -> None:
    from profiles.cache import write_atomic

    try:
        write_atomic(cache, json.dumps({"format": FORMAT, "kind": kind, "files": files}, separators=(",", ":")))
    except OSError:
        pass  # a read-only or full cache: parse the YAML next time too


def _round_trips(data: Any) -> bool:
    try:
        return json.loads(json.dumps(data)) == data
    except (TypeError, ValueError):
        return False


def _parsed(paths: list[Path], cache: Path, kind: str, parse: Parse) -> list[tuple[Path, Any]]:
    stamps = [_stamp(p) for p in paths]
    old = _read_cache(cache, kind)
    out: list[tuple[Path, Any]] = []
    new: dict[str, Any] = {}
    fresh = len(old) == len(paths)
    for p, stamp in zip(paths, stamps):
        hit = old.get(p.name)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and "data" in hit:
            data = hit["data"]
        else:
            fresh = False
            data = parse(p)
        out.append((p, data))
        new[p.name] = {"stamp": stamp, "data": data}
    if not fresh and all(_round_trips(d) for _, d in out):
        _write_cache(cache, kind, new)
    return out


def parse_dir(directory: Path, parse: Parse, kind: str = "yaml") -> list[tuple[Path, Any]]:
    """``(file, parse(file))`` for every ``*.yaml`` in ``directory``, in file-name order, from the JSON cache
    where each file's size and modification time match. ``kind`` names the parser (files parsed by two parsers
    keep two caches). Errors of ``parse`` propagate (nothing is cached then)."""
    paths = sorted(directory.glob("*.yaml"))
    if not _enabled():
        return [(p, parse(p)) for p in paths]
    return _parsed(paths, _cache_file(directory, kind), kind, parse)


def parse_file(path: Path, parse: Parse = read_yaml, kind: str = "yaml") -> Any:
    """``parse(path)``, from the JSON cache when the file's size and modification time match."""
    if not _enabled():
        return parse(path)
    return _parsed([path], _cache_file(path, kind), kind, parse)[0][1]
