"""Plans for the config-emitter tests, built by hand so the snapshots do not move when the engine does.

The Setups are real (validated against the shipped model profiles); the MemoryEstimate / SpeedEstimate numbers
are hand-made stand-ins of the right shape (categories sum to the peak, phases consistent), not engine
output. The GPU profiles are test doubles with the figures of ``shared/reference/hardware.md``.
"""

from __future__ import annotations

from planner.emit import Target
from planner.engine.speed.step import BREAKDOWN
from planner.engine.results import CATEGORIES, MemoryEstimate, Plan, SpeedEstimate
from planner.engine.rules import validate_setup
from planner.engine.setup import Setup
from profiles.cluster import make_cluster
from profiles.registry import get_model
from profiles.schema import GpuProfile

GIB = 2**30

_SRC = {"memory_mib": "hardware.md", "memory_marketing_gb": "hardware.md", "hbm_bandwidth_gb_s": "hardware.md",
        "bf16_tflops": "hardware.md", "fp16_tflops": "hardware.md", "intra_node_bandwidth_gb_s": "hardware.md",
        "pcie_gen": "hardware.md", "pcie_bandwidth_gb_s": "hardware.md", "inter_node_bandwidth_gb_s": "hardware.md",
        "host_ram_gib_per_node": "hardware.md", "default_mfu": "test double", "tf32_tflops": "hardware.md",
        "fp8_tflops": "hardware.md", "tdp_w": "hardware.md"}

GPUS: dict[str, GpuProfile] = {
    "A800": GpuProfile(
        name="A800-80G", vendor="nvidia", arch="ampere", memory_mib=81920, memory_marketing_gb=80, hbm_bandwidth_gb_s=2039,
        bf16_tflops=312, fp16_tflops=312, tf32_tflops=156, interconnect="nvlink", intra_node_bandwidth_gb_s=200,
        pcie_gen=4, pcie_bandwidth_gb_s=31, inter_node_bandwidth_gb_s=200, host_ram_gib_per_node=1024,
        default_mfu=0.45, tdp_w=400, sources=_SRC,
    ),
    "4090": GpuProfile(
        name="RTX-4090", vendor="nvidia", arch="ada", memory_mib=24564, memory_marketing_gb=24, hbm_bandwidth_gb_s=1008,
        bf16_tflops=165.2, fp16_tflops=165.2, tf32_tflops=82.6, interconnect="pcie", intra_node_bandwidth_gb_s=31,
        pcie_gen=4, pcie_bandwidth_gb_s=31, inter_node_bandwidth_gb_s=25, host_ram_gib_per_node=128,
        typical_gpus_per_node=4, default_mfu=0.35, tdp_w=450, sources=_SRC,
    ),
    "H100": GpuProfile(
        name="H100-SXM", vendor="nvidia", arch="hopper", memory_mib=81559, memory_marketing_gb=80, hbm_bandwidth_gb_s=3350,
        bf16_tflops=989, fp16_tflops=989, tf32_tflops=494.5, fp8_tflops=1979, interconnect="nvlink",
        intra_node_bandwidth_gb_s=450, pcie_gen=5, pcie_bandwidth_gb_s=63, inter_node_bandwidth_gb_s=400,
        host_ram_gib_per_node=2048, default_mfu=0.40, tdp_w=700, sources=_SRC,
    ),
    "V100": GpuProfile(
        name="V100-SXM2-32G", vendor="nvidia", arch="volta", memory_mib=32768, memory_marketing_gb=32, hbm_bandwidth_gb_s=900,
        fp16_tflops=125, interconnect="nvlink", intra_node_bandwidth_gb_s=150, pcie_gen=3, pcie_bandwidth_gb_s=12,
        inter_node_bandwidth_gb_s=100, host_ram_gib_per_node=512, default_mfu=0.35, tdp_w=300, sources=_SRC,
    ),
}

SHARES = {
    "weights_trainable": 0.20, "weights_frozen": 0.10, "gradients": 0.10, "optimizer_states": 0.20,
    "master_weights": 0.05, "activations": 0.15, "logits_loss": 0.05, "temporaries": 0.03, "comm_buffers": 0.04,
    "framework_overhead": 0.05, "allocator_margin": 0.03,
}
assert set(SHARES) == set(CATEGORIES) and abs(sum(SHARES.values()) - 1) < 1e-9


def make_memory(model_name: str, cluster, setup: Setup, peak_gib: float, host_gib: float) -> MemoryEstimate:
    peak = int(peak_gib * GIB)
    cats = {k: int(peak * v) for k, v in SHARES.items()}
    cats["allocator_margin"] += peak - sum(cats.values())
    host = {"offloaded_optimizer": int(host_gib * GIB * 0.6), "processes": 0}
    host["processes"] = int(host_gib * GIB) - host["offloaded_optimizer"]
    return MemoryEstimate(
        model=model_name, gpu=cluster.gpu.name, gpus_per_node=cluster.gpus_per_node, nodes=cluster.nodes,
        setup=setup, categories=cats,
        phases={"after_load": peak // 2, "forward_peak": peak - peak // 10, "backward_peak": peak, "optimizer_peak": peak - peak // 5},
        peak_phase="backward_peak", capacity_bytes=cluster.gpu.memory_bytes, host_bytes=sum(host.values()),
        host_categories=host, assumptions=("hand-made test estimate",),
    )


def make_speed(cluster, setup: Setup, step_s: float) -> SpeedEstimate:
    tokens = setup.micro_batch * setup.grad_accum * cluster.world_size * setup.seq_len
    peak = (cluster.gpu.bf16_tflops or cluster.gpu.fp16_tflops) * 1e12
    flops = 0.4 * peak * step_s * cluster.world_size
    return SpeedEstimate(
        step_s=step_s, tokens_per_step=tokens,
        breakdown_s={**dict.fromkeys(BREAKDOWN, 0.0), "gemm": step_s * 0.8, "communication": step_s * 0.15,
                     "offload": step_s * 0.05},
        model_flops_per_step=flops, hardware_flops_per_step=flops * 1.3, peak_flops_per_gpu=peak, efficiency=0.5,
        world_size=cluster.world_size, assumptions=("hand-made test estimate",),
    )


CASES: dict[str, dict] = {
    "llama3-8b-full-zero3-8xA800": dict(
        model="llama3-8b", gpu="A800", per_node=8, nodes=1, peak=61.3, host=64, step=9.5,
        setup=dict(recipe="deepspeed-bf16", method="full", zero=3, checkpointing="full", micro_batch=2, grad_accum=4,
                   seq_len=4096, attention="flash", loss="liger"),
        reasons=("full fine-tuning: every parameter trains", "parameters sharded: gathered every micro-step"),
    ),
    "qwen2.5-7b-qlora-4090": dict(
        model="qwen2.5-7b", gpu="4090", per_node=1, nodes=1, peak=19.8, host=6, step=21.0,
        setup=dict(recipe="hf-amp", method="qlora", zero=0, checkpointing="full", micro_batch=2, grad_accum=32,
                   seq_len=2048, optimizer="paged-adamw-8bit"),
        reasons=("QLoRA: 4-bit NF4 base saves memory but dequantises every layer each pass",),
    ),
    "llama3-70b-full-zero3-offload-2x8xH100": dict(
        model="llama3-70b", gpu="H100", per_node=8, nodes=2, peak=66.0, host=1100, step=48.0,
        setup=dict(recipe="deepspeed-bf16", method="full", zero=3, offload="optimizer", checkpointing="full",
                   micro_batch=1, grad_accum=4, seq_len=4096, attention="flash", loss="liger"),
        reasons=("offload optimizer to CPU",),
    ),
    "llama3.1-8b-lora-fsdp-4xA800": dict(
        model="llama3.1-8b", gpu="A800", per_node=4, nodes=1, peak=40.0, host=20, step=3.0,
        setup=dict(recipe="bf16", method="lora", fsdp="full-shard", checkpointing="full", activation_offload=True,
                   micro_batch=4, grad_accum=4, seq_len=8192, loss="chunked", lora_rank=16, lora_alpha=32,
                   lora_targets="q_proj,k_proj,v_proj,o_proj", compile=True),
        reasons=(),
    ),
    "llama3.2-3b-full-obwd-h100": dict(
        model="llama3.2-3b", gpu="H100", per_node=1, nodes=1, peak=50.0, host=8, step=1.2,
        setup=dict(recipe="bf16", method="full", optimizer_in_backward=True, grad_accum=1, micro_batch=8,
                   checkpointing="none", seq_len=2048, packing=False, loss="chunked"),
        reasons=(),
    ),
    "mistral-7b-freeze-fp16-2xV100": dict(
        model="mistral-7b-v0.1", gpu="V100", per_node=2, nodes=1, peak=28.0, host=16, step=6.0,
        setup=dict(recipe="fp16-amp", method="freeze", freeze_layers=4, zero=2, checkpointing="selective",
                   micro_batch=1, grad_accum=16, seq_len=2048, attention="eager", optimizer="sgd-momentum"),
        reasons=(),
    ),
}


def target(case: str, rank: int = 1) -> Target:
    c = CASES[case]
    model = get_model(c["model"])
    cluster = make_cluster(GPUS[c["gpu"]], c["per_node"], c["nodes"], spec=f"{c['nodes']}x{c['per_node']}x{c['gpu']}")
    setup = Setup(**c["setup"])
    validate_setup(setup, model, cluster)
    mem = make_memory(model.name, cluster, setup, c["peak"], c["host"])
    speed = make_speed(cluster, setup, c["step"])
    plan = Plan(rank=rank, setup=setup, memory=mem, speed=speed, usable_bytes=int(cluster.gpu.memory_bytes * 0.9),
                host_capacity_bytes=cluster.host_ram_bytes_per_node, reasons=c["reasons"])
    return Target(plan, model, cluster, command=f"plan configs (test case {case})")


# ---- random plans for the property tests ------------------------------------------------------------------
CLUSTERS = {"1x4090": ("4090", 1, 1), "8xA800": ("A800", 8, 1), "4xA800": ("A800", 4, 1),
            "2x8xH100": ("H100", 8, 2), "2xV100": ("V100", 2, 1), "1xH100": ("H100", 1, 1)}
MODELS = ("llama3-8b", "qwen2.5-7b", "llama3.2-3b", "mistral-7b-v0.1")


def random_target(draw) -> Target:
    """A valid random plan (hypothesis ``draw``); invalid combinations are rejected with ``assume``."""
    from hypothesis import assume
    from hypothesis import strategies as st

    from planner.engine.setup import SetupError

    model = get_model(draw(st.sampled_from(MODELS)))
    gpu, per, nodes = CLUSTERS[draw(st.sampled_from(sorted(CLUSTERS)))]
    cluster = make_cluster(GPUS[gpu], per, nodes)
    sharding = draw(st.sampled_from(["ddp", "zero1", "zero2", "zero3", "full-shard", "shard-grad-op"]))
    zero = int(sharding[-1]) if sharding.startswith("zero") else 0
    fsdp = sharding if sharding in ("full-shard", "shard-grad-op") else None
    method = draw(st.sampled_from(["full", "lora", "qlora", "freeze"]))
    obwd = draw(st.booleans()) if (zero == 0 and fsdp is None) else False
    ckpt = draw(st.sampled_from(["none", "full", "selective", "op"]))
    fields = dict(
        recipe=draw(st.sampled_from(["hf-amp", "deepspeed-bf16", "bf16", "fp16-amp"])),
        method=method, zero=zero, fsdp=fsdp,
        optimizer=draw(st.sampled_from(["adamw", "adamw-8bit", "paged-adamw-8bit", "sgd", "sgd-momentum", "adafactor"])),
        offload=draw(st.sampled_from(["none", "optimizer", "optimizer+params"])),
        checkpointing=ckpt, checkpoint_every=draw(st.sampled_from([1, 1, 2])),
        activation_offload=ckpt == "full" and draw(st.booleans()),
        attention=draw(st.sampled_from(["sdpa", "flash", "eager"])),
        loss=draw(st.sampled_from(["plain", "chunked", "liger"])),
        micro_batch=draw(st.sampled_from([1, 2, 4, 8])),
        grad_accum=1 if obwd else draw(st.sampled_from([1, 2, 8, 16])),
        seq_len=draw(st.sampled_from([512, 2048, 4096])),
        packing=draw(st.booleans()),
        lora_rank=draw(st.sampled_from([4, 8, 64])),
        lora_targets=draw(st.sampled_from(["all-linear", "q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj", "up_proj"])),
        double_quant=draw(st.booleans()),
        dora=method in ("lora", "qlora") and draw(st.booleans()),
        optimizer_in_backward=obwd,
        compile=draw(st.booleans()),
        framework="torchtitan" if ckpt == "op" else "hf",  # per-op SAC is torchtitan's (rules.validate_op_sac)
    )
    try:
        setup = Setup(**fields)
        validate_setup(setup, model, cluster)
    except (SetupError, ValueError):
        assume(False)
    mem = make_memory(model.name, cluster, setup, 10.0, 1.0)
    speed = make_speed(cluster, setup, 1.0)
    plan = Plan(rank=1, setup=setup, memory=mem, speed=speed, usable_bytes=mem.peak_bytes,
                host_capacity_bytes=cluster.host_ram_bytes_per_node)
    return Target(plan, model, cluster)


def random_targets():
    """Hypothesis strategy of valid random plans."""
    from hypothesis import strategies as st

    return st.composite(random_target)()


# ---- checks shared by several test files ----------------------------------------------------------------------
def expressible(case: str, check) -> bool:
    """Whether ``check(target)`` (an emitter's ``check``) accepts the case's plan."""
    from planner.emit import NotExpressible

    try:
        check(target(case))
    except NotExpressible:
        return False
    return True


def parse_with_deepspeed(cfg: dict, world: int):
    """deepspeed.runtime.config.DeepSpeedConfig on CPU: no process group, so patch the world size it asks for."""
    import copy
    from unittest import mock

    from deepspeed.runtime import config as dsc

    with mock.patch.object(dsc.dist, "get_world_size", return_value=world), mock.patch.object(dsc.dist, "get_rank", return_value=0):
        return dsc.DeepSpeedConfig(copy.deepcopy(cfg))


def _lf_keys() -> dict:
    import json
    from pathlib import Path

    from planner.emit.llamafactory import LLAMAFACTORY_VERSION

    return json.loads((Path(__file__).parent / f"llamafactory_keys_{LLAMAFACTORY_VERSION}.json").read_text())


LF_KEYS = _lf_keys()


def check_llamafactory_keys(cfg: dict) -> None:
    """Every key an argument of the pinned LLaMA-Factory; every value with a closed set of choices one of them."""
    from transformers.training_args import OptimizerNames

    unknown = set(cfg) - set().union(*LF_KEYS["classes"].values())
    assert not unknown, f"not LLaMA-Factory {LF_KEYS['llamafactory_version']} arguments: {sorted(unknown)}"
    for key, value in cfg.items():
        if key in LF_KEYS["choices"]:
            assert value in LF_KEYS["choices"][key], (key, value)
    if "optim" in cfg:
        assert cfg["optim"] in {o.value for o in OptimizerNames}
