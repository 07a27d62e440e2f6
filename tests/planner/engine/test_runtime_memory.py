"""Runtime terms: allocator, context, cuBLAS, NCCL, paged optimizers, compile, chunked loss (issue 11).

Golden numbers cite their source next to them; properties are checked over random inputs and setups.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine.facts import model_facts
from planner.engine.evaluate import evaluate
from planner.engine.memory import allocated_bytes, paged_state_bytes
from planner.engine.runtime_memory import (
    MiB,
    allocator_block_bytes,
    allocator_segment_bytes,
    cublas_workspace_bytes,
    FRAGMENTATION_TENSOR_CAP_BYTES,
    device_peak_bytes,
    fragmented_bytes,
    nccl_buffer_bytes,
    paged_resident_bytes,
    reserved_bytes,
    retry_floor_bytes,
)
from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model

GiB = 2**30


# ---- allocated -> reserved -> device --------------------------------------------------------------------------
def test_allocator_rounding_follows_the_caching_allocator():
    """c10/cuda/CUDACachingAllocator.cpp: 512-byte blocks; 2 MiB small segments up to 1 MiB; 20 MiB segments
    below 10 MiB; from 10 MiB the request rounded up to 2 MiB."""
    assert allocator_block_bytes(1) == 512 and allocator_block_bytes(513) == 1024
    assert allocator_segment_bytes(4096) == 2 * MiB
    assert allocator_segment_bytes(5 * MiB) == 20 * MiB
    assert allocator_segment_bytes(11 * MiB) == 12 * MiB


def test_cublas_workspaces_per_architecture():
    """CublasHandlePool.cpp: :4096:8 (32 MiB) on sm90, :4096:2:16:8 (8.125 MiB) elsewhere; two handles."""
    assert cublas_workspace_bytes("H100 80GB SXM") == 2 * 32 * MiB
    assert cublas_workspace_bytes("A100 40GB SXM") == 2 * (8 * MiB + 128 * 1024)
    assert cublas_workspace_bytes("MI300X") == 0


def test_nccl_buffers():
    """NCCL init.cc: Simple 4 MiB + LL 512 KiB + LL128 4,915,200 B per connection."""
    per = 4 * MiB + 512 * 1024 + 4_915_200
    assert nccl_buffer_bytes(1, True) == 0
    assert nccl_buffer_bytes(8, True) == 16 * 2 * per
    assert nccl_buffer_bytes(8, True, communicators=2) == 2 * nccl_buffer_bytes(8, True)


@settings(max_examples=200, deadline=None)
@given(tensors=st.integers(0, 200 * GiB), churn_frac=st.floats(0, 1), frag=st.floats(0, 1),
       world=st.integers(1, 64), nvlink=st.booleans(), expandable=st.booleans(), paged=st.integers(0, 100 * GiB),
       gpu=st.sampled_from(["H100 80GB SXM", "A100 40GB SXM", "RTX 4090", "MI300X"]))
def test_device_contains_reserved_contains_allocated(tensors, churn_frac, frag, world, nvlink, expandable, paged, gpu):
    cap = 80 * GiB
    d = device_peak_bytes(tensors, int(tensors * churn_frac), gpu, cap, world, nvlink, paged_bytes=paged,
                          fragmentation=frag, expandable_segments=expandable)
    assert d.tensors <= d.allocated <= d.reserved <= d.device <= d.shown_by_nvidia_smi
    assert 0 <= d.paged_resident <= paged
    # paged pages never decide the fit: they are evicted first
    assert d.fits(cap) == (d.device <= cap)
    more = device_peak_bytes(tensors + GiB, int(tensors * churn_frac), gpu, cap, world, nvlink, fragmentation=frag)
    assert more.device > device_peak_bytes(tensors, int(tensors * churn_frac), gpu, cap, world, nvlink,
                                           fragmentation=frag).device


def test_reserved_rejects_negative_fragmentation():
    with pytest.raises(ValueError, match="fragmentation"):
        reserved_bytes(GiB, GiB, -0.1)


def test_paged_pages_resident_only_in_free_memory():
    assert paged_resident_bytes(10 * GiB, 24 * GiB, 20 * GiB) == 4 * GiB
    assert paged_resident_bytes(10 * GiB, 24 * GiB, 30 * GiB) == 0
    assert paged_resident_bytes(1 * GiB, 24 * GiB, 10 * GiB) == GiB


# ---- paged optimizers ----------------------------------------------------------------------------------------
setups = st.fixed_dictionaries({
    "method": st.sampled_from(["full", "lora", "qlora", "freeze"]),
    "checkpointing": st.sampled_from(["none", "full"]),
    "micro_batch": st.integers(1, 4),
    "seq_len": st.sampled_from([512, 2048]),
    "lora_rank": st.sampled_from([8, 64]),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=setups, model=st.sampled_from(["qwen2.5-0.5b", "llama3.1-8b", "qwen3-30b-a3b"]))
def test_paging_moves_state_bytes_to_the_host_and_never_raises_the_gpu_peak(kw, model):
    m, c = get_model(model), parse_cluster("H100")
    for paged, plain, recipe in (("paged-adamw-8bit", "adamw-8bit", "hf-amp"), ("paged-adamw", "adamw", "hf-amp")):
        p = evaluate(m, c, Setup(recipe=recipe, optimizer=paged, **kw)).memory
        q = evaluate(m, c, Setup(recipe=recipe, optimizer=plain, **kw)).memory
        assert allocated_bytes(p) <= allocated_bytes(q)
        assert p.host_bytes >= q.host_bytes
        gpu, managed = paged_state_bytes(model_facts(m, Setup(recipe=recipe, optimizer=paged, **kw)), Setup(recipe=recipe, optimizer=paged, **kw))
        assert p.host_categories.get("paged_optimizer", 0) == managed


def test_paged_states_of_a_full_8b_run():
    """PagedAdamW8bit on Llama-3.1-8B (all matrices >= 1e5 elements paged): 2 B/param in unified memory; only the
    absmax vectors and the norm vectors' states stay in torch's allocator."""
    m = get_model("llama3.1-8b")
    gpu, managed = paged_state_bytes(model_facts(m, Setup(recipe="bf16", optimizer="paged-adamw-8bit")), Setup(recipe="bf16", optimizer="paged-adamw-8bit"))
    assert managed / GiB == pytest.approx(2 * 8.03e9 / GiB, rel=0.01)
    assert gpu < 0.3 * GiB
    gpu32, managed32 = paged_state_bytes(model_facts(m, Setup(recipe="bf16", optimizer="paged-adamw")), Setup(recipe="bf16", optimizer="paged-adamw"))
    assert managed32 == 4 * managed  # fp32 m and v


def test_torchtune_llama31_8b_full_on_a_4090():
    """torchtune README v0.6.1 "Memory and training speed": Llama 3.1 8B full fine-tune on 1x 4090, 18.9 GiB peak,
    batch 2 packed to 2048, compile on; config llama3_1/8B_full_single_device.yaml: PagedAdamW8bit,
    optimizer_in_bwd, CEWithChunkedOutputLoss, activation checkpointing, bf16. (Was 34.4 GiB, "does not fit".)"""
    s = Setup(recipe="bf16", optimizer="paged-adamw-8bit", optimizer_in_backward=True, loss="chunked",
              checkpointing="full", seq_len=2048, micro_batch=2, compile=True)
    est = evaluate(get_model("llama3.1-8b"), parse_cluster("4090"), s).memory
    assert allocated_bytes(est) / GiB == pytest.approx(18.9, rel=0.05)


# ---- chunked loss and compile -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method, measured_gib", [("lora", 8.5), ("qlora", 4.6)])
def test_torchtune_ladder_lora_rows(method, measured_gib):
    """torchtune README v0.6.1 "Optimization flags": Llama 3.2 3B, batch 2, 4096 tokens, bf16, A100, packed,
    compile, CEWithChunkedOutputLoss, activation checkpointing and offloading (peak memory active). Before the
    compiled chunked loss term the engine said 13.1 and 9.2 GiB."""
    s = Setup(method=method, recipe="bf16", seq_len=4096, micro_batch=2, loss="chunked", compile=True,
              checkpointing="full", activation_offload=True)
    est = evaluate(get_model("llama-3.2-3b"), parse_cluster("A100"), s).memory
    assert allocated_bytes(est) / GiB == pytest.approx(measured_gib, rel=0.03)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=setups, model=st.sampled_from(["qwen2.5-0.5b", "llama3.1-8b", "gemma2-2b", "qwen3-30b-a3b"]),
       recipe=st.sampled_from(["bf16", "hf-amp"]))
def test_chunked_never_above_plain_and_compile_never_above_eager(kw, model, recipe):
    m, c = get_model(model), parse_cluster("H100")
    plain = evaluate(m, c, Setup(recipe=recipe, loss="plain", **kw)).memory
    chunked = evaluate(m, c, Setup(recipe=recipe, loss="chunked", **kw)).memory
    assert allocated_bytes(chunked) <= allocated_bytes(plain)
    for loss in ("plain", "chunked"):
        eager = evaluate(m, c, Setup(recipe=recipe, loss=loss, **kw)).memory
        compiled = evaluate(m, c, Setup(recipe=recipe, loss=loss, compile=True, **kw)).memory
        assert allocated_bytes(compiled) <= allocated_bytes(eager)


def test_litgpt_llama2_7b_lora_micro_batch_4_does_not_fit_an_a100_40gb():
    """LitGPT tutorials/resource-tables.md (commit 0cc02afa, measured at lit-gpt 8641822 on A100-SXM4-40GB):
    Llama 2 7B LoRA, micro-batch 1 / 2 / 4: 21.30 / 29.07 GB / OOM (max_memory_allocated, decimal GB).
    finetune/lora.py at 8641822: bf16-true, LoRA r 8 on query and value with lora_dropout 0.05, the first batch
    padded to the longest Alpaca sample (1304 tokens). With the dropout LitGPT sets, the engine's device figure
    exceeds the card at micro-batch 4 and fits at 1 and 2."""
    m, c = get_model("llama-2-7b"), parse_cluster("A100-40G")
    fits = {}
    for mb in (1, 2, 4):
        s = Setup(method="lora", recipe="bf16", lora_targets="q_proj,v_proj", lora_dropout=0.05, seq_len=1304,
                  micro_batch=mb, loss="chunked", allow_long_seq=True)
        est = evaluate(m, c, s).memory
        alloc = allocated_bytes(est)
        churn = alloc - est.categories["weights_frozen"] - est.categories["weights_trainable"]
        fits[mb] = device_peak_bytes(alloc, churn, c.gpu.name, c.gpu.memory_bytes, 1, False).fits(c.gpu.memory_bytes)
        if mb == 2:
            assert alloc / 1e9 == pytest.approx(29.07, rel=0.05)
    assert fits == {1: True, 2: True, 4: False}


# ---- eq. R3c: what the allocator's retry cannot give back ----------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(alloc=st.integers(0, 200 * GiB), churn_frac=st.floats(0, 1), frag=st.floats(0, 1), stranded=st.floats(0, 1))
def test_the_retry_floor_lies_between_allocated_and_the_uncapped_reserved(alloc, churn_frac, frag, stranded):
    churn = int(alloc * churn_frac)
    floor = retry_floor_bytes(alloc, churn, frag, stranded, 80 * GiB)
    assert alloc <= floor <= reserved_bytes(alloc, churn, frag)
    assert floor <= alloc + stranded * 80 * GiB
    assert retry_floor_bytes(alloc, churn, frag, 0.0, 80 * GiB) == alloc  # the prior: the retry frees every fragment


@settings(max_examples=200, deadline=None)
@given(alloc=st.integers(0, 200 * GiB), churn=st.integers(-GiB, 200 * GiB), frag=st.floats(0, 1))
def test_r3_and_r3c_add_the_one_fragmented_bytes_law(alloc, churn, frag):
    """Eq. R3b is computed in one place: uncapped reserved is allocated + fragmented_bytes + the two segment tails
    (kLargeBuffer 20 MiB + kSmallBuffer 2 MiB), and with a stranded share of 1 the retry floor keeps all of it."""
    f = fragmented_bytes(churn, frag)
    assert 0 <= f <= max(churn, 0)
    assert reserved_bytes(alloc, churn, frag) == alloc + f + 22 * MiB
    assert retry_floor_bytes(alloc, churn, frag, 1.0, 10**15) == alloc + f


@settings(max_examples=300, deadline=None)
@given(churn=st.integers(0, 200 * GiB), tok_frac=st.floats(0, 1), frag=st.floats(0, 1),
       residual=st.integers(0, 8 * GiB))
def test_r3b_caps_the_activations_share_by_tensor_size_only(churn, tok_frac, frag, residual):
    """Eq. R3b: never above eq. R3's linear law; equal to it up to the cap; beyond it the token-scaled part counts at
    cap / residual (so doubling the tensor size at a fixed count of tensors leaves its fragments unchanged) and the
    rest in full; monotone in the churn."""
    tok = int(churn * tok_frac)
    linear = fragmented_bytes(churn, frag)
    f = fragmented_bytes(churn, frag, tok, residual)
    assert f <= linear
    if residual <= FRAGMENTATION_TENSOR_CAP_BYTES:
        assert f == linear
    else:
        expect = frag * (churn - tok + tok * FRAGMENTATION_TENSOR_CAP_BYTES / residual)
        assert f == pytest.approx(expect, abs=1)
        assert fragmented_bytes(churn - tok + 2 * tok, frag, 2 * tok, 2 * residual) == pytest.approx(f, abs=2)
    assert fragmented_bytes(churn + GiB, frag, tok, residual) >= f


def test_retry_floor_rejects_a_share_outside_0_1():
    with pytest.raises(ValueError, match="stranded"):
        retry_floor_bytes(GiB, GiB, 0.3, 1.5, 80 * GiB)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=setups, model=st.sampled_from(["qwen2.5-0.5b", "llama3.1-8b", "qwen3-30b-a3b"]),
       gpus=st.sampled_from(["4090", "A100-40G", "2xA100-40G", "8xH100"]), fsdp=st.sampled_from([None, "full-shard"]))
def test_a_plan_that_fits_with_headroom_never_runs_out_of_memory_through_fragmentation(kw, model, gpus, fsdp):
    """Eq. R3c never decides a fit with headroom: the floor is at most the uncapped device figure, which is the peak
    unless capped at the card, and a capped peak is above any usable limit."""
    m, c = get_model(model), parse_cluster(gpus)
    try:
        p = evaluate(m, c, Setup(fsdp=fsdp if c.world_size > 1 else None, **kw))
    except ValueError:
        return
    mem = p.memory
    assert mem.allocated_peak_bytes + mem.categories["framework_overhead"] <= mem.retry_floor_bytes
    if p.fits_gpu:
        assert mem.retry_floor_bytes <= p.usable_bytes and mem.fits


def test_ligers_fsdp1_llama3_8b_out_of_memory_is_predicted_through_fragmentation():
    """Liger-Kernel README (profiles/evidence/liger-kernel-readme-ooms.yaml): Llama-3-8B, FSDP1 on 8xA100-80GB, batch
    8, seq 4096, went out of memory without Liger. Its tensors fit the card with 12.5 % of it to spare, so eq. R3's
    capped figure alone says it fits; the retry floor of eq. R3c (sharded class) says it does not."""
    from validation.corpus import load

    case = next(c for c in load().memory if c.id.endswith("llama3-8b-fsdp1-8xa100-bs8-seq4096-oom"))
    mem = evaluate(case.model, case.cluster, case.setup).memory
    assert case.oom and mem.peak_bytes <= mem.capacity_bytes < mem.retry_floor_bytes and not mem.fits


@pytest.mark.parametrize("gpus,fsdp,version,zero,packing,expected", [
    ("8xH100", "full-shard", 2, 0, True, "fsdp2"),       # fully_shard: side-stream gathers without record_stream
    ("8xH100", "shard-grad-op", 2, 0, True, "fsdp2"),
    ("8xH100", "full-shard", 1, 0, True, "sharded"),     # FSDP1 frees its gathers with record_stream
    ("8xH100", "shard-grad-op", 1, 0, False, "sharded"),
    ("8xH100", None, 2, 3, True, "sharded"),             # ZeRO-3: free_param calls record_stream
    ("1xH100", "full-shard", 2, 0, True, "static"),      # one GPU gathers nothing
    ("8xH100", None, 2, 2, False, "dynamic"),
])
def test_the_fragmentation_class_follows_who_frees_gathers_with_record_stream(gpus, fsdp, version, zero, packing,
                                                                              expected):
    """Eq. R3's classes (runtime_memory.fragmentation_class): FSDP2 "avoids torch.Tensor.record_stream" (torch docs,
    torch.distributed.fsdp.fully_shard), FSDP1 and DeepSpeed ZeRO-3 (partition_parameters.free_param) do not."""
    from planner.engine.memory import fragmentation_fraction, run_fragmentation_class
    from planner.engine.runtime_memory import FRAGMENTATION

    kw = dict(recipe="hf-amp") if fsdp else dict(recipe="deepspeed-bf16")
    setup = Setup(fsdp=fsdp, fsdp_version=version, zero=zero, packing=packing, **kw)
    cluster = parse_cluster(gpus)
    assert run_fragmentation_class(cluster, setup) == expected
    assert fragmentation_fraction(cluster, setup) == FRAGMENTATION[expected]


def test_fsdp2_fragments_no_more_than_the_record_stream_class():
    """The direction the mechanism gives: without record_stream a freed gather is reusable at once, so the fitted
    FSDP2 fraction must not exceed the sharded class's (a fit that said otherwise would be absorbing something else)."""
    from planner.engine.runtime_memory import FRAGMENTATION

    assert FRAGMENTATION["fsdp2"] <= FRAGMENTATION["sharded"]


def test_every_nvidia_part_of_the_catalogue_has_a_compute_capability():
    """cuBLAS's workspaces are sized by compute capability (eq. R2): an NVIDIA part the prefix table misses would get
    none at all, as a non-NVIDIA part does. The Grace superchips match their own prefixes (GB200 is not 'B200')."""
    from planner.engine.runtime_memory import compute_capability
    from profiles.registry import all_gpus

    for g in all_gpus():
        assert (compute_capability(g.name) is not None) == (g.vendor == "nvidia"), g.name
    assert compute_capability("GB200 186GB") == (10, 0) and compute_capability("GH200 96GB") == (9, 0)
