"""Find the calibration data for a GPU and recipe, if any (the CLI's file I/O; the engine stays pure)."""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=64)
def calibration_for(gpu_name: str, recipe: str | None) -> Any:
    """The calibration object written by ``plan calibrate`` for this GPU and recipe, or None."""
    try:
        from planner.engine.calibration import load_calibration
    except ImportError:  # calibration support not installed
        return None
    if recipe is None:
        return None
    try:
        return load_calibration(gpu_name, recipe)
    except FileNotFoundError:
        return None
