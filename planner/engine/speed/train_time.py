"""Tokens per step, and the time and cost of a whole training run (docs/speed.md eqs. S17, S19)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from planner.engine.results import SpeedEstimate
from planner.engine.setup import Setup, SetupError

class TrainTime(BaseModel):
    """Wall time, GPU-hours and cost of a training run at a :class:`SpeedEstimate`'s throughput (eq. S19)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    tokens: float = Field(gt=0, description="dataset tokens x epochs")
    optimizer_steps: int = Field(ge=1, description="ceil(tokens / tokens_per_step)")
    seconds: float = Field(gt=0)
    gpu_hours: float = Field(gt=0)
    cost: float | None = Field(None, description="gpu_hours x price per GPU-hour; None without a price")

    def to_json(self) -> dict:
        return self.model_dump()

    def __str__(self) -> str:
        """One display line: ``2.00e+09 tokens in 12.3 h (98.4 GPU-hours, cost 147.60)``."""
        cost = "" if self.cost is None else f", cost {self.cost:,.2f}"
        return (
            f"{self.tokens:.3g} tokens in {self.seconds / 3600:,.1f} h "
            f"({self.gpu_hours:,.1f} GPU-hours{cost}; {self.optimizer_steps:,} optimizer steps)"
        )


def tokens_per_step(setup: Setup, world_size: int) -> int:
    """Eq. S17: useful tokens per optimizer step, ``micro_batch * seq_len * grad_accum * data-parallel ranks``
    (the world size, divided by TP x CP when those share one replica's rows).

    ``setup.padding_efficiency`` (real tokens / processed positions, default 1.0: every row full) scales the
    useful tokens: the pad tokens of dynamically padded micro-batches, or the unfilled end of packs. The GPU
    still computes the padded positions. :func:`planner.engine.dataset.speed_setup` measures it from a dataset.
    """
    processed = setup.micro_batch * setup.seq_len * setup.grad_accum * setup.data_parallel(world_size)
    eff = setup.padding_efficiency
    return max(1, round(processed * eff))


def train_time(
    speed: SpeedEstimate, dataset_tokens: float, epochs: float = 1.0, price_per_gpu_hour: float | None = None
) -> TrainTime:
    """Eq. S19: time and cost of ``epochs`` passes over ``dataset_tokens``.

    ``seconds = tokens / tokens_per_s`` (the last partial optimizer step counted fractionally);
    ``gpu_hours = seconds * world_size / 3600``; ``cost = gpu_hours * price`` (None without a price).
    Excludes start-up, checkpoint saving and evaluation: errs low.
    """
    if not dataset_tokens > 0:
        raise SetupError(f"--dataset-tokens must be a positive number, got {dataset_tokens!r}")
    if not epochs > 0:
        raise SetupError(f"--epochs must be positive, got {epochs!r}")
    if price_per_gpu_hour is not None and not price_per_gpu_hour >= 0:
        raise SetupError(f"--price-per-gpu-hour must be >= 0, got {price_per_gpu_hour!r}")
    tokens = float(dataset_tokens) * float(epochs)
    seconds = tokens / speed.tokens_per_s
    gpu_hours = seconds * speed.world_size / 3600.0
    return TrainTime(
        tokens=tokens,
        optimizer_steps=max(1, math.ceil(tokens / speed.tokens_per_step)),
        seconds=seconds,
        gpu_hours=gpu_hours,
        cost=None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour,
    )
