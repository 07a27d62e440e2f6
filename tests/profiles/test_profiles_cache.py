"""The per-user cache of derived profiles and how ``--model`` resolves against it (no torch here).

Derived profiles come from ``tests/profiles/data/derived`` (made by ``benchmarks/derive_configs.py`` from the
small configs in ``tests/profiles/data/arch_configs``); every test points ``$TUNEPLAN_CACHE`` at a tmp dir.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from profiles import cache
from profiles.errors import ProfileError
from profiles.registry import get_model, origin
from tests.helpers import run

DATA = Path(__file__).parent / "data"
DERIVED = DATA / "derived"
CONFIGS = DATA / "arch_configs"


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEPLAN_CACHE", str(tmp_path / "cache"))
    cache.forget()
    yield tmp_path / "cache"
    cache.forget()


def derived(name: str):
    return cache.load_file(DERIVED / f"{name}.yaml")


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("TUNEPLAN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TUNEPLAN_CACHE")
    assert cache.cache_dir() == tmp_path / "x" / "tuneplan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "tuneplan"


def test_save_load_round_trip(tmp_cache: Path):
    p = derived("granite")
    path = cache.save(p)
    assert path.parent == tmp_cache / "models" and path.name.startswith("granite-")
    assert path.name.endswith(f"{p.derived.config_sha256[:12]}.yaml")
    assert not [f for f in path.parent.iterdir() if f.name.startswith(".")], "no temporary file left behind"
    assert cache.load_file(path) == p
    assert [m for m, _ in cache.cached_profiles()] == [p]


def test_writes_are_atomic(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch):
    p = derived("granite")
    path = cache.save(p)
    before = path.read_text()

    def broken_replace(src, dst):  # noqa: ANN001
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        cache.save(p.model_copy(update={"notes": "changed"}))
    assert path.read_text() == before
    assert [f.name for f in path.parent.iterdir()] == [path.name]


def test_resolution_order(tmp_cache: Path):
    p = derived("granite")
    with pytest.raises(ProfileError, match="unknown model 'granite'"):
        get_model("granite")
    cache.save(p)
    assert get_model("granite") == p  # by name, after the shipped ones
    assert get_model("llama3-8b").derived is None  # a shipped name is never shadowed
    assert origin(get_model("granite")).startswith("derived: ") and str(tmp_cache) in origin(get_model("granite"))
    assert origin(get_model("llama3-8b")) == "shipped"


def test_a_config_file_resolves_to_its_derived_profile(tmp_cache: Path, tmp_path: Path):
    """The config a profile was derived from resolves to it; an edited config does not."""
    cfg = json.loads((CONFIGS / "granite.json").read_text())
    path = tmp_path / "granite" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    with pytest.raises(ProfileError, match="plan profiles add"):
        get_model(str(path))  # granite has no hand-written mapping
    cache.save(derived("granite"))
    assert get_model(str(path)).derived is not None
    path.write_text(json.dumps(cfg | {"num_hidden_layers": 3}))
    with pytest.raises(ProfileError, match="no hand-written mapping"):
        get_model(str(path))


def test_a_broken_cache_file_is_skipped_and_reported(tmp_cache: Path, capsys):
    cache.save(derived("granite"))
    bad = tmp_cache / "models" / "old-000000000000.yaml"
    bad.write_text("name: old\nsource: https://example.org/x\n")
    cache.forget()
    assert [m.name for m, _ in cache.cached_profiles()] == ["granite"]
    code, out, err = run(["profiles", "models"], capsys)
    flat = out.replace("\n", "")
    assert code == 0 and "skipped" in flat and "old-000000000000.yaml" in flat


def test_profiles_list_says_where_each_profile_came_from(tmp_cache: Path, capsys):
    cache.save(derived("granite"))
    code, out, _ = run(["profiles", "models", "--json"], capsys)
    assert code == 0
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert models["Llama-3-8B"]["origin"] == "shipped"
    assert models["granite"]["origin"].startswith("derived: ")
    assert any(m["origin"] == "shipped (derived)" for m in models.values())


def test_estimate_states_the_inventory_source_and_defaults(tmp_cache: Path, capsys):
    cache.save(derived("granite"))
    code, out, _ = run(["estimate", "--model", "granite", "--gpus", "A800", "--seq", "512", "--json"], capsys)
    assert code == 0
    est = json.loads(out)
    assumptions = " ".join(est["memory"]["assumptions"] if "memory" in est else est["assumptions"])
    assert "inventory traced on transformers" in assumptions and "GraniteForCausalLM" in assumptions


def test_profiles_add_without_a_model_is_one_line(capsys):
    code, _, err = run(["profiles", "add"], capsys)
    assert code == 2 and err.count("\n") == 1 and "needs a MODEL" in err


def test_profiles_add_of_a_missing_file_is_one_line(capsys, tmp_path: Path):
    pytest.importorskip("torch")
    code, _, err = run(["profiles", "add", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and err.count("\n") == 1 and "nope.json" in err


def test_cache_file_is_private_to_the_user(tmp_cache: Path):
    path = cache.save(derived("granite"))
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_a_profile_from_an_older_derivation_is_derived_again(tmp_cache: Path, tmp_path: Path, capsys):
    """A cached profile written before the derivation gained a field (profiles.schema.DERIVATION) is a miss for
    its config, so ``plan`` re-derives it; by name it is still found, and listed as stale."""
    p = derived("granite")
    old = p.model_copy(update={"derived": p.derived.model_copy(update={"derivation": 1})})
    cache.save(old)
    cfg = json.loads((CONFIGS / "granite.json").read_text())
    assert cache.find_by_config(cfg) is None and cache.stale(old)
    assert "stale" in origin(get_model("granite"))
    code, out, _ = run(["profiles", "models"], capsys)
    assert code == 0 and "stale" in out
    cache.save(p)
    cache.forget()
    hit = cache.find_by_config(cfg)
    assert hit is not None and hit[0] == p and not cache.stale(p)
