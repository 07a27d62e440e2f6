"""A measured dataset in planning: what ``--dataset`` changes in memory, speed and training time.

Pure (no I/O): :class:`DatasetShape` holds the per-row token counts that :mod:`planner.app.data_io` measured, and
the functions below are the only places the planner uses them:

* :func:`speed_setup` - THE hook into the speed model: without packing, micro-batches are padded to their
  longest row, so the GPU processes ``micro_batch x mean padded length`` tokens per micro-step, not
  ``micro_batch x --seq``; with packing, each pack is ``--seq`` long but only partly filled. Useful tokens
  are the real ones either way (``Setup.padding_efficiency``).
* :func:`memory_setup` - without packing the memory peak comes from the longest micro-batch, padded to its
  longest row (at most ``--seq``), not from ``--seq`` itself.

:func:`planner.engine.evaluate.evaluate` (``data=``) is their only caller.
* :func:`data_train_time` - time, steps per epoch and cost from the real token count.

Orderings and packers are the trainers' defaults (random shuffle; LLaMA-Factory's greedy knapsack): see
:mod:`planner.engine.datastats` and docs/data.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from planner.engine.datastats import (
    Packing,
    Padding,
    kept_lengths,
    pack_greedy_knapsack,
    padding_random,
    trained_labels,
)
from planner.engine.results import SpeedEstimate
from planner.engine.setup import Setup
from planner.engine.speed.train_time import TrainTime, train_time

PAD_MULTIPLE = 1
"""``pad_to_multiple_of`` the planner assumes: none (HF ``DataCollatorWithPadding`` / ``DataCollatorForSeq2Seq``
default, torchtune ``padded_collate_sft``). LLaMA-Factory's SFT workflow pads to a multiple of 8 in training
(``train/sft/workflow.py``): at most 7 tokens more per micro-batch; ``plan data --pad-multiple 8`` shows it."""


WORST_CASE_PADDING = "padding: every micro-batch padded to --seq"
"""The memory engine's assumption without a dataset (planner.engine.memory); replaced by the measured longest batch."""


@dataclass(frozen=True)
class DatasetShape:
    """Per-row token counts of a dataset, in file order: ``prompt[i]`` tokens that do not train (under
    ``train_on_prompt`` false) and ``response[i]`` that do, as the model's chat template renders the row."""

    name: str
    prompt: tuple[int, ...]
    response: tuple[int, ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.prompt) != len(self.response):
            raise ValueError("prompt and response counts differ in length")
        if not self.prompt:
            raise ValueError(f"dataset {self.name} has no rows")

    @property
    def rows(self) -> int:
        return len(self.prompt)

    def _memo(self, key: tuple, fn: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def lengths(self, seq: int) -> list[int]:
        """Row lengths after the ``seq`` cut-off (eq. D1)."""
        return self._memo(("len", seq), lambda: kept_lengths(self.prompt, self.response, seq))

    def real_tokens(self, seq: int) -> int:
        """Tokens the GPU sees per epoch without packing: every row, truncated at ``seq``."""
        return self._memo(("tok", seq), lambda: sum(self.lengths(seq)))

    def labels(self, seq: int, train_on_prompt: bool = False) -> int:
        """Label positions that train (eq. D2)."""
        return self._memo(("lab", seq, train_on_prompt),
                          lambda: trained_labels(self.prompt, self.response, seq, train_on_prompt))

    def padding(self, seq: int, micro_batch: int, multiple: int = PAD_MULTIPLE) -> Padding:
        """Dynamic padding of micro-batches of ``micro_batch`` rows under a random shuffle (eq. D5, exact)."""
        return self._memo(("pad", seq, micro_batch, multiple),
                          lambda: padding_random(self.lengths(seq), micro_batch, multiple))

    def packing(self, seq: int) -> Packing:
        """Packs of ``seq`` tokens, LLaMA-Factory's greedy knapsack (eq. D6)."""
        return self._memo(("pack", seq), lambda: pack_greedy_knapsack(self.lengths(seq), seq))


def speed_setup(setup: Setup, data: DatasetShape) -> tuple[Setup, str]:
    """The setup whose step time the speed model prices on ``data`` (eq. S17), and the assumption it adds:
    the one hook from a measured dataset into the speed model, used by
    :func:`planner.engine.evaluate.evaluate`.

    * Packing: packs are ``seq_len`` long, so the step is priced as without a dataset, and the useful tokens
      are the packing efficiency's share of them (``padding_efficiency`` = real / (packs x seq_len), eq. D6).
    * No packing (dynamic padding): a micro-batch of ``b`` rows is padded to its longest row, so the GPU
      processes ``b x P`` tokens with ``P`` the padded length. Priced at the *mean* padded length ``E[P]``
      (rounded to a whole token; eq. D5) with useful tokens = the real ones (``padding_efficiency`` =
      real / processed). Errs fast (low step time) in the attention core, whose per-token cost grows with
      ``P``: the exact mean of ``P x P`` is ``E[P^2] >= E[P]^2``; errs slow for FlashAttention-2 under
      transformers' unpadding, which skips pad tokens in attention (not in the linear layers).
    """
    if setup.packing:
        pk = data.packing(setup.seq_len)
        eff = min(1.0, pk.efficiency)
        note = (f"dataset {data.name}: packed by LLaMA-Factory's greedy knapsack, {pk.rows_per_pack:.1f} rows per "
                f"{setup.seq_len}-token pack, {eff:.1%} real tokens (S17, D6)")
        return setup.model_copy(update={"padding_efficiency": eff}), note
    pad = data.padding(setup.seq_len, setup.micro_batch)
    length = max(1, round(pad.mean_padded_length))
    eff = min(1.0, pad.efficiency)
    note = (f"dataset {data.name}: dynamic padding, random shuffle, micro-batch {setup.micro_batch}: padded "
            f"length {pad.mean_padded_length:,.0f} tokens on average (not --seq {setup.seq_len}), {eff:.1%} "
            "real tokens; attention priced at the mean length (errs fast) (S17, D5)")
    return setup.model_copy(update={"seq_len": length, "padding_efficiency": eff}), note


def memory_seq_len(setup: Setup, data: DatasetShape) -> int:
    """Tokens per row at the memory peak: ``seq_len`` with packing (every pack is full); without packing the
    longest micro-batch's padded length, ``min(longest row, seq_len)`` (the batch holding the longest row)."""
    if setup.packing:
        return setup.seq_len
    return min(setup.seq_len, data.padding(setup.seq_len, setup.micro_batch).longest_batch)


def memory_setup(setup: Setup, data: DatasetShape) -> tuple[Setup, str | None]:
    """The setup whose peak the memory engine estimates on ``data``: activations at :func:`memory_seq_len`
    instead of ``seq_len`` (the plan keeps ``setup`` as given; its ``seq_len`` stays the cut-off the configs
    write), and the assumption it adds (None with packing: nothing changes)."""
    if setup.packing:
        return setup, None
    length = memory_seq_len(setup, data)
    note = (f"dataset {data.name}: no packing, so the peak is the longest micro-batch: {setup.micro_batch} x "
            f"{length} tokens (its longest row, cut at --seq {setup.seq_len})")
    return setup.model_copy(update={"seq_len": length}), note


def steps_per_epoch(setup: Setup, world_size: int, data: DatasetShape) -> int:
    """Optimizer steps in one epoch: rows (or packs) / (micro-batch x accumulation x data-parallel ranks),
    rounded up (the HF Trainer steps on the last partial accumulation; ``dataloader_drop_last`` false)."""
    units = data.packing(setup.seq_len).packs if setup.packing else data.rows
    return max(1, math.ceil(units / (setup.micro_batch * setup.grad_accum * setup.data_parallel(world_size))))


def data_train_time(
    speed: SpeedEstimate, setup: Setup, world_size: int, data: DatasetShape, epochs: float = 1.0,
    price_per_gpu_hour: float | None = None,
) -> TrainTime:
    """Eq. S19 on the measured data: the real tokens the run processes (packed rows, or every row truncated at
    ``seq_len``) x epochs at the real-token throughput; optimizer steps from the rows or packs per epoch."""
    tokens = data.packing(setup.seq_len).tokens if setup.packing else data.real_tokens(setup.seq_len)
    tt = train_time(speed, tokens, epochs, price_per_gpu_hour)
    steps = max(1, math.ceil(steps_per_epoch(setup, world_size, data) * epochs))
    return tt.model_copy(update={"optimizer_steps": steps})
