"""Training hyper-parameters with their reasons: the one place these rules live.

Pure (no I/O). :func:`recommend` turns a plan (model, setup, data-parallel size) and, when known, the measured
dataset into :class:`HyperParams`: each value with the reason and the source it comes from, and whether the
user overrode it. The emitters (``planner/emit``) format these values and reasons (YAML comments, PLAN.md);
they never decide a value themselves. One function per rule below, each with its source in the docstring.

Sources cited (short names used in the reasons):

* **LoRA**: Hu et al. 2021, arXiv:2106.09685.
* **QLoRA**: Dettmers et al. 2023, arXiv:2305.14314, app. B.2, and its scripts
  (``artidoro/qlora scripts/finetune_guanaco_7b.sh``: lr 2e-4, batch 4 x 4 = 16, dropout 0.1, warm-up 0.03,
  eval every 187 of 1,875 steps on 1,024 held-out rows, ``train_on_source`` false; ``..._65b.sh``: lr 1e-4,
  dropout 0.05).
* **Alpaca**: Taori et al. 2023, ``tatsu-lab/stanford_alpaca`` README (7B: batch 128, lr 2e-5, 3 epochs, cosine,
  warm-up ratio 0.03, weight decay 0; 13B: lr 1e-5).
* **Tulu 3**: Lambert et al. 2024, arXiv:2411.15124 (SFT on ~939k prompts: 2 epochs).
* **sqrt scaling**: Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms",
  arXiv:2205.10287 (Adam: scale the learning rate with the square root of the batch size).
* **rsLoRA**: Kalajdzievski 2023, arXiv:2312.03732 (scale alpha / sqrt(r) instead of alpha / r).
* **LoRA+**: Hayou et al. 2024, arXiv:2402.12354 (B's learning rate = lambda x A's; lambda = 2^4 recommended).
* **NEFTune**: Jain et al. 2023, arXiv:2310.05914 (uniform noise alpha / sqrt(L d) on the input embeddings,
  alpha in {5, 10, 15}).
* **LLaMA-Factory**: 0.9.5 defaults (``hparams/*.py``) and ``examples/train_lora/llama3_lora_sft.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from planner.engine.setup import Setup
from profiles.params import param_counts
from profiles.schema import ModelProfile

QLORA_REFERENCE_BATCH = 16
"""Sequences per optimizer step of the QLoRA learning rates (per-device 4 x accumulation 4, one GPU)."""
ALPACA_REFERENCE_BATCH = 128
"""Sequences per optimizer step of the Alpaca full fine-tuning learning rates."""
LARGE_MODEL_PARAMS = 20e9
"""QLoRA halves the learning rate and dropout for its 33B and 65B models against 7B and 13B; we split at 20B
parameters (between 13B and 33B). Alpaca halves the full fine-tuning rate from 7B to 13B: we split at 10B."""
LARGE_DATASET_ROWS = 100_000
"""Above this many rows, 2 epochs (Tulu 3, ~939k rows) rather than 3 (Alpaca, 52k rows) [boundary: tuneplan's,
between the two published cases]."""
EVAL_FRACTION = 0.1
"""LLaMA-Factory examples hold out ``val_size: 0.1``."""
EVAL_MAX_ROWS = 1024
"""QLoRA held out 1,024 rows (``--eval_dataset_size 1024``): enough for a stable loss, cheap to evaluate."""
EVALS_PER_RUN = 10
"""QLoRA evaluated every 187 of 1,875 steps: ten times per run."""
EVAL_STEPS_FALLBACK = 500
"""LLaMA-Factory examples' ``eval_steps: 500`` when the run's length is unknown (no ``--dataset``)."""


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its value, why, where that comes from, and whether the user set it."""

    value: Any
    reason: str
    source: str
    overridden: bool = False

    @property
    def comment(self) -> str:
        """The YAML comment / PLAN.md line: ``reason (source)`` or ``set by --flag``."""
        return f"{self.reason} ({self.source})" if not self.overridden else self.reason


@dataclass(frozen=True)
class HyperParams:
    """Every training hyper-parameter the emitters write (see :func:`recommend`)."""

    learning_rate: HParam
    epochs: HParam
    warmup_ratio: HParam
    scheduler: HParam
    weight_decay: HParam
    max_grad_norm: HParam
    train_on_prompt: HParam
    val_size: HParam
    eval_steps: HParam
    lora_rank: HParam | None = None
    lora_alpha: HParam | None = None
    lora_dropout: HParam | None = None
    use_rslora: HParam | None = None
    loraplus_lr_ratio: HParam | None = None
    neftune_alpha: HParam | None = None
    total_steps: int | None = None
    """optimizer steps of the whole run, when a dataset gave the steps per epoch"""

    def items(self) -> list[tuple[str, HParam]]:
        return [(k, getattr(self, k)) for k in FIELDS if getattr(self, k) is not None]


FIELDS = ("learning_rate", "epochs", "warmup_ratio", "scheduler", "weight_decay", "max_grad_norm", "train_on_prompt",
          "val_size", "eval_steps", "lora_rank", "lora_alpha", "lora_dropout", "use_rslora", "loraplus_lr_ratio",
          "neftune_alpha")
OVERRIDE_FLAGS: dict[str, str] = {
    "learning_rate": "--lr", "epochs": "--epochs", "warmup_ratio": "--warmup-ratio", "scheduler": "--scheduler",
    "weight_decay": "--weight-decay", "max_grad_norm": "--max-grad-norm", "train_on_prompt": "--train-on-prompt",
    "val_size": "--val-size", "eval_steps": "--eval-steps", "use_rslora": "--rslora",
    "loraplus_lr_ratio": "--loraplus-ratio", "neftune_alpha": "--neftune-alpha",
}
"""Hyper-parameter -> the ``plan configs`` flag that overrides it (rank, alpha and dropout are Setup flags:
``--lora-rank``, ``--lora-alpha``, ``--lora-dropout``, because the memory estimate depends on them)."""
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
"""Schedules every trainer here names the same way (transformers ``SchedulerType`` values)."""


# ---- rules -------------------------------------------------------------------------------------------------


def base_learning_rate(model: ModelProfile, setup: Setup) -> tuple[float, int, str]:
    """(learning rate, the global batch in sequences it was tuned at, source).

    LoRA / QLoRA: 2e-4 up to 20B parameters, 1e-4 above, at 16 sequences per step (QLoRA app. B.2 and its
    Guanaco scripts). Full fine-tuning and freeze: 2e-5 up to 10B, 1e-5 above, at 128 sequences (Alpaca's 7B and
    13B runs). LLaMA-Factory's examples use 1e-4 (LoRA) and 1e-5 (full), without a batch to scale from.
    """
    n = param_counts(model).total
    if setup.trains_adapters:
        big = n > LARGE_MODEL_PARAMS
        return (1e-4 if big else 2e-4), QLORA_REFERENCE_BATCH, \
            f"QLoRA app. B.2: {'1e-4 for 33B/65B' if big else '2e-4 for 7B/13B'} at batch {QLORA_REFERENCE_BATCH}"
    big = n > 10e9
    return (1e-5 if big else 2e-5), ALPACA_REFERENCE_BATCH, \
        f"Alpaca: {'1e-5 for 13B' if big else '2e-5 for 7B'} at batch {ALPACA_REFERENCE_BATCH}"


def sqrt_scaled_learning_rate(base: float, reference_batch: int, global_batch: int) -> float:
    """Square-root scaling in the global batch (Malladi et al. 2022, arXiv:2205.10287, the SDE scaling rule for
    Adam): ``lr = base x sqrt(global_batch / reference_batch)``. Valid for moderate changes of the batch; the
    rule is derived for small learning rates and breaks down far from the reference."""
    return base * math.sqrt(global_batch / reference_batch)


def epochs_for(rows: int | None) -> tuple[float, str, str]:
    """3 epochs (Alpaca, 52k rows; LLaMA-Factory's examples: ``num_train_epochs: 3.0``), 2 above 100k rows
    (Tulu 3 trained ~939k rows for 2 epochs: more did not help)."""
    if rows is not None and rows > LARGE_DATASET_ROWS:
        return 2.0, f"{rows:,} rows: large datasets need fewer passes", "Tulu 3 SFT: 2 epochs over ~939k rows"
    what = f"{rows:,} rows" if rows is not None else "dataset size unknown"
    return 3.0, f"{what}: small and medium SFT sets take 3 passes", "Alpaca 52k rows, LLaMA-Factory examples: 3 epochs"


def eval_split(rows: int | None) -> tuple[float, str]:
    """Hold out 10 % (LLaMA-Factory examples' ``val_size: 0.1``) but at most 1,024 rows (QLoRA's eval set)."""
    if rows is None:
        return EVAL_FRACTION, f"10 % held out (LLaMA-Factory examples: val_size 0.1); at most {EVAL_MAX_ROWS} rows once the size is known"
    frac = min(EVAL_FRACTION, EVAL_MAX_ROWS / rows)
    return round(frac, 6), f"{min(rows // 10, EVAL_MAX_ROWS):,} of {rows:,} rows held out: 10 % up to QLoRA's 1,024"


def eval_interval(total_steps: int | None) -> tuple[int, str]:
    """Evaluate ten times per run (QLoRA: every 187 of 1,875 steps); 500 steps (LLaMA-Factory examples) when
    the run's length is unknown."""
    if total_steps is None:
        return EVAL_STEPS_FALLBACK, "run length unknown (no --dataset): LLaMA-Factory examples' eval_steps 500"
    return max(1, math.ceil(total_steps / EVALS_PER_RUN)), \
        f"{total_steps:,} optimizer steps: about {EVALS_PER_RUN} evaluations per run as QLoRA did"


def recommend(
    model: ModelProfile,
    setup: Setup,
    world_size: int,
    *,
    rows: int | None = None,
    steps_per_epoch: int | None = None,
    dropout_cost_bytes: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> HyperParams:
    """The hyper-parameters of a plan, each with its reason (see the rules above).

    ``rows`` and ``steps_per_epoch`` come from a measured dataset (:mod:`planner.engine.dataset`); ``dropout_cost_bytes``
    is what LoRA dropout 0.1 would add per GPU against the plan (the memory engine's number, computed by the
    caller); ``overrides`` maps a field of :data:`FIELDS` to the user's value.
    """
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(ov) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown hyper-parameter override {sorted(unknown)}; valid: {', '.join(FIELDS)}")
    gb = setup.micro_batch * setup.grad_accum * setup.data_parallel(world_size)
    base, ref, src = base_learning_rate(model, setup)
    lr = sqrt_scaled_learning_rate(base, ref, gb)
    e, e_reason, e_src = epochs_for(rows)
    val, val_reason = eval_split(rows)
    total = None if steps_per_epoch is None else math.ceil(steps_per_epoch * float(ov.get("epochs", e)))
    ev, ev_reason = eval_interval(total)
    hp: dict[str, HParam] = {
        "learning_rate": HParam(float(f"{lr:.3g}"), f"{base:g} x sqrt({gb} / {ref}) for this plan's global batch of {gb} "
                                f"sequences", f"{src}; sqrt scaling, Malladi et al. 2022"),
        "epochs": HParam(e, e_reason, e_src),
        "warmup_ratio": HParam(0.03, "linear warm-up over the first 3 % of steps", "Alpaca and QLoRA: warmup_ratio 0.03"),
        "scheduler": HParam("cosine", "cosine decay after the warm-up (QLoRA used constant)",
                            "Alpaca, LLaMA-Factory examples: cosine"),
        "weight_decay": HParam(0.0, "no weight decay", "Alpaca, QLoRA, HF Trainer default: 0"),
        "max_grad_norm": HParam(1.0, "clip the gradient norm at 1.0 (QLoRA clipped at 0.3)",
                                "HF Trainer and DeepSpeed default"),
        "train_on_prompt": HParam(False, "loss on the responses only: prompt tokens are masked (-100)",
                                  "LLaMA-Factory train_on_prompt, torchtune train_on_input, QLoRA train_on_source: false"),
        "val_size": HParam(val, val_reason, "LLaMA-Factory examples; QLoRA eval_dataset_size"),
        "eval_steps": HParam(ev, ev_reason, "QLoRA scripts; LLaMA-Factory examples"),
    }
    if setup.trains_adapters:
        hp["lora_rank"] = HParam(setup.lora_rank, "the plan's rank (its adapters and their optimizer states are in "
                                 "the memory estimate); rank 8 matched higher ranks on GPT-3 (LoRA Table 6), QLoRA used 64",
                                 "LLaMA-Factory default 8; --lora-rank")
        hp["lora_alpha"] = HParam(setup.lora_alpha, f"scale alpha / rank = {setup.lora_alpha / setup.lora_rank:g}",
                                  "LLaMA-Factory default alpha = 2 x rank; --lora-alpha")
        cost = "" if dropout_cost_bytes is None else f"; dropout 0.1 would add {dropout_cost_bytes / 2**30:.2f} GiB per GPU"
        hp["lora_dropout"] = HParam(setup.lora_dropout, "the plan's dropout: 0 keeps no dropped copy of each adapted "
                                    f"input (QLoRA used 0.1 up to 13B, 0.05 above){cost}",
                                    "peft and LLaMA-Factory default 0; --lora-dropout")
        hp["use_rslora"] = HParam(False, "off: alpha / rank scaling as the plan's alpha assumes; rsLoRA's alpha / sqrt(rank) "
                                  "lets ranks of 64 and more learn as fast as small ones", "rsLoRA, Kalajdzievski 2023")
        hp["loraplus_lr_ratio"] = HParam(None, "off: one learning rate for A and B; LoRA+ trains B at 16x A's rate "
                                         "(--loraplus-ratio 16)", "LoRA+, Hayou et al. 2024")
    hp["neftune_alpha"] = HParam(None, "off: NEFTune adds noise to the input embeddings (--neftune-alpha 5 raised "
                                 "LLaMA-2-7B's AlpacaEval win rate from 29.8 % to 64.7 %)", "NEFTune, Jain et al. 2023")
    for k, v in ov.items():
        if k not in hp:
            raise ValueError(f"{OVERRIDE_FLAGS.get(k, k)} applies to LoRA/QLoRA plans only")
        was = "off" if hp[k].value is None else repr(hp[k].value)
        hp[k] = replace(hp[k], value=v, reason=f"set by {OVERRIDE_FLAGS.get(k, k)} (recommended: {was}; "
                        f"{hp[k].reason})", overridden=True)
    if steps_per_epoch is not None:
        total = math.ceil(steps_per_epoch * float(hp["epochs"].value))
    return HyperParams(**hp, total_steps=total)
