"""DeepSpeed config JSON for a plan's ZeRO stage, offload and precision, in two flavours.

* ``explicit``: every number written out, for the ``deepspeed`` launcher and a script that calls
  ``deepspeed.initialize`` itself.
* ``hf``: the HF-integration flavour. ``"auto"`` stands exactly where transformers fills the value from
  ``TrainingArguments`` or the model config (transformers 5.24 ``integrations/deepspeed.py``,
  ``HfTrainerDeepSpeedConfig.trainer_config_process``: ``train_micro_batch_size_per_gpu``,
  ``gradient_accumulation_steps``, ``train_batch_size``, ``gradient_clipping``, ``optimizer.params.{lr, betas,
  eps, weight_decay}``, ``fp16.enabled``, ``bf16.enabled``; ``trainer_config_finalize``:
  ``zero_optimization.reduce_bucket_size`` = h*h and, at stage 3, ``stage3_prefetch_bucket_size`` = 0.9*h*h and
  ``stage3_param_persistence_threshold`` = 10*h). The explicit flavour writes the same numbers, taken from
  :func:`planner.engine.memory.zero_bucket_elements`, the function the memory engine counts the buffers with.

Explicit values where DeepSpeed's docs and code disagree (docs ``docs/_pages/config-json.md`` against
``deepspeed/runtime/zero/config.py`` of deepspeed 0.19.8):

* ``overlap_comm``: docs default ``false``; code default ``None``, turned into ``True`` only at stage 3
  (validator ``overlap_comm_valid``). We write ``true`` at every stage: the engine counts the two reduce
  buckets overlap keeps in flight (eq. C2).
* ``stage3_prefetch_bucket_size``: docs table ``5e8``, code ``5e7``. We write 0.9*h*h (HF's choice, counted).
* ``stage3_param_persistence_threshold``: the docs' example block says ``1e6``, their table and the code
  ``1e5``. We write 10*h (HF's choice).
* ``gradient_clipping``: both say 1.0 (``GRADIENT_CLIPPING_DEFAULT``); written anyway, as the HF Trainer
  checks it against ``max_grad_norm``.

``"_comment"`` sits at the top level only: DeepSpeedConfig 0.19.8 reads known top-level keys and rejects only
a short list of removed ones (``_reject_removed_config_keys``), while every sub-block is a pydantic model with
``extra="forbid"`` that refuses unknown keys.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from planner.emit.common import (
    ADAM_BETAS,
    ADAM_EPS,
    SGD_MOMENTUM,
    Job,
    NotExpressible,
    Target,
    check_block_checkpointing,
    half_dtype,
    header_lines,
)
from planner.engine.memory import zero_bucket_elements
from planner.engine.setup import Setup

Flavour = Literal["explicit", "hf"]
DEEPSPEED_VERSION = "0.19.8"
"""The DeepSpeed whose config models the output is tested against (``tests/planner/emit/test_deepspeed.py``)."""
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
STAGE3_MAX_REUSE_DISTANCE = 1_000_000_000
"""Stage-3 release thresholds: the docs and code defaults agree (1e9 each); written so the file says them."""
FP16_LOSS_SCALING = {"loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1}
"""Dynamic loss scaling (``loss_scale: 0``) with DeepSpeed's documented defaults (``DeepSpeedFP16Config``)."""

HF_FILENAME = "ds_config_hf.json"
EXPLICIT_FILENAME = "ds_config.json"


def check(t: Job, trainer: str = "hf-deepspeed") -> None:
    """Raise :class:`NotExpressible` unless DeepSpeed can run the plan with the bytes the planner counted."""
    s = t.setup
    check_block_checkpointing(trainer, s, "the HF Trainer")
    if s.fsdp is not None:
        raise NotExpressible(trainer, f"the plan shards with FSDP {s.fsdp}, not DeepSpeed; use --trainer hf-fsdp")
    if s.recipe == "fp16-amp" and s.zero > 0:
        return
    if s.recipe != "deepspeed-bf16":
        if s.zero == 0:
            raise NotExpressible(
                trainer, f"the plan uses plain data parallelism with recipe {s.recipe}; use --trainer hf-ddp"
            )
        raise NotExpressible(
            trainer,
            f"DeepSpeed ZeRO trains with its own 16-bit optimizer (fp32 master), not recipe {s.recipe}; "
            "re-plan with --recipe deepspeed-bf16",
        )
    if s.optimizer_in_backward:
        raise NotExpressible(trainer, "DeepSpeed has no optimizer-in-backward; use --trainer torchtune")


TRANSFORMERS_VERSION = "5.24.0"
"""The transformers whose DeepSpeed integration the HF-flavour rules below follow."""


def owns_optimizer(s: Setup) -> bool:
    """Whether the HF-flavour config (``ds_config_hf.json``) carries DeepSpeed's own optimizer block: with
    optimizer offload of AdamW, where DeepSpeed must step the offloaded states with ``DeepSpeedCPUAdam``."""
    return s.offload != "none" and s.optimizer == "adamw"


OPTIM_NOT_WRITTEN = (
    f"No `optim` key: {HF_FILENAME} holds DeepSpeed's optimizer block (AdamW, stepped by DeepSpeedCPUAdam on the "
    f"offloaded states); transformers {TRANSFORMERS_VERSION} then builds DeepSpeed's optimizer and ignores `optim` "
    "(integrations/deepspeed.py, deepspeed_optim_sched). learning_rate, adam_beta1/2, adam_epsilon and "
    "weight_decay (their defaults where not written) fill its \"auto\" values."
)
"""What the HF Trainer's files say instead of an ``optim`` that would not take effect."""


def _optimizer_block(t: Target, flavour: Flavour) -> dict[str, Any] | None:
    """DeepSpeed's own optimizer, or None to let the training script (HF Trainer) build it.

    HF flavour: only when :func:`owns_optimizer` (a torch optimizer would step on the CPU unfused); the HF
    Trainer then ignores ``optim``, so its files leave ``optim`` out and say why (:data:`OPTIM_NOT_WRITTEN`).
    Explicit flavour: every optimizer DeepSpeed can build (AdamW, SGD); 8-bit AdamW and Adafactor stay with the
    script. AdamW is DeepSpeed's FusedAdam, or torch's foreach AdamW (``torch_adam``) for ``optimizer_kernel="foreach"``.
    """
    s = t.setup
    if flavour == "hf":
        if not owns_optimizer(s):
            return None
        return {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
    lr = t.hp.learning_rate.value
    if s.optimizer == "adamw":
        adam: dict[str, Any] = {"lr": lr, "betas": list(ADAM_BETAS), "eps": ADAM_EPS,
                                "weight_decay": t.hp.weight_decay.value}
        if s.foreach_adamw:
            # DeepSpeed builds torch.optim.AdamW (its foreach default) instead of FusedAdam
            # (runtime/engine.py get_optimizer_configuration, TORCH_ADAM_PARAM)
            adam["torch_adam"] = True
        return {"type": "AdamW", "params": adam}
    if s.optimizer in ("sgd", "sgd-momentum"):
        params: dict[str, Any] = {"lr": lr}
        if s.optimizer == "sgd-momentum":
            params["momentum"] = SGD_MOMENTUM
        return {"type": "SGD", "params": params}
    return None


def zero_section(t: Target, flavour: Flavour) -> dict[str, Any]:
    s = t.setup
    auto = flavour == "hf"
    b = zero_bucket_elements(t.model)
    z: dict[str, Any] = {"stage": s.zero}
    if s.offload in ("optimizer", "optimizer+params"):
        z["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if s.offload == "optimizer+params" and s.zero == 3:
        z["offload_param"] = {"device": "cpu", "pin_memory": True}
    if s.zero == 0:
        return z
    z["overlap_comm"] = True
    z["contiguous_gradients"] = True
    z["reduce_bucket_size"] = "auto" if auto else b["reduce_bucket_size"]
    if s.zero in (1, 2):
        z["allgather_bucket_size"] = b["allgather_bucket_size"]
    if s.zero == 3:
        z["stage3_prefetch_bucket_size"] = "auto" if auto else b["stage3_prefetch_bucket_size"]
        z["stage3_param_persistence_threshold"] = "auto" if auto else b["stage3_param_persistence_threshold"]
        z["stage3_max_live_parameters"] = STAGE3_MAX_LIVE_PARAMETERS
        z["stage3_max_reuse_distance"] = STAGE3_MAX_REUSE_DISTANCE
        z["stage3_gather_16bit_weights_on_model_save"] = True
    return z


def deepspeed_config(t: Target, flavour: Flavour) -> dict[str, Any]:
    """The DeepSpeed config as a dict (raises :class:`NotExpressible` for plans DeepSpeed cannot run)."""
    check(t)
    s = t.setup
    auto = flavour == "hf"
    run = (
        "bash launch.sh hf or llamafactory (accelerate_config.yaml and llamafactory.yaml name this file)"
        if auto
        else "bash launch.sh deepspeed (the deepspeed launcher; your script calls deepspeed.initialize)"
    )
    kind = "HF-integration flavour: \"auto\" is filled by transformers from TrainingArguments" if auto else "explicit numbers"
    cfg: dict[str, Any] = {
        "_comment": header_lines(t, f"DeepSpeed {DEEPSPEED_VERSION} config, {kind}", run),
        "train_micro_batch_size_per_gpu": "auto" if auto else s.micro_batch,
        "gradient_accumulation_steps": "auto" if auto else s.grad_accum,
        "train_batch_size": "auto" if auto else s.micro_batch * s.grad_accum * t.world_size,
        "gradient_clipping": "auto" if auto else t.hp.max_grad_norm.value,
    }
    if half_dtype(s) == "bf16":
        cfg["bf16"] = {"enabled": "auto" if auto else True}
    else:
        cfg["fp16"] = {"enabled": "auto" if auto else True, **FP16_LOSS_SCALING}
    cfg["zero_optimization"] = zero_section(t, flavour)
    opt = _optimizer_block(t, flavour)
    if opt is not None:
        cfg["optimizer"] = opt
    elif flavour == "explicit" and s.zero > 0:
        cfg["zero_allow_untested_optimizer"] = True  # the script's own optimizer (8-bit AdamW, Adafactor) under ZeRO
    return cfg


def render(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, indent=2, ensure_ascii=False) + "\n"
