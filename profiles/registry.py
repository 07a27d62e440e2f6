"""Load, validate and look up the shipped model and GPU profiles, and resolve ``--model`` arguments.

Lookup is case-insensitive over names and aliases, with separators folded (``llama3-8b``,
``Llama-3-8B``, ``meta-llama/Meta-Llama-3-8B`` all resolve). An unknown name raises :class:`ProfileError`
with the closest matches. ``--model`` may also be a model profile YAML file, a path to a ``config.json``, a
folder holding one, or a hub id whose config sits in the local Hugging Face cache (see
:mod:`profiles.hf_config`).

Order: shipped profiles by name, then derived profiles in the per-user cache (``plan profiles add``,
:mod:`profiles.cache`) by name; a config file is matched to the derived profile made from exactly that config
when one is cached, else read by the hand-written mapping of its ``model_type``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pydantic import ValidationError

from profiles.errors import ProfileError, unknown_name_message, validation_message
from profiles.cache import parse_dir, parse_file, read_yaml
from profiles.schema import GpuProfile, ModelProfile

PROFILES_DIR = Path(__file__).resolve().parent
MODELS_DIR = PROFILES_DIR / "models"
DERIVED_DIR = MODELS_DIR / "derived"
"""Shipped profiles derived from the model code (benchmarks/derive_catalogue.py): indexed by their header, parsed
only when used (their traced inventories are tens of kB of YAML each)."""
GPUS_DIR = PROFILES_DIR / "gpus"


def fold(name: str) -> str:
    """Normalise a name for lookup: lower case, no separators (``Llama-3.1_8B`` -> ``llama318b``)."""
    return re.sub(r"[\s_\-\.×]+", "", name.strip().lower())


def _load_dir(directory: Path, cls: type) -> list:
    out = []
    for path, data in parse_dir(directory, read_yaml):  # parsed once, then from the JSON cache (cache.parse_dir)
        try:
            out.append(cls.model_validate(data))
        except ValidationError as e:  # a broken shipped profile is a bug: say which file
            raise RuntimeError(f"invalid profile {path}: {e}") from e
    return out


@functools.cache
def handwritten_models() -> tuple[ModelProfile, ...]:
    """The shipped profiles of the hand-written families (``profiles/models/*.yaml``), validated."""
    return tuple(_load_dir(MODELS_DIR, ModelProfile))


@functools.cache
def shipped_derived_headers() -> tuple[tuple[dict, Path], ...]:
    """(header, file) of every shipped derived profile (``profiles/models/derived/*.yaml``), inventories unparsed."""
    from profiles.cache import read_header

    out = []
    for path, h in parse_dir(DERIVED_DIR, read_header, "header"):
        if h is None:
            raise RuntimeError(f"invalid profile {path}: no readable header")
        out.append((h, path))
    return tuple(out)


@functools.cache
def _load_shipped_derived(path: Path) -> ModelProfile:
    return _load_dir_file(path)


def _load_dir_file(path: Path) -> ModelProfile:
    data = parse_file(path, read_yaml)
    try:
        return ModelProfile.model_validate(data)
    except ValidationError as e:  # a broken shipped profile is a bug: say which file
        raise RuntimeError(f"invalid profile {path}: {e}") from e


@functools.cache
def all_models() -> tuple[ModelProfile, ...]:
    """Every shipped model profile, validated: the hand-written families', then the derived ones (parsing these
    takes a moment: name lookups use :func:`get_model`, which parses only the profile asked for)."""
    return handwritten_models() + tuple(_load_shipped_derived(p) for _, p in shipped_derived_headers())


@functools.cache
def all_gpus() -> tuple[GpuProfile, ...]:
    """Every shipped GPU profile, validated, in file-name order."""
    return tuple(_load_dir(GPUS_DIR, GpuProfile))


def _index(items: tuple, kind: str) -> dict[str, object]:
    idx: dict[str, object] = {}
    for it in items:
        keys = [it.name, *it.aliases]
        if getattr(it, "hf_id", None):
            keys += [it.hf_id, it.hf_id.split("/")[-1]]
        for k in keys:
            f = fold(k)
            prev = idx.get(f)
            if prev is not None and prev is not it:
                raise RuntimeError(f"{kind} alias {k!r} names both {prev.name} and {it.name}")
            idx[f] = it
    return idx


@functools.cache
def _model_index() -> dict[str, ModelProfile | Path]:
    """Folded names, aliases and hub ids of every shipped profile -> the profile (hand-written) or its file
    (derived, parsed on first use)."""
    idx: dict[str, ModelProfile | Path] = dict(_index(handwritten_models(), "model"))  # type: ignore[arg-type]
    for h, path in shipped_derived_headers():
        keys = [h["name"], *(h.get("aliases") or ())]
        if h.get("hf_id"):
            keys += [h["hf_id"], h["hf_id"].split("/")[-1]]
        for k in keys:
            f = fold(k)
            prev = idx.get(f)
            if prev is not None and prev != path:
                other = prev.name if isinstance(prev, ModelProfile) else prev.stem
                raise RuntimeError(f"model alias {k!r} names both {other} and {h['name']}")
            idx[f] = path
    return idx


def _shipped(name: str) -> ModelProfile | None:
    hit = _model_index().get(fold(name))
    if isinstance(hit, Path):
        return _load_shipped_derived(hit)
    return hit


@functools.cache
def _gpu_index() -> dict[str, GpuProfile]:
    return _index(all_gpus(), "GPU")  # type: ignore[return-value]


def _headers() -> list[dict]:
    from profiles.cache import cached_headers

    return [h for h, _ in shipped_derived_headers()] + [h for h, _ in cached_headers()]


def model_names() -> list[str]:
    heads = _headers()
    return ([m.name for m in handwritten_models()] + [h["name"] for h in heads]
            + [a for m in handwritten_models() for a in m.aliases] + [a for h in heads for a in h.get("aliases") or ()])


def _cached_index() -> dict[str, Path]:
    """Derived profiles in the cache by folded name, alias and hub id -> their file; a shipped name is never
    shadowed (shipped names are looked up first)."""
    from profiles.cache import cached_headers

    idx: dict[str, Path] = {}
    for h, path in cached_headers():
        keys = [h["name"], *(h.get("aliases") or ())] + ([h["hf_id"], h["hf_id"].split("/")[-1]]
                                                           if h.get("hf_id") else [])
        for k in keys:
            idx.setdefault(fold(k), path)
    return idx


def origin(m: ModelProfile) -> str:
    """Where a profile came from: ``shipped``, ``shipped (derived)`` or ``derived: <cache file>``;
    ``config.json`` for one read from a config file by the hand-written mapping."""
    from profiles.cache import cached_headers

    if any(m is x for x in handwritten_models()):
        return "shipped"
    sha = m.derived.config_sha256 if m.derived is not None else None
    if sha and any(h.get("config_sha256") == sha and h["name"] == m.name for h, _ in shipped_derived_headers()):
        return "shipped (derived)"
    for h, path in cached_headers():
        if sha and h.get("config_sha256") == sha:
            from profiles.cache import stale

            return f"derived: {path}" + (" (stale: derived by an older tuneplan; run plan profiles add again)"
                                         if stale(m) else "")
    return "config.json"


def gpu_names() -> list[str]:
    return [g.name for g in all_gpus()] + [a for g in all_gpus() for a in g.aliases]


def get_gpu(name: str) -> GpuProfile:
    """A shipped GPU by name or alias (``A800``, ``h100``, ``4090``); :class:`ProfileError` if unknown."""
    g = _gpu_index().get(fold(name))
    if g is None:
        raise ProfileError(unknown_name_message("GPU", name, gpu_names(), "plan profiles gpus"))
    return g


def local_model_dir(model: ModelProfile) -> str | None:
    """The folder a profile was read from, absolute, when ``--model`` named a local ``config.json`` or a folder
    holding one (:func:`profiles.hf_config.profile_from_config_file` records the file's absolute path as the
    profile's ``source``): what a trainer's ``from_pretrained`` loads. None for shipped profiles, hub ids (a
    cached hub id loads by its id) and anything whose source is a URL."""
    if model.hf_id or "://" in model.source:
        return None
    p = Path(model.source)
    return str(p.parent) if p.is_absolute() and p.suffix == ".json" else None


def read_model_profile(path: str | Path) -> ModelProfile:
    """A :class:`ModelProfile` YAML file (the format of ``profiles/models/*.yaml``); :class:`ProfileError` (one
    line) if it cannot be read, is not YAML, or does not validate."""
    import yaml

    p = Path(path).expanduser()
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ProfileError(f"no such model profile file {str(path)!r}") from None
    except OSError as e:
        raise ProfileError(f"cannot read model profile {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"model profile {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ProfileError(f"model profile {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"model profile {path}: expected a mapping of ModelProfile fields "
                           f"(see profiles/models/*.yaml), got {type(data).__name__}")
    try:
        return ModelProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"invalid model profile {path}: {validation_message(e)}") from None


def get_model(name: str) -> ModelProfile:
    """Resolve ``--model``: a shipped name or alias, a model profile YAML file (``*.yaml``, the format of
    ``profiles/models/``), a ``config.json`` path or folder, a cached hub id, or a derived profile in the cache."""
    if not name.strip():
        raise ProfileError("empty model name; give a name such as llama3-8b (list all: plan profiles models), "
                           "a config.json path or a folder holding one")
    m = _shipped(name)
    if m is not None:
        return m
    if Path(name).suffix.lower() in (".yaml", ".yml"):
        return read_model_profile(name)
    from profiles.hf_config import find_config, profile_from_config_file

    path = find_config(name)
    if path is not None:
        cached = _cached_for_file(path)
        return cached if cached is not None else profile_from_config_file(path)
    hit = _cached_index().get(fold(name))
    if hit is not None:
        from profiles.cache import load_cached

        return load_cached(hit)
    looks_like_path = name.endswith(".json") or name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if looks_like_path:
        p = Path(name).expanduser()
        if not p.exists():
            raise ProfileError(f"no such file or folder {name!r} (give a config.json path, a folder holding one, or a model name)")
        raise ProfileError(f"no config.json in {name!r} (give a config.json path, a folder holding one, or a model name)")
    raise ProfileError(
        unknown_name_message("model", name, model_names(), "plan profiles models")
        + "; or pass a config.json path, a folder holding one, or a hub id in the local HF cache"
    )


def _cached_for_file(path: Path) -> ModelProfile | None:
    """The cached derived profile made from exactly this config file (same canonical sha256), if any."""
    import json

    from profiles.cache import find_by_config

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # the hand-written reader reports the problem
    if not isinstance(data, dict):
        return None
    hit = find_by_config(data)
    return hit[0] if hit else None
