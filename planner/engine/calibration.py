"""Calibration data: the terms an analytic model cannot know, fitted from real runs on one GPU kind.

``plan calibrate`` (:mod:`validation.calibrate`) fits, per GPU kind and precision recipe, from the
``measurements.jsonl`` that ``plan validate`` writes:

* ``fixed_overhead_bytes``: what a training process holds on the GPU outside PyTorch's caching allocator
  (CUDA context, cuBLAS / cuDNN workspaces, NCCL buffers): driver-reported used memory minus
  ``torch.cuda.max_memory_reserved``. The engine's ``framework_overhead`` category (memory eq. F1).
* ``allocator_factor``: ``max_memory_reserved / max_memory_allocated``, the caching allocator's rounding and
  fragmentation. The engine's ``allocator_margin`` is ``(allocator_factor - 1) x allocated`` (eq. F2).
* ``mfu``: the achieved efficiency of the speed model, i.e. the ``efficiency`` argument of
  :func:`planner.engine.speed.estimate_speed` (fraction of the dense peak that compute achieves, eq. S8) that
  reproduces the measured step times. None when no run had a speed estimate to fit against.

Each value comes with the runs it was fitted from and its leave-one-out (hold-out) error, so a reader can see
whether it generalises. Files live in ``profiles/calibration/<gpu-slug>__<recipe>.json``.

This module is pure data: the engine receives a :class:`CalibrationBook` (every calibration known, looked
up by GPU and recipe) and never reads files itself; :mod:`planner.app.calibration_io` reads them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.engine.speed.params import PRIORS, SpeedParams
from profiles.errors import ProfileError

SCHEMA_VERSION = 1


class CalibrationError(ProfileError):
    """A calibration file that cannot be read or does not validate (one line, safe to print)."""


class HoldoutError(BaseModel):
    """Leave-one-out error of one fitted term: each run predicted from a fit on all the others."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    quantity: str = Field(description="what was predicted, e.g. 'device used bytes'")
    n: int = Field(ge=0, description="runs predicted (0 when fewer than two runs were available)")
    mean_abs_rel: float | None = Field(None, description="mean |predicted - measured| / measured")
    max_abs_rel: float | None = Field(None, description="largest |predicted - measured| / measured")


class Calibration(BaseModel):
    """Fitted per-GPU, per-recipe terms with their provenance and hold-out error."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    schema_version: int = SCHEMA_VERSION
    gpu: str = Field(description="GPU profile name the runs were measured on, e.g. 'H100-SXM'")
    recipe: str = Field(description="precision recipe (planner.engine.setup.RECIPES)")
    fixed_overhead_bytes: int = Field(ge=0, description="per-process bytes outside the caching allocator")
    allocator_factor: float = Field(ge=1.0, description="max_memory_reserved / max_memory_allocated")
    mfu: float | None = Field(None, gt=0, le=1, description="fitted efficiency for planner.engine.speed (eq. S8)")
    n_runs: int = Field(gt=0)
    runs: tuple[str, ...] = Field(min_length=1, description="'<measurements file>#<run id>' of every run used")
    holdout_error: dict[str, HoldoutError] = Field(
        default_factory=dict, description="term -> leave-one-out error (fixed_overhead, allocator_factor, mfu, peak)"
    )
    devices: tuple[str, ...] = Field((), description="device names as torch reported them")
    versions: dict[str, str] = Field(default_factory=dict, description="software versions of the runs (first run)")
    method: str = Field(
        "median of per-run values; hold-out: leave-one-out",
        description="how the values were fitted",
    )
    fitted_at: str = ""
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What estimates print: ``calibrated from N runs on H100``."""
        return calibration_label(self)


def calibration_label(cal: Calibration | None) -> str:
    """``'calibrated from N runs on <GPU>'``, or ``'uncalibrated'`` when there is no calibration."""
    if cal is None:
        return "uncalibrated"
    return f"calibrated from {cal.n_runs} run{'s' if cal.n_runs != 1 else ''} on {cal.gpu}"


@functools.lru_cache(maxsize=256)  # the search looks up a calibration for every candidate
def gpu_slug(gpu_name: str) -> str:
    """File-name form of a GPU name: lower case, runs of other characters become '-' (``H100-SXM`` ->
    ``h100-sxm``, ``RTX 4090`` -> ``rtx-4090``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.strip().lower()).strip("-")
    if not slug:
        raise CalibrationError(f"cannot make a file name from GPU name {gpu_name!r}")
    return slug


def calibration_filename(gpu_name: str, recipe: str) -> str:
    """``<gpu-slug>__<recipe>.json``."""
    return f"{gpu_slug(gpu_name)}__{recipe}.json"


def parse_calibration(data: object, where: str) -> Calibration:
    """Validate one calibration record (a parsed JSON object); :class:`CalibrationError` names ``where``."""
    try:
        return Calibration.model_validate(data)
    except ValidationError as e:
        first = str(e).splitlines()
        msg = " ".join(x.strip() for x in first[1:3]) if len(first) > 2 else str(e)
        raise CalibrationError(f"invalid calibration file {where}: {msg}; rerun plan calibrate") from None


@dataclass(frozen=True)
class CalibrationBook:
    """Every calibration available, looked up by GPU and recipe: the one typed value the engine receives.

    An empty book means "uncalibrated everywhere": the engine then uses its documented defaults."""

    entries: tuple[Calibration, ...] = ()
    speed: SpeedParams = PRIORS
    """the speed model's physical parameters: the corpus fit (profiles/calibration/speed.json), else priors"""

    def lookup(self, gpu_name: str, recipe: str) -> Calibration | None:
        """The calibration fitted on this GPU kind (matched by :func:`gpu_slug`) for this recipe, or None."""
        slug = gpu_slug(gpu_name)
        for c in self.entries:
            if c.recipe == recipe and gpu_slug(c.gpu) == slug:
                return c
        return None

    def __bool__(self) -> bool:
        return bool(self.entries) or self.speed is not PRIORS


UNCALIBRATED = CalibrationBook()
"""The empty book."""
