"""Read a plan JSON: one place for the three forms ``plan configs --plan`` and ``plan validate --plan`` accept.

The forms: ``plan --json`` output (its first plan), one plan of it (``plan.json`` as ``plan configs`` writes
it), or ``plan estimate --json`` output. Errors are one-line :class:`PlanFileError` messages. Shared by the
application layer and :mod:`validation`, so it sits outside both.

Each form carries its model twice (:func:`model_keys`): ``model_profile``, the whole
:class:`~profiles.schema.ModelProfile`, so a plan made from a local ``config.json`` re-reads anywhere (another
machine, the folder gone), and ``model_path``, the folder the model was given as (absolute; null for a
shipped profile or hub id). Files without them (older tuneplan) resolve the model by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from profiles.errors import InputError, validation_message
from profiles.registry import get_model, local_model_dir
from profiles.schema import ModelProfile


class PlanFileError(InputError):
    """A plan file that cannot be read or is not a plan (one line, names the file)."""


def model_keys(model: ModelProfile) -> dict[str, Any]:
    """``model_path`` and ``model_profile``: what every plan file says about its model besides the name."""
    return {"model_path": local_model_dir(model), "model_profile": model.model_dump(mode="json")}


@dataclass(frozen=True)
class PlanFile:
    model: str
    cluster: dict[str, Any]
    setup: dict[str, Any]
    plan: dict[str, Any]
    """the plan object itself (with ``rank``, ``reasons``, ``headroom_bytes`` when it came from a search)"""
    peak_bytes: int | None
    path: str = ""
    model_profile: dict[str, Any] | None = None
    model_path: str | None = None

    def load_model(self) -> ModelProfile:
        """The plan's model: its stored profile, else (files of older tuneplan) the model named."""
        if self.model_profile is None:
            return get_model(self.model)
        try:
            return ModelProfile.model_validate(self.model_profile)
        except ValidationError as e:
            raise PlanFileError(
                f"plan file {self.path}: invalid model_profile ({validation_message(e)})"
            ) from None


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
    if not isinstance(data, dict):
        data = {}
    outer = data
    if isinstance(data.get("plans"), list):
        if not data["plans"]:
            raise PlanFileError(f"plan file {p} holds no plans (nothing fitted); pick a setup with --model/--gpus")
        data = data["plans"][0]
    try:
        mem = data["memory"] if isinstance(data.get("memory"), dict) else data  # estimate --json: the estimate
        peak = mem.get("per_gpu", {}).get("peak_bytes")
        cluster = dict(mem["cluster"])
        if not (isinstance(cluster.get("gpu"), str) and all(isinstance(cluster.get(k), int) and cluster[k] >= 1
                                                              for k in ("gpus_per_node", "nodes"))):
            raise PlanFileError(f"plan file {p}: cluster {cluster} needs gpu (a name), gpus_per_node and nodes "
                                "(whole numbers >= 1)")
        if not isinstance(data.get("setup") or mem["setup"], dict):
            raise TypeError
        return PlanFile(
            model=str(mem["model"]),
            cluster=cluster,
            setup=dict(data.get("setup") or mem["setup"]),
            plan=data,
            peak_bytes=int(peak) if peak is not None else None,
            path=str(p),
            model_profile=data.get("model_profile", outer.get("model_profile")),
            model_path=data.get("model_path", outer.get("model_path")),
        )
    except PlanFileError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError):
        raise PlanFileError(
            f"plan file {p} is not a plan (expected plan.json of plan configs, plan --json or plan estimate --json "
            "output: keys model, cluster, setup)"
        ) from None
