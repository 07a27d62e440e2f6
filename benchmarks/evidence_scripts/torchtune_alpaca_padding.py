"""Padding of torchtune's unpacked Alpaca rows under the Llama 3 tokenizer: the numbers the evidence corpus needs to
map the "Baseline" row of torchtune's Llama 3.2 3B "Optimization flags" ladder (record
``torchtune-readme-2024-11/llama3.2-3b-full-baseline``).

    python benchmarks/evidence_scripts/torchtune_alpaca_padding.py \\
        --data alpaca_data.json --tokenizer tokenizer.model [--out summary.json]

Inputs (neither is in this repository; give local copies):

* ``--data``: the rows as a JSON array of ``{instruction, input, output}``. The full-finetune baseline ran
  ``3B_full_single_device.yaml`` at torchtune 1814feb17 (README PR #2003), whose dataset is ``alpaca_dataset``:
  Hugging Face ``tatsu-lab/alpaca`` (``torchtune/datasets/_alpaca.py:21``, ``source="tatsu-lab/alpaca"``), the
  52,002 rows of ``alpaca_data.json`` in tatsu-lab/stanford_alpaca (git blob
  :data:`TATSU_ALPACA_BLOB`, main since the 2023-03-13 release commit f134962). The LoRA/QLoRA rows used
  ``alpaca_cleaned_dataset`` (``yahma/alpaca-cleaned``) instead; ``--expect-blob`` checks another file.
* ``--tokenizer``: Llama 3's tiktoken BPE file (``original/tokenizer.model``: 128,000 ranks, sha256
  :data:`LLAMA3_TOKENIZER_SHA256`, the same file for Llama 3, 3.1 and 3.2).

What it computes, following torchtune at :data:`TORCHTUNE_COMMIT` line by line (:func:`torchtune_row`):

* each row rendered by ``AlpacaToMessages`` (``torchtune/data/_messages.py``: the Stanford Alpaca prompt with
  or without input; ``train_on_input`` True by default, ``_alpaca.py:23``) and tokenised by
  ``Llama3Tokenizer.tokenize_messages`` (``torchtune/models/llama3/_tokenizer.py:261-327``): BOS, then per
  message ``<|start_header_id|> role <|end_header_id|> "\\n\\n" body.strip() <|eot_id|>``, then EOS; BOS and EOS
  masked; truncated at ``max_seq_len`` (4,096 in the README) with the last token forced to EOS;
* the tokens the recipe counts: ``(batch["labels"] != ignore_index).sum()`` before the label shift
  (``recipes/full_finetune_single_device.py:695-698``, logged as ``tokens_per_second_per_gpu`` at line 743),
  i.e. every position whose mask is False (``torchtune/datasets/_sft.py:136-142``): all but BOS and EOS;
* the positions the GPU processes: ``padded_collate_sft`` pads each batch to its longest row
  (``torchtune/data/_collate.py:190-215``); the sampler is ``DistributedSampler(shuffle=True, seed=0)`` and
  the loader drops the last partial batch (``full_finetune_single_device.py:571-592``). The expectation over a
  random shuffle is tuneplan's own eq. D5 (:func:`planner.engine.datastats.padding_random`, through
  :class:`planner.engine.dataset.DatasetShape`, exactly as ``plan --dataset`` prices unpacked rows).

The record fields it prints: ``avg_tokens`` = counted tokens per row, ``padding_efficiency`` = counted tokens /
expected processed positions, so that :func:`validation.corpus.speed_setup` prices the step at the mean padded
length ``avg_tokens / padding_efficiency``. It also replays the sampler's own permutation
(``torch.randperm`` under ``manual_seed(0)``, when torch is importable) as a check on the expectation: the
permutation torch draws today may differ from the one torch drew in 2024-11.

Needs ``tiktoken`` (torchtune's own tokenizer backend; imported lazily).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TORCHTUNE_COMMIT = "1814feb17a9038e1a8053ce93111bd26774a8db6"
"""pytorch/torchtune at the README ladder (PR #2003, 2024-11-18)."""
LLAMA3_TOKENIZER_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
"""sha256 of Llama 3 / 3.1 / 3.2 ``original/tokenizer.model`` (2,183,982 bytes; meta-llama/llama3 commit
66cd498f899a19e3ea9035dc9fd7c4999c61e46e, Meta-Llama-3-8B/tokenizer.model, whose md5 08292403f8b173e7524d7fba7bbbd2d3
is the one in Meta's checklist.chk)."""
TATSU_ALPACA_BLOB = "3779ddbc040543ab1834ef216c983d6fcc06cc9a"
"""git blob id of ``alpaca_data.json`` on tatsu-lab/stanford_alpaca main (release commit f134962, 2023-03-13)."""
TATSU_ALPACA_ROWS = 52_002
"""Rows of tatsu-lab/alpaca (README: "52K"; the Hugging Face card's train split)."""

LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""``CL100K_PATTERN`` of ``torchtune/models/llama3/_tokenizer.py:14`` (the same as Meta's ``pat_str``)."""
BOS_ID, EOS_ID = 128_000, 128_001
START_HEADER_ID, END_HEADER_ID, EOT_ID = 128_006, 128_007, 128_009
"""``SPECIAL_TOKENS`` of ``torchtune/models/llama3/_tokenizer.py:17-31``."""
IGNORE_INDEX = -100
"""``CROSS_ENTROPY_IGNORE_IDX`` (torchtune/data/_common.py), the loss's ignore_index."""
MAX_NO_WHITESPACE_CHARS = 25_000
"""``torchtune/modules/tokenizers/_tiktoken.py:15``: longer runs without whitespace are split before encoding;
no Alpaca field comes near it, and :func:`torchtune_row` refuses text that would need the split."""

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
"""``AlpacaToMessages.template`` (torchtune/data/_messages.py at :data:`TORCHTUNE_COMMIT`)."""

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Row:
    """One tokenised row: ``prompt`` = BOS + the user message + the assistant header (what ``train_on_input``
    False would mask), ``response`` = the assistant body, EOT and EOS; ``counted`` = positions whose label is
    not ignore_index (what the recipe's tokens/s counts)."""

    prompt: int
    response: int
    counted: int

    @property
    def length(self) -> int:
        return self.prompt + self.response


def torchtune_row(sample: dict, encode: Encode, max_seq_len: int | None, train_on_input: bool = True) -> Row:
    """Build the row's tokens and mask as torchtune 1814feb17 does and count them.

    ``AlpacaToMessages.__call__`` picks the template on ``sample["input"]`` being non-empty; the user message is
    masked iff not ``train_on_input``, the assistant message never; both end in EOT. ``tokenize_messages``:
    ``tokens = [BOS]``, ``mask = [True]``; per message header + ``encode(content.strip())`` + EOT with the message's
    mask, breaking out once ``len(tokens) >= max_seq_len``; then EOS with mask True; then ``truncate`` both to
    ``max_seq_len``, the last token forced to EOS and its mask to True. Labels are the tokens where the mask is
    False (``_sft.py``), so counted = mask.count(False).
    """
    instruction, inp, output = sample["instruction"], sample.get("input") or "", sample["output"]
    prompt_text = (PROMPT_INPUT.format(instruction=instruction, input=inp) if inp
                   else PROMPT_NO_INPUT.format(instruction=instruction))
    messages = [("user", prompt_text, not train_on_input), ("assistant", output, False)]
    tokens: list[int] = [BOS_ID]
    mask: list[bool] = [True]
    prompt_len = None
    for role, content, masked in messages:
        body_text = content.strip()
        if any(len(w) > MAX_NO_WHITESPACE_CHARS for w in body_text.split()):
            raise ValueError(f"a run of more than {MAX_NO_WHITESPACE_CHARS:,} non-whitespace characters: torchtune "
                             "splits it first")
        header = [START_HEADER_ID, *encode(role), END_HEADER_ID, *encode("\n\n")]
        if role == "assistant":
            prompt_len = len(tokens) + len(header)
        msg = header + encode(body_text) + [EOT_ID]
        tokens += msg
        mask += [masked] * len(msg)
        if max_seq_len and len(tokens) >= max_seq_len:
            break
    tokens.append(EOS_ID)
    mask.append(True)
    if max_seq_len:
        tokens, mask = tokens[:max_seq_len], mask[:max_seq_len]
        tokens[-1], mask[-1] = EOS_ID, True
    if prompt_len is None or prompt_len > len(tokens):
        prompt_len = len(tokens)
    return Row(prompt=prompt_len, response=len(tokens) - prompt_len, counted=mask.count(False))


PROG = "torchtune_alpaca_padding"


class ScriptError(Exception):
    """Bad input: printed as one line, exit status 2 (:func:`main`)."""


def llama3_encoder(path: Path) -> Encode:
    """torchtune's ``TikTokenBaseTokenizer.encode`` without BOS/EOS: tiktoken over the BPE file with the Llama 3
    pattern, special-token text encoded as plain text (``allowed_special=set(), disallowed_special=()``)."""
    try:
        import tiktoken  # noqa: PLC0415
        from tiktoken.load import load_tiktoken_bpe  # noqa: PLC0415
    except ImportError:
        raise ScriptError("this script needs tiktoken (torchtune's tokenizer backend): pip install tiktoken") from None
    try:
        ranks = load_tiktoken_bpe(str(path))
    except (OSError, ValueError) as e:
        raise ScriptError(f"--tokenizer {path}: not a readable tiktoken BPE file ({type(e).__name__}: {e})") from None
    enc = tiktoken.Encoding(name="llama3_tiktoken", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    return lambda text: enc.encode(text, allowed_special=set(), disallowed_special=())


def check_tokenizer(path: Path, encode: Encode) -> str:
    """The file's sha256, after checking Meta's own test vector (meta-llama/llama3 ``llama/test_tokenizer.py``:
    "This is a test sentence." -> 2028, 374, 264, 1296, 11914, 13; "user" -> 882, "\\n\\n" -> 271)."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    got = (encode("This is a test sentence."), encode("user"), encode("assistant"), encode("\n\n"))
    want = ([2028, 374, 264, 1296, 11914, 13], [882], [78191], [271])
    if got != want:
        raise ScriptError(f"--tokenizer {path}: not the Llama 3 tokenizer (test vector gives {got}, Meta's tests say {want})")
    return sha


def git_blob_id(data: bytes) -> str:
    """The git blob id of a file's bytes (``git hash-object``), to name which version of a data file was used."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sampler_replay(lengths: Sequence[int], counted: Sequence[int], micro_batch: int, seed: int = 0) -> dict | None:
    """Padding of the order the recipe's sampler draws: ``DistributedSampler(num_replicas=1, shuffle=True,
    seed=0)``, epoch 0, is ``torch.randperm(n, generator=manual_seed(seed))``; batches of ``micro_batch``, the
    last partial one dropped. None when torch is not importable. Reports the epoch's counted / processed ratio
    and the mean of the per-batch ratios (a per-step tokens/s averaged over steps weighs batches equally)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    g = torch.Generator()
    g.manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    real = proc = 0
    ratios = []
    for i in range(0, len(order) - micro_batch + 1, micro_batch):
        idx = order[i:i + micro_batch]
        p = micro_batch * max(lengths[j] for j in idx)
        c = sum(counted[j] for j in idx)
        real += c
        proc += p
        ratios.append(c / p)
    return {"torch_version": torch.__version__, "batches": len(ratios), "counted_tokens": real,
            "processed_positions": proc, "efficiency": real / proc, "mean_batch_efficiency": statistics.fmean(ratios),
            "mean_padded_length": proc / (len(ratios) * micro_batch)}


def summarise(rows: Sequence[Row], seq: int, micro_batch: int) -> dict:
    """The record's numbers from tuneplan's own dataset statistics (eq. D5) and the recipe's count."""
    from planner.engine.dataset import DatasetShape  # noqa: PLC0415

    shape = DatasetShape("alpaca", tuple(r.prompt for r in rows), tuple(r.response for r in rows))
    pad = shape.padding(seq, micro_batch)
    lengths = shape.lengths(seq)
    counted = sum(r.counted for r in rows)
    n = len(rows)
    if pad.micro_batch and n % micro_batch:
        # the recipe drops the last partial batch (drop_last=True); D5 keeps it: say so rather than hide it
        note = f"{n % micro_batch} rows in a last partial batch: D5 counts them, the recipe drops them"
    else:
        note = "no partial batch"
    srt = sorted(lengths)
    return {
        "rows": n, "seq_cutoff": seq, "micro_batch": micro_batch, "partial_batch": note,
        "rows_at_cutoff": sum(1 for r in rows if r.length >= seq),
        "length_mean": statistics.fmean(lengths), "length_median": statistics.median(lengths),
        "length_p99": srt[min(n - 1, int(0.99 * n))], "length_max": srt[-1],
        "counted_tokens": counted, "counted_per_row": counted / n,
        "d5_processed_positions": pad.processed_tokens, "d5_mean_padded_length": pad.mean_padded_length,
        "d5_attention_length": pad.attention_length, "d5_longest_batch": pad.longest_batch,
        "d5_efficiency_all_tokens": pad.efficiency,
        "record": {
            "avg_tokens": round(counted / n, 1),
            "padding_efficiency": round(counted / pad.processed_tokens, 4),
            "implied_processed_length": round(pad.mean_padded_length),
        },
        "length_histogram": dict(sorted(Counter(lengths).items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="alpaca_data.json (a JSON array of rows)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="Llama 3 original/tokenizer.model")
    ap.add_argument("--seq", type=int, default=4096, help="tokenizer.max_seq_len (README: 4096)")
    ap.add_argument("--micro-batch", type=int, default=2, help="batch_size (README: 2)")
    ap.add_argument("--expect-blob", default=TATSU_ALPACA_BLOB, help="git blob id the data file must have ('' = any)")
    ap.add_argument("--out", type=Path, help="write the summary (with the length histogram) as JSON here")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except ScriptError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _samples(path: Path, raw: bytes) -> list[dict]:
    """The rows of an Alpaca JSON array, each with string ``instruction`` and ``output`` (``input`` optional)."""
    try:
        samples = json.loads(raw)
    except ValueError as e:
        raise ScriptError(f"--data {path}: not JSON ({e})") from None
    if not isinstance(samples, list):
        raise ScriptError(f"--data {path}: a JSON array of rows is expected, got {type(samples).__name__}")
    for i, r in enumerate(samples):
        if not (isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str)):
            raise ScriptError(f"--data {path}: row {i} lacks a string 'instruction' and 'output' (Alpaca format)")
    return samples


def _run(args: argparse.Namespace) -> int:
    from planner.fileio import OutputError, atomic_write_text  # noqa: PLC0415

    if args.seq < 1 or args.micro_batch < 1:
        raise ScriptError(f"--seq {args.seq} and --micro-batch {args.micro_batch} must be positive (README: 4096, 2)")
    try:
        raw = args.data.read_bytes()
    except OSError as e:
        raise ScriptError(f"--data {args.data}: {e.strerror or e}") from None
    blob = git_blob_id(raw)
    if args.expect_blob and blob != args.expect_blob:
        raise ScriptError(f"--data {args.data}: git blob {blob}, expected {args.expect_blob} "
                          "(pass --expect-blob '' to accept it)")
    samples = _samples(args.data, raw)
    encode = llama3_encoder(args.tokenizer)
    tok_sha = check_tokenizer(args.tokenizer, encode)
    try:
        rows = [torchtune_row(s, encode, args.seq) for s in samples]
    except ValueError as e:
        raise ScriptError(f"--data {args.data}: {e}") from None
    out = summarise(rows, args.seq, args.micro_batch)
    lengths = [min(r.length, args.seq) for r in rows]
    out["sampler_replay_seed0"] = sampler_replay(lengths, [r.counted for r in rows], args.micro_batch)
    out["sources"] = {"data_git_blob": blob, "data_sha256": hashlib.sha256(raw).hexdigest(),
                      "tokenizer_sha256": tok_sha, "torchtune_commit": TORCHTUNE_COMMIT}
    hist = out.pop("length_histogram")
    print(json.dumps(out, indent=2))
    if args.out:
        try:
            atomic_write_text(args.out, json.dumps({**out, "length_histogram": hist}, indent=1) + "\n")
        except OutputError as e:
            raise ScriptError(str(e)) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
