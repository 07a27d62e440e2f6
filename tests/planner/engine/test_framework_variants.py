"""What the evidence's frameworks do differently from the current ones (docs/memory.md): Unsloth's kernels as
fms-acceleration's FOAK plugin installs them (``--fused-kernels unsloth``, eq. A10c, L5: Liger's norm accounting, an
eager SwiGLU unless its fused QLoRA MLP runs, a cross-entropy whose backward runs in place), transformers before 4.49
(the shifted fp32 logits copy, eq. L1b) and before 5.0 (the experts' Python loop, eq. A7c)."""

from __future__ import annotations

import pytest

from planner.engine.activations import fused_swiglu, layer_inventory
from planner.engine.dtypes import recipe_bytes
from planner.engine.evaluate import evaluate
from planner.engine.facts import model_facts
from planner.engine.memory import logits_loss_bytes
from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model

GiB = 2**30
ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _inv(setup: Setup, model: str = "mistral-7b-v0.1"):
    m = get_model(model)
    facts, rb = model_facts(m, setup), recipe_bytes(setup)
    return layer_inventory(facts, setup, rb, setup.method == "full")


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_unsloth_norms_save_what_liger_norms_save_and_the_mlp_stays_eager_without_fused_lora(method):
    base = Setup(method=method, recipe="hf-amp", lora_targets="q_proj,k_proj,v_proj,o_proj")
    liger = _inv(base.model_copy(update={"fused_kernels": True}))
    unsloth = _inv(base.model_copy(update={"fused_kernels": True, "kernel_library": "unsloth"}))
    eager = _inv(base)
    for key in ("norm_input", "norm_rsqrt"):  # Fast_RMS_Layernorm saves X, W, r as LigerRMSNormFunction does
        assert unsloth.items[key] == liger.items[key]
    assert "norm_input_fp32" not in unsloth.items
    # no fused LoRA MLP here (q, k, v, o targets, or no quantised base): the SiLU output is saved as eager saves it
    assert unsloth.items["act_out"] == eager.items["act_out"] and "act_out" not in liger.items
    assert (unsloth.mlp_grad_copies, liger.mlp_grad_copies) == (3, 1)


def test_the_mlp_fuses_only_inside_the_plugins_qlora_mlp():
    """fms-acceleration installs fused LoRA only on a quantised base, and its MLP rule only when gate, up and down
    all carry LoRA (framework_plugin_fast_kernels.py, models/utils.py trigger_fused_ops at 24bdadb)."""
    def fused(method: str, targets: str) -> bool:
        return fused_swiglu(Setup(method=method, fused_kernels=True, kernel_library="unsloth", lora_targets=targets),
                            set(targets.split(",")))

    assert fused("qlora", ALL_LINEAR)
    assert not fused("lora", ALL_LINEAR)
    assert not fused("qlora", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj")
    assert not fused_swiglu(Setup(method="qlora", kernel_library="unsloth", lora_targets=ALL_LINEAR), set())
    qlora = _inv(Setup(method="qlora", recipe="hf-amp", lora_targets=ALL_LINEAR, fused_kernels=True,
                       kernel_library="unsloth"))
    assert "act_out" not in qlora.items and qlora.mlp_grad_copies == 1


def test_the_loss_backward_runs_in_place():
    """Fast_CrossEntropyLoss writes its gradient into the saved fp32 logits: 4V per token less at the loss backward
    than eq. L1's 12V; forward and saved bytes as L1."""
    m = get_model("mistral-7b-v0.1")
    plain = Setup(method="lora", recipe="hf-amp")
    unsloth = plain.model_copy(update={"fused_kernels": True, "kernel_library": "unsloth"})
    rb, T, V = recipe_bytes(plain), 8192, m.vocab_size
    a, b = logits_loss_bytes(m, plain, rb, T), logits_loss_bytes(m, unsloth, rb, T)
    assert (b.forward_peak, b.saved) == (a.forward_peak, a.saved)
    assert a.backward_peak - b.backward_peak == 4 * V * T
    liger = plain.model_copy(update={"fused_kernels": True})  # Liger's norms and SwiGLU leave the loss as it is
    assert logits_loss_bytes(m, liger, rb, T) == a
    chunked = unsloth.model_copy(update={"loss": "chunked"})  # only the plain loss is swapped
    plain_chunked = plain.model_copy(update={"loss": "chunked"})
    assert logits_loss_bytes(m, chunked, rb, T) == logits_loss_bytes(m, plain_chunked, rb, T)


# fms-acceleration scripts/benchmarks/refs/a100_80gb.csv at 24bdadb228e2d55bc0c69deec034b86a73da6917, column
# mem_peak_torch_mem_alloc_in_bytes (profiles/evidence/fms-acceleration-bench-a100-2025-02.yaml): Mistral-7B-v0.1,
# packed 4,096-token rows, full checkpointing, FlashAttention-2, LoRA r16 on q, k, v, o with dropout 0.1; the same run
# without and with FOAK ('foak-fast-kernels': fast loss, RMSNorm and RoPE; no fused LoRA on a 16-bit base)
FMS_LORA_PEAKS = {  # (GPUs, micro-batch): (plain, foak) allocated bytes
    (1, 4): (26_704_571_904, 24_473_332_736),
    (1, 8): (38_742_912_512, 34_280_434_688),
    (2, 2): (15_144_870_400, 14_943_543_808),
    (2, 4): (21_959_827_968, 21_557_174_784),
}


@pytest.mark.parametrize("gpus, mb", sorted(FMS_LORA_PEAKS))
def test_the_saving_matches_fms_accelerations_paired_runs(gpus, mb):
    """On one GPU the peak is the loss: transformers 4.48.1's plain loss holds a shifted fp32 copy at its forward
    (L1b), FOAK's none beyond its own (L5); measured 2.08 / 4.15 GiB saved. Under FSDP1 the peak is the bottom block's
    backward (A9d), where only the norms save: measured 0.19 / 0.37 GiB. Read as Liger's kernels, the engine saved
    0.13 / 0.25 GiB on one GPU and 0.85 / 1.69 GiB under FSDP."""
    model = get_model("mistral-7b-v0.1")
    cluster = parse_cluster(f"{gpus}xa100-80g")
    kw = dict(method="lora", recipe="bf16", loss_shift_copy=True, lora_rank=16, lora_alpha=16, lora_dropout=0.1,
              lora_targets="q_proj,k_proj,v_proj,o_proj", optimizer_kernel="foreach", checkpointing="full",
              attention="flash", micro_batch=mb, seq_len=4096, packing=True, framework="hf")
    if gpus > 1:
        kw.update(fsdp="full-shard", fsdp_version=1)
    plain = evaluate(model, cluster, Setup(**kw), explain=False).memory
    foak = evaluate(model, cluster, Setup(**kw, fused_kernels=True, kernel_library="unsloth"), explain=False).memory
    measured = (FMS_LORA_PEAKS[(gpus, mb)][0] - FMS_LORA_PEAKS[(gpus, mb)][1]) / GiB
    saved = (plain.allocated_peak_bytes - foak.allocated_peak_bytes) / GiB
    assert saved == pytest.approx(measured, abs=0.25)


@pytest.mark.parametrize("name", ["mistral-7b-v0.1", "llama-3-8b", "qwen2.5-7b"])
def test_older_transformers_hold_a_shifted_copy_at_the_loss_forward_only(name):
    """Eq. L1b: transformers 4.46-4.48's ForCausalLMLoss makes ``logits[..., :-1, :].contiguous()`` of the fp32
    upcast (read in the 4.48.1 wheel; 4.49 shifts the labels instead): 4 B per logit more at the forward peak, the
    same saved bytes and backward (the copy is not saved). Chunked and fused losses never made it."""
    m = get_model(name)
    new = Setup(method="lora", recipe="bf16")
    old = new.model_copy(update={"loss_shift_copy": True})
    rb, T = recipe_bytes(new), 4096
    a, b = logits_loss_bytes(m, new, rb, T), logits_loss_bytes(m, old, rb, T)
    assert b.forward_peak - a.forward_peak == 4 * m.vocab_size * T
    assert (b.saved, b.backward_peak) == (a.saved, a.backward_peak)
    for loss in ("chunked", "liger"):
        assert (logits_loss_bytes(m, old.model_copy(update={"loss": loss}), rb, T)
                == logits_loss_bytes(m, new.model_copy(update={"loss": loss}), rb, T))


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen3-30b-a3b"])
def test_the_expert_loop_holds_one_experts_share_of_the_working_set(name):
    """Eq. A7c: transformers 4's Python loop over the experts holds ``T k / E`` routed tokens' intermediates at a time,
    transformers 5's grouped matmul all ``T k``; the saved tensors are the same."""
    from planner.engine.activations import routed_working_width

    m = get_model(name)
    grouped = Setup(method="lora", recipe="bf16")
    loop = grouped.model_copy(update={"moe_expert_loop": True})
    e = m.moe
    assert routed_working_width(m, grouped) == e.expert_intermediate_size * e.experts_per_token
    assert routed_working_width(m, loop) == pytest.approx(routed_working_width(m, grouped) / e.num_experts)
    a, b = _inv(grouped, name), _inv(loop, name)
    assert a.items == b.items and b.transient_per_token < a.transient_per_token
    dense = get_model("mistral-7b-v0.1")  # no experts: the flag changes nothing
    assert _inv(grouped, dense.name) == _inv(loop, dense.name)


def test_the_expert_loop_matches_fms_accelerations_mixtral_rows():
    """fms-acceleration's Mixtral-8x7B QLoRA on one A100 at micro-batch 8 x 4,096 tokens, FOAK (a100_80gb.csv at
    24bdadb: 44,280,442,880 B allocated, ``accelerated-peft-bnb-foak``; transformers 4.48.1): the grouped working set
    put the engine 6.5 GiB high, the loop within 5 %."""
    model = get_model("mixtral-8x7b")
    kw = dict(method="qlora", recipe="hf-amp", double_quant=True, lora_rank=16, lora_alpha=16, lora_dropout=0.1,
              lora_targets="q_proj,k_proj,v_proj,o_proj", optimizer_kernel="foreach", checkpointing="full",
              attention="flash", micro_batch=8, seq_len=4096, packing=True, fused_kernels=True,
              kernel_library="unsloth", loss_shift_copy=True)
    measured = 44_280_442_880
    est = {loop: evaluate(model, parse_cluster("a100-80g"), Setup(**kw, moe_expert_loop=loop),
                          explain=False).memory.allocated_peak_bytes for loop in (False, True)}
    assert est[False] / measured - 1 > 0.12
    assert abs(est[True] / measured - 1) < 0.05


# ---- properties over models and setups: each term moves the phases only where and the way it says ---------------

PHASE_CASES = [
    ("llama3.1-8b", "lora", "hf-amp", None, "full", 1, "1xH100"),
    ("llama3.1-8b", "full", "deepspeed-bf16", None, "none", 2, "8xH100"),
    ("qwen2.5-7b", "qlora", "hf-amp", "full-shard", "full", 4, "2xA100-80G"),
    ("mistral-7b-v0.1", "lora", "bf16", None, "none", 1, "1xA100-80G"),
    ("mixtral-8x7b", "qlora", "hf-amp", "full-shard", "full", 2, "2xA100-80G"),
    ("qwen3-30b-a3b", "full", "deepspeed-bf16", None, "full", 1, "8xH100"),
]


def _phases(name, method, recipe, fsdp, ckpt, mb, gpus, **kw):
    setup = Setup(method=method, recipe=recipe, fsdp=fsdp, zero=3 if recipe.startswith("deepspeed") else 0,
                  checkpointing=ckpt, micro_batch=mb, seq_len=2048, **kw)
    return evaluate(get_model(name), parse_cluster(gpus), setup, explain=False).memory.phase_tensors


@pytest.mark.parametrize("case", PHASE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[6]}")
def test_the_shift_copy_grows_the_forward_peak_only(case):
    a, b = _phases(*case), _phases(*case, loss_shift_copy=True)
    assert b["forward_peak"] >= a["forward_peak"]
    assert all(b[p] == a[p] for p in ("after_load", "backward_peak", "optimizer_peak"))


@pytest.mark.parametrize("case", PHASE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[6]}")
def test_the_expert_loop_never_holds_more_and_changes_only_moe_models(case):
    a, b = _phases(*case), _phases(*case, moe_expert_loop=True)
    assert all(b[p] <= a[p] for p in a)
    if get_model(case[0]).moe is None:
        assert a == b


@pytest.mark.parametrize("case", PHASE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[6]}")
def test_unsloth_kernels_never_hold_more_than_eager_nor_less_than_liger_in_the_blocks(case):
    """Unsloth's set is Liger's norms with an eager MLP (unless its fused QLoRA MLP runs) and an in-place loss
    backward: no phase above the eager run's; its block inventory between Liger's and eager's."""
    eager = _phases(*case)
    unsloth = _phases(*case, fused_kernels=True, kernel_library="unsloth")
    assert all(unsloth[p] <= eager[p] for p in eager)
    assert unsloth["after_load"] == eager["after_load"]
    name, method, recipe = case[:3]
    base = Setup(method=method, recipe=recipe)
    per_token = {lib: _inv(base.model_copy(update={"fused_kernels": lib is not None,
                                                   "kernel_library": lib or "liger"}), name).per_token
                 for lib in (None, "liger", "unsloth")}
    assert per_token["liger"] <= per_token["unsloth"] <= per_token[None]
