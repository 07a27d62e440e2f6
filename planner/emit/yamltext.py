"""YAML text with comments, for files people read: a header, blank-line sections, and inline notes.

PyYAML writes no comments, so this renders mappings itself and lets PyYAML format only the scalars (quoting,
floats, booleans), which keeps the result exactly what ``yaml.safe_load`` reads back (tested by round trip).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml


def scalar(value: Any) -> str:
    """One scalar or a flat list in YAML flow style, as PyYAML would quote it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True, sort_keys=False)
    text = text.rstrip("\n")  # only newlines: str.strip() would eat unicode spaces inside a plain scalar
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text


def _is_flow(value: Any) -> bool:
    if isinstance(value, Mapping):
        return not value
    if isinstance(value, (list, tuple)):
        return all(not isinstance(v, (Mapping, list, tuple)) for v in value)
    return True


def dump(
    data: Mapping[str, Any],
    comments: Mapping[str, str] | None = None,
    sections: Mapping[str, str] | None = None,
    header: Sequence[str] = (),
) -> str:
    """Render ``data`` as block YAML.

    ``comments`` maps a dotted key path (``model.lora_rank``) to an inline comment; ``sections`` maps a
    top-level key to a comment line written, after a blank line, above it (``### model``).
    """
    comments = comments or {}
    sections = sections or {}
    out: list[str] = [f"# {line}".rstrip() for line in header]

    def emit(mapping: Mapping[str, Any], indent: int, prefix: str) -> None:
        for key, value in mapping.items():
            path = f"{prefix}{key}"
            if indent == 0 and key in sections:
                if out:
                    out.append("")
                out.append(f"# {sections[key]}")
            note = comments.get(path)
            pad = " " * indent
            k = scalar(str(key))
            if _is_flow(value):
                line = f"{pad}{k}: {scalar(list(value) if isinstance(value, tuple) else value)}"
                out.append(line + (f"  # {note}" if note else ""))
            elif isinstance(value, Mapping):
                out.append(f"{pad}{k}:" + (f"  # {note}" if note else ""))
                emit(value, indent + 2, path + ".")
            else:  # a list holding mappings or lists
                out.append(f"{pad}{k}:" + (f"  # {note}" if note else ""))
                for item in value:
                    block = yaml.safe_dump([item], default_flow_style=False, sort_keys=False, width=10**9).rstrip()
                    out.extend(f"{pad}  {ln}" for ln in block.splitlines())

    emit(data, 0, "")
    return "\n".join(out) + "\n"
