"""The memory engine: golden numbers with their sources, cross-checks, and properties over random setups."""

from __future__ import annotations

import math
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.engine.evaluate import evaluate
from planner.engine.facts import model_facts
from planner.engine.activations import korthikanti_layer_bytes
from planner.engine.dtypes import recipe_bytes
from planner.engine.bnb import quantized_frozen_bytes
from planner.engine.memory import (
    allocated_bytes,
    comm_buffer_bytes,
    model_states,
    zero_paper_model_state_bytes,
)
from planner.engine.results import CATEGORIES
from planner.engine.setup import Setup, SetupError
from profiles.cluster import make_cluster, parse_cluster
from profiles.params import largest_layer_params, linear_layers, param_counts
from profiles.registry import get_gpu, get_model

GiB = 2**30


@pytest.fixture(scope="module")
def llama8b():
    return get_model("llama3.1-8b")


# ---- golden numbers from the book this project grew from (issue 3 text) ---------------------------------

@pytest.mark.parametrize(
    "seq, gib",
    [(1024, 14.45), (2048, 44.5), (4096, 151.6)],
)
def test_seed_formula_llama2_13b(seq, gib):
    """Korthikanti et al. 2022 Table 2 formula for Llama-2-13B (h 5120, a 40, L 40), b=1: issue 3 cites
    14.45 / 44.5 / 151.6 GiB at s = 1024 / 2048 / 4096."""
    total = 40 * korthikanti_layer_bytes(seq, 1, 5120, 40)
    assert total / GiB == pytest.approx(gib, abs=0.06)


def test_lora_rank8_on_4096x11008():
    """A rank-8 LoRA on a 4096 x 11008 matrix has 8 * (4096 + 11008) = 120,832 parameters (issue 3)."""
    m = get_model("llama2-7b")  # its gate/up/down are 4096 x 11008
    s = Setup(method="lora", lora_rank=8, lora_targets="up_proj", recipe="hf-amp")
    assert model_facts(m, s).trainable.adapter == 120_832 * m.num_layers


def test_zero_paper_rule_8b_on_8(llama8b):
    """ZeRO-1/2/3 model states of an 8B model on 8 GPUs by the 16-byte rule (issue 3; ZeRO paper sec. 3)."""
    P = param_counts(llama8b).total
    assert zero_paper_model_state_bytes(P, 8, 1) == (2 + 2) * P + 12 * P // 8
    assert zero_paper_model_state_bytes(P, 8, 2) == 2 * P + 14 * P // 8
    assert zero_paper_model_state_bytes(P, 8, 3) == 16 * P // 8


# ---- cross-check against DeepSpeed's own estimators ---------------------------------------------------------

@pytest.mark.parametrize("world", [1, 8, 16])
def test_zero2_states_equal_deepspeed(llama8b, world):
    """Our deepspeed-bf16 ZeRO-2 model states equal DeepSpeed's ``estimate_zero2_model_states_mem_needs``
    (the ``*_all_cold`` variant's arithmetic, fed our exact parameter count)."""
    ds = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    P = param_counts(llama8b).total
    nodes = max(1, world // 8)
    _, gpu_mem = ds.estimate_zero2_model_states_mem_needs(P, world // nodes, nodes, cpu_offload=False)
    cluster = make_cluster(get_gpu("A800"), world // nodes, nodes)
    s = Setup(recipe="deepspeed-bf16", zero=2)
    ms = model_states(model_facts(llama8b, s), cluster, s, recipe_bytes(s))
    ours = ms.weights_trainable + ms.weights_frozen + ms.gradients + ms.optimizer_states + ms.master_weights
    # equal at the optimizer step, where DeepSpeed builds the fp32 gradient partition
    assert abs(ours + ms.gradients_step_only - gpu_mem) <= 8  # integer division of the partitioned terms


def test_zero2_offload_gpu_states_equal_deepspeed(llama8b):
    ds = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    P = param_counts(llama8b).total
    _, gpu_mem = ds.estimate_zero2_model_states_mem_needs(P, 8, 1, cpu_offload=True)
    s = Setup(recipe="deepspeed-bf16", zero=2, offload="optimizer")
    cluster = make_cluster(get_gpu("A800"), 8, 1)
    ms = model_states(model_facts(llama8b, s), cluster, s, recipe_bytes(s))
    assert ms.weights_trainable + ms.gradients + ms.optimizer_states + ms.master_weights == gpu_mem


def test_zero3_states_match_deepspeed_with_documented_difference(llama8b):
    """DeepSpeed's ZeRO-3 estimate is ``4 * largest_layer + 18P/N``. We count 16P/N outside the optimizer
    step (16-bit params and grads, fp32 master, Adam) and 20P/N during it (stage3.py converts the gradient
    partition to fp32 for the step): DeepSpeed's 18 lies exactly between (the documented difference). The
    gathered largest module is in our comm buffers: 16-bit params + 16-bit grads = 4 B x largest, as theirs."""
    ds = pytest.importorskip("deepspeed.runtime.zero.stage3")
    P = param_counts(llama8b).total
    largest = largest_layer_params(llama8b)
    _, gpu_mem, _ = ds.estimate_zero3_model_states_mem_needs(P, largest, 8, 1, cpu_offload=False, cpu_offload_params=False)
    s = Setup(recipe="deepspeed-bf16", zero=3)
    cluster = make_cluster(get_gpu("A800"), 8, 1)
    ms = model_states(model_facts(llama8b, s), cluster, s, recipe_bytes(s))
    outside = ms.weights_trainable + ms.weights_frozen + ms.gradients + ms.optimizer_states + ms.master_weights
    theirs = gpu_mem - 4 * largest
    assert abs(theirs - outside - 2 * P // 8) <= 8
    assert abs(outside + ms.gradients_step_only - theirs - 2 * P // 8) <= 8
    est = evaluate(llama8b, cluster, Setup(recipe="deepspeed-bf16", zero=3, checkpointing="full")).memory
    assert est.categories["comm_buffers"] >= 4 * largest


def test_deepspeed_recipe_is_2_plus_18_over_n(llama8b):
    """Issue 3: DeepSpeed bf16 with fp32 master under ZeRO-2 is 2 + 18/N bytes per parameter."""
    P = param_counts(llama8b).total
    s = Setup(recipe="deepspeed-bf16", zero=2)
    ms = model_states(model_facts(llama8b, s), make_cluster(get_gpu("H100"), 4), s, recipe_bytes(s))
    total = ms.weights_trainable + ms.gradients + ms.gradients_step_only + ms.optimizer_states + ms.master_weights
    assert total / P == pytest.approx(2 + 18 / 4, abs=1e-6)  # at the optimizer step


def test_pure_bf16_is_8_bytes_per_param(llama8b):
    """torchtune's pure bf16 recipe: bf16 weights, grads, m and v = 8 B/param (accounting.md)."""
    P = param_counts(llama8b).total
    s = Setup(recipe="bf16")
    ms = model_states(model_facts(llama8b, s), make_cluster(get_gpu("H100"), 1), s, recipe_bytes(s))
    assert ms.weights_trainable + ms.gradients + ms.optimizer_states + ms.master_weights == 8 * P


def test_hf_amp_is_16_bytes_plus_autocast_copies(llama8b):
    P = param_counts(llama8b).total
    s = Setup(recipe="hf-amp")
    ms = model_states(model_facts(llama8b, s), make_cluster(get_gpu("H100"), 1), s, recipe_bytes(s))
    assert ms.weights_trainable + ms.gradients + ms.optimizer_states == 16 * P
    # autocast keeps a bf16 copy of every linear weight (LM head included) from its cast in forward until backward
    # has used it (tracing.md: about 2 B/param); without it the forward peak would be lower by exactly that much
    counts = model_facts(llama8b, s).trainable
    linear = sum(x.params for x in linear_layers(llama8b)) + llama8b.vocab_size * llama8b.hidden_size
    assert counts.trainable_linear == linear
    ck = Setup(recipe="hf-amp", checkpointing="full")
    est = evaluate(llama8b, make_cluster(get_gpu("H100"), 1), ck).memory
    bf16 = evaluate(llama8b, make_cluster(get_gpu("H100"), 1), Setup(recipe="bf16", checkpointing="full")).memory
    assert est.phases["forward_peak"] - est.phases["after_load"] >= 2 * linear
    assert bf16.categories["temporaries"] == 0


def test_qlora_nf4_bytes():
    """QLoRA paper sec. 3: 0.5 bits/param of constants without double quantisation, ~0.127 with."""
    n = 64 * 256 * 1000
    plain = quantized_frozen_bytes(n, double_quant=False)
    dq = quantized_frozen_bytes(n, double_quant=True)
    assert (plain - n // 2) * 8 / n == pytest.approx(0.5)
    assert (dq - n // 2) * 8 / n == pytest.approx(0.127, abs=0.001)


# ---- techniques change the numbers in the documented direction ---------------------------------------------

def _est(model, gpus="1xH100", **kw):
    return evaluate(model, parse_cluster(gpus), Setup(**kw)).memory


def test_lora_dropout_keeps_a_copy(llama8b):
    a = _est(llama8b, method="lora", recipe="hf-amp")
    b = _est(llama8b, method="lora", recipe="hf-amp", lora_dropout=0.1)
    assert b.peak_bytes > a.peak_bytes


def test_dora_costs_more_than_lora(llama8b):
    assert _est(llama8b, method="lora", recipe="hf-amp", dora=True).peak_bytes > _est(llama8b, method="lora", recipe="hf-amp").peak_bytes


def test_qlora_weights_below_lora(llama8b):
    q = _est(llama8b, method="qlora", recipe="hf-amp")
    lo = _est(llama8b, method="lora", recipe="hf-amp")
    assert q.categories["weights_frozen"] < 0.4 * lo.categories["weights_frozen"]


def test_optimizers_order(llama8b):
    peaks = {
        o: _est(llama8b, "8xH100", zero=1, recipe="deepspeed-bf16", optimizer=o, checkpointing="full").phases["after_load"]
        for o in ("adamw", "adamw-8bit", "sgd-momentum", "sgd", "adafactor")
    }
    assert peaks["adamw"] > peaks["sgd-momentum"] > peaks["sgd"]
    assert peaks["adamw"] > peaks["adamw-8bit"] > peaks["sgd"]
    assert peaks["adafactor"] < peaks["adamw-8bit"]


def test_eager_attention_grows_quadratically(llama8b):
    e1 = _est(llama8b, method="lora", recipe="hf-amp", attention="eager", seq_len=2048)
    e2 = _est(llama8b, method="lora", recipe="hf-amp", attention="eager", seq_len=4096)
    s1 = _est(llama8b, method="lora", recipe="hf-amp", attention="sdpa", seq_len=2048)
    assert e1.categories["activations"] > s1.categories["activations"]
    assert e2.categories["activations"] > 2.5 * e1.categories["activations"] - 2 * s1.categories["activations"]


def test_chunked_and_liger_cut_logits(llama8b):
    plain = _est(llama8b, method="lora", recipe="hf-amp", checkpointing="full", seq_len=8192)
    ch = _est(llama8b, method="lora", recipe="hf-amp", checkpointing="full", seq_len=8192, loss="chunked")
    lg = _est(llama8b, method="lora", recipe="hf-amp", checkpointing="full", seq_len=8192, loss="liger")
    assert lg.peak_bytes < ch.peak_bytes < plain.peak_bytes


@pytest.mark.parametrize("name", ["llama3.1-8b", "qwen2.5-7b", "mistral-7b", "gemma-2-9b"])
@pytest.mark.parametrize("method, ckpt", [("full", "none"), ("full", "full"), ("lora", "full"), ("qlora", "none")])
def test_fused_kernels_never_hold_more_and_save_less_in_every_phase_that_has_activations(name, method, ckpt):
    """Eq. A10b: Liger's fused RMSNorm / SwiGLU save a subset of what the eager ops save, so no phase grows."""
    model = get_model(name)
    kw = dict(method=method, recipe="hf-amp" if method != "full" else "deepspeed-bf16", checkpointing=ckpt,
              seq_len=4096, attention="sdpa" if not model.attn_logit_softcap else "eager")
    eager = _est(model, "8xH100", zero=3 if method == "full" else 0, **kw)
    fused = _est(model, "8xH100", zero=3 if method == "full" else 0, fused_kernels=True, **kw)
    for phase in ("forward_peak", "backward_peak"):
        assert fused.phases[phase] < eager.phases[phase]
    assert fused.phases["after_load"] == eager.phases["after_load"]  # weights and states are not activations


def test_fused_kernel_inventory_is_what_liger_saves(llama8b):
    """Liger-Kernel's autograd Functions (src/liger_kernel/ops/rms_norm.py, swiglu.py): RMSNorm saves X and an fp32
    RSTD per row, SwiGLU saves its two inputs; the eager block saves the fp32 norm input and the normalised output
    (A2) and the SiLU output (A6) besides."""
    from planner.engine.activations import layer_inventory

    setup = Setup(method="full", recipe="deepspeed-bf16")
    facts, rb = model_facts(llama8b, setup), recipe_bytes(setup)
    eager = layer_inventory(facts, setup, rb, True)
    fused = layer_inventory(facts, setup.model_copy(update={"fused_kernels": True}), rb, True)
    h, f = llama8b.hidden_size, llama8b.intermediate_size
    assert "act_out" not in fused.items and "norm_input_fp32" not in fused.items
    assert fused.items["norm_input"] == 2 * rb.residual * h and fused.items["norm_rsqrt"] == 2 * 4
    assert eager.per_token - fused.per_token == 2 * 4 * h + rb.compute * f  # two fp32 norm copies less, no SiLU output
    assert (eager.mlp_grad_copies, fused.mlp_grad_copies) == (3, 1)  # SwiGLU's backward writes into its saved inputs


def test_fused_kernels_match_the_published_per_token_growth_of_a_long_context_sweep():
    """ml-engineering 'When Is It Worth Upgrading GPUs?' (stas00/ml-engineering insights/when-to-upgrade-gpus at
    2943345, profiles/evidence/ml-engineering-when-to-upgrade-gpus-2026.yaml): Llama-3.1-8B, DeepSpeed ZeRO-3 + CPU
    optimizer offload + full checkpointing + Liger, one row per GPU, 8K-256K tokens; the source fits its peaks as
    'peak ~ 12.6GiB + 0.00043GiB/token'. The engine's activations grow at that rate only with eq. A10b."""
    model = get_model("llama-3.1-8b")

    def per_token(fused: bool) -> float:
        kw = dict(method="full", recipe="deepspeed-bf16", zero=3, offload="optimizer", checkpointing="full",
                  attention="flash", loss="liger", fused_kernels=fused, allow_long_seq=True)
        a = _est(model, "8xH200", seq_len=131072, **kw).phase_tensors["backward_peak"]
        b = _est(model, "8xH200", seq_len=262144, **kw).phase_tensors["backward_peak"]
        return (b - a) / 131072 / GiB

    assert per_token(True) == pytest.approx(0.00043, rel=0.05)
    assert per_token(False) > 1.2 * 0.00043


def test_reserved_grows_like_the_tensors_in_a_long_context_sweep():
    """The same source's published peaks are max_memory_reserved, and grow at the tensors' rate (0.00043 GiB/token)
    from 64K to 256K tokens, about 5.5 GiB above them throughout. Eq. R3b: past 256 MiB residual tensors the
    activations' fragmented share follows their count, not their size, so the engine's reserved figure grows at the
    tensors' rate too (eq. R3 alone: + the sharded fraction 0.43 x the activation churn, about 1.4x)."""
    model = get_model("llama-3.1-8b")
    kw = dict(method="full", recipe="deepspeed-bf16", zero=3, offload="optimizer", checkpointing="full",
              attention="flash", loss="liger", fused_kernels=True, allow_long_seq=True)
    a, b = (_est(model, "8xH200", seq_len=n, **kw) for n in (131072, 262144))
    tensors = (b.phase_tensors["backward_peak"] - a.phase_tensors["backward_peak"]) / 131072 / GiB
    reserved = (b.reserved_peak_bytes - a.reserved_peak_bytes) / 131072 / GiB
    assert reserved == pytest.approx(tensors, rel=0.05)


def test_optimizer_in_backward_frees_gradients(llama8b):
    a = _est(llama8b, recipe="bf16", checkpointing="full")
    b = _est(llama8b, recipe="bf16", checkpointing="full", optimizer_in_backward=True)
    assert b.phases["optimizer_peak"] < a.phases["optimizer_peak"] - 10 * GiB


def test_grad_accum_keeps_gradients_alive(llama8b):
    a = _est(llama8b, recipe="bf16", checkpointing="full")
    b = _est(llama8b, recipe="bf16", checkpointing="full", grad_accum=4)
    assert b.phases["forward_peak"] > a.phases["forward_peak"] + 14 * GiB


def test_offload_moves_states_to_host(llama8b):
    a = _est(llama8b, "8xA800", zero=2, checkpointing="full")
    b = _est(llama8b, "8xA800", zero=2, checkpointing="full", offload="optimizer")
    assert b.peak_bytes < a.peak_bytes
    assert b.host_bytes > a.host_bytes + 8 * 16 * param_counts(llama8b).total // 8 * 0.99
    c = _est(llama8b, "8xA800", zero=3, checkpointing="full", offload="optimizer+params")
    assert c.categories["weights_trainable"] == 0


def test_freeze_trains_only_last_layers(llama8b):
    f = _est(llama8b, method="freeze", recipe="hf-amp", freeze_layers=2)
    full = _est(llama8b, recipe="hf-amp")
    assert f.peak_bytes < 0.6 * full.peak_bytes
    assert model_facts(llama8b, Setup(method="freeze", freeze_layers=2)).trainable.trainable < param_counts(llama8b).total / 10


def test_recipe_printed_in_assumptions(llama8b):
    e = _est(llama8b, method="lora", recipe="hf-amp")
    assert any(a.startswith("recipe hf-amp") for a in e.assumptions)


# ---- impossible combinations ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "gpus, kw, needle",
    [
        ("8xA800", dict(zero=2, offload="optimizer+params"), "parameter offload needs ZeRO-3"),
        ("1xH100", dict(optimizer_in_backward=True, grad_accum=4), "cannot accumulate"),
        ("1xV100", dict(recipe="bf16"), "needs bf16, which V100"),
        ("1xA100", dict(attention="fa3"), "FlashAttention-3 runs on Hopper GPUs only"),
        ("1xH100", dict(attention="fa4"), "FlashAttention-4 runs on Blackwell GPUs only"),
        ("1xH100", dict(seq_len=200_000), "exceeds Llama-3.1-8B's max positions 131072"),
        ("1xH100", dict(method="full", dora=True), "--dora applies to LoRA"),
        ("1xH100", dict(method="lora", lora_targets="q_proj,nope"), "LoRA target nope is not a linear layer"),
    ],
)
def test_impossible_setups(llama8b, gpus, kw, needle):
    with pytest.raises(SetupError, match=needle):
        evaluate(llama8b, parse_cluster(gpus), Setup(**kw)).memory


def test_micro_batch_zero_is_rejected():
    with pytest.raises(ValueError):
        Setup(micro_batch=0)


# ---- properties over random valid setups (hypothesis) -------------------------------------------------------

setups = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["full", "lora", "qlora", "freeze"]),
        "optimizer": st.sampled_from(["adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor"]),
        "checkpointing": st.sampled_from(["none", "full", "selective"]),
        "attention": st.sampled_from(["sdpa", "eager", "flash"]),
        "loss": st.sampled_from(["plain", "chunked", "liger"]),
        "micro_batch": st.integers(1, 8),
        "grad_accum": st.integers(1, 4),
        "seq_len": st.sampled_from([128, 512, 1024, 2048, 4096]),
        "lora_rank": st.sampled_from([4, 8, 64]),
    }
)
MODELS = ["qwen2.5-0.5b", "llama3.1-8b", "qwen3-30b-a3b", "gemma2-2b", "deepseek-v2-lite"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=setups, model=st.sampled_from(MODELS))
def test_properties(kw, model):
    m = get_model(model)
    cluster = make_cluster(get_gpu("H100"), 8)
    est = {z: evaluate(m, cluster, Setup(recipe="deepspeed-bf16", zero=z, **kw)).memory for z in (0, 1, 2, 3)}
    # ZeRO-3 <= ZeRO-2 <= ZeRO-1 <= DDP per GPU, at equal GPU count, in what torch allocates; the nvidia-smi
    # figure keeps the order among ZeRO-0/1/2 (one fragmentation class), while ZeRO-3's side-stream gathers
    # fragment more (eq. R3, "sharded"), which for a small model can outweigh the states it shards
    a = {z: est[z].allocated_peak_bytes for z in est}
    assert a[3] <= a[2] <= a[1] <= a[0]
    assert est[2].peak_bytes <= est[1].peak_bytes <= est[0].peak_bytes
    if model not in ("qwen2.5-0.5b", "gemma2-2b") and kw["method"] == "full" and est[3].peak_bytes > est[2].peak_bytes:
        # 8B+: the sharded states win in every tensor; when the nvidia-smi figure still comes out above ZeRO-2's, it is
        # the sharded class's larger fitted fragmentation of an activation-heavy step (eq. R3: 0.43 of the churn against
        # static's 0.29, docs/memory.md), never the states
        margin = {z: est[z].categories["allocator_margin"] for z in (2, 3)}
        assert est[3].peak_bytes - margin[3] <= est[2].peak_bytes - margin[2] and margin[3] > margin[2]
    e = est[2]
    # parts sum to totals; nothing negative or NaN
    assert sum(e.categories.values()) == e.peak_bytes
    assert set(e.categories) == set(CATEGORIES)
    assert all(isinstance(v, int) and v >= 0 and not math.isnan(v) for v in e.categories.values())
    assert all(v >= 0 for v in e.phases.values()) and e.host_bytes >= 0
    assert allocated_bytes(e) > 0
    # non-decreasing in sequence length and micro-batch
    longer = evaluate(m, cluster, Setup(recipe="deepspeed-bf16", zero=2, **{**kw, "seq_len": kw["seq_len"] * 2})).memory
    bigger = evaluate(m, cluster, Setup(recipe="deepspeed-bf16", zero=2, **{**kw, "micro_batch": kw["micro_batch"] + 1})).memory
    assert longer.peak_bytes >= e.peak_bytes and bigger.peak_bytes >= e.peak_bytes
    # more GPUs never raise the per-GPU model states for ZeRO >= 1
    for z in (1, 2, 3):
        s = Setup(recipe="deepspeed-bf16", zero=z, **kw)
        rb = recipe_bytes(s)
        small = model_states(model_facts(m, s), cluster, s, rb)
        big = model_states(model_facts(m, s), make_cluster(get_gpu("H100"), 8, 2), s, rb)
        total = lambda x: x.weights_trainable + x.weights_frozen + x.gradients + x.optimizer_states + x.master_weights  # noqa: E731
        assert total(big) <= total(small)
    # full checkpointing <= none
    if kw["checkpointing"] == "none":
        ck = evaluate(m, cluster, Setup(recipe="deepspeed-bf16", zero=2, **{**kw, "checkpointing": "full"})).memory
        assert ck.peak_bytes <= e.peak_bytes
    # LoRA < full; QLoRA weights < LoRA weights. Not for LoRA on fused MoE experts: peft 0.21 saves a merged
    # copy of every expert stack per block (eq. A7b), which can exceed full fine-tuning's sharded states
    lora_setup = Setup(recipe="deepspeed-bf16", zero=2, **{**kw, "method": "lora"})
    if kw["method"] == "full" and not model_facts(m, lora_setup).lora.experts:
        lo = evaluate(m, cluster, lora_setup).memory
        # strict in the phases' tensor bytes: the device figure of both phases can sit at the card (eq. R3's cap;
        # hypothesis found Gemma-2-2B full at micro-batch 7 x 1024, both capped at 79.65 GiB)
        assert max(lo.phase_tensors.values()) < max(e.phase_tensors.values()) and lo.peak_bytes <= e.peak_bytes
    if kw["method"] == "lora":
        q = evaluate(m, cluster, Setup(recipe="deepspeed-bf16", zero=2, **{**kw, "method": "qlora"})).memory
        assert q.categories["weights_frozen"] + q.categories["weights_trainable"] < e.categories["weights_frozen"] + e.categories["weights_trainable"]


@pytest.mark.parametrize("name", ["llama3-8b", "qwen2.5-72b", "mistral-7b-v0.1"])
def test_fsdp_gathers_qlora_blocks_in_their_packed_width(name):
    """FSDP all-gathers what a rank stores: QLoRA's packed 4-bit weights with their constants (torchao NF4Tensor's
    fsdp_pre_all_gather; bitsandbytes' quant_storage). Checked against the engine's other path, the stored frozen
    bytes of model_states on one GPU (eq. M3): a gathered QLoRA block weighs one block's share of the stored
    blocks. The block is read off the end of backward, where it is gathered twice (itself and the prefetched
    next) beside gradients that LoRA and QLoRA share; the difference to LoRA's bf16 block gives it."""
    model = get_model(name)
    kw = dict(recipe="hf-amp", fsdp="full-shard", checkpointing="full", seq_len=1024)
    q, lo = Setup(method="qlora", **kw), Setup(method="lora", **kw)
    fq, fl = model_facts(model, q), model_facts(model, lo)
    cluster = parse_cluster("8xA100")
    end_q = comm_buffer_bytes(fq, cluster, q, recipe_bytes(q)).backward_end
    end_l = comm_buffer_bytes(fl, cluster, lo, recipe_bytes(lo)).backward_end
    block_lora = 2 * fl.block_params  # bf16, as LoRA's frozen weights are stored
    gathered_q = block_lora - (end_l - end_q) / 2

    one = Setup(method="qlora", recipe="hf-amp", seq_len=1024)
    stored = model_states(model_facts(model, one), parse_cluster("A100"), one, recipe_bytes(one)).weights_frozen
    outside = 2 * (2 * model.vocab_size * model.hidden_size + model.hidden_size)  # embedding, LM head, final norm
    if model.tie_embeddings:
        outside -= 2 * model.vocab_size * model.hidden_size
    per_block_stored = (stored - outside) / model.num_layers
    assert gathered_q == pytest.approx(per_block_stored, rel=1e-4)
    assert 0.25 < gathered_q / block_lora < 0.30  # NF4: 0.5 B + constants per weight against bf16's 2 B


# ---- FSDP1 (eq. C4b, A9d) ---------------------------------------------------------------------------------------


def _fms_mistral(method: str, mb: int, version: int) -> Setup:
    """The setup of IBM fms-acceleration's 2-GPU Mistral-7B rows (profiles/evidence/fms-acceleration-bench-a100-2025-02
    .yaml: LoRA r16 on q, k, v, o, bf16 weights, full checkpointing, packed 4096-token rows)."""
    kw = dict(lora_rank=16, lora_alpha=16, lora_dropout=0.1, lora_targets="q_proj,k_proj,v_proj,o_proj")
    return Setup(method=method, recipe="bf16", fsdp="full-shard", fsdp_version=version, checkpointing="full",
                 attention="flash", micro_batch=mb, seq_len=4096, **kw)


@pytest.mark.parametrize("mb, measured_bytes", [(2, 15_144_870_400), (4, 21_959_827_968)])
def test_fsdp1_lora_matches_the_published_two_gpu_rows(mb, measured_bytes):
    """fms-acceleration a100_80gb.csv (commit 24bdadb, torch 2.4.1, accelerate 1.0.1 = FSDP1): Mistral-7B LoRA plain,
    2 GPUs, mem_peak_torch_mem_alloc_in_bytes 15,144,870,400 at 2 rows per device and 21,959,827,968 at 4.
    FSDP2's accounting was 19 % / 15 % low; FSDP1's root and frozen-unit hooks close it (docs/memory.md C4b, A9d)."""
    from planner.engine.evaluate import evaluate

    m, c = get_model("mistral-7b-v0.1"), parse_cluster("2xA100")
    v1 = evaluate(m, c, _fms_mistral("lora", mb, 1)).memory.allocated_peak_bytes
    v2 = evaluate(m, c, _fms_mistral("lora", mb, 2)).memory.allocated_peak_bytes
    assert abs(v1 / measured_bytes - 1) < 0.03, v1 / measured_bytes
    assert v2 / measured_bytes < 0.9  # the FSDP2 model of the same run, for contrast


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("ckpt", ["none", "full"])
def test_fsdp1_holds_at_least_what_fsdp2_holds_and_retains_only_frozen_checkpointed_blocks(method, ckpt):
    from planner.engine.memory import fsdp1_retains_block_inputs

    m, c = get_model("mistral-7b-v0.1"), parse_cluster("2xA100")
    s2 = _fms_mistral(method, 2, 2).model_copy(update={"checkpointing": ckpt})
    s1 = s2.model_copy(update={"fsdp_version": 1})
    from planner.engine.evaluate import evaluate

    assert evaluate(m, c, s1).memory.allocated_peak_bytes >= evaluate(m, c, s2).memory.allocated_peak_bytes
    assert fsdp1_retains_block_inputs(s1) is (method != "full" and ckpt == "full")
    assert not fsdp1_retains_block_inputs(s2)
    # without FSDP the version means nothing
    ddp = s1.model_copy(update={"fsdp": None})
    assert evaluate(m, parse_cluster("A100"), ddp).memory.peak_bytes == evaluate(
        m, parse_cluster("A100"), ddp.model_copy(update={"fsdp_version": 2})).memory.peak_bytes


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_non_reentrant_checkpointing_drops_fsdp1_s_retained_block_inputs(method):
    """Eq. A9d needs reentrant checkpointing (the probe of tests/validation/test_fsdp1_hooks.py shows real FSDP1's
    memory falling block by block in backward with use_reentrant=False): --no-reentrant removes the term, so the
    allocated peak falls, by at most what A9d retains (L - 1 block inputs and their gradients, bf16)."""
    from planner.engine.evaluate import evaluate
    from planner.engine.memory import fsdp1_retains_block_inputs

    m, c = get_model("mistral-7b-v0.1"), parse_cluster("2xA100")
    re = _fms_mistral(method, 2, 1).model_copy(update={"checkpointing": "full"})
    non = re.model_copy(update={"reentrant": False})
    assert fsdp1_retains_block_inputs(re) and not fsdp1_retains_block_inputs(non)
    a_re, a_non = (evaluate(m, c, s).memory.allocated_peak_bytes for s in (re, non))
    tokens, h = re.micro_batch * re.seq_len, m.hidden_size
    assert 0 < a_re - a_non <= 2 * (m.num_layers - 1) * tokens * h * 2


def test_reentrant_is_refused_where_nothing_uses_it():
    from planner.engine.rules import check_used
    from planner.engine.setup import SetupError

    with pytest.raises(SetupError, match="--reentrant is not used.*--fsdp-version 1"):
        check_used([Setup(fsdp="full-shard", method="lora", checkpointing="full")], {"reentrant"})
    check_used([_fms_mistral("lora", 2, 1).model_copy(update={"checkpointing": "full"})], {"reentrant"})


def test_the_assumptions_say_which_fsdp_the_estimate_counts():
    from planner.engine.evaluate import evaluate

    m, c = get_model("mistral-7b-v0.1"), parse_cluster("2xA100")
    v1 = evaluate(m, c, _fms_mistral("lora", 2, 1).model_copy(update={"grad_accum": 4})).memory.assumptions
    v2 = evaluate(m, c, _fms_mistral("lora", 2, 2)).memory.assumptions
    assert any(a.startswith("FSDP1") and "A9d" in a and "M5c" in a for a in v1)
    assert any(a.startswith("FSDP2") for a in v2) and not any(a.startswith("FSDP1") for a in v2)


# --- eq. M4d: the temporary of torch's foreach AdamW ---------------------------------------------------------------


def _adamw_step_peak_temporary_bytes(foreach: bool, sizes: list[int]) -> int:
    """The most bytes of new tensors alive at once during a real ``torch.optim.AdamW`` step (the second one, after
    the states exist), tracked by intercepting every aten op and watching its outputs die (weak references). In
    place ops make nothing; scalar step counters and bias corrections (under 1 KiB) are left out."""
    torch = pytest.importorskip("torch")
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    params = [torch.nn.Parameter(torch.randn(n, dtype=torch.bfloat16)) for n in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, dtype=torch.bfloat16)
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=foreach, fused=not foreach)
    opt.step()
    live, peak = [0], [0]

    def flat(x):  # noqa: ANN001, ANN202
        if isinstance(x, torch.Tensor):
            return [x]
        return [t for y in x for t in flat(y)] if isinstance(x, (list, tuple)) else []

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in flat(list(args) + list((kwargs or {}).values()))}
            for t in flat(out):
                n = t.untyped_storage().nbytes()
                if t.untyped_storage().data_ptr() in inputs or n < 1024:
                    continue
                live[0] += n
                peak[0] = max(peak[0], live[0])
                weakref.finalize(t, lambda n=n: live.__setitem__(0, live[0] - n))
            return out

    with Track():
        opt.step()
    return peak[0]


def test_foreach_adamw_temporary_matches_torch():
    """Eq. M4d against torch: the foreach step holds one second-moment-sized tensor per parameter at once (the
    engine's half of AdamW's states); the fused step holds none."""
    from planner.engine.memory import foreach_adamw_temp_bytes

    sizes = [1 << 14, 3 << 12, 1 << 13]
    measured = _adamw_step_peak_temporary_bytes(True, sizes)
    states = 2 * 2 * sum(sizes)  # m and v in bf16, the parameters' dtype
    setup = Setup(recipe="bf16", optimizer_kernel="foreach")
    assert measured == foreach_adamw_temp_bytes(None, setup, states) == 2 * sum(sizes)  # type: ignore[arg-type]
    assert _adamw_step_peak_temporary_bytes(False, sizes) == 0
    # stepping in backward (one optimizer per parameter, torchtune's optimizer_in_bwd): the largest tensor's alone
    per_param = max(_adamw_step_peak_temporary_bytes(True, [n]) for n in sizes)
    facts = types.SimpleNamespace(trainable=types.SimpleNamespace(trainable=sum(sizes)), largest_module_params=max(sizes))
    in_bwd = Setup(recipe="bf16", optimizer_kernel="foreach", optimizer_in_backward=True)
    assert in_bwd.steps_in_backward
    assert per_param == foreach_adamw_temp_bytes(facts, in_bwd, states) == 2 * max(sizes)  # type: ignore[arg-type]


def test_foreach_adamw_raises_the_optimizer_phase_only(llama8b):
    """foreach adds the temporary at the optimizer step, nothing elsewhere; where offload steps on the host the
    flag is ignored."""
    cluster = make_cluster(get_gpu("H100"), 8)
    for fields in (dict(recipe="bf16", fsdp="full-shard"), dict(zero=2), dict(recipe="bf16")):
        a = evaluate(llama8b, cluster, Setup(**fields)).memory
        b = evaluate(llama8b, cluster, Setup(**fields, optimizer_kernel="foreach")).memory
        assert b.phases["optimizer_peak"] - a.phases["optimizer_peak"] > 0
        assert b.phases["backward_peak"] == a.phases["backward_peak"]
        assert b.phases["forward_peak"] == a.phases["forward_peak"]


def test_litgpt_keeps_its_fused_qkv_for_multi_head_attention_only():
    """Eq. A4c: LitGPT's saved value is a view of its fused qkv output, which stays whole: c (q_w + kv_w) per token
    and block more than the same setup under transformers, for multi-head attention (Llama-2-7B) and not for
    grouped queries (Llama-3-8B, whose v LitGPT copies). Checked on lit_gpt/model.py at 8641822 with
    saved_tensors_hooks (docs/memory.md A4c)."""
    from planner.engine.activations import layer_inventory

    for name, extra in (("llama2-7b", True), ("llama3-8b", False)):
        model = get_model(name)
        s = Setup(method="lora", recipe="bf16", lora_targets="q_proj,v_proj", framework="hf")
        facts = model_facts(model, s)
        hf = layer_inventory(facts, s, recipe_bytes(s), False)
        lit = layer_inventory(facts, s.model_copy(update={"framework": "litgpt"}), recipe_bytes(s), False)
        got = lit.items.get("litgpt_qkv", 0)
        assert got == (2 * (model.q_width + model.kv_width) if extra else 0), name
        assert sum(lit.items.values()) - sum(hf.items.values()) == got


def test_torchtitan_reduces_gradients_in_fp32():
    """torchtitan's FSDP policy reduces in fp32 (reduce_dtype=torch.float32 at 157a12c; mixed_precision_reduce
    Literal['float32'] since): 4 B per gradient element on the wire and in the reduce-scatter input, where
    accelerate's bf16 policy moves 2."""
    from planner.engine.memory import fsdp_reduce_bytes
    from planner.engine.speed.comm import grad_comm_bytes

    hf = Setup(recipe="hf-amp", fsdp="full-shard", framework="hf")
    tt = hf.model_copy(update={"framework": "torchtitan"})
    assert grad_comm_bytes(hf) == 2 and grad_comm_bytes(tt) == 4
    g, n = 1000, 8
    # unsharded bf16 gradient + fp32 reduce-scatter input + fp32 output shard (already the fp32 shard's dtype)
    assert fsdp_reduce_bytes(g, 2, n, 4, reduce=4) == 2 * g + 4 * g + 4 * g // n
    assert fsdp_reduce_bytes(g, 2, n, 4) == 2 * 2 * g + (2 + 4) * g // n
    # at the engine's peak (a block's backward) the one block's reduce-scatter input is 2 B per element wider, and
    # its output shard (1/8) as well: the peak rises by 2 x block (+ 2 x block / 8), nothing else moves
    cluster = make_cluster(get_gpu("h100"), 8)
    m = get_model("llama3-8b")
    full = {"checkpointing": "full"}
    rise = (evaluate(m, cluster, tt.model_copy(update=full)).memory.peak_bytes
            - evaluate(m, cluster, hf.model_copy(update=full)).memory.peak_bytes)
    block = model_facts(m, tt).block_params
    assert 2 * block <= rise <= 2 * block + 2 * block // 8 + 1


def test_the_allocator_margin_line_names_its_law_and_where_r3b_acts():
    """The assumptions say which fragmentation class and fraction the margin uses (eq. R3); past eq. R3b's tensor
    size they say what share of the activations counts and on what evidence; under a calibration (its measured
    reserved / allocated ratio replaces eq. R3) they say that instead."""
    from planner.engine.calibration import Calibration, CalibrationBook
    from planner.engine.runtime_memory import FRAGMENTATION

    model = get_model("llama-3.1-8b")
    short = _est(model, "1xH100", method="lora", seq_len=2048)
    line = [a for a in short.assumptions if a.startswith("allocator margin:")]
    assert line == [f"allocator margin: {FRAGMENTATION['static']:.0%} of the memory freed and re-allocated within a "
                    "step stays fragmented (static class, eq. R3)"]
    long = _est(model, "8xH200", method="full", recipe="deepspeed-bf16", zero=3, offload="optimizer",
                checkpointing="full", attention="flash", loss="liger", seq_len=262144, allow_long_seq=True)
    line = next(a for a in long.assumptions if a.startswith("allocator margin:"))
    assert "(sharded class, eq. R3)" in line and "12%: residual tensors of 2,048 MiB, past eq. R3b's 256 MiB" in line
    cal = Calibration(gpu="H100 80GB SXM", recipe=Setup().recipe, fixed_overhead_bytes=600 * 2**20, allocator_factor=1.1,
                      mfu=0.4, n_runs=3, runs=("a#1", "a#2", "a#3"))
    est = evaluate(model, parse_cluster("1xH100"), Setup(method="lora", seq_len=2048),
                   CalibrationBook(entries=(cal,))).memory
    assert est.calibration != "uncalibrated"
    assert [a for a in est.assumptions if a.startswith("allocator margin:")] == [
        "allocator margin: the calibration's measured max_memory_reserved / max_memory_allocated"]
