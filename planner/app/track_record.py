"""The engine's track record against published runs, as ``plan`` and ``plan estimate`` print it beside their figures.

docs/accuracy.md holds every record; ``profiles/calibration/accuracy.json`` holds the figures a reader needs next to an
estimate: the speed model's leave-one-source-out error over the published throughput records (overall and for the
GPU's family), the memory engine's error over the published memory records, and the out-of-memory verdicts at each
headroom the report sweeps. The reports write it, each its own block (``benchmarks/accuracy_vs_corpus.py``: speed;
``benchmarks/memory_vs_corpus.py``: memory), so that it cannot drift from docs/accuracy.md; a test recomputes both.

These are the uncalibrated engine's errors: a calibration from one's own ``plan validate`` runs replaces the memory
terms and the speed ceiling it covers, and its own hold-out error is in its file. Reading is forgiving (a missing or
unreadable file prints no track record), writing atomic.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from planner.app.calibration_io import CALIBRATION_DIR, NOT_CALIBRATIONS

ACCURACY_FILE = NOT_CALIBRATIONS[1]
"""The track record's file name, in the shipped calibration folder (which the calibration reader skips)."""
TRACK_RECORD_PATH = CALIBRATION_DIR / ACCURACY_FILE
REPORT = "docs/accuracy.md"


def _load(path: Path) -> dict | None:
    """The file as written: a dict of schema 1, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("schema_version") == 1 else None


def _speed_ok(sp: dict) -> None:
    for key in ("records", "sources", "held_out_median_abs"):
        float(sp[key])
    for table in (sp["families"], sp["parallelism"]):
        for v in table.values():
            float(v["records"]), float(v["held_out_median_signed"])


def _memory_ok(mem: dict) -> None:
    for key in ("records", "median_abs", "max_abs", "oom_total", "ran_total"):
        float(mem[key])
    for v in mem["headroom"]:
        float(v["headroom"]), float(v["oom_accepted"]), float(v["ran_refused"])


def read_track_record(path: Path | None = None) -> dict | None:
    """The shipped track record, each block kept only if every figure the line and the JSON read is there and a
    number; None when nothing is left (it is commentary, never an input: a damaged file drops what it damaged, it
    never stops an estimate)."""
    data = _load(path or TRACK_RECORD_PATH)
    if data is None:
        return None
    for key, check in (("speed", _speed_ok), ("memory", _memory_ok)):
        try:
            check(data[key])
        except (KeyError, TypeError, ValueError, AttributeError):
            data.pop(key, None)
    return data if "speed" in data or "memory" in data else None


def write_track_record_block(key: str, block: dict, path: Path | None = None) -> Path:
    """Replace the ``key`` block ("speed" or "memory") of the track record, keeping the other; atomic."""
    from planner.fileio import atomic_write_text

    path = path or TRACK_RECORD_PATH
    data = _load(path) or {"schema_version": 1, "report": REPORT}
    data[key] = {**block, "generated": _dt.date.today().isoformat()}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def _headroom_row(memory: dict, headroom: float | None) -> dict | None:
    rows = memory.get("headroom") or []
    want = 0.0 if headroom is None else headroom
    return next((r for r in rows if abs(r["headroom"] - want) < 1e-9), None)


def track_record_json(record: dict | None, family: str | None, headroom: float | None = None,
                      parallelism: str | None = None) -> dict | None:
    """The figures that go with an estimate on a GPU of ``family`` (``GpuProfile.family``; None: several kinds, no
    family figures) at ``headroom`` (None: the engine's own verdict, against the whole card), for ``--json``;
    ``parallelism`` (``Setup.parallelism_class``): one setup's class, whose figures join the speed block."""
    if not record:
        return None
    out: dict = {"report": record.get("report", REPORT)}
    sp = record.get("speed")
    if sp:
        out["speed"] = {"records": sp["records"], "sources": sp["sources"],
                        "held_out_median_abs_error": sp["held_out_median_abs"]}
        if family is not None:
            fam = sp.get("families", {}).get(family)
            out["speed"].update(family=family, family_records=fam["records"] if fam else 0,
                                family_held_out_median_error=fam["held_out_median_signed"] if fam else None)
        if parallelism is not None:
            cls = sp.get("parallelism", {}).get(parallelism)
            out["speed"].update(parallelism=parallelism, parallelism_records=cls["records"] if cls else 0,
                                parallelism_held_out_median_error=cls["held_out_median_signed"] if cls else None)
    mem = record.get("memory")
    if mem:
        out["memory"] = {"records": mem["records"], "median_abs_error": mem["median_abs"],
                         "max_abs_error": mem["max_abs"], "published_ooms": mem["oom_total"],
                         "published_fits": mem["ran_total"]}
        row = _headroom_row(mem, headroom)
        if row:
            out["memory"].update(headroom=row["headroom"], ooms_accepted=row["oom_accepted"],
                                 fits_refused=row["ran_refused"])
    return out


def _bias(b: float) -> str:
    """A median signed error as the line says it: ``+7.5 % (estimates too fast)``."""
    return f"{b * 100:+.1f} % (estimates too {'fast' if b > 0 else 'slow'})"


def track_record_line(record: dict | None, family: str | None, headroom: float | None = None,
                      parallelism: str | None = None) -> str | None:
    """One line of text: how far the speed and memory figures were from published runs (each source held out)."""
    t = track_record_json(record, family, headroom, parallelism)
    if not t:
        return None
    parts = []
    sp = t.get("speed")
    if sp:
        text = f"tokens/s median error {sp['held_out_median_abs_error'] * 100:.1f} % over {sp['records']} runs"
        bias = sp.get("family_held_out_median_error")
        if family is None:
            text += " (docs/accuracy.md gives each GPU family's)"
        elif sp["family_records"]:
            text += f", on {family} GPUs {sp['family_records']} runs with a median bias of {_bias(bias)}"
        else:
            text += f", none of them on {family} GPUs"
        if parallelism is not None:
            n, b = sp["parallelism_records"], sp["parallelism_held_out_median_error"]
            text += f", {n} {parallelism} runs with a median bias of {_bias(b)}" if n else f", none of them {parallelism}"
        parts.append(text)
    mem = t.get("memory")
    if mem:
        text = (f"peak memory median error {mem['median_abs_error'] * 100:.1f} %, max {mem['max_abs_error'] * 100:.0f} % "
                f"over {mem['records']} runs")
        if "headroom" in mem:
            where = "without headroom" if mem["headroom"] == 0 else f"at {mem['headroom'] * 100:.0f} % headroom"
            text += (f"; {where} {mem['ooms_accepted']} of {mem['published_ooms']} published OOMs called fits, "
                     f"{mem['fits_refused']} of {mem['published_fits']} runs that fitted refused")
        parts.append(text)
    return (f"track record against published runs ({t['report']}; each source predicted by a fit without it): "
            + "; ".join(parts))


BIAS_NOTE = 0.15
"""A parallelism class whose held-out median bias exceeds this (issue 10's tolerance for a GPU family's bias) gets a
line in each plan of that class, from :data:`BIAS_NOTE_RECORDS` records up."""
BIAS_NOTE_RECORDS = 5
"""[assumption] Below this, a class's median is one or two sources' word (the report lists them), not a tendency."""


def class_bias_note(record: dict | None, parallelism: str) -> str | None:
    """One plan's caveat: the published runs of its parallelism class (``Setup.parallelism_class``) were estimated
    far from measured in median, held out; None when the class is within :data:`BIAS_NOTE` or has too few runs."""
    cls = ((record or {}).get("speed") or {}).get("parallelism", {}).get(parallelism)
    if not cls or cls["records"] < BIAS_NOTE_RECORDS or abs(cls["held_out_median_signed"]) <= BIAS_NOTE:
        return None
    b = cls["held_out_median_signed"]
    return (f"speed caveat: published {parallelism} runs were estimated {abs(b) * 100:.0f} % too "
            f"{'fast' if b > 0 else 'slow'} in median ({cls['records']} runs, each source held out; "
            f"{record.get('report', REPORT)}, by parallelism)")
