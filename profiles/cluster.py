"""Cluster specs: ``8xA800``, ``8×A800``, ``2x8xH100`` (nodes x GPUs per node x GPU), ``4090``, ``1xh100-80g``.

Parsing is case-insensitive; the GPU part resolves through the GPU aliases. Host RAM per node and the
inter-node bandwidth default to the GPU profile's ``host_ram_gib_per_node`` and
``inter_node_bandwidth_gb_s`` (documented there, with sources) and can be overridden.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from profiles.errors import ProfileError
from profiles.registry import get_gpu
from profiles.schema import GpuProfile

_SPEC = re.compile(r"^\s*(?:(\d+)\s*[x×*]\s*)?(?:(\d+)\s*[x×*]\s*)?([A-Za-z0-9][A-Za-z0-9 _\-\.]*?)\s*$", re.I)
_FORMAT = "expected [NODESx]GPUSxNAME, e.g. 8xA800, 2x8xH100 or 4090"


class Cluster(BaseModel):
    """GPU kind x GPUs per node x nodes, with the host and network figures the engine needs."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    gpu: GpuProfile
    gpus_per_node: int = Field(gt=0)
    nodes: int = Field(1, gt=0)
    host_ram_bytes_per_node: int = Field(gt=0)
    inter_node_bandwidth_bytes_per_s: float = Field(gt=0)
    spec: str = ""

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    def label(self) -> str:
        n = f"{self.nodes}x" if self.nodes > 1 else ""
        return f"{n}{self.gpus_per_node}x{self.gpu.name}"


def make_cluster(
    gpu: GpuProfile,
    gpus_per_node: int = 1,
    nodes: int = 1,
    host_ram_gib: float | None = None,
    inter_node_gb_s: float | None = None,
    spec: str = "",
) -> Cluster:
    """Build a :class:`Cluster`, filling host RAM and inter-node bandwidth from the GPU's defaults."""
    if host_ram_gib is not None and not host_ram_gib > 0:
        raise ProfileError(f"host RAM per node must be a positive number of GiB, got {host_ram_gib!r}")
    if inter_node_gb_s is not None and not inter_node_gb_s > 0:
        raise ProfileError(f"inter-node bandwidth must be a positive number of GB/s, got {inter_node_gb_s!r}")
    ram = host_ram_gib if host_ram_gib is not None else gpu.host_ram_gib_per_node
    bw = inter_node_gb_s if inter_node_gb_s is not None else gpu.inter_node_bandwidth_gb_s
    return Cluster(
        gpu=gpu,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        host_ram_bytes_per_node=int(ram * 2**30),
        inter_node_bandwidth_bytes_per_s=bw * 1e9,
        spec=spec,
    )


def _is_gpu(name: str) -> bool:
    try:
        get_gpu(name)
    except ProfileError:
        return False
    return True


def parse_cluster(spec: str, host_ram_gib: float | None = None, inter_node_gb_s: float | None = None) -> Cluster:
    """Parse a cluster spec. A bare GPU name (``4090``, ``h100``) means one GPU.

    Raises :class:`ProfileError` (one line) on malformed specs such as ``0xA800``, ``8x``, ``x8`` or
    ``8xA800x``, and on unknown GPU names (with did-you-mean).
    """
    raw = spec
    s = spec.strip()
    if not s:
        raise ProfileError(f"empty GPU spec; {_FORMAT}")
    # a bare name that is itself a GPU alias (e.g. "4090", "h100-80g") wins over the NxNAME reading
    try:
        return make_cluster(get_gpu(s), 1, 1, host_ram_gib, inter_node_gb_s, raw)
    except ProfileError:
        pass
    m = _SPEC.match(s)
    # a trailing "x" is a dangling separator ("8x", "8xA800x") unless it ends a GPU name ("8xMI300X")
    dangling = re.search(r"[x×*]\s*$", s, re.I) is not None and not (m is not None and _is_gpu(m.group(3)))
    if not m or dangling or re.match(r"^\s*[x×*]", s, re.I):
        raise ProfileError(f"malformed GPU spec {raw!r}; {_FORMAT}")
    a, b, name = m.groups()
    if name.isdigit() and not _is_gpu(name):  # "123", "8x8": a count with no GPU ("8x4090" is fine)
        raise ProfileError(f"malformed GPU spec {raw!r}; {_FORMAT}")
    if a is not None and b is not None:
        nodes, per_node = int(a), int(b)
    elif a is not None:
        nodes, per_node = 1, int(a)
    else:
        nodes, per_node = 1, 1
    if nodes < 1 or per_node < 1:
        raise ProfileError(f"GPU counts must be at least 1 in {raw!r}; {_FORMAT}")
    if per_node > 64:
        raise ProfileError(f"{per_node} GPUs per node in {raw!r} is more than any node holds (max 64); {_FORMAT}")
    gpu = get_gpu(name)
    return make_cluster(gpu, per_node, nodes, host_ram_gib, inter_node_gb_s, raw)
