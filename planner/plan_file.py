"""Read a plan JSON: one place for the three forms ``plan configs --plan`` and ``plan validate --plan`` accept.

The forms: ``plan --json`` output (its first plan), one plan of it (``plan.json`` as ``plan configs`` writes
it), or ``plan estimate --json`` output. Errors are one-line :class:`PlanFileError` messages. Shared by the
application layer and :mod:`validation`, so it sits outside both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiles.errors import InputError


class PlanFileError(InputError):
    """A plan file that cannot be read or is not a plan (one line, names the file)."""


@dataclass(frozen=True)
class PlanFile:
    model: str
    cluster: dict[str, Any]
    setup: dict[str, Any]
    plan: dict[str, Any]
    """the plan object itself (with ``rank``, ``reasons``, ``headroom_bytes`` when it came from a search)"""
    peak_bytes: int | None


def read_plan_file(path: str | Path) -> PlanFile:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanFileError(f"plan file {p}: no such file") from None
    except OSError as e:
        raise PlanFileError(f"cannot read plan file {p}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanFileError(f"plan file {p} is not JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("plans"), list):
        if not data["plans"]:
            raise PlanFileError(f"plan file {p} holds no plans (nothing fitted); pick a setup with --model/--gpus")
        data = data["plans"][0]
    try:
        mem = data["memory"] if isinstance(data.get("memory"), dict) else data  # estimate --json: the estimate
        peak = mem.get("per_gpu", {}).get("peak_bytes")
        return PlanFile(
            model=str(mem["model"]),
            cluster=dict(mem["cluster"]),
            setup=dict(data.get("setup") or mem["setup"]),
            plan=data,
            peak_bytes=int(peak) if peak is not None else None,
        )
    except (KeyError, TypeError, AttributeError, ValueError):
        raise PlanFileError(
            f"plan file {p} is not a plan (expected plan.json of plan configs, plan --json or plan estimate --json "
            "output: keys model, cluster, setup)"
        ) from None
