"""The per-user cache of derived model profiles (``plan profiles add`` writes them, ``plan`` reads them).

A derived profile is a :class:`~profiles.schema.ModelProfile` YAML file like the shipped ones, with the
``derived`` section that ``validation.derive`` reads off transformers' model code. Reading the cache is plain
YAML parsing: nothing here imports torch or transformers, so ``plan`` stays fast.

Where: ``$TUNEPLAN_CACHE`` if set, else ``$XDG_CACHE_HOME/tuneplan``, else ``~/.cache/tuneplan`` (the XDG base
directory specification's default), in a ``models/`` folder. One file per derived config:
``<name>-<first 12 hex digits of the config's sha256>.yaml``, so re-deriving the same config replaces its file
and two configs of the same name do not collide. Files are written atomically (a temporary file in the same
folder, then ``os.replace``).

The same folder keeps, in ``parsed/``, the parsed YAML of the profile catalogue as JSON (:func:`parse_dir`,
:func:`parse_file`; see the section at the end of this module), so that ``plan`` neither parses nor imports YAML.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from profiles.atomic import write_atomic as _write_atomic
from profiles.errors import ProfileError, validation_message
from profiles.schema import ModelProfile

# PyYAML is imported where YAML is written or parsed: ``plan`` reads what it parsed before from the JSON cache of
# :func:`parse_dir` / :func:`parse_file` (end of this module)


def _yaml():
    import yaml

    return yaml


def cache_dir() -> Path:
    """The tuneplan cache folder: ``$TUNEPLAN_CACHE``, else ``$XDG_CACHE_HOME/tuneplan``, else
    ``~/.cache/tuneplan``."""
    if os.environ.get("TUNEPLAN_CACHE"):
        return Path(os.environ["TUNEPLAN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tuneplan"
    return Path.home() / ".cache" / "tuneplan"


def models_dir() -> Path:
    return cache_dir() / "models"


def config_sha256(config: dict[str, Any]) -> str:
    """The sha256 of a config dict in canonical JSON (sorted keys, no spaces): the cache key of its profile."""
    import hashlib

    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-") or "model"


def profile_path(profile: ModelProfile) -> Path:
    """Where ``profile`` (a derived one) lives in the cache."""
    assert profile.derived is not None, "only derived profiles are cached"
    return models_dir() / f"{_slug(profile.name)}-{profile.derived.config_sha256[:12]}.yaml"


def profile_yaml(profile: ModelProfile, header: str = "") -> str:
    """A profile as YAML in the field order of the schema (what the shipped files look like)."""
    yaml = _yaml()
    _Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    data = profile.model_dump(mode="json", exclude_defaults=True)
    data = {"name": data.pop("name"), "source": data.pop("source"), **data}
    derived = data.pop("derived", None)
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    if derived is not None:  # last, with leaf lists (fits) in flow style: compact and fast to parse
        body += yaml.dump({"derived": derived}, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True,
                          default_flow_style=None)
    return header + body


def write_atomic(path: Path, text: str) -> None:
    """Write a cache file atomically (:func:`profiles.atomic.write_atomic`), private to the user (0600)."""
    _write_atomic(path, text, private=True)


def save(profile: ModelProfile) -> Path:
    """Write a derived profile into the cache (atomically) and forget the cached index; returns its path."""
    path = profile_path(profile)
    header = (f"# {profile.name}: derived by `plan profiles add` from {profile.source}\n"
              f"# transformers {profile.derived.transformers_version}, torch {profile.derived.torch_version}; "
              "regenerate with the same command, do not edit\n")
    write_atomic(path, profile_yaml(profile, header))
    forget()
    return path


def forget() -> None:
    """Drop what this process has read of the cache (after a write, or when ``$TUNEPLAN_CACHE`` changes)."""
    cached_profiles.cache_clear()
    cached_headers.cache_clear()
    load_cached.cache_clear()


def load_file(path: Path) -> ModelProfile:
    """One profile file; :class:`ProfileError` (one line) if it is not a valid profile."""
    try:
        data = parse_file(path)
    except OSError as e:
        raise ProfileError(f"{path}: cannot read the profile ({e})") from e
    except Exception as e:
        if isinstance(e, _yaml().YAMLError):
            raise ProfileError(f"{path}: cannot read the profile ({e})") from e
        raise
    try:
        return ModelProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"{path}: {validation_message(e, 'profile')} (re-derive it with plan profiles add)") from e


@functools.cache
def cached_profiles() -> tuple[tuple[ModelProfile, Path], ...]:
    """Every readable derived profile in the cache, with its file, in file-name order. A file that does not
    validate (an older schema) is skipped here and reported by ``plan profiles models``."""
    d = models_dir()
    if not d.is_dir():
        return ()
    out = []
    for path in sorted(d.glob("*.yaml")):
        try:
            out.append((load_cached(path), path))
        except ProfileError:
            continue
    return tuple(out)


def broken_files() -> list[tuple[Path, str]]:
    """Cache files that do not validate, with the reason (for ``plan profiles models``)."""
    d = models_dir()
    if not d.is_dir():
        return []
    out = []
    for path in sorted(d.glob("*.yaml")):
        try:
            load_file(path)
        except ProfileError as e:
            out.append((path, str(e)))
    return out


_SHA = re.compile(r"^\s+config_sha256: ([0-9a-f]{64})\s*$", re.M)


def read_header(path: Path) -> dict[str, Any] | None:
    """A derived profile file's top-level fields without its ``derived`` section (which is written last), plus
    ``config_sha256``: enough to index names, aliases and configs without parsing the traced inventories."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    head, sep, rest = text.partition("\nderived:")
    yaml = _yaml()
    try:
        data = yaml.load(head, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or "name" not in data:
        return None
    m = _SHA.search(rest) if sep else None
    data["config_sha256"] = m.group(1) if m else None
    return data


@functools.cache
def cached_headers() -> tuple[tuple[dict[str, Any], Path], ...]:
    """(header, file) of every profile file in the cache, in file-name order (no inventory parsed)."""
    d = models_dir()
    if not d.is_dir():
        return ()
    return tuple((h, path) for path, h in parse_dir(d, read_header, "header") if h is not None)


@functools.cache
def load_cached(path: Path) -> ModelProfile:
    """One cache file, parsed and validated once per process."""
    return load_file(path)


def find_by_config(config: dict[str, Any]) -> tuple[ModelProfile, Path] | None:
    """The cached profile derived from exactly this config (same canonical sha256) by the current derivation
    (:data:`profiles.schema.DERIVATION`), if any: one from an older derivation is a miss, so the config is derived
    again and its file replaced."""
    key = config_sha256(config)
    for header, path in cached_headers():
        if header.get("config_sha256") == key:
            try:
                prof = load_cached(path)
            except ProfileError:
                return None
            return (prof, path) if not stale(prof) else None
    return None


def stale(profile: ModelProfile) -> bool:
    """Whether a derived profile was written by an older derivation than this tuneplan's."""
    from profiles.schema import DERIVATION

    return profile.derived is not None and profile.derived.derivation < DERIVATION


# ---- parsed profile YAML, kept as JSON ----
# Parsed profile YAML, kept as JSON in the per-user cache so that ``plan`` does not parse (or import) YAML.
#
# Every ``plan`` run reads the catalogue: about 50 hand-written model profiles, 24 GPU profiles, the headers of the
# shipped derived profiles and, for a derived model, its traced inventories. Parsing that YAML (libyaml) and
# importing PyYAML took about 0.1 s of a run (0.15 s for a derived model; measured 2026-12-01 on the 2-core
# development machine, docs/planner.md "Speed of the planner"); loading the same data as JSON takes a few ms.
#
# What is cached is the *parsed data* (what ``yaml.load`` returned, or what a header reader returned), never a
# validated profile: the pydantic models still validate it on every run, so a schema change can never be hidden by
# a stale cache. One JSON file per source folder (or per single file), under ``<cache dir>/parsed/`` (the folder
# :func:`profiles.cache.cache_dir` names), maps each source file's name to its size, modification time in
# nanoseconds and parsed data. A source file whose size or modification time differs from the entry, a new or a
# removed file, is parsed again and the JSON rewritten (atomically). The same rule as Python's own bytecode cache
# (which keys on the source's size and its modification time in whole seconds); an edit that keeps both the size
# and the nanosecond modification time is not seen.
#
# Data is cached only when it survives the JSON round trip unchanged (``json.loads(json.dumps(d)) == d``: no
# integer mapping keys, dates or NaN); otherwise that folder is parsed from YAML on every run, as before. A cache
# that cannot be read or written (read-only home, a corrupt file) is ignored: the YAML is parsed. Set
# ``TUNEPLAN_NO_PARSED_CACHE=1`` to bypass the cache altogether.

PARSED_FORMAT = 1
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
    if not isinstance(blob, dict) or blob.get("format") != PARSED_FORMAT or blob.get("kind") != kind:
        return {}
    files = blob.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(cache: Path, kind: str, files: dict[str, Any]) -> None:
    try:
        write_atomic(cache, json.dumps({"format": PARSED_FORMAT, "kind": kind, "files": files}, separators=(",", ":")))
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
