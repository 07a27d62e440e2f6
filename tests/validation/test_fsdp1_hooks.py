"""docs/memory.md eq. A9d against real FSDP1: under FullyShardedDataParallel with frozen block units and reentrant
checkpointing, memory grows block by block in backward (each block input and its gradient stay alive until the
end of backward); without FSDP, or with non-reentrant checkpointing, it falls. The probe runs torch's own FSDP1
on its fake process group in a subprocess (tests/validation/fsdp1_probe.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

PROBE = Path(__file__).with_name("fsdp1_probe.py")


def _probe(mode: str, reentrant: bool) -> dict:
    out = subprocess.run([sys.executable, str(PROBE), mode, "reentrant" if reentrant else "nonreentrant"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _steps(r: dict) -> list[int]:
    alive = r["alive_at_block_input_grads"]
    return [b - a for a, b in zip(alive, alive[1:])]


def test_fsdp1_frozen_units_keep_block_inputs_and_their_gradients_under_reentrant_checkpointing():
    fsdp1 = _probe("fsdp", reentrant=True)
    unit = fsdp1["block_input_bytes"]
    steps = _steps(fsdp1)
    assert len(steps) >= 6
    # every block's backward adds about one block input's gradient (plus the adapters' gradient shards)
    assert all(unit <= s <= 1.5 * unit for s in steps), (steps, unit)


@pytest.mark.parametrize("mode, reentrant", [("fsdp", False), ("nofsdp", True)])
def test_without_the_fsdp1_reentrant_pair_backward_frees_block_inputs(mode, reentrant):
    steps = _steps(_probe(mode, reentrant))
    # the last step (into the bottom block) also makes the embedding output's gradient: left out
    assert all(s < 0 for s in steps[:-1]), steps
