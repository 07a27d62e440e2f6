"""Read calibration files (``profiles/calibration/<gpu-slug>__<recipe>.json``) into the typed
:class:`~planner.engine.calibration.CalibrationBook` the engine receives. The only place they are read.

The folder is ``profiles/calibration/`` unless the environment variable :data:`CALIBRATION_DIR_ENV`
(``TUNEPLAN_CALIBRATION_DIR``) names another: ``plan``, ``plan estimate``, ``plan capacity`` and ``plan configs``
read it, and ``plan calibrate`` writes there by default."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from planner.engine.speed.params import SpeedParams
from planner.engine.calibration import (
    Calibration,
    CalibrationBook,
    CalibrationError,
    calibration_filename,
    parse_calibration,
)

CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "profiles" / "calibration"
"""Where shipped calibration files live (``profiles/calibration/``)."""
SPEED_FILE = "speed.json"
"""The speed model's corpus fit in that folder (``plan calibrate --corpus`` and benchmarks/accuracy_vs_corpus.py
write it): the :class:`~planner.engine.speed.params.SpeedParams` every estimate uses."""

NOT_CALIBRATIONS = (SPEED_FILE, "accuracy.json")
"""Files of the folder that are not per-GPU calibrations: the speed fit, and the track record docs/accuracy.md's
reports write (:mod:`planner.app.track_record`)."""

CALIBRATION_DIR_ENV = "TUNEPLAN_CALIBRATION_DIR"
"""Environment variable naming another calibration folder (a user's own runs, a test's temporary folder)."""


def calibration_dir() -> Path:
    """The calibration folder: ``$TUNEPLAN_CALIBRATION_DIR`` when set and not empty, else
    :data:`CALIBRATION_DIR`."""
    env = os.environ.get(CALIBRATION_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else CALIBRATION_DIR


def _read(path: Path) -> Calibration:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"cannot read calibration file {path}: {e}; rerun plan calibrate") from None
    return parse_calibration(data, str(path))


def load_calibration(gpu_name: str, recipe: str, directory: str | Path | None = None) -> Calibration | None:
    """The calibration for ``gpu_name`` and ``recipe`` from ``directory`` (default :func:`calibration_dir`),
    or None when no file exists. A file that exists but does not validate raises :class:`CalibrationError`."""
    base = Path(directory) if directory is not None else calibration_dir()
    path = base / calibration_filename(gpu_name, recipe)
    return _read(path) if path.is_file() else None


def load_calibration_book(directory: str | Path | None = None) -> CalibrationBook:
    """Every ``*.json`` calibration in ``directory`` (default :func:`calibration_dir`) as one book; an absent
    folder is an empty book. Memoised per folder and file modification times."""
    base = Path(directory) if directory is not None else calibration_dir()
    files = sorted(p for p in base.glob("*.json") if p.name not in NOT_CALIBRATIONS) if base.is_dir() else []
    speed = base / SPEED_FILE
    if not speed.is_file():
        speed = CALIBRATION_DIR / SPEED_FILE  # a folder of one's own runs still plans with the shipped speed fit
    stamp = speed.stat().st_mtime_ns if speed.is_file() else None
    return _book(tuple((str(p), p.stat().st_mtime_ns) for p in files), str(speed), stamp)


@functools.lru_cache(maxsize=8)
def _book(files: tuple[tuple[str, int], ...], speed_path: str, speed_stamp: int | None) -> CalibrationBook:
    entries = tuple(_read(Path(p)) for p, _ in files)
    if speed_stamp is None:
        return CalibrationBook(entries)
    return CalibrationBook(entries, speed=read_speed_fit(Path(speed_path)))


def read_speed_fit(path: Path) -> SpeedParams:
    """The speed parameters of a corpus fit file; :class:`CalibrationError` (one line) if it does not read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SpeedParams.model_validate(data["params"])
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CalibrationError(f"cannot read speed fit {path}: {e}; rerun plan calibrate --corpus") from None
    except ValueError as e:  # pydantic
        first = str(e).splitlines()
        raise CalibrationError(f"invalid speed fit {path}: {' '.join(x.strip() for x in first[1:3])}; "
                               "rerun plan calibrate --corpus") from None
