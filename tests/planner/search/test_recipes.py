"""The recipe book (issue 12): paged AdamW, the optimizer in backward under FSDP, activation offload, GaLore,
BAdam, LISA, FP8, tensor and context parallelism; their memory and speed terms, their rules, and what the search
finds with them.

Golden numbers cite their source: parameter counts come from the profiles (checked against transformers on the meta
device by tests/profiles/test_params_meta.py), byte sizes from the frameworks' code named in each test.
"""

from __future__ import annotations

import pytest

from planner.engine.evaluate import evaluate, paged_overflow_bytes
from planner.engine.facts import model_facts
from planner.engine.setup import Setup, SetupError
from planner.engine.speed.flops import flops_per_token
from planner.engine.techniques import BNB_PAGED_MIN_NUMEL, galore_bytes, paged_state_bytes, trainable_tensor_sizes
from planner.engine.dtypes import recipe_bytes
from planner.search.rank import SearchRequest, search, tier
from profiles.cluster import parse_cluster
from profiles.params import param_counts
from profiles.registry import get_model

GIB = 2**30


def est(model: str, gpus: str, **kw):
    return evaluate(get_model(model), parse_cluster(gpus), Setup(**kw))


def one_line_refusal(model: str, gpus: str, needle: str, **kw) -> str:
    with pytest.raises(SetupError) as e:
        est(model, gpus, **kw)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


# ---- paged optimizers (docs/memory.md M4b, docs/speed.md S16b) ---------------------------------------------

def test_paged_states_are_split_by_tensor_size_as_bitsandbytes_does():
    """bitsandbytes 0.49.2 get_state_buffer: tensors of >= 1e5 elements get unified memory; 32-bit states are fp32
    (8 B per element) whatever the parameter dtype. Llama-2-7B: only the 65 norm vectors (4096 each) stay."""
    m = get_model("llama-2-7b")
    s = Setup(method="full", recipe="bf16", optimizer="paged-adamw")
    facts = model_facts(m, s)
    gpu, managed = paged_state_bytes(facts, s)
    big = sum(n * c for n, c in trainable_tensor_sizes(facts, s) if n >= BNB_PAGED_MIN_NUMEL)
    assert managed == 8 * big
    assert gpu == 8 * param_counts(m).norms  # 2 layers' norms x 32 + the final norm, fp32 m and v
    assert big + param_counts(m).norms == param_counts(m).total
    # the research notes (sec. 1.7): 53.9 GB of paged fp32 states for Llama-2-7B
    assert managed == pytest.approx(53.9e9, rel=0.01)


def test_paged_states_leave_the_gpu_peak_for_the_host_and_page_only_what_does_not_fit():
    base = dict(method="full", recipe="bf16", optimizer_in_backward=True, checkpointing="full", loss="chunked")
    paged = est("llama-2-7b", "L20", optimizer="paged-adamw", **base)
    plain = est("llama-2-7b", "L20", optimizer="adamw", **base)
    assert paged.memory.categories["optimizer_states"] < GIB
    assert paged.memory.peak_bytes < plain.memory.peak_bytes - 12 * GIB  # bf16 AdamW states (2 x 2 B) left the GPU
    assert paged.memory.host_categories["paged_optimizer"] == pytest.approx(53.9e9, rel=0.01)
    spill = paged_overflow_bytes(paged.memory, paged.usable_bytes)
    assert spill > 0 and paged.speed.breakdown_s["offload"] > 0  # 50 GiB of states do not fit a 48 GB card
    # 8-bit paged states (13.7 GB) fit beside the peak: no paging, no cost
    small = est("llama-2-7b", "L20", optimizer="paged-adamw-8bit", **base)
    assert paged_overflow_bytes(small.memory, small.usable_bytes) == 0
    assert small.speed.breakdown_s["offload"] == 0


def test_paged_optimizers_are_refused_with_zero_and_offload():
    one_line_refusal("llama3-8b", "8xA800", "DeepSpeed ZeRO cannot shard it", method="full", optimizer="paged-adamw",
                     zero=2)
    one_line_refusal("llama3-8b", "8xA800", "cannot be offloaded", method="full", optimizer="paged-adamw",
                     fsdp="full-shard", recipe="bf16", offload="optimizer")


# ---- optimizer in backward ---------------------------------------------------------------------------------

def test_optimizer_in_backward_runs_under_fsdp_and_frees_gradients():
    """torchtune 0.6.1 full_finetune_distributed.py supports optimizer_in_bwd under FSDP2: the rule that said
    'single-device or DDP only' was wrong."""
    base = dict(method="full", recipe="bf16", fsdp="full-shard", checkpointing="full", micro_batch=1, grad_accum=1)
    on = est("llama3-8b", "8xA800", optimizer_in_backward=True, **base)
    off = est("llama3-8b", "8xA800", **base)
    assert on.memory.peak_bytes <= off.memory.peak_bytes
    assert on.memory.phases["optimizer_peak"] < off.memory.phases["optimizer_peak"]  # no sharded gradient buffer
    one_line_refusal("llama3-8b", "8xA800", "owns the optimizer step", method="full", zero=2, optimizer_in_backward=True)


# ---- GaLore (M4c, S31) -------------------------------------------------------------------------------------

def test_galore_states_are_low_rank_for_block_matrices_and_full_for_the_rest():
    """GaLore projector.py: states r x max(m, n), projector r x min(m, n) per projected matrix; embeddings, LM head
    and norms keep full states (LLaMA-Factory _create_galore_optimizer). Research notes sec. 2 table, Llama-3.1-8B
    at r = 128: 0.243 B state elements, 0.092 B projector elements, 1.051 B non-projected parameters."""
    m = get_model("llama3.1-8b")
    s = Setup(method="full", recipe="bf16", galore_rank=128)
    gb = galore_bytes(model_facts(m, s), s, recipe_bytes(s))
    rest = param_counts(m).total - gb.projected_params
    assert rest == pytest.approx(1.051e9, rel=0.01)
    assert gb.projectors / 2 == pytest.approx(0.092e9, rel=0.02)  # bf16 projector elements
    assert (gb.states - 2 * 2 * rest) / (2 * 2) == pytest.approx(0.243e9, rel=0.02)  # bf16 m and v


@pytest.mark.parametrize("layerwise", [False, True])
def test_galore_memory_grows_with_rank_and_stays_below_adamw(layerwise):
    base = dict(method="full", recipe="bf16", checkpointing="full", grad_accum=1)
    peaks = [est("qwen2.5-7b", "4090", galore_rank=r, galore_layerwise=layerwise, **base).memory.peak_bytes
             for r in (16, 128, 512, 1024)]
    assert peaks == sorted(peaks)
    assert peaks[-1] < est("qwen2.5-7b", "4090", **base).memory.peak_bytes


def test_galore_pays_for_its_svd_every_interval():
    base = dict(method="full", recipe="bf16", galore_rank=128, checkpointing="full")
    t = [est("qwen2.5-7b", "L20", galore_update_interval=k, **base).speed.breakdown_s["optimizer"] for k in (50, 200, 1000)]
    assert t[0] > t[1] > t[2]


@pytest.mark.parametrize("kw, needle", [
    (dict(zero=0, fsdp="full-shard"), "shards it"),
    (dict(galore_layerwise=True, grad_accum=4), "cannot accumulate"),
    (dict(optimizer="sgd"), "GaLore wraps AdamW"),
    (dict(method="lora"), "applies to --method full"),
])
def test_galore_refusals(kw, needle):
    one_line_refusal("qwen2.5-7b", "2xA800" if "fsdp" in kw else "A800", needle,
                     **{"method": "full", "recipe": "bf16", "galore_rank": 128, **kw})


def test_layerwise_galore_is_one_gpu_only():
    one_line_refusal("qwen2.5-7b", "2xA800", "one GPU only", method="full", recipe="bf16", galore_rank=128,
                     galore_layerwise=True)


# ---- BAdam (M1c, M2c, A11, S4b) ----------------------------------------------------------------------------

def test_badam_keeps_one_block_in_fp32_and_the_rest_in_bf16():
    """BAdam README Table 1: 2M + 16M/D (bf16 model, fp32 master + grad + Adam for one of D blocks)."""
    m = get_model("llama3-8b")
    e = est("llama3-8b", "3090", method="full", recipe="bf16", badam=True, checkpointing="full").memory
    block = param_counts(m).total - param_counts(m).embedding - param_counts(m).lm_head - m.hidden_size
    block //= m.num_layers
    c = e.categories
    assert c["weights_trainable"] + c["weights_frozen"] == pytest.approx(2 * param_counts(m).total, rel=1e-3)
    assert c["optimizer_states"] == pytest.approx(8 * block, rel=0.01)
    assert c["master_weights"] == pytest.approx(4 * block, rel=0.01)


def test_badam_measured_memory_on_a_3090_is_within_the_model():
    """BAdam README Table 1 (Ledzy/BAdam bf989dcb): Llama 3-8B 23.5 GB on one RTX 3090 (batch and length not
    stated: the engine's smallest plan must be below it, mb 1 with checkpointing at 1024 tokens)."""
    e = est("llama3-8b", "3090", method="full", recipe="bf16", badam=True, checkpointing="full", seq_len=1024)
    assert e.memory.peak_bytes < 23.5e9 + 1.0 * GIB


def test_badam_backward_is_about_half_of_full():
    """Eq. S4b: the active block cycles through all L blocks; blocks above it pass input gradients only."""
    m = get_model("qwen2.5-7b")
    full = Setup(method="full", recipe="bf16")
    badam = Setup(method="full", recipe="bf16", badam=True)
    f_full = flops_per_token(model_facts(m, full), full)
    f_badam = flops_per_token(model_facts(m, badam), badam)
    blocks = ("attention", "mlp")
    r = sum(f_badam.backward[p] for p in blocks) / sum(f_full.backward[p] for p in blocks)
    L = m.num_layers
    assert r == pytest.approx(((L + 1) / 2 / L + 1 / L) / 2, rel=1e-9)
    assert f_badam.forward == f_full.forward


def test_badam_refusals():
    one_line_refusal("qwen2.5-7b", "2xA800", "needs DeepSpeed ZeRO-3", method="full", recipe="bf16", badam=True)
    one_line_refusal("qwen2.5-7b", "A800", "use --recipe bf16", method="full", recipe="hf-amp", badam=True)
    one_line_refusal("qwen2.5-7b", "A800", "choose one of GaLore, BAdam and LISA", method="full", recipe="bf16",
                     badam=True, galore_rank=16)


# ---- LISA -----------------------------------------------------------------------------------------------------

def test_lisa_memory_grows_with_its_layers_and_stays_between_badam_and_full():
    base = dict(method="full", recipe="bf16", checkpointing="full")
    peaks = [est("llama3.1-8b", "H100", lisa_layers=n, **base).memory.peak_bytes for n in (1, 2, 8, 32)]
    assert peaks == sorted(peaks)
    assert est("llama3.1-8b", "H100", badam=True, **base).memory.peak_bytes < peaks[0]
    assert peaks[-1] <= est("llama3.1-8b", "H100", **base).memory.peak_bytes


# ---- FP8 (F8, S28) -----------------------------------------------------------------------------------------

def test_fp8_is_refused_without_fp8_units():
    msg = one_line_refusal("llama3-8b", "8xA800", "needs FP8 tensor cores", method="full", fsdp="full-shard",
                           recipe="bf16", fp8="tensorwise")
    assert "A800" in msg
    msg = one_line_refusal("llama3-8b", "8xA800", "TransformerEngine", method="full", fsdp="full-shard", recipe="bf16",
                           fp8="te")
    assert "MI300X" in msg  # the message names what would be valid


def test_te_fp8_runs_on_mi300x_through_rocm_transformer_engine():
    """ROCm/TransformerEngine (issue #79: SemiAnalysis' Llama 3.1 8B FSDP TE FP8 runs on 8xMI300X) is accepted, and
    its GEMMs are priced below the bf16 ones where they are large."""
    te = est("llama3.1-8b", "8xMI300X", method="full", recipe="hf-amp", fsdp="full-shard", fp8="te", micro_batch=2,
             seq_len=4096)
    bf16 = est("llama3.1-8b", "8xMI300X", method="full", recipe="hf-amp", fsdp="full-shard", micro_batch=2,
               seq_len=4096)
    assert te.speed.breakdown_s["gemm"] < bf16.speed.breakdown_s["gemm"]


def test_cdna3_fp8_factor_scales_only_mi300x_fp8_gemms():
    """Eq. S28b: SpeedParams.fp8_arch_ratio["cdna3"] moves MI300X's FP8 GEMM time in inverse proportion and leaves
    its bf16 GEMMs and an H100's FP8 GEMMs as they were."""
    from planner.engine.speed.params import PRIORS
    from planner.engine.speed.step import estimate_speed

    half = PRIORS.model_copy(update={"fp8_arch_ratio": {"cdna3": 0.5}})
    kw = dict(method="full", recipe="hf-amp", fsdp="full-shard", micro_batch=1, seq_len=8192)
    model = get_model("llama3-8b")

    def gemm_s(gpus: str, params, **extra) -> float:
        setup = Setup(**kw, **extra)
        return estimate_speed(model_facts(model, setup), parse_cluster(gpus), setup, None, params,
                              explain=False).breakdown_s["gemm"]

    quarter = PRIORS.model_copy(update={"fp8_arch_ratio": {"cdna3": 0.25}})
    # GEMM time = bf16 LM head + FP8 blocks / factor: halving the factor again adds twice what halving it once did
    g1, g2, g4 = (gemm_s("8xMI300X", p, fp8="tensorwise") for p in (PRIORS, half, quarter))
    assert g2 > g1 and g4 - g2 == pytest.approx(2 * (g2 - g1), rel=1e-9)
    assert gemm_s("8xMI300X", half) == pytest.approx(gemm_s("8xMI300X", PRIORS))  # bf16 GEMMs do not move
    assert gemm_s("8xH100", half, fp8="tensorwise") == pytest.approx(gemm_s("8xH100", PRIORS, fp8="tensorwise"))
    # the estimate says which factors priced its FP8 GEMMs (every number explained)
    setup = Setup(**kw, fp8="tensorwise")
    lines = estimate_speed(model_facts(model, setup), parse_cluster("8xMI300X"), setup, None, half).assumptions
    assert any("x 0.95 (the recipe, S28) x 0.5 (cdna3, S28b)" in line for line in lines), lines
    lines = estimate_speed(model_facts(model, setup), parse_cluster("8xH100"), setup, None, half).assumptions
    assert any("(the recipe, S28);" in line and "S28b" not in line for line in lines), lines


def test_torchao_fp8_keeps_activations_and_speeds_up_large_gemms():
    """torchao float8_linear.py saves the bf16 input and weight: activations unchanged (its README: 47.65 GB bf16
    vs 47.77 GB tensorwise, Llama3-8B 8xH100)."""
    base = dict(method="full", recipe="hf-amp", fsdp="full-shard", checkpointing="selective", compile=True,
                seq_len=8192, framework="torchtitan")
    bf16 = est("llama3-8b", "8xH100", **base)
    f8 = est("llama3-8b", "8xH100", fp8="tensorwise", **base)
    assert f8.memory.categories["activations"] == bf16.memory.categories["activations"]
    # float8 all-gather: under full-shard the largest group gathered is the LM head, which torchao does not convert;
    # with every block gathered at once (shard-grad-op) the 1-byte weights show
    assert f8.memory.categories["comm_buffers"] <= bf16.memory.categories["comm_buffers"]
    sgo = {**base, "fsdp": "shard-grad-op"}
    assert (est("llama3-8b", "8xH100", fp8="tensorwise", **sgo).memory.categories["comm_buffers"]
            < est("llama3-8b", "8xH100", **sgo).memory.categories["comm_buffers"])
    assert f8.speed.tokens_per_s > 1.05 * bf16.speed.tokens_per_s
    row = est("llama3-8b", "8xH100", fp8="rowwise", **base)
    assert bf16.speed.tokens_per_s < row.speed.tokens_per_s < f8.speed.tokens_per_s  # torchao README order


def test_transformer_engine_saves_linear_inputs_in_fp8():
    base = dict(method="full", recipe="bf16", checkpointing="none", micro_batch=2, seq_len=2048)
    te = est("llama3-8b", "H100", fp8="te", **base).memory.categories["activations"]
    bf16 = est("llama3-8b", "H100", **base).memory.categories["activations"]
    assert te < bf16


# ---- tensor and context parallelism (T1-T4, S29, S30) --------------------------------------------------------

def _tp(tp: int, **kw):
    return est("llama3.1-70b", "2x8xH100", method="full", recipe="bf16", fsdp="full-shard", checkpointing="full",
               tp=tp, micro_batch=1, grad_accum=1, compile=True, **kw)


def test_tp_divides_activations_not_model_states_and_costs_collectives():
    plans = {t: _tp(t) for t in (1, 2, 4, 8)}
    acts = [plans[t].memory.categories["activations"] for t in (1, 2, 4, 8)]
    assert acts == sorted(acts, reverse=True) and acts[-1] < acts[0] / 4
    states = {plans[t].memory.categories["optimizer_states"] for t in plans}
    assert max(states) - min(states) < 0.01 * max(states)  # TP x FSDP shards the states over all 16 GPUs either way
    comm = [plans[t].speed.breakdown_s["communication"] for t in (2, 8)]
    assert comm[1] > 0
    # data-parallel ranks = world / tp: tokens per step shrink with tp at a fixed micro-batch
    assert plans[8].speed.tokens_per_step == plans[1].speed.tokens_per_step // 8


def test_async_tp_hides_part_of_the_tp_collectives():
    assert _tp(8, async_tp=True).speed.step_s < _tp(8).speed.step_s


def test_cp_divides_activations():
    base = dict(method="full", recipe="bf16", fsdp="full-shard", checkpointing="full", micro_batch=1, grad_accum=1,
                seq_len=65536, allow_long_seq=False)
    a = [est("llama3.1-8b", "8xH100", cp=c, **base).memory.categories["activations"] for c in (1, 2, 4, 8)]
    assert a == sorted(a, reverse=True) and a[-1] < a[0] / 4


@pytest.mark.parametrize("kw, needle", [
    (dict(tp=3), "does not divide"),
    (dict(tp=16), "within a node"),
    (dict(tp=2, fsdp=None), "add --fsdp full-shard"),
    (dict(tp=2, seq_len=2050), "multiple of 2 x tp x cp"),
    (dict(cp=2, attention="eager"), "needs SDPA"),
    (dict(tp=2, async_tp=True), "needs --tp > 1 and --compile"),
    (dict(tp=2, method="lora"), "full fine-tuning"),
])
def test_tp_cp_refusals(kw, needle):
    fields = {"method": "full", "recipe": "bf16", "fsdp": "full-shard", **kw}
    one_line_refusal("llama3.1-70b", "2x8xH100", needle, **fields)


# ---- the search (issue 12's "done when") -------------------------------------------------------------------

def _search(model: str, gpus: str, **fixed):
    return search(get_model(model), parse_cluster(gpus), SearchRequest(fixed={"seq_len": 2048, **fixed}, top=5))


def test_l20_qwen7b_full_recommends_an_in_memory_plan():
    """Issue 12: the default answer was ZeRO-2 with CPU optimizer offload (763 tokens/s, 174 GiB of host RAM)."""
    r = _search("qwen2.5-7b", "L20", method="full")
    top = r.plans[0]
    assert top.setup.offload == "none" and tier(top, paged_overflow_bytes(top.memory, top.usable_bytes)) == 0
    assert top.setup.method == "full" and top.setup.subspace_optimizer == "none"
    assert top.memory.host_bytes < 32 * GIB
    if top.setup.steps_in_backward:
        assert any("global batch = micro-batch x GPUs" in x for x in top.reasons)


def test_chapter_48gb_recipe_is_found_and_written_for_torchtune():
    """The chapter's torchtune 7B_full_low_memory recipe (paged 32-bit AdamW, optimizer in backward, checkpointing
    with activation offload, chunked loss) on a 48 GB card."""
    from planner.emit import Target, build_files
    import yaml

    r = _search("llama-2-7b", "L20", method="full", optimizer="paged-adamw", optimizer_in_backward=True,
                activation_offload=True, loss="chunked", grad_accum=1)
    p = r.plans[0]
    s = p.setup
    assert (s.optimizer, s.optimizer_in_backward, s.activation_offload, s.loss, s.checkpointing) == (
        "paged-adamw", True, True, "chunked", "full")
    assert any("cross PCIe" in x for x in p.reasons)  # 50 GiB of fp32 states on a 48 GB card page every step
    files = build_files(Target(p, get_model("llama-2-7b"), parse_cluster("L20")), ["torchtune"]).files
    cfg = yaml.safe_load(files["torchtune.yaml"])
    assert cfg["optimizer"]["_component_"] == "bitsandbytes.optim.PagedAdamW"
    assert cfg["optimizer_in_bwd"] is True and cfg["gradient_accumulation_steps"] == 1 and cfg["clip_grad_norm"] is None
    assert cfg["enable_activation_checkpointing"] and cfg["enable_activation_offloading"]
    assert cfg["loss"]["_component_"] == "torchtune.modules.loss.CEWithChunkedOutputLoss"
    assert cfg["model"]["_component_"] == "torchtune.models.llama2.llama2_7b"


def test_24gb_7b_full_finetune_finds_galore_or_badam_and_writes_llamafactory():
    from planner.emit import Target, build_files
    import yaml

    r = _search("qwen2.5-7b", "4090", method="full")
    subspace = [p for p in r.plans if p.setup.subspace_optimizer in ("galore", "badam")]
    assert {p.setup.subspace_optimizer for p in subspace} == {"galore", "badam"}
    for p in subspace:
        assert p.memory.peak_bytes <= p.usable_bytes and p.setup.offload == "none"
        files = build_files(Target(p, get_model("qwen2.5-7b"), parse_cluster("4090")), ["llamafactory"]).files
        cfg = yaml.safe_load(files["llamafactory.yaml"])
        key = "use_galore" if p.setup.galore_rank else "use_badam"
        assert cfg[key] is True
        if p.setup.galore_rank:
            assert cfg["galore_rank"] == p.setup.galore_rank and cfg["optim"] in ("adamw_torch", "adamw_bnb_8bit")


@pytest.mark.parametrize("fixed", [dict(fp8="tensorwise"), dict(tp=8), dict(tp=2)])
def test_70b_on_8xh100_fp8_and_tp_plans_appear_with_memory_and_speed(fixed):
    r = _search("llama3.1-70b", "8xH100", method="full", **fixed)
    assert r.plans
    p = r.plans[0]
    for k, v in fixed.items():
        assert getattr(p.setup, k) == v
    assert p.setup.fsdp == "full-shard" and p.memory.peak_bytes <= p.usable_bytes and p.speed.tokens_per_s > 0


def test_70b_on_one_node_fits_only_at_six_bytes_per_parameter_or_with_offload():
    """The research notes (sec. 6.5) say a one-node 70B full fine-tune needs offload or two nodes: true for fp32
    master weights (16 B/param) and pure bf16 AdamW with a gradient buffer (8 B/param), not for pure bf16 with the
    optimizer stepped in backward or 8-bit states (6 B/param: 49 GiB of model state per GPU). fp32 master weights
    with FSDP2's CPU offload fit the GPUs but need 16 B/param x 1.5 of host RAM: 1.7 TB, more than a 1 TiB node."""
    base = dict(method="full", fsdp="full-shard", checkpointing="full", micro_batch=1, grad_accum=1)
    assert not est("llama3.1-70b", "8xH100", recipe="hf-amp", **base).fits_gpu
    assert not est("llama3.1-70b", "8xH100", recipe="bf16", **base).fits_gpu
    assert est("llama3.1-70b", "8xH100", recipe="bf16", optimizer_in_backward=True, **base).fits
    assert est("llama3.1-70b", "8xH100", recipe="bf16", optimizer="adamw-8bit", **base).fits
    off = est("llama3.1-70b", "8xH100", recipe="hf-amp", offload="optimizer+params", **base)
    assert off.fits_gpu and not off.fits_host and off.memory.host_bytes > 1.5e12


def test_offload_on_top_says_why_no_in_memory_plan_exists():
    r = _search("llama3.1-70b", "8xA800", method="full", recipe="bf16", optimizer="adamw", tp=1, cp=1,
                optimizer_in_backward=False, fp8="none")
    top = r.plans[0]
    assert top.setup.offload != "none"
    assert any(x.startswith("no in-memory plan fits: the closest") for x in top.reasons)


def test_search_prunes_dominated_families_and_stays_small():
    """plan --model llama3-8b --gpus 8xA800 must stay under 1 s: the widened search prunes instead of multiplying."""
    r = _search("llama3-8b", "8xA800")
    assert r.considered < 1100
    assert any("skipped as dominated" in n for n in r.notes)


def test_every_ranked_plan_can_be_written_by_some_trainer():
    from planner.emit import NotExpressible, Target, build_files, trainers_for

    for model, gpus, fixed in (("qwen2.5-7b", "L20", {"method": "full"}), ("qwen2.5-7b", "4090", {"method": "full"}),
                               ("llama3.1-70b", "8xH100", {"method": "full"}), ("llama3-8b", "8xA800", {})):
        for p in _search(model, gpus, **fixed).plans:
            if p.setup.lisa_layers:
                continue
            t = Target(p, get_model(model), parse_cluster(gpus))
            try:
                build_files(t, trainers_for(t, "all"))
            except NotExpressible as e:  # pragma: no cover - the message is the point
                pytest.fail(f"{p.setup.short()}: {e}")


def test_tp_and_cp_memory_against_torchtitans_published_runs():
    """torchtitan benchmarks/llama3_h100_202412_torchtitan.md (profiles/evidence/torchtitan-benchmark-2024-12.yaml):
    Table 2 (Llama 3.1 8B, FSDP x CP on 8 GPUs, 32k-262k tokens, full AC, compiled blocks with an eager loss, float8)
    and Table 4 (Llama 3.1 70B, FSDP 32 x TP 8 on 256 GPUs, full AC, float8, sync and async TP). The records stay
    unmappable for speed (Meta's 96 GB / 500 W H100 is not in the catalogue); memory does not depend on the part, so
    the engine's peak on the 80 GB SXM profile is compared with the published *reserved* peak.

    What holds: CP keeps 32k local tokens per rank, and the published memory is flat across CP 1-8 (83.9-84.5 GiB);
    the estimate must be flat too. The level, at the shipped FSDP2 fragmentation fraction (eq. R3's ``fsdp2`` class,
    fitted on these and other FSDP2 records; docs/accuracy.md gives each source's held-out error): the estimated
    max_memory_reserved is 0.93-0.94 of the published one for CP, 0.79 / 0.84 for sync / async TP (allocated alone:
    0.82 and 0.67 / 0.71). The TP rows are a miss the report keeps (TP holds memory the engine does not count,
    docs/memory.md); the bounds below are those reported errors, not a match."""
    from profiles.evidence import corpus_records, memory_bytes

    ratios: dict[str, float] = {}
    for r in corpus_records():
        rec = r.record
        if r.source.id != "torchtitan-benchmark-2024-12" or rec.setup.get("checkpointing") != "full":
            continue
        if rec.setup.get("pp", 1) > 1:
            continue
        fields = {k: v for k, v in rec.setup.items() if k in Setup.model_fields}
        plan = evaluate(get_model(rec.model), parse_cluster(rec.gpus.lower().replace("h100-96gb", "h100")),
                        Setup(**fields, framework="torchtitan"))
        assert rec.measured.memory.kind == "reserved"
        ratios[r.id] = plan.memory.reserved_peak_bytes / memory_bytes(rec.measured.memory)
    assert len(ratios) == 6
    cp = [v for k, v in ratios.items() if "-cp" in k]
    assert len(cp) == 4 and max(cp) / min(cp) < 1.02  # flat across CP degrees, as measured
    for k, v in ratios.items():
        lo = 0.75 if "-2d" in k else 0.9  # FSDP x TP: the refuting rows
        assert lo < v < 1.1, (k, v)  # within the error docs/accuracy.md reports
