"""TOML text with comments, for torchtitan's job configs: a header, one table per section (``[a.b]``), strings,
booleans, numbers and flat lists only (what a torchtitan 0.2.2 ``JobConfig`` needs), and inline notes.

The standard library reads TOML (``tomllib``) but does not write it, so this renders it; the tests read every
file back with ``tomllib`` and compare.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any


def value(v: Any) -> str:
    """One TOML value: a basic string (JSON escaping is a subset of TOML's), a boolean, an integer, a float, or a
    flat array of those."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v!r} here")
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"no TOML rendering for {type(v).__name__}")


def dump(
    data: Mapping[str, Mapping[str, Any]],
    comments: Mapping[str, str] | None = None,
    header: Sequence[str] = (),
) -> str:
    """Render ``{"section.sub": {"key": value}}`` as TOML tables in the given order. ``comments`` maps a dotted
    ``section.key`` path to an inline comment, or a section name to a comment line above its table. ``None``
    values are left out (TOML has no null; the parser's default applies)."""
    comments = comments or {}
    out: list[str] = [f"# {line}".rstrip() for line in header]
    for section, table in data.items():
        if out:
            out.append("")
        if section in comments:
            out.append(f"# {comments[section]}")
        out.append(f"[{section}]")
        for key, v in table.items():
            if v is None:
                continue
            note = comments.get(f"{section}.{key}")
            out.append(f"{key} = {value(v)}" + (f"  # {note}" if note else ""))
    return "\n".join(out) + "\n"
