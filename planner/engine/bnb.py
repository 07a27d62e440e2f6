"""bitsandbytes storage facts, in one place: NF4 weights with their block constants (QLoRA) and the 8-bit
optimizer state blocks. The memory and speed formulas and the user-facing help text all read these.
"""

from __future__ import annotations

NF4_BITS = 4
"""NF4 stores 4 bits per weight (Dettmers et al. 2023, arXiv:2305.14314, sec. 3)."""
NF4_BLOCK = 64
"""Weights per fp32 absmax constant (QLoRA paper sec. 3, "blocksize 64")."""
DQ_BLOCK = 256
"""Double quantisation: 8-bit constants quantised in blocks of 256 with one fp32 constant each (ibid.)."""
BNB_PAGED_MIN_NUMEL = 100_000
"""bitsandbytes pages an optimizer state only for tensors of at least 1e5 elements; smaller ones get ordinary
``torch.zeros_like`` GPU tensors (``bitsandbytes/optim/optimizer.py`` ``get_state_buffer``, 0.49.2)."""
BNB_MIN_8BIT_SIZE = 4096
"""bitsandbytes 8-bit optimizers keep fp32 states for tensors under 4096 elements (``min_8bit_size``)."""
BNB_8BIT_BLOCK = 256
"""bitsandbytes 8-bit optimizers allocate one fp32 absmax per 256 state values
(``bitsandbytes/optim/optimizer.py``, ``Optimizer8bit.init_state``: ``blocks = n // 256``); the paper
(Dettmers et al. 2022, arXiv:2110.02861, sec. 2) describes blocks of 2048."""


def quantized_frozen_bytes(frozen_linear: int, double_quant: bool) -> int:
    """NF4 storage of the frozen linear weights (docs/memory.md eq. M3; Dettmers et al. 2023, sec. 3
    "Double Quantization").

    0.5 B per weight plus one fp32 absmax per 64 weights (0.5 bits/param); with double quantisation the
    constants are 8-bit with one fp32 constant per 256 blocks (8/64 + 32/(64*256) = 0.127 bits/param).
    Exact for the storage bitsandbytes allocates, up to per-tensor rounding of the last block (errs low by
    at most one block per tensor).
    """
    weights = frozen_linear * NF4_BITS // 8
    blocks = -(-frozen_linear // NF4_BLOCK)
    if double_quant:
        consts = blocks + 4 * -(-blocks // DQ_BLOCK)
    else:
        consts = 4 * blocks
    return weights + consts


def adam8bit_state_bytes_per_param() -> float:
    """Bytes of 8-bit Adam state per parameter: two uint8 states plus one fp32 absmax per
    :data:`BNB_8BIT_BLOCK` values of each (eq. M4)."""
    return 2 * (1 + 4 / BNB_8BIT_BLOCK)
