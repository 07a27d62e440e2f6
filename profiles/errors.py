"""User-facing errors raised by profile lookup and parsing.

Every error here carries a one-line message that names the bad value, what would be valid and, for names,
the closest matches. The CLI is the only place that turns them into an exit code (2).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """Bad user input anywhere in tuneplan: one line that names the bad value and what is valid, safe to print
    as-is. The CLI turns every subclass into ``plan ...: error: <message>`` and exit code 2."""


class ProfileError(InputError):
    """Bad user input about a model, GPU or cluster."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Closest candidate names to ``name`` (case-insensitive), best first."""
    cands = list(dict.fromkeys(candidates))
    lowered = {c.lower(): c for c in cands}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    out = [lowered[m] for m in matches]
    if not out:
        # substring fallback: "llama3" -> every llama3 alias
        sub = [c for c in cands if name.lower() in c.lower()]
        out = sub[:n]
    return out


def unknown_choice_message(what: str, value: str, valid: Iterable[str]) -> str:
    """``unknown --objective 'thruput'; did you mean 'throughput'? (valid: throughput, cost, memory)``: the one
    shape of every "not one of these" message, with the closest valid value."""
    valid = list(valid)
    close = difflib.get_close_matches(value, valid, n=1)  # difflib's default cutoff 0.6: no far-fetched hints
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {value!r}{hint} (valid: {', '.join(valid)})"


def validation_message(e: Exception, default: str = "value") -> str:
    """A pydantic ``ValidationError`` in one line that names the field, what is wrong and the value given:
    ``kernel_library: Input should be 'liger' or 'unsloth' (got 'foak')`` (and how many more errors there are).
    ``str(e)``'s last line is pydantic's documentation link, which names none of them. ``default`` names a
    location-less error. Any other exception: its first line."""
    errors = getattr(e, "errors", None)
    errs = errors() if callable(errors) else []
    if not errs:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = errs[0]
    where = ".".join(str(x) for x in first.get("loc", ())) or default
    value = first.get("input")
    got = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60 else ""
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{got}{more}"


def unknown_name_message(kind: str, name: str, candidates: Iterable[str], list_cmd: str) -> str:
    """``unknown model 'x'; did you mean 'a', 'b'? (list all: plan profiles models)``."""
    close = did_you_mean(name, candidates)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (list all: {list_cmd})"
