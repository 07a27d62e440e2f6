"""Units at the output edge: the engine counts integer bytes; these turn them into GiB text (2**30 bytes)
for reasons, tables and files. The one formatter every layer uses."""

from __future__ import annotations

GiB = 2**30
"""2**30 bytes."""


def gib(n_bytes: float, digits: int = 1) -> str:
    """``12.3 GiB``."""
    return f"{n_bytes / GiB:,.{digits}f} GiB"


def gib_num(n_bytes: float | None, digits: int = 2, missing: str = "-") -> str:
    """``12.34`` (for a column headed GiB); ``missing`` for None."""
    return missing if n_bytes is None else f"{n_bytes / GiB:,.{digits}f}"
