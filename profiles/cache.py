"""The per-user cache of derived model profiles (``plan profiles add`` writes them, ``plan`` reads them).

A derived profile is a :class:`~profiles.schema.ModelProfile` YAML file like the shipped ones, with the
``derived`` section that ``validation.derive`` reads off transformers' model code. Reading the cache is plain
YAML parsing: nothing here imports torch or transformers, so ``plan`` stays fast.

Where: ``$TUNEPLAN_CACHE`` if set, else ``$XDG_CACHE_HOME/tuneplan``, else ``~/.cache/tuneplan`` (the XDG base
directory specification's default), in a ``models/`` folder. One file per derived config:
``<name>-<first 12 hex digits of the config's sha256>.yaml``, so re-deriving the same config replaces its file
and two configs of the same name do not collide. Files are written atomically (a temporary file in the same
folder, then ``os.replace``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from profiles.errors import ProfileError
from profiles.schema import ModelProfile

# PyYAML is imported where YAML is written or parsed: ``plan`` reads what it parsed before from the JSON cache of
# :mod:`profiles.parsed_cache`


def _yaml():  # noqa: ANN202
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
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    from profiles.parsed_cache import parse_file

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
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "profile"
        raise ProfileError(f"{path}: {where}: {err['msg']} (re-derive it with plan profiles add)") from e


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
    from profiles.parsed_cache import parse_dir

    d = models_dir()
    if not d.is_dir():
        return ()
    return tuple((h, path) for path, h in parse_dir(d, read_header, "header") if h is not None)


@functools.cache
def load_cached(path: Path) -> ModelProfile:
    """One cache file, parsed and validated once per process."""
    return load_file(path)


def find_by_config(config: dict[str, Any]) -> tuple[ModelProfile, Path] | None:
    """The cached profile derived from exactly this config (same canonical sha256), if any."""
    key = config_sha256(config)
    for header, path in cached_headers():
        if header.get("config_sha256") == key:
            try:
                return load_cached(path), path
            except ProfileError:
                return None
    return None
