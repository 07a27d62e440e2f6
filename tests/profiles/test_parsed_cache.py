"""The JSON cache of parsed profile YAML (profiles/cache.py: parse_dir, parse_file) returns exactly what parsing the YAML returns,
notices edits, and is never required: checked against the YAML parser itself, not against stored outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiles import cache as parsed_cache
from profiles.cache import parse_dir, parse_file, read_header, read_yaml
from profiles.registry import DERIVED_DIR, GPUS_DIR, MODELS_DIR


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TUNEPLAN_NO_PARSED_CACHE", raising=False)


def _counting(parse):
    calls = []

    def wrapped(path: Path):
        calls.append(path.name)
        return parse(path)

    return wrapped, calls


@pytest.mark.parametrize("directory,parse,kind", [
    (MODELS_DIR, read_yaml, "yaml"), (GPUS_DIR, read_yaml, "yaml"), (DERIVED_DIR, read_header, "header"),
])
def test_shipped_folders_read_back_equal_to_the_yaml(directory, parse, kind):
    truth = [(p, parse(p)) for p in sorted(directory.glob("*.yaml"))]
    first = parse_dir(directory, parse, kind)
    counted, calls = _counting(parse)
    second = parse_dir(directory, counted, kind)
    assert first == truth
    assert second == truth
    assert calls == [], "the second read parses nothing: every shipped file survives the JSON round trip"


def test_a_shipped_derived_profile_reads_back_equal():
    path = min(DERIVED_DIR.glob("*.yaml"))
    truth = read_yaml(path)
    assert parse_file(path) == truth
    counted, calls = _counting(read_yaml)
    assert parse_file(path, counted) == truth
    assert calls == []


def test_edits_new_and_removed_files_are_seen(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "a.yaml").write_text("name: a\nx: 1\n")
    (d / "b.yaml").write_text("name: b\nx: 2\n")
    assert [v for _, v in parse_dir(d, read_yaml)] == [{"name": "a", "x": 1}, {"name": "b", "x": 2}]
    (d / "a.yaml").write_text("name: a\nx: 10\n")  # another size
    (d / "c.yaml").write_text("name: c\n")
    counted, calls = _counting(read_yaml)
    assert [v for _, v in parse_dir(d, counted)] == [{"name": "a", "x": 10}, {"name": "b", "x": 2}, {"name": "c"}]
    assert calls == ["a.yaml", "c.yaml"]
    st = (d / "b.yaml").stat()
    (d / "b.yaml").write_text("name: b\nx: 3\n")  # same size, another modification time
    os.utime(d / "b.yaml", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    (d / "c.yaml").unlink()
    assert [v for _, v in parse_dir(d, read_yaml)] == [{"name": "a", "x": 10}, {"name": "b", "x": 3}]


def test_data_that_json_cannot_hold_is_parsed_every_time(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "a.yaml").write_text("1: integer key\nday: 2026-12-01\n")
    truth = [(d / "a.yaml", read_yaml(d / "a.yaml"))]
    assert parse_dir(d, read_yaml) == truth
    counted, calls = _counting(read_yaml)
    assert parse_dir(d, counted) == truth
    assert calls == ["a.yaml"]
    assert not (Path(os.environ["TUNEPLAN_CACHE"]) / "parsed").exists()


def test_a_corrupt_or_foreign_cache_file_is_ignored(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "a.yaml").write_text("name: a\n")
    parse_dir(d, read_yaml)
    (cache,) = (Path(os.environ["TUNEPLAN_CACHE"]) / "parsed").iterdir()
    cache.write_text("{not json")
    assert parse_dir(d, read_yaml) == [(d / "a.yaml", {"name": "a"})]
    blob = json.loads(cache.read_text())
    blob["format"] = parsed_cache.PARSED_FORMAT + 1
    cache.write_text(json.dumps(blob))
    counted, calls = _counting(read_yaml)
    assert parse_dir(d, counted) == [(d / "a.yaml", {"name": "a"})]
    assert calls == ["a.yaml"]


def test_the_switch_bypasses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_NO_PARSED_CACHE", "1")
    parse_dir(GPUS_DIR, read_yaml)
    assert not (Path(os.environ["TUNEPLAN_CACHE"]) / "parsed").exists()


def test_plan_reads_the_catalogue_without_yaml_once_cached(tmp_path):
    """The second `plan` (cache written by the first) imports no YAML parser, for a hand-written and a derived
    profile, and prints what the first printed."""
    env = {**os.environ, "TUNEPLAN_CACHE": str(tmp_path / "cache")}
    code = (
        "import io, contextlib, sys, json\nfrom planner.app.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    for m in ('llama3-8b', 'gemma-3-12b'):\n"
        "        main(['--model', m, '--gpus', '8xA800', '--json', '--top', '1'])\n"
        "print(json.dumps(['yaml' in sys.modules, buf.getvalue()]))\n"
    )
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env=env).stdout.splitlines()[-1]) for _ in range(2)]
    assert runs[0][0] is True  # the first run parsed the YAML
    assert runs[1][0] is False
    assert runs[1][1] == runs[0][1]
