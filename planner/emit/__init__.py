"""Ready-to-run trainer configs from a plan (``plan configs``).

Pure generators: each module turns a :class:`~planner.emit.common.Target` (plan + model + cluster) into dicts
and text; only :mod:`planner.fileio` touches the file system. :func:`build_files` assembles everything one
``plan configs`` run writes:

* :mod:`~planner.emit.deepspeed` - DeepSpeed JSON, explicit and HF-integration (``"auto"``) flavours
* :mod:`~planner.emit.accelerate` - accelerate config, TrainingArguments, model / LoRA settings (HF Trainer)
* :mod:`~planner.emit.llamafactory` - LLaMA-Factory YAML
* :mod:`~planner.emit.torchtune` - torchtune YAML (where torchtune can express the plan)
* :mod:`~planner.emit.torchtitan` - torchtitan 0.2.2 TOML (FSDP2, float8, tensor / context parallelism)
* :mod:`~planner.emit.launch` - ``launch.sh``
* :mod:`~planner.emit.plan_md` - ``PLAN.md`` and ``plan.json``

A trainer that cannot run the plan as planned raises :class:`~planner.emit.common.NotExpressible`; with
several trainers requested, :func:`build_files` records the reason in PLAN.md instead of a file. What each
trainer refuses is known once, in its emitter's ``check``; :func:`check_trainer` is the one entry to those,
used by the emitters before writing and, through :func:`refusal`, by the search as a filter (``plan configs
--trainer X`` ranks only what X can run).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.emit import accelerate, launch, llamafactory, plan_md, torchtitan, torchtune
from planner.emit.common import TRAINERS, Candidate, Emitted, Job, NotExpressible, Target
from planner.engine.setup import Setup
from profiles.cluster import Cluster
from profiles.schema import ModelProfile

__all__ = ["TRAINERS", "Bundle", "Candidate", "NotExpressible", "Target", "build_files", "check_trainer",
           "emit_trainer", "refusal", "trainers_for"]


def _refuse_unwritten(trainer: str, setup: Setup) -> None:
    """The setups tuneplan models for estimates but writes for no trainer."""
    if setup.fsdp is not None and setup.fsdp_version == 1:
        raise NotExpressible(trainer, "tuneplan writes FSDP2 configs only (accelerate fsdp_version 2, torchtune, "
                             "torchtitan); --fsdp-version 1 is modelled for estimates of FSDP1 runs: drop it to get configs")
    if setup.fused_library == "unsloth":
        raise NotExpressible(trainer, "--fused-kernels unsloth models Unsloth's kernels as fms-acceleration's FOAK "
                             "plugin installs them, and tuneplan writes no fms-hf-tuning config: re-plan with "
                             "--fused-kernels liger to get configs")


def check_trainer(trainer: str, job: Job) -> None:
    """Raise :class:`NotExpressible` unless ``trainer`` runs ``job``'s setup as planned: each trainer's own
    ``check`` (the emitter calls the same function before it writes anything). ``--fsdp-version 1`` (FSDP1, which
    tuneplan models to explain runs of older accelerate and Lightning) is written by none: every trainer's config
    here is FSDP2's; Unsloth's kernels (``--fused-kernels unsloth``) are modelled for fms-acceleration's runs, whose
    trainer tuneplan does not write."""
    _refuse_unwritten(trainer, job.setup)
    if trainer in accelerate.TRAINER_OF:
        accelerate.check(job, trainer)
    elif trainer == "llamafactory":
        llamafactory.check(job)
    elif trainer == "torchtune":
        torchtune.check(job)
    elif trainer == "torchtitan":
        torchtitan.check(job)
    else:
        raise ValueError(f"unknown trainer {trainer!r}; valid: {', '.join(TRAINERS)}")


def refusal(choice: str, model: ModelProfile, cluster: Cluster, setup: Setup) -> str | None:
    """Why ``plan configs --trainer choice`` could not write ``setup``, or None when it could: with ``all``,
    None as soon as one of :func:`trainers_for` runs it. The search's filter (``SearchRequest.admit``)."""
    job = Candidate(model, cluster, setup)
    reasons: list[NotExpressible] = []
    for name in trainers_for(job, choice):
        try:
            check_trainer(name, job)
        except NotExpressible as e:
            reasons.append(e)
        else:
            return None
    if len(reasons) > 1 and len({e.reason for e in reasons}) == 1:  # one reason for every trainer: say it once
        return f"no trainer can express this plan: {reasons[0].reason}"
    return "; ".join(str(e) for e in reasons)


def emit_trainer(t: Target, trainer: str) -> Emitted:
    """One trainer's files; :class:`NotExpressible` when it cannot run the plan."""
    _refuse_unwritten(trainer, t.setup)
    if trainer in accelerate.TRAINER_OF:
        return accelerate.emit(t, trainer)
    if trainer == "llamafactory":
        return llamafactory.emit(t)
    if trainer == "torchtune":
        return torchtune.emit(t)
    if trainer == "torchtitan":
        return torchtitan.emit(t)
    raise ValueError(f"unknown trainer {trainer!r}; valid: {', '.join(TRAINERS)}")


def trainers_for(t: Job, choice: str) -> list[str]:
    """``all`` -> the HF backend matching the plan, LLaMA-Factory, torchtune and torchtitan; otherwise the one named.
    The first that can run the plan is launch.sh's default."""
    if choice == "all":
        order = [accelerate.trainer_for(t.setup), "llamafactory", "torchtune", "torchtitan"]
        s = t.setup
        if s.framework in ("torchtune", "torchtitan"):  # the trainer whose speed the plan was estimated for first
            order.remove(s.framework)
            order.insert(0, s.framework)
        return order
    return [choice]


@dataclass(frozen=True)
class Bundle:
    files: dict[str, str]
    emitted: list[Emitted]
    refused: list[NotExpressible]


def build_files(t: Target, trainers: list[str]) -> Bundle:
    """Every file for ``trainers``; raises :class:`NotExpressible` only if none of them can run the plan."""
    emitted: list[Emitted] = []
    refused: list[NotExpressible] = []
    for name in trainers:
        try:
            emitted.append(emit_trainer(t, name))
        except NotExpressible as e:
            refused.append(e)
    if not emitted:
        if len(refused) == 1:
            raise refused[0]
        # one reason that holds for every trainer (e.g. --fused-kernels unsloth) is said once
        raise NotExpressible(", ".join(r.trainer for r in refused), "; ".join(dict.fromkeys(r.reason for r in refused)))
    files: dict[str, str] = {}
    for e in emitted:
        for rel, text in e.files.items():
            if rel in files and files[rel] != text:  # a shared file (ds_config_hf.json) must be identical
                raise AssertionError(f"two trainers wrote different {rel}")
            files[rel] = text
    modes: dict[str, list[str]] = {}
    for e in emitted:
        modes.update(e.launch)
    files[launch.FILENAME] = launch.launch_script(t, modes, needs_script={"hf", "deepspeed"})
    files[plan_md.JSON_FILENAME] = plan_md.plan_json(t)
    first = (plan_md.FILENAME, plan_md.JSON_FILENAME, launch.FILENAME)
    order = [*first, *sorted(k for k in files if k not in first)]
    files[plan_md.FILENAME] = plan_md.plan_markdown(t, emitted, refused, order)
    return Bundle({k: files[k] for k in order}, emitted, refused)
