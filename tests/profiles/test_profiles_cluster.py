"""Cluster specs: ``8xA800``, ``8×A800``, ``2x8xH100``, ``4090``, ``1xh100-80g``.

Malformed specs and unknown GPUs give one-line errors, pinned here word for word.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.cluster import make_cluster, parse_cluster
from profiles.errors import ProfileError
from profiles.registry import all_gpus, get_gpu

FORMAT = "expected [NODESx]GPUSxNAME, e.g. 8xA800, 2x8xH100 or 4090"


@pytest.mark.parametrize(
    "spec,gpu,per_node,nodes",
    [
        ("8xA800", "A800 80GB SXM", 8, 1),
        ("8×A800", "A800 80GB SXM", 8, 1),
        ("8XA800", "A800 80GB SXM", 8, 1),
        ("8 x a800", "A800 80GB SXM", 8, 1),
        ("2x8xH100", "H100 80GB SXM", 8, 2),
        ("2X8Xh100-sxm", "H100 80GB SXM", 8, 2),
        ("4090", "RTX 4090", 1, 1),
        ("8x4090", "RTX 4090", 8, 1),
        ("1xh100-80g", "H100 80GB SXM", 1, 1),
        ("h100", "H100 80GB SXM", 1, 1),
        ("8xMI300X", "MI300X 192GB", 8, 1),
        ("2x8xmi300x", "MI300X 192GB", 8, 2),
        ("8x910b", "Ascend 910B", 8, 1),
        ("4xRTX 4090", "RTX 4090", 4, 1),
    ],
)
def test_parse(spec: str, gpu: str, per_node: int, nodes: int):
    c = parse_cluster(spec)
    assert (c.gpu.name, c.gpus_per_node, c.nodes, c.world_size) == (gpu, per_node, nodes, per_node * nodes)
    assert c.spec == spec


def test_defaults_come_from_the_gpu_profile_and_can_be_overridden():
    c = parse_cluster("2x8xH100")
    g = get_gpu("h100")
    assert c.host_ram_bytes_per_node == g.host_ram_gib_per_node * 2**30
    assert c.inter_node_bandwidth_bytes_per_s == g.inter_node_bandwidth_gb_s * 1e9
    c = parse_cluster("2x8xH100", host_ram_gib=512, inter_node_gb_s=50)
    assert (c.host_ram_bytes_per_node, c.inter_node_bandwidth_bytes_per_s) == (512 * 2**30, 50e9)
    assert c.label() == "2x8xH100 80GB SXM"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", f"empty GPU spec; {FORMAT}"),
        ("   ", f"empty GPU spec; {FORMAT}"),
        ("0xA800", f"GPU counts must be at least 1 in '0xA800'; {FORMAT}"),
        ("0x8xA800", f"GPU counts must be at least 1 in '0x8xA800'; {FORMAT}"),
        ("8x", f"malformed GPU spec '8x'; {FORMAT}"),
        ("x8", f"malformed GPU spec 'x8'; {FORMAT}"),
        ("8xA800x", f"malformed GPU spec '8xA800x'; {FORMAT}"),
        ("8x8", f"malformed GPU spec '8x8'; {FORMAT}"),
        ("123", f"malformed GPU spec '123'; {FORMAT}"),
        ("8xA800!", f"malformed GPU spec '8xA800!'; {FORMAT}"),
        ("65xA800", f"65 GPUs per node in '65xA800' is more than any node holds (max 64); {FORMAT}"),
        ("8xA900", "unknown GPU 'A900'; did you mean 'a800', 'a100', 'a6000'? (list all: plan profiles gpus)"),
        ("2x8xH1OO", "unknown GPU 'H1OO'; did you mean 'h100'? (list all: plan profiles gpus)"),
        ("2x8x8", f"malformed GPU spec '2x8x8'; {FORMAT}"),
    ],
)
def test_malformed_specs(spec: str, message: str):
    with pytest.raises(ProfileError) as e:
        parse_cluster(spec)
    assert str(e.value) == message


def test_bad_overrides():
    with pytest.raises(ProfileError) as e:
        make_cluster(get_gpu("a800"), 8, 1, host_ram_gib=0)
    assert str(e.value) == "host RAM per node must be a positive number of GiB, got 0"
    with pytest.raises(ProfileError) as e:
        make_cluster(get_gpu("a800"), 8, 1, inter_node_gb_s=-1)
    assert str(e.value) == "inter-node bandwidth must be a positive number of GB/s, got -1"


@given(
    gpu=st.sampled_from(all_gpus()),
    per_node=st.integers(1, 64),
    nodes=st.integers(1, 512),
    sep=st.sampled_from(["x", "X", "×", " x "]),
    use_alias=st.booleans(),
)
def test_every_gpu_parses_in_every_form(gpu, per_node, nodes, sep, use_alias):
    name = gpu.aliases[0] if use_alias and gpu.aliases else gpu.name
    spec = f"{nodes}{sep}{per_node}{sep}{name}" if nodes > 1 else f"{per_node}{sep}{name}"
    c = parse_cluster(spec)
    assert (c.gpu, c.gpus_per_node, c.nodes) == (gpu, per_node, nodes)
