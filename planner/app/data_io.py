"""Read the user's training file and count its tokens with the model's own tokenizer (app layer).

The only module that opens dataset files or loads a tokenizer. transformers is imported lazily, inside
:func:`load_tokenizer`, and always offline (``local_files_only=True``): a tokenizer is read from a folder or the
local Hugging Face cache, never downloaded. The counts go to :class:`planner.engine.dataset.DatasetShape`, the pure
side; the statistics are in :mod:`planner.engine.datastats`.

Formats (what LLaMA-Factory's ``dataset_info.json`` and torchtune's dataset builders take):

* ``alpaca``: ``instruction``, optional ``input`` (joined to the instruction by a newline, as LLaMA-Factory's
  ``AlpacaDatasetConverter`` does), ``output``, optional ``system`` and ``history`` (``[[query, answer], ...]``);
* ``sharegpt``: ``conversations`` (or ``conversation``), a list of ``{"from": ..., "value": ...}`` with
  ``human``/``user``, ``gpt``/``assistant``, ``system``, ``function_call``, ``observation``;
* ``openai``: ``messages``, a list of ``{"role": ..., "content": ...}`` (content a string or a list of
  ``{"type": "text", "text": ...}`` parts);
* ``text``: ``text`` (plain text, every token trains; the tokenizer's BOS/EOS as it adds them, plus EOS).

Files: ``.jsonl`` (one object per line, streamed), ``.json`` (an array of objects), ``.parquet`` (streamed by
row groups; needs pyarrow). Counting: a row's prompt tokens are the rendered conversation up to each assistant
turn (with the generation prompt), its response tokens the rest, so ``prompt + response`` is exactly
``len(tokenizer.apply_chat_template(messages))`` (checked in the tests against transformers itself).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.app.errors import CliError

FORMATS: dict[str, str] = {
    "alpaca": "instruction / input / output (+ system, history)",
    "sharegpt": "conversations: [{from, value}, ...]",
    "openai": "messages: [{role, content}, ...]",
    "text": "text: plain text, every token trains",
}
SUFFIXES = (".jsonl", ".json", ".parquet")
COUNTER_VERSION = 1
"""Bumped whenever the counting rules change, so cached counts from an older rule are not reused."""
BATCH_ROWS = 512
"""Rows rendered and tokenised per batch (one fast-tokenizer call per batch)."""

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}


def cache_dir() -> Path:
    """``$TUNEPLAN_CACHE``, else ``$XDG_CACHE_HOME/tuneplan``, else ``~/.cache/tuneplan``."""
    if os.environ.get("TUNEPLAN_CACHE"):
        return Path(os.environ["TUNEPLAN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tuneplan"


# --------------------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------------------


def check_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CliError(f"dataset {str(path)!r}: no such file")
    if p.is_dir():
        raise CliError(f"dataset {str(path)!r} is a folder; give one .jsonl, .json or .parquet file")
    if p.suffix.lower() not in SUFFIXES:
        raise CliError(f"dataset {str(path)!r}: unknown file type {p.suffix or '(none)'!r}; valid: {', '.join(SUFFIXES)}")
    return p


def iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for every row; ``where`` is ``file:line`` or ``file:row N`` for error messages."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    yield f"{path.name}:{i}", json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise CliError(f"{path.name}:{i}: not a JSON object ({_short(e)})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CliError(f"{path.name}: not JSON ({_short(e)}); a .json dataset is one array of objects") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if not isinstance(data, list):
            raise CliError(f"{path.name}: a .json dataset must be an array of objects, got {type(data).__name__}")
        for i, rec in enumerate(data, 1):
            yield f"{path.name}: row {i}", rec
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CliError("reading Parquet needs pyarrow, which is not installed; pip install pyarrow") from None
        try:
            pf = pq.ParquetFile(path)
            i = 0
            for batch in pf.iter_batches(batch_size=4096):
                for rec in batch.to_pylist():
                    i += 1
                    yield f"{path.name}: row {i}", rec
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise CliError(f"{path.name}: not a readable Parquet file ({_short(e)})") from None


def count_rows_fast(path: Path) -> int | None:
    """Rows for the progress bar without parsing (JSONL lines, Parquet metadata); None when unknown."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - only a progress bar total
            return None
    return None


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def detect_format(record: Any, where: str) -> str:
    """The format a record's keys say (:data:`FORMATS`); one-line error when none matches."""
    if not isinstance(record, dict):
        raise CliError(f"{where}: a row must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return "openai"
    if "conversations" in record or "conversation" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    keys = ", ".join(sorted(map(str, record))[:8]) or "none"
    raise CliError(
        f"{where}: cannot tell the format from the row's keys ({keys}); pass --format "
        f"{'|'.join(FORMATS)} (alpaca: instruction/output, sharegpt: conversations, openai: messages, text: text)"
    )


def check_format(fmt: str | None) -> str | None:
    if fmt is None or fmt == "auto":
        return None
    if fmt not in FORMATS:
        import difflib

        close = difflib.get_close_matches(fmt, list(FORMATS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise CliError(f"unknown --format {fmt!r}{hint} (valid: auto, {', '.join(FORMATS)})")
    return fmt


def _text(value: Any, where: str, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in value if p.get("type", "text") == "text")
    raise CliError(f"{where}: {what} must be a string, got {type(value).__name__}")


def to_messages(record: Any, fmt: str, where: str) -> list[dict[str, str]] | str:
    """A record as chat messages (``[{role, content}]``), or the plain text for ``text``."""
    if not isinstance(record, dict):
        raise CliError(f"{where}: a row must be a JSON object, got {type(record).__name__}")
    if fmt == "text":
        if "text" not in record:
            raise CliError(f"{where}: no 'text' field (format text)")
        return _text(record["text"], where, "'text'")
    msgs: list[dict[str, str]] = []
    if fmt == "alpaca":
        if "instruction" not in record or "output" not in record:
            raise CliError(f"{where}: alpaca rows need 'instruction' and 'output'")
        if record.get("system"):
            msgs.append({"role": "system", "content": _text(record["system"], where, "'system'")})
        for pair in record.get("history") or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise CliError(f"{where}: 'history' must be a list of [query, answer] pairs")
            msgs += [{"role": "user", "content": _text(pair[0], where, "history query")},
                     {"role": "assistant", "content": _text(pair[1], where, "history answer")}]
        query = _text(record["instruction"], where, "'instruction'")
        extra = _text(record.get("input"), where, "'input'")
        msgs += [{"role": "user", "content": query + ("\n" + extra if extra else "")},
                 {"role": "assistant", "content": _text(record["output"], where, "'output'")}]
    elif fmt == "sharegpt":
        turns = record.get("conversations", record.get("conversation"))
        if not isinstance(turns, list):
            raise CliError(f"{where}: 'conversations' must be a list of {{from, value}} turns")
        if record.get("system"):
            msgs.append({"role": "system", "content": _text(record["system"], where, "'system'")})
        for t in turns:
            if not isinstance(t, dict) or "from" not in t or "value" not in t:
                raise CliError(f"{where}: a sharegpt turn needs 'from' and 'value', got {str(t)[:60]!r}")
            role = SHAREGPT_ROLES.get(str(t["from"]))
            if role is None:
                raise CliError(f"{where}: unknown sharegpt role {t['from']!r}; valid: {', '.join(SHAREGPT_ROLES)}")
            msgs.append({"role": role, "content": _text(t["value"], where, "'value'")})
    elif fmt == "openai":
        turns = record.get("messages")
        if not isinstance(turns, list):
            raise CliError(f"{where}: 'messages' must be a list of {{role, content}}")
        for t in turns:
            if not isinstance(t, dict) or "role" not in t:
                raise CliError(f"{where}: a message needs 'role' and 'content', got {str(t)[:60]!r}")
            msgs.append({"role": str(t["role"]), "content": _text(t.get("content"), where, "'content'")})
    else:
        raise CliError(f"unknown format {fmt!r}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise CliError(f"{where}: no assistant turn, so nothing would train")
    return msgs


# --------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------


def tokenizer_source(model: Any, explicit: str | None) -> str | None:
    """Where to load the tokenizer from: ``--tokenizer``, else the model's hub id, else its local folder."""
    if explicit:
        return explicit
    if getattr(model, "hf_id", None):
        return model.hf_id
    src = str(getattr(model, "source", ""))
    if src and Path(src).expanduser().exists():
        p = Path(src).expanduser()
        return str(p.parent if p.is_file() else p)
    return None


def load_tokenizer(source: str | None, model_name: str, chat_template: str | None = None) -> Any:
    """``AutoTokenizer.from_pretrained(source, local_files_only=True)``; one-line :class:`CliError` when absent."""
    if source is None:
        raise CliError(f"no tokenizer known for {model_name}; pass --tokenizer PATH (a folder holding tokenizer files "
                       "or a hub id in the local Hugging Face cache)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise CliError("counting tokens needs transformers, which is not installed; pip install 'tuneplan[validate]'") from None
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        local = Path(source).expanduser().exists()
        where = f"in {source!r}" if local else f"for {source!r} in the local Hugging Face cache"
        get = "" if local else f" (download it once: hf download {source} --include 'tokenizer*' '*.jinja' '*.json')"
        raise CliError(f"no tokenizer {where}{get}; or pass --tokenizer PATH ({_short(e)[:80]})") from None
    if chat_template is not None:
        p = Path(chat_template).expanduser()
        if not p.is_file():
            raise CliError(f"--chat-template {chat_template!r}: no such file")
        tok.chat_template = p.read_text(encoding="utf-8")
    return tok


def tokenizer_fingerprint(tok: Any) -> str:
    """A hash of what decides the counts: the vocabulary and rules (the fast tokenizer's JSON), the special
    tokens, and the chat template."""
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([str(tok.bos_token), str(tok.eos_token), str(tok.chat_template)]).encode())
    return h.hexdigest()[:24]


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What tokenising a file measured: per-row prompt and response tokens, and how."""

    file: str
    format: str
    format_detected: bool
    tokenizer: str
    prompt: list[int]
    response: list[int]
    cached: bool = False


def _render(tok: Any, msgs: list[dict[str, str]], generation: bool, where: str) -> str:
    try:
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)
    except Exception as e:  # noqa: BLE001 - jinja errors of the model's own template
        raise CliError(f"{where}: the chat template cannot render this row ({_short(e)[:120]})") from None


def row_texts(tok: Any, item: list[dict[str, str]] | str, where: str) -> list[tuple[str, bool]]:
    """The strings whose token counts make up one row, each with whether it is response (trains).

    Chat: for each assistant turn, the conversation before it with the generation prompt (its length is the
    prompt so far), then the conversation including it. The differences of consecutive renders are the turns;
    the last render is the whole row, so prompt + response = ``len(apply_chat_template(messages))``.
    Text: the text itself, all response.
    """
    if isinstance(item, str):
        return [(item, True)]
    if not getattr(tok, "chat_template", None):
        raise CliError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no chat template; pass --tokenizer with "
                       "the instruct model's tokenizer (same vocabulary) or --chat-template FILE.jinja")
    out: list[tuple[str, bool]] = []
    for i, m in enumerate(item):
        if m["role"] == "assistant":
            out.append((_render(tok, item[:i], True, where), False))
            out.append((_render(tok, item[: i + 1], False, where), True))
    last = max(i for i, m in enumerate(item) if m["role"] == "assistant")
    if last < len(item) - 1:  # turns after the last answer are prompt
        out.append((_render(tok, item, False, where), False))
    return out


def _text_ids_len(tok: Any, ids: list[int]) -> int:
    """Plain text: what the tokenizer adds (BOS for Llama), plus EOS when it did not add one (LLaMA-Factory's
    pre-training processor and torchtune's text completion both end rows with EOS)."""
    eos = getattr(tok, "eos_token_id", None)
    return len(ids) + (1 if eos is not None and (not ids or ids[-1] != eos) else 0)


def _count_batch(tok: Any, batch: list[tuple[str, list[tuple[str, bool]]]], plain: bool) -> list[tuple[int, int]]:
    texts = [t for _, parts in batch for t, _ in parts]
    enc = tok(texts, add_special_tokens=plain)["input_ids"]
    out: list[tuple[int, int]] = []
    k = 0
    for _, parts in batch:
        prompt = response = prev = 0
        for _, trains in parts:
            n = _text_ids_len(tok, enc[k]) if plain else len(enc[k])
            k += 1
            step = max(n - prev, 0)
            if trains:
                response += step
            else:
                prompt += step
            prev = max(prev, n)
        out.append((prompt, response))
    return out


def count_tokens(
    path: Path, tok: Any, fmt: str | None, progress: Callable[[int, int | None], None] | None = None
) -> tuple[str, bool, list[int], list[int]]:
    """Stream the file, render and tokenise every row; ``(format, detected, prompt counts, response counts)``."""
    prompt: list[int] = []
    response: list[int] = []
    detected = fmt is None
    batch: list[tuple[str, list[tuple[str, bool]]]] = []
    total = count_rows_fast(path) if progress else None

    def flush() -> None:
        for p, r in _count_batch(tok, batch, fmt == "text"):
            prompt.append(p)
            response.append(r)
        if progress:
            progress(len(prompt), total)
        batch.clear()

    for where, rec in iter_rows(path):
        if fmt is None:
            fmt = detect_format(rec, where)
        item = to_messages(rec, fmt, where)
        batch.append((where, row_texts(tok, item, where)))
        if len(batch) >= BATCH_ROWS:
            flush()
    if batch:
        flush()
    if not prompt:
        raise CliError(f"dataset {path.name} holds no rows")
    return fmt or "text", detected, prompt, response


def load_counts(
    path: str | Path,
    model: Any,
    tokenizer: str | None = None,
    fmt: str | None = None,
    chat_template: str | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
) -> Counts:
    """Token counts of a dataset file, from the cache when the same file, tokenizer and settings were counted
    before (key: the file's SHA-256, the tokenizer fingerprint, the format and :data:`COUNTER_VERSION`)."""
    p = check_file(path)
    fmt = check_format(fmt)
    source = tokenizer_source(model, tokenizer)
    tok = load_tokenizer(source, model.name, chat_template)
    key = hashlib.sha256(
        json.dumps([file_hash(p), tokenizer_fingerprint(tok), fmt, COUNTER_VERSION]).encode()
    ).hexdigest()[:32]
    cpath = cache_dir() / "data" / f"{key}.json"
    if use_cache and cpath.is_file():
        try:
            d = json.loads(cpath.read_text(encoding="utf-8"))
            return Counts(str(p), d["format"], d["format_detected"], str(source), d["prompt"], d["response"], True)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recounted
    fmt_used, detected, prompt, response = count_tokens(p, tok, fmt, progress)
    counts = Counts(str(p), fmt_used, detected, str(source), prompt, response, False)
    if use_cache:
        _write_cache(cpath, {"format": fmt_used, "format_detected": detected, "prompt": prompt, "response": response,
                             "file": str(p), "tokenizer": str(source)})
    return counts


def _write_cache(path: Path, data: dict) -> None:
    """Atomic: a temporary file in the same folder, renamed over the entry. A cache that cannot be written is
    skipped silently (the counts are still returned)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def dataset_shape(counts: Counts) -> Any:
    """The pure :class:`planner.engine.dataset.DatasetShape` the planner uses."""
    from planner.engine.dataset import DatasetShape

    return DatasetShape(Path(counts.file).name, tuple(counts.prompt), tuple(counts.response))
