"""Injectable faults, so tests (and a sceptical user) can see OOM handling and interruption work on any machine.

* ``TUNEPLAN_INJECT_OOM=PHASE[:LABEL]`` raises ``torch.OutOfMemoryError`` when a run reaches ``PHASE``
  (``load``, ``forward``, ``backward``, ``optimizer``, ``steady``), in every run or only in the run whose label
  is ``LABEL``. The run is recorded with status ``oom`` and how far it got, exactly like a real OOM.
* ``TUNEPLAN_INJECT_INTERRUPT=N`` raises ``KeyboardInterrupt`` before the run after the first ``N`` finished
  runs (as a Ctrl-C or a killed job would): the finished records must survive.
"""

from __future__ import annotations

import os

OOM_ENV = "TUNEPLAN_INJECT_OOM"
INTERRUPT_ENV = "TUNEPLAN_INJECT_INTERRUPT"
OOM_PHASES = ("load", "forward", "backward", "optimizer", "steady")


def maybe_oom(phase: str, label: str) -> None:
    """Raise an injected ``torch.OutOfMemoryError`` if ``TUNEPLAN_INJECT_OOM`` names this phase (and run)."""
    spec = os.environ.get(OOM_ENV, "").strip()
    if not spec:
        return
    want, _, only = spec.partition(":")
    if want != phase or (only and only != label):
        return
    import torch

    raise torch.OutOfMemoryError(
        f"CUDA out of memory (injected by {OOM_ENV}={spec} at phase {phase!r}; not a real allocation failure)"
    )


def maybe_interrupt(finished_runs: int) -> None:
    """Raise ``KeyboardInterrupt`` once ``TUNEPLAN_INJECT_INTERRUPT`` runs have finished."""
    n = os.environ.get(INTERRUPT_ENV, "").strip()
    if n.isdigit() and finished_runs >= int(n):
        raise KeyboardInterrupt(f"injected by {INTERRUPT_ENV}={n}")
