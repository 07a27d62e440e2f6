"""torchtitan's per-op selective activation checkpointing policy, for the trace and the GPU validation
(``--checkpointing op``; the engine's model of it is :mod:`planner.engine.op_sac`, docs/memory.md eq. A12).

Re-implemented from torchtitan ``torchtitan/models/llama3/infra/parallelize.py`` at 6fc499f6 (``_save_list`` and
``_apply_ac_to_transformer_block``'s ``_get_custom_policy``; the same rule at 9dec370, e7c0cae and HEAD b5bcd76):
a fresh counter per checkpoint call (``context_fn`` builds ``meta = defaultdict(int)`` each time), separate
``forward`` / ``recompute`` mm counts, ``MUST_SAVE`` for ops in the save list except every second ``aten.mm``,
``PREFER_RECOMPUTE`` for everything else. torchtitan's ``per_op_sac_force_recompute_mm_shapes_by_fqns`` is empty by
default and not reproduced.

One substitution, for the CPU trace only: torch's CPU SDPA runs ``_scaled_dot_product_flash_attention_for_cpu``, the
CPU twin of the CUDA flash kernel in torchtitan's list (same outputs: the attention output and a log-sum-exp per
row and head), so it is saved as the CUDA op would be.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any, Callable

import torch

TORCHTITAN_COMMIT = "6fc499f6f5b32151a799188be2208cfb09faed30"


def save_list() -> set[Any]:
    """torchtitan's ``_save_list`` at :data:`TORCHTITAN_COMMIT`, plus the CPU flash SDPA (see the module doc)."""
    ops = torch.ops
    out = {
        ops.aten.mm.default,
        ops.aten._scaled_dot_product_efficient_attention.default,
        ops.aten._scaled_dot_product_flash_attention.default,
        ops.aten.max.default,
        ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    }
    try:
        out.add(ops._c10d_functional.reduce_scatter_tensor.default)
    except (AttributeError, RuntimeError):  # torch built without distributed
        pass
    return out


def _policy(meta: dict[str, int], saved_ops: set[Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, func, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = ("recompute" if ctx.is_recompute else "forward") + "_mm_count"
        if func == torch.ops.aten.mm.default:
            meta[key] += 1
        keep = func in saved_ops and not (func == torch.ops.aten.mm.default and meta[key] % 2 == 0)
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _context_fn(saved_ops: set[Any]):  # type: ignore[no-untyped-def]
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_policy(defaultdict(int), saved_ops))


def op_sac_checkpoint_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``torch.utils.checkpoint.checkpoint`` (and transformers'
    ``activation_checkpointing_enable``) that apply torchtitan's per-op policy to each checkpointed block."""
    return {"use_reentrant": False, "context_fn": partial(_context_fn, save_list())}
