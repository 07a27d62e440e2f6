"""Batches at the plan's shapes: synthetic tokens, or real samples from a JSONL file.

* Synthetic: uniform random token ids in ``[0, vocab)``, ``micro_batch x seq_len``, labels = inputs (the
  model shifts them). Every row is full, as a packed batch is.
* JSONL: one JSON object per line with ``input_ids`` (a list of token ids) or ``text``. Text is tokenised
  with the tokenizer of ``--weights`` when that folder has one, else byte-level (UTF-8 bytes as ids, which
  needs a vocabulary of at least 256; no download). With packing (the plan's ``packing``) samples are
  concatenated, separated by the EOS id, and cut into full rows; without it each sample is one row,
  truncated to ``seq_len`` and padded to ``seq_len`` (the worst case the estimate assumes) with labels -100
  and attention mask 0 on the padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from validation.spec import RunSpec, SpecError

IGNORE = -100


@dataclass
class Batches:
    """An endless source of micro-batches and how many real (non-padding) tokens each holds."""

    rows: torch.Tensor
    """all rows, ``n x seq_len`` token ids (CPU)"""
    mask: torch.Tensor | None
    """attention mask (1 = real token), None when every row is full"""
    micro_batch: int
    description: str

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        i = 0
        n = self.rows.size(0)
        while True:
            idx = [(i + k) % n for k in range(self.micro_batch)]
            i = (i + self.micro_batch) % n
            yield self._batch(idx)

    def _batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        ids = self.rows[idx]
        labels = ids.clone()
        out = {"input_ids": ids, "labels": labels}
        if self.mask is not None:
            m = self.mask[idx]
            labels[m == 0] = IGNORE
            out["attention_mask"] = m
        return out

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        m = batch.get("attention_mask")
        return int(m.sum()) if m is not None else batch["input_ids"].numel()


def synthetic(spec: RunSpec, rows: int = 8) -> Batches:
    g = torch.Generator().manual_seed(spec.seed)
    s = spec.setup
    n = max(rows, s.micro_batch)
    ids = torch.randint(0, spec.model.vocab_size, (n, s.seq_len), generator=g)
    return Batches(ids, None, s.micro_batch, "synthetic")


def _tokenizer(weights: str | None):  # type: ignore[no-untyped-def]
    if not weights:
        return None
    p = Path(weights)
    if not any((p / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(weights)


def read_jsonl(path: str | Path, vocab: int, weights: str | None = None, limit: int = 10_000) -> list[list[int]]:
    """Token id lists from a JSONL file (``input_ids`` or ``text`` per line)."""
    tok = None
    samples: list[list[int]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SpecError(f"cannot read dataset {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"dataset {path}:{n} is not JSON: {e.msg}") from None
        if isinstance(obj, dict) and isinstance(obj.get("input_ids"), list):
            ids = [int(x) for x in obj["input_ids"]]
        elif isinstance(obj, dict) and isinstance(obj.get("text"), str):
            if tok is None:
                tok = _tokenizer(weights) or "bytes"
            if tok == "bytes":
                if vocab < 256:
                    raise SpecError(f"dataset {path}: byte-level tokens need a vocabulary >= 256, model has {vocab}")
                ids = list(obj["text"].encode("utf-8"))
            else:
                ids = tok(obj["text"])["input_ids"]
        else:
            raise SpecError(f"dataset {path}:{n}: expected an object with 'input_ids' (list) or 'text' (string)")
        bad = [x for x in ids if not 0 <= x < vocab]
        if bad:
            raise SpecError(f"dataset {path}:{n}: token id {bad[0]} outside the model's vocabulary [0, {vocab})")
        if ids:
            samples.append(ids)
        if len(samples) >= limit:
            break
    if not samples:
        raise SpecError(f"dataset {path} holds no samples")
    return samples


def from_jsonl(spec: RunSpec, eos_id: int = 0) -> Batches:
    s = spec.setup
    samples = read_jsonl(spec.dataset or "", spec.model.vocab_size, spec.weights)
    L = s.seq_len
    if s.packing:
        stream: list[int] = []
        for ids in samples:
            stream += ids + [eos_id]
        n_rows = max(1, len(stream) // L)
        while len(stream) < n_rows * L:  # too little data for one row: repeat it
            stream += stream
        rows = torch.tensor(stream[: n_rows * L]).view(n_rows, L)
        return Batches(rows, None, s.micro_batch, f"jsonl:{spec.dataset}:packed")
    rows = torch.zeros(len(samples), L, dtype=torch.long)
    mask = torch.zeros(len(samples), L, dtype=torch.long)
    for i, ids in enumerate(samples):
        ids = ids[:L]
        rows[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return Batches(rows, mask, s.micro_batch, f"jsonl:{spec.dataset}:padded")


def batches(spec: RunSpec) -> Batches:
    return from_jsonl(spec) if spec.dataset else synthetic(spec)
