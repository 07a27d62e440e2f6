"""The trace's own errors, in a module of their own so that every part of the trace can raise them without importing
the package (no import cycle)."""

from __future__ import annotations


class TraceUnavailable(ImportError):
    """torch / transformers (or peft for LoRA) are not installed."""


class NotTraceable(ValueError):
    """The model has no transformers class to build (remote-code architectures), or the request is invalid."""
