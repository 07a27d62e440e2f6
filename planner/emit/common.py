"""What every emitter shares: its input (:class:`Target`), the "cannot express this plan" signal, the file
headers, and the training defaults that are not part of the plan (learning rate, epochs, scheduler).

Emitters format what the engine computed; they never recompute memory or speed. Sizes are shown in GiB
(2**30 bytes) and say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from planner.engine.facts import ModelFacts, model_facts
from planner.engine.results import Plan
from planner.engine.setup import Setup
from planner.units import gib as _gib
from profiles.cluster import Cluster
from profiles.registry import local_model_dir
from profiles.schema import ModelProfile

Trainer = Literal["hf-deepspeed", "hf-fsdp", "hf-ddp", "llamafactory", "torchtune", "torchtitan"]
TRAINERS: dict[str, str] = {
    "hf-deepspeed": "HF Trainer launched by accelerate with a DeepSpeed ZeRO config (plus the explicit JSON for "
    "the plain `deepspeed` launcher)",
    "hf-fsdp": "HF Trainer launched by accelerate with PyTorch FSDP",
    "hf-ddp": "HF Trainer launched by accelerate with plain data parallelism (or one GPU)",
    "llamafactory": "LLaMA-Factory `llamafactory-cli train` YAML",
    "torchtune": "torchtune recipe YAML for `tune run` (torchtune is no longer developed upstream)",
    "torchtitan": "torchtitan 0.2.2 job config TOML for `torchrun -m torchtitan.train` (FSDP2, float8, TP, CP)",
}


# ---- training defaults the plan does not decide -----------------------------------------------------------
LEARNING_RATE_ADAPTERS = 1.0e-4
"""LoRA / QLoRA learning rate: LLaMA-Factory ``examples/train_lora/llama3_lora_sft.yaml`` (1.0e-4)."""
LEARNING_RATE_FULL = 1.0e-5
"""Full / freeze learning rate: LLaMA-Factory ``examples/train_full/llama3_full_sft.yaml`` (1.0e-5)."""
EPOCHS = 3.0
"""LLaMA-Factory's example SFT configs train 3 epochs."""
WARMUP_FRACTION = 0.1
"""Linear warm-up over the first 10 % of steps (LLaMA-Factory examples' ``warmup_ratio: 0.1``; transformers 5
takes a float ``warmup_steps`` < 1 as that fraction)."""
LR_SCHEDULER = "cosine"
MAX_GRAD_NORM = 1.0
"""Gradient clipping at norm 1.0: the HF Trainer default (``max_grad_norm``) and DeepSpeed's
(``GRADIENT_CLIPPING_DEFAULT = 1.0`` in deepspeed/runtime/constants.py)."""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.0
"""AdamW hyper-parameters: the HF Trainer defaults (adam_beta1/2, adam_epsilon, weight_decay)."""
SGD_MOMENTUM = 0.9
"""Momentum for ``--optimizer sgd-momentum`` [assumption: the common choice; the planner counts one state]."""


def learning_rate(setup: Setup) -> float:
    """LLaMA-Factory's example learning rates (no batch scaling); the emitters write
    :func:`planner.engine.hparams.recommend`'s instead, which carries its reason."""
    return LEARNING_RATE_ADAPTERS if setup.trains_adapters else LEARNING_RATE_FULL


def hp_comments(t: "Target", keys: dict[str, str]) -> dict[str, str]:
    """YAML comments for the hyper-parameters: emitted key path -> the value's reason and source."""
    hp = t.hp
    out = {}
    for path, name in keys.items():
        item = getattr(hp, name, None)
        if item is not None:
            out[path] = item.comment
    return out


def half_dtype(setup: Setup) -> Literal["bf16", "fp16"]:
    """The 16-bit compute dtype of the plan's recipe: fp16 only for ``fp16-amp`` (GPUs without bf16)."""
    return "fp16" if setup.recipe == "fp16-amp" else "bf16"


@dataclass(frozen=True)
class Target:
    """Everything an emitter reads: the plan, the model and the cluster it was made for, and how to rebuild it."""

    plan: Plan
    model: ModelProfile
    cluster: Cluster
    command: str = field(default="", compare=False)
    """the ``plan configs ...`` command line that produced the files (shown in PLAN.md), or empty"""
    hparams: Any = field(default=None, compare=False)
    """:class:`planner.engine.hparams.HyperParams` (with the dataset's size and the user's overrides), or None for the
    recommendation without a dataset"""

    @property
    def hp(self) -> Any:
        """The hyper-parameters every emitter writes (:func:`planner.engine.hparams.recommend`)."""
        if self.hparams is not None:
            return self.hparams
        from planner.engine.hparams import recommend

        return recommend(self.model, self.setup, self.world_size)

    @property
    def setup(self) -> Setup:
        return self.plan.setup

    @property
    def facts(self) -> ModelFacts:
        """The model facts the plan was estimated with (memoised by the engine)."""
        return model_facts(self.model, self.setup)

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def multi_node(self) -> bool:
        return self.cluster.nodes > 1

    @property
    def local_dir(self) -> str | None:
        """The local folder the model was given as (``--model path/to/config.json`` or its folder), absolute."""
        return local_model_dir(self.model)

    @property
    def model_path(self) -> str:
        """What a trainer loads (``model_name_or_path``): the hub id; the folder the user gave, absolute; else the
        profile's name (a shipped profile without a hub id: a placeholder the user replaces)."""
        return self.model.hf_id or self.local_dir or self.model.name

    @property
    def slug(self) -> str:
        """A file-system friendly name: ``llama-3-8b-full``."""
        name = re.sub(r"[^a-z0-9.]+", "-", self.model.name.lower()).strip("-")
        return f"{name}-{self.setup.method}"


@dataclass(frozen=True)
class Candidate:
    """A setup for a model on a cluster before anything is estimated: all a trainer's ``check`` reads (a
    :class:`Target` has the same attributes). The search filters candidates with
    :func:`planner.emit.refusal`, so that ``plan configs --trainer X`` ranks only what X can run."""

    model: ModelProfile
    cluster: Cluster
    setup: Setup

    @property
    def facts(self) -> ModelFacts:
        return model_facts(self.model, self.setup)

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def multi_node(self) -> bool:
        return self.cluster.nodes > 1


Job = Target | Candidate
"""What a trainer's ``check`` accepts: a planned :class:`Target` or a bare :class:`Candidate`."""


class NotExpressible(ValueError):
    """A trainer cannot run the plan as planned: one line saying why and what to do instead."""

    def __init__(self, trainer: str, reason: str):
        super().__init__(f"{trainer} cannot express this plan: {reason}")
        self.trainer = trainer
        self.reason = reason


def check_block_checkpointing(trainer: str, s: Any, who: str) -> None:
    """Trainers that checkpoint whole blocks cannot run torchtitan's per-op SAC (``--checkpointing op``): refuse it
    rather than write a config whose memory differs from the plan's (docs/memory.md eq. A12)."""
    if s.checkpointing == "op":
        raise NotExpressible(trainer, f"{who} checkpoints whole blocks; per-op selective checkpointing (--checkpointing "
                             "op) is torchtitan's (re-plan with --checkpointing full, or use --trainer torchtitan)")


@dataclass(frozen=True)
class Emitted:
    """One trainer's output: files (relative path -> text), how to launch it, and what differs from the plan."""

    trainer: str
    files: dict[str, str]
    launch: dict[str, list[str]]
    """launch mode (``bash launch.sh MODE``) -> shell lines that start training"""
    notes: tuple[str, ...] = ()
    """where the trainer runs the plan differently (always in the safe direction), for PLAN.md"""


def gib(n_bytes: float) -> str:
    """``12.34 GiB`` (GiB = 2**30 bytes): :func:`planner.units.gib` at two decimals, as generated files show it."""
    return _gib(n_bytes, 2)


def header_lines(t: Target, what: str, run: str) -> list[str]:
    """The opening comment of every generated file: what produced it, which plan, expected peak, how to run."""
    p, m, sp = t.plan, t.plan.memory, t.plan.speed
    return [
        f"{what}",
        f"Generated by tuneplan (`plan configs`) for plan {p.rank}: {t.model.name} on {t.cluster.label()}",
        f"  {t.setup.short()} · seq {t.setup.seq_len} · recipe {t.setup.recipe}",
        f"Expected peak per GPU: {gib(m.peak_bytes)} of {gib(m.capacity_bytes)} ({m.peak_phase.replace('_', ' ')}); "
        f"host RAM per node: {gib(m.host_bytes)}",
        f"Expected throughput: {sp.tokens_per_s:,.0f} tokens/s on {sp.world_size} GPU(s), MFU {sp.mfu:.0%} "
        f"({sp.calibration})",
        f"Run: {run}",
        "PLAN.md explains the plan and the choices in this file.",
    ]


def comment_block(lines: list[str], prefix: str = "#") -> str:
    return "".join(f"{prefix} {line}".rstrip() + "\n" for line in lines)
