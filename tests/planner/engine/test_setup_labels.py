"""Setup.parallelism_class: the class docs/accuracy.md reports speed errors by and plan estimate looks up; each
class is reached, and offload wins over the sharding it is combined with (the host's step decides the speed). And
Setup.fused_library, whose kernels run, with the label that names them."""

from __future__ import annotations

import pytest

from planner.engine.setup import Setup


@pytest.mark.parametrize("kw, world, want", [
    ({}, 1, "one GPU"),
    ({}, 8, "DDP"),
    ({"zero": 1}, 8, "ZeRO-1/2"),
    ({"zero": 2}, 8, "ZeRO-1/2"),
    ({"zero": 3}, 8, "ZeRO-3"),
    ({"zero": 3, "offload": "optimizer"}, 8, "CPU offload"),
    ({"fsdp": "full-shard", "fsdp_version": 1}, 8, "FSDP1"),
    ({"fsdp": "full-shard"}, 8, "FSDP2"),
    ({"fsdp": "full-shard", "tp": 2}, 8, "TP / CP"),
])
def test_parallelism_class(kw, world, want):
    assert Setup(method="full", **kw).parallelism_class(world) == want


@pytest.mark.parametrize("kw, library, label", [
    ({}, None, None),
    ({"kernel_library": "unsloth"}, None, None),  # a library without --fused-kernels fuses nothing
    ({"fused_kernels": True}, "liger", "Liger kernels"),
    ({"fused_kernels": True, "kernel_library": "unsloth"}, "unsloth", "Unsloth kernels"),
    ({"fused_kernels": True, "loss": "liger"}, "liger", "Liger kernels + loss"),  # enable_liger_kernel's one patch
    ({"fused_kernels": True, "kernel_library": "unsloth", "loss": "liger"}, "unsloth", "Unsloth kernels"),
])
def test_fused_library_and_its_label(kw, library, label):
    s = Setup(method="lora", **kw)
    assert s.fused_library == library
    parts = s.short().split(" · ")
    if label is None:
        assert not any("kernels" in p for p in parts)
    else:
        assert label in parts
