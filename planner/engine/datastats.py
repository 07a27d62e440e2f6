"""Dataset statistics for planning: pure arithmetic over per-row token counts.

No I/O, no transformers, no printing: :mod:`planner.app.data_io` reads and tokenises the user's file and hands
this module two integer lists per dataset (prompt tokens and response tokens of every row, in file order).
Everything here is checked by brute force in ``tests/planner/test_datastats.py`` (every permutation of small
datasets for the padding expectation, exhaustive bin packing for the packing bounds, straight list-based
re-implementations of the trainers' packers).

Conventions (docs/data.md, eqs. D1-D7):

* a row's *length* is its prompt + response tokens as the chat template renders them (special tokens
  included); the ``--seq`` cut-off keeps the first ``seq`` tokens (right truncation, as torchtune's
  tokenizers and the HF / TRL truncation do; LLaMA-Factory's ``infer_seqlen`` keeps the same number of
  tokens but splits them differently between prompt and response, so its label count differs);
* *padding efficiency* is real tokens / tokens the GPU processes (real + pad), over the whole epoch;
* *packing efficiency* is real tokens / (packs x pack length).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Ordering = Literal["random", "group_by_length"]
ORDERINGS: dict[str, str] = {
    "random": "random shuffle every epoch (HF Trainer's default RandomSampler, torchtune's DistributedSampler "
    "shuffle=True, LLaMA-Factory through the HF Trainer)",
    "group_by_length": "HF Trainer train_sampling_strategy='group_by_length': random mega-batches of 50 x (micro-batch "
    "x accumulation) rows, each sorted by length (transformers trainer_pt_utils.get_length_grouped_indices)",
}
Packer = Literal["llamafactory", "torchtune"]
PACKERS: dict[str, str] = {
    "llamafactory": "LLaMA-Factory greedy knapsack: fill each pack with the longest row that still fits, rows longer "
    "than the cut-off dropped, per preprocessing batch of 1,000 rows (data/processor/processor_utils.py "
    "greedy_knapsack, supervised.py PackedSupervisedDatasetProcessor)",
    "torchtune": "torchtune PackedDataset: next-fit in file order, a row that does not fit closes the pack, rows "
    "truncated to max_seq_len first (torchtune 0.6.1 datasets/_packed.py, split_across_pack=False)",
}
LLAMAFACTORY_PACK_CHUNK = 1000
"""LLaMA-Factory packs within each ``datasets.map`` batch: ``preprocessing_batch_size`` defaults to 1,000 rows
(``hparams/data_args.py``), so packs never mix rows of different batches."""
MEGA_BATCH_MULT = 50
"""``get_length_grouped_indices``: ``mega_batch_mult = min(len(lengths) // (batch_size * 4), 50)`` (at least 1)."""


# --------------------------------------------------------------------------------------------------------
# Tokens, truncation, labels (D1, D2)
# --------------------------------------------------------------------------------------------------------


def kept_lengths(prompt: Sequence[int], response: Sequence[int], seq: int) -> list[int]:
    """Eq. D1: tokens each row keeps under the ``seq`` cut-off, ``min(prompt + response, seq)``."""
    return [min(p + r, seq) for p, r in zip(prompt, response)]


def trained_labels(prompt: Sequence[int], response: Sequence[int], seq: int, train_on_prompt: bool) -> int:
    """Eq. D2: label positions that enter the loss after right truncation at ``seq``.

    A causal LM predicts token t from tokens < t, so the first token of a row is never a target (HF shifts the
    labels by one, torchtune too). ``train_on_prompt`` false (LLaMA-Factory's and torchtune's default): the
    kept response tokens train, less one when a row has no prompt left (its first token is a response token).
    True: every kept token but the first.
    """
    total = 0
    for p, r in zip(prompt, response):
        kp = min(p, seq)
        kr = min(r, seq - kp)
        if train_on_prompt:
            total += max(kp + kr - 1, 0)
        else:
            total += max(kr - (1 if kp == 0 else 0), 0)
    return total


@dataclass(frozen=True)
class Truncation:
    """Rows the cut-off shortens and the tokens it removes (eq. D1)."""

    seq: int
    rows: int
    tokens_lost: int
    response_tokens_lost: int


def truncation(prompt: Sequence[int], response: Sequence[int], seq: int) -> Truncation:
    """How many rows are longer than ``seq``, and what right truncation removes (prompt first kept)."""
    rows = lost = rlost = 0
    for p, r in zip(prompt, response):
        if p + r > seq:
            rows += 1
            lost += p + r - seq
            rlost += r - min(r, max(seq - p, 0))
    return Truncation(seq, rows, lost, rlost)


# --------------------------------------------------------------------------------------------------------
# Histogram (D3)
# --------------------------------------------------------------------------------------------------------


def nice_bin_width(span: int, bins: int) -> int:
    """A round bin width (1, 2, 5 x 10^k tokens) giving at most ``bins`` bins over ``span`` tokens."""
    raw = max(span / max(bins, 1), 1.0)
    k = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * k >= raw:
            return int(m * k)
    return int(10 * k)


@dataclass(frozen=True)
class Histogram:
    """Row counts per length bin ``[edges[i], edges[i+1])`` (eq. D3); ``seq`` marks the cut-off."""

    edges: tuple[int, ...]
    counts: tuple[int, ...]
    seq: int


def length_histogram(lengths: Sequence[int], seq: int, bins: int = 40) -> Histogram:
    """Histogram of untruncated row lengths from 0 past ``max(longest row, seq)`` in round-width bins."""
    top = max(max(lengths, default=0), seq) + 1
    w = nice_bin_width(top, bins)
    n = -(-top // w)
    counts = [0] * n
    for x in lengths:
        counts[min(x // w, n - 1)] += 1
    return Histogram(tuple(i * w for i in range(n + 1)), tuple(counts), seq)


def quantile(sorted_values: Sequence[int], q: float) -> int:
    """The ``q``-quantile by the nearest-rank method (``ceil(q n)``-th smallest; q=0 gives the minimum)."""
    if not sorted_values:
        return 0
    k = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[k - 1]


# --------------------------------------------------------------------------------------------------------
# Dynamic padding (D4, D5)
# --------------------------------------------------------------------------------------------------------


def round_up(x: int, multiple: int) -> int:
    """``x`` rounded up to a multiple (the collator's ``pad_to_multiple_of``; 1 = none)."""
    return -(-x // multiple) * multiple


def padded_tokens_in_order(lengths: Sequence[int], micro_batch: int, multiple: int = 1) -> int:
    """Eq. D4: tokens the GPU processes when rows arrive in this order, ``micro_batch`` at a time, each
    micro-batch padded to its longest row (rounded up to ``multiple``); the last micro-batch may be short
    (``dataloader_drop_last`` false, the HF default)."""
    total = 0
    for i in range(0, len(lengths), micro_batch):
        chunk = lengths[i : i + micro_batch]
        total += len(chunk) * round_up(max(chunk), multiple)
    return total


def expected_max_moments(lengths: Sequence[int], k: int, multiple: int = 1) -> tuple[float, float]:
    """Eq. D5: ``(E[P], E[P^2])`` for ``P`` = the longest of ``k`` rows drawn without replacement, rounded up to
    ``multiple``.

    ``P(max <= v) = C(F(v), k) / C(n, k)`` with ``F(v)`` the rows of length <= v; summed over the distinct
    lengths, so the cost is O(distinct lengths x k), exact up to float rounding.
    """
    n = len(lengths)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= {n} rows, got k={k}")
    counts = sorted(Counter(lengths).items())
    e1 = e2 = 0.0
    below = 0  # rows strictly shorter than the current value
    prev_cdf = 0.0
    for v, c in counts:
        below += c
        cdf = _choose_ratio(below, n, k)
        p = cdf - prev_cdf
        pv = round_up(v, multiple)
        e1 += p * pv
        e2 += p * pv * pv
        prev_cdf = cdf
    return e1, e2


def _choose_ratio(f: int, n: int, k: int) -> float:
    """``C(f, k) / C(n, k) = prod_{i<k} (f - i) / (n - i)`` (0 when f < k)."""
    if f < k:
        return 0.0
    r = 1.0
    for i in range(k):
        r *= (f - i) / (n - i)
    return r


@dataclass(frozen=True)
class Padding:
    """Dynamic padding of one micro-batch size over one epoch (eqs. D4, D5).

    ``efficiency`` = real / processed tokens; ``mean_padded_length`` = processed tokens per row, i.e. the mean
    length micro-batches are padded to (weighted by rows); ``longest_batch`` = the padded length of the micro-batch
    that holds the longest row (the memory peak without packing); ``attention_length`` = E[P^2] / E[P], the
    length at which per-token attention FLOPs of the padded batches average out (>= mean_padded_length).
    """

    micro_batch: int
    ordering: str
    real_tokens: int
    processed_tokens: float
    mean_padded_length: float
    attention_length: float
    longest_batch: int
    multiple: int

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.processed_tokens if self.processed_tokens else 1.0

    @property
    def pad_tokens(self) -> float:
        return self.processed_tokens - self.real_tokens


def padding_random(lengths: Sequence[int], micro_batch: int, multiple: int = 1) -> Padding:
    """Eq. D5: expected padding under a uniformly random shuffle, exact.

    A random permutation cut into micro-batches of ``b`` makes every full micro-batch a uniformly random
    b-subset, and the last one (``n mod b`` rows) a random subset of that size, so by linearity
    ``E[processed] = floor(n/b) b E[P_b] + r E[P_r]``. The efficiency reported is real / E[processed] (the
    ratio of expectations; one shuffle scatters around it). Data parallelism deals the micro-batches of one
    global permutation to the ranks, which does not change it (DistributedSampler's few repeated rows to even
    out the ranks are ignored).
    """
    n = len(lengths)
    if n == 0:
        raise ValueError("no rows")
    b = min(micro_batch, n)
    full, r = divmod(n, b)
    e1, e2 = expected_max_moments(lengths, b, multiple)
    processed = full * b * e1
    sq = full * b * e2
    if r:
        r1, r2 = expected_max_moments(lengths, r, multiple)
        processed += r * r1
        sq += r * r2
    return Padding(
        micro_batch=micro_batch,
        ordering="random",
        real_tokens=sum(lengths),
        processed_tokens=processed,
        mean_padded_length=processed / n,
        attention_length=sq / processed,
        longest_batch=round_up(max(lengths), multiple),
        multiple=multiple,
    )


def group_by_length_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """Row indices in the order of transformers' ``get_length_grouped_indices`` (``trainer_pt_utils.py``):
    a random permutation cut into mega-batches of ``min(n // (4 batch_size), 50) x batch_size`` rows, each
    sorted by length, longest first, and the longest row moved to the very first position. ``batch_size`` is
    what the HF Trainer passes: micro-batch x accumulation. The permutation comes from ``rng`` (the HF
    Trainer draws it with ``torch.randperm``: a different permutation, the same distribution)."""
    n = len(lengths)
    mult = min(n // (batch_size * 4), MEGA_BATCH_MULT) or 1
    idx = list(range(n))
    rng.shuffle(idx)
    size = mult * batch_size
    megas = [sorted(idx[i : i + size], key=lambda j: lengths[j], reverse=True) for i in range(0, n, size)]
    maxima = [lengths[m[0]] for m in megas]
    top = max(range(len(megas)), key=lambda i: maxima[i])
    megas[0][0], megas[top][0] = megas[top][0], megas[0][0]
    return [j for m in megas for j in m]


def padding_group_by_length(
    lengths: Sequence[int], micro_batch: int, grad_accum: int = 1, multiple: int = 1, seeds: int = 4
) -> Padding:
    """Padding under ``group_by_length``, averaged over ``seeds`` seeded shuffles (Monte Carlo, not exact)."""
    if not lengths:
        raise ValueError("no rows")
    real = sum(lengths)
    proc = sq = 0.0
    for seed in range(seeds):
        order = group_by_length_order(lengths, micro_batch * grad_accum, random.Random(seed))
        ordered = [lengths[i] for i in order]
        for i in range(0, len(ordered), micro_batch):
            chunk = ordered[i : i + micro_batch]
            p = round_up(max(chunk), multiple)
            proc += len(chunk) * p
            sq += len(chunk) * p * p
    proc /= seeds
    sq /= seeds
    return Padding(micro_batch, "group_by_length", real, proc, proc / len(lengths), sq / proc,
                   round_up(max(lengths), multiple), multiple)


# --------------------------------------------------------------------------------------------------------
# Packing (D6, D7)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packing:
    """Packed sequences of ``capacity`` tokens (eqs. D6, D7): ``packs`` sequences hold ``rows`` rows and
    ``tokens`` real tokens; ``dropped`` rows were longer than the capacity (LLaMA-Factory drops them)."""

    packer: str
    capacity: int
    packs: int
    rows: int
    tokens: int
    dropped: int
    max_rows_per_pack: int

    @property
    def efficiency(self) -> float:
        """Real tokens / (packs x capacity): the rest of each pack is padding."""
        return self.tokens / (self.packs * self.capacity) if self.packs else 1.0

    @property
    def rows_per_pack(self) -> float:
        return self.rows / self.packs if self.packs else 0.0


def pack_greedy_knapsack(lengths: Sequence[int], capacity: int, chunk: int = LLAMAFACTORY_PACK_CHUNK) -> Packing:
    """Eq. D6: LLaMA-Factory's ``greedy_knapsack`` (``data/processor/processor_utils.py``): rows longer than
    ``capacity`` are dropped; within each chunk of ``chunk`` rows (file order), each pack takes the longest
    remaining row that fits the space left, until none fits, then the next pack opens.

    Implemented over length counts (rows of equal length are interchangeable), O(n log distinct) instead of the
    original's list pops; a test compares it with a line-by-line list version.
    LLaMA-Factory pads each pack to ``cutoff_len + 1`` tokens; we count packs of ``capacity`` (errs high by
    1/capacity in efficiency).
    """
    packs = rows = tokens = dropped = most = 0
    for start in range(0, len(lengths), chunk):
        part = [x for x in lengths[start : start + chunk]]
        keep = [x for x in part if x <= capacity]
        dropped += len(part) - len(keep)
        counts = Counter(keep)
        values = sorted(counts)
        while values:
            space = capacity
            in_pack = 0
            while True:
                i = bisect.bisect_right(values, space) - 1
                if i < 0:
                    break
                v = values[i]
                space -= v
                in_pack += 1
                counts[v] -= 1
                if counts[v] == 0:
                    values.pop(i)
            packs += 1
            rows += in_pack
            tokens += capacity - space
            most = max(most, in_pack)
    return Packing("llamafactory", capacity, packs, rows, tokens, dropped, most)


def pack_next_fit(lengths: Sequence[int], capacity: int) -> Packing:
    """Eq. D7: torchtune's ``PackedDataset`` (0.6.1 ``datasets/_packed.py``, ``split_across_pack=False``): rows
    in file order, each truncated to ``capacity`` (its tokenizer's ``max_seq_len``); a row that does not fit the
    open pack closes it and opens the next; every pack is padded to ``capacity``. Next-fit: at most twice the
    optimal number of packs."""
    packs = rows = tokens = most = 0
    used = in_pack = 0
    for x in lengths:
        x = min(x, capacity)
        if in_pack and used + x > capacity:
            packs += 1
            most = max(most, in_pack)
            used = in_pack = 0
        used += x
        in_pack += 1
        rows += 1
        tokens += x
    if in_pack:
        packs += 1
        most = max(most, in_pack)
    return Packing("torchtune", capacity, packs, rows, tokens, 0, most)


def pack(lengths: Sequence[int], capacity: int, packer: str) -> Packing:
    """Pack with the named trainer's algorithm (:data:`PACKERS`)."""
    if packer == "llamafactory":
        return pack_greedy_knapsack(lengths, capacity)
    if packer == "torchtune":
        return pack_next_fit(lengths, capacity)
    raise ValueError(f"unknown packer {packer!r}; valid: {', '.join(PACKERS)}")
