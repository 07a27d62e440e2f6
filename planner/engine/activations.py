"""Activation memory: the tensors each transformer block saves for backward, derived per architecture.

The generalised model (docs/memory.md, eq. A1-A9) is an *inventory* of saved tensors, following the
autograd rules of the Hugging Face implementations (``modeling_llama.py`` and relatives): a linear layer
saves its input only when its weight trains; an elementwise op saves what its backward needs; RMSNorm
upcasts to fp32; SDPA / FlashAttention save q, k, v, the output and a log-sum-exp per row and head; eager
attention materialises fp32 softmax probabilities and their bf16 copy (6 bytes per score; 8 with Gemma-2's
logit soft-capping); a gated MLP saves gate, activation, up and their product. Bytes are per token and per
layer, multiplied by ``micro_batch x seq_len`` by the caller. Terms that scale with ``seq_len`` per token
(eager scores) are returned separately.

It errs low where kernels keep workspaces we do not see (cuBLAS, FlashAttention), and for MoE routing
(index and permutation buffers are modelled coarsely, eq. A7). The seed formula of Korthikanti et al. is
kept as :func:`korthikanti_layer_bytes` for comparison only.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field

from planner.engine.dtypes import RecipeBytes
from planner.engine.facts import ModelFacts
from planner.engine.lora_targets import LoraTargets
from planner.engine.memo import SetupMemo
from planner.engine.setup import Setup
from profiles.schema import ModelProfile



def korthikanti_layer_bytes(seq_len: int, micro_batch: int, hidden: int, heads: int) -> int:
    """Seed formula, per layer: ``s*b*h*(34 + 5*a*s/h)`` bytes (Korthikanti et al. 2022, arXiv:2205.05198,
    Table 2, "no parallelism" row; docs/memory.md eq. A0).

    Assumes a GPT block: 16-bit activations, a GeLU MLP of width 4h, dropout masks after attention and MLP,
    and materialised attention scores (the ``5as/h`` term). It does not hold for SwiGLU MLPs of other widths,
    GQA, fp32 RMSNorm, FlashAttention / SDPA, or models without dropout: use :func:`layer_activation_bytes`.
    It errs high for FlashAttention (no s^2 term) and low for SwiGLU models with F > 4h.
    """
    s, b, h, a = seq_len, micro_batch, hidden, heads
    return s * b * h * 34 + 5 * a * s * s * b


@dataclass(frozen=True)
class LayerInventory:
    """Saved bytes of one block: ``per_token`` (x tokens) plus ``per_token_per_seq`` (x tokens x seq_len).

    ``items`` names every tensor counted, for the breakdown and the docs; ``transient_per_token`` is the
    largest short-lived working set inside the block (not saved, freed within the block).
    """

    per_token: int
    per_token_per_seq: int
    transient_per_token: int
    items: dict[str, int] = field(default_factory=dict)
    forward_per_token_per_seq: int = 0
    """eager attention's forward working set per score beyond what is saved: the masked bf16 scores and the
    fp32 softmax output coexist with its bf16 copy (traced: 3.05 B/score on Llama-3.1-8B, 2.7 on Qwen2.5-7B
    at s = 8192; we use 3)"""
    backward_per_token_per_seq: int = 0
    """eager attention's backward working set per score: the probabilities' gradient (bf16) and the
    softmax backward's fp32 gradient, for the one block in backward (eq. A9)"""
    per_layer: int = 0
    """saved bytes that do not scale with tokens (an average block): peft's merged expert weights (eq. A7b)"""
    backward_per_layer: int = 0
    """the gradient of the largest merged expert stack while its block runs backward (eq. A7b)"""
    mlp_grad_copies: int = 3
    """MLP-wide gradients the block's backward holds at once (eq. A9): the product's, then the activation's and
    the up output's (3); Liger's fused SwiGLU / GeGLU writes the gate and up gradients into its saved inputs'
    storage, leaving only the product's (1, eq. A10b)"""

    def bytes(self, tokens: int, seq_len: int) -> int:
        return self.per_token * tokens + self.per_token_per_seq * tokens * seq_len + self.per_layer


def effective_attention(model: ModelProfile, setup: Setup) -> str:
    """The attention kernel a real run uses: transformers refuses SDPA for models with attention logit
    soft-capping (Gemma-2) and runs eager attention instead (shared/reference/tracing.md); FlashAttention-2
    supports soft-capping."""
    if model.attn_logit_softcap and setup.attention == "sdpa":
        return "eager"
    if model.derived is not None and not model.derived.supports_sdpa and setup.attention == "sdpa":
        return "eager"  # transformers' class says _supports_sdpa = False (gpt-oss: attention sinks)
    return setup.attention


def sdpa_window_mask(model: ModelProfile, setup: Setup) -> bool:
    """Eq. A4b: whether SDPA runs with an explicit mask because of a sliding window. transformers
    (``masking_utils._ignore_causal_mask_sdpa``) drops the mask, and SDPA runs causal, only while the key length is
    below the window (``kv_length < local_attention_size``); from the window on it builds a boolean
    ``(b, 1, s, s)`` mask, repeats K and V to every query head (``repeat_kv``: expanded copies, no ``enable_gqa``),
    and torch's ``scaled_dot_product_attention`` converts the boolean mask to a float one in the query dtype
    (``convert_boolean_attn_mask``, aten/src/ATen/native/transformers/attention.cpp) in every block, which the
    memory-efficient kernel saves for backward. Traced (transformers 5.24): at s = 4096 with Mistral's 4096 window
    the mask and the copies are there. FlashAttention-2 takes the window as an argument: none of this. Errs high
    where a real run passes a float mask built once (transformers 4.x's 4D float mask, shared by the blocks)."""
    return (effective_attention(model, setup) == "sdpa" and model.sliding_window is not None
            and setup.seq_len >= model.sliding_window)


def _liger_norm_saved(h: int, rb: RecipeBytes) -> dict[str, int]:
    """Eq. A10b: what Liger's fused RMSNorm saves: its input in the residual stream's dtype and one fp32 reciprocal
    RMS per row (``LigerRMSNormFunction.forward``: ``ctx.save_for_backward(X, W, RSTD)``, linkedin/Liger-Kernel
    ``src/liger_kernel/ops/rms_norm.py``); the output is computed in one kernel and not saved. Unsloth's
    ``Fast_RMS_Layernorm`` (eq. A10c; fms-acceleration at 24bdadb, ``kernels/unsloth/rms_layernorm.py``:
    ``ctx.save_for_backward(X, W, r)``, ``r`` fp32 per row) saves the same."""
    return {"norm_input": rb.residual * h, "norm_rsqrt": 4}


FUSED_LORA_MLP = frozenset({"gate_proj", "up_proj", "down_proj"})
"""The projections Unsloth's ``LoRA_MLP`` needs LoRA on, all three, before fms-acceleration's ``llama-mlp`` /
``mistral-mlp`` rule swaps the MLP for it (``trigger_fused_ops``: every submodule must be a LoRA layer)."""


def fused_swiglu(setup: Setup, lora_targets: frozenset[str] | set[str]) -> bool:
    """Eq. A10c: whether the MLP's SwiGLU runs as one fused kernel that saves only the gate and up outputs (no SiLU
    output; one MLP-width gradient at a time in backward, eq. A10b).

    Liger (``--fused-kernels liger``): always, with ``LigerSwiGLUMLP``. Unsloth's kernels as fms-acceleration's FOAK
    plugin installs them (``--fused-kernels unsloth``; foundation-model-stack/fms-acceleration at 24bdadb,
    ``plugins/fused-ops-and-kernels/src/fms_acceleration_foak/framework_plugin_fast_kernels.py`` and
    ``models/llama.py``): only inside the fused LoRA MLP (``fused_ops/unsloth_lora/bnb/fast_lora.py``
    ``LoRA_MLP``, which saves ``X``, ``e`` and ``g`` and recomputes ``silu(e) * g`` in backward), and the plugin
    installs fused LoRA only on a quantised base (``omitted.add("fused_lora")`` when the model has no
    ``quantization_method``) and only when gate, up and down all carry LoRA. Elsewhere the MLP is transformers'
    eager one. Measured: the plugin's FOAK rows save what the loss and norms explain and no SwiGLU share
    (docs/memory.md eq. A10c). Unsloth's own trainer also fuses the MLP of 16-bit LoRA, which this does not
    model (errs high there)."""
    if setup.fused_library == "liger":
        return True
    return setup.fused_library == "unsloth" and setup.method == "qlora" and FUSED_LORA_MLP <= set(lora_targets)


def _norm_saved(h: int, rb: RecipeBytes, weight_trains: bool, fp32_output: bool = False) -> dict[str, int]:
    """RMSNorm in fp32 (eq. A2): ``x.float()`` (4h, saved by pow and mul), ``rsqrt`` (4 B per token), and
    ``y.to(dtype)`` (residual-dtype h) saved by ``weight * y`` only when the weight trains. Gemma's RMSNorm
    multiplies in fp32 (``output * (1.0 + weight.float())``), so it saves the normalised tensor as fp32."""
    out = {"norm_input_fp32": 4 * h, "norm_rsqrt": 4}
    if weight_trains:
        out["norm_normalised"] = (4 if fp32_output else rb.residual) * h
    return out


def layer_inventory(facts: ModelFacts, setup: Setup, rb: RecipeBytes, trains_layer: bool) -> LayerInventory:
    """Saved tensors of one (average) block under ``setup`` (memoised on the fields that decide it)."""
    return _LAYER_MEMO(facts, setup, rb, trains_layer)


_LAYER_KEY = {"micro_batch": 1, "grad_accum": 1, "zero": 0, "fsdp": None, "fsdp_version": 2, "offload": "none", "optimizer": "adamw",
              "checkpointing": "none", "checkpoint_every": 1, "loss": "plain",
              "padding_efficiency": 1.0, "activation_offload": False, "packing": True,
              "optimizer_in_backward": False}
"""the fields that do not change one block's saved tensors, and the values :func:`layer_inventory` resets them to"""


@functools.lru_cache(maxsize=4096)
def _layer_inventory(facts: ModelFacts, setup: Setup, rb: RecipeBytes, trains_layer: bool) -> LayerInventory:
    """Saved tensors of one (average) block under ``setup``.

    ``trains_layer``: the block's own weights train (full fine-tuning, or a trainable block of the freeze
    method). LoRA / QLoRA blocks do not train their base weights but save adapter inputs (eq. A5).
    """
    model = facts.model
    h, c = model.hidden_size, rb.compute
    lora = setup.trains_adapters
    lt = facts.lora
    targets, experts_lora = set(lt.modules), lt.experts
    swiglu_fused = fused_swiglu(setup, targets)
    items: dict[str, int] = {}
    per_seq = 0
    mask_seq = 0

    def add(name: str, nbytes: int) -> None:
        items[name] = items.get(name, 0) + nbytes

    # ---- the two (or four) norms, eq. A2
    n_norms = max(model.norms_per_layer, 2)
    for i in range(n_norms):
        norm = (_liger_norm_saved(h, rb) if setup.fused_kernels
                else _norm_saved(h, rb, trains_layer, model.model_type.startswith("gemma")))
        for k, v in norm.items():
            add(k, v)

    def linear_input(name: str, in_features: int, shared_key: str) -> None:
        """Eq. A3 / A5: what a linear layer saves for its own backward."""
        if trains_layer:
            if rb.autocast and rb.residual == 4 and shared_key.endswith(("attn_in", "mlp_in")):
                # a norm's fp32 output: autocast casts it to bf16 separately for every consumer (q, k, v; gate, up)
                add(f"input:{shared_key}:{name}", c * in_features)
            else:
                items.setdefault(f"input:{shared_key}", c * in_features)
        if lora and name in targets and not shared_key.startswith("expert_"):
            if (rb.adapter != c and not rb.gathered) or rb.autocast:
                # peft casts the input to the adapter dtype; autocast casts it back: a private copy per adapter
                add(f"lora_input:{name}", c * in_features)
            else:  # same dtype (pure bf16, DeepSpeed) or adapters gathered in the compute dtype (FSDP, eq. M1b)
                items.setdefault(f"input:{shared_key}", c * in_features)
            if setup.lora_dropout > 0:  # output (in the adapter's compute dtype) + bool mask
                add(f"lora_dropout:{name}", (c if rb.gathered else rb.adapter) * in_features + in_features)
            add(f"lora_a_out:{name}", (c if (rb.autocast or rb.gathered) else rb.adapter) * setup.lora_rank)
            if setup.dora:
                add(f"dora:{name}", 2 * c * facts.out_features(name))

    # ---- attention, eq. A3-A4
    if model.mla is None:
        for nm in ("q_proj", "k_proj", "v_proj") if not model.fused_qkv else ("qkv_proj",):
            linear_input(nm, h, "attn_in")
        qw, kvw = model.q_width, model.kv_width
        if model.qk_norm:  # Qwen3: per-head RMSNorm on q and k, in fp32, before RoPE; the normalised output
            # goes back to the projections' dtype (the compute dtype), not the residual stream's
            add("qk_norm", 4 * (qw + kvw) + c * (qw + kvw) * int(trains_layer) + 4 * 2 * model.num_heads)
        if effective_attention(model, setup) == "eager":
            rep = model.num_heads // model.num_kv_heads
            add("q_rot", c * qw)
            add("k_expanded", c * kvw * (rep if rep > 1 else 1))
            add("v_expanded", c * kvw * (rep if rep > 1 else 1))
            score_bytes = 8 if model.attn_logit_softcap else 6  # fp32 softmax out + its bf16 copy (+ tanh out)
            per_seq += score_bytes * model.num_heads
            # the matmul output is not saved; o_proj saves its contiguous copy (below)
            linear_input("o_proj", qw, "o_in")
        else:
            windowed = sdpa_window_mask(model, setup)
            kv_saved = qw if windowed else kvw
            if windowed:  # eq. A4b: the float mask SDPA makes of the bool mask, one per block, saved by the kernel
                mask_seq = c
                per_seq += mask_seq
            add("q_rot", c * qw)
            add("k_rot", c * kv_saved)
            add("v", c * kv_saved)
            if setup.framework == "litgpt" and model.num_kv_heads == model.num_heads:
                add("litgpt_qkv", c * (qw + kvw))  # eq. A4c: v is a view of the fused qkv output
            add("attn_out", c * qw)  # saved by SDPA's backward; o_proj's input is a view of it
            add("softmax_lse", 4 * model.num_heads)
            linear_input("o_proj", qw, "o_in")
            items.pop("input:o_in", None)
    else:
        a = model.mla
        nr = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank is None:
            linear_input("q_proj", h, "attn_in")
        else:
            linear_input("q_a_proj", h, "attn_in")
            add("q_a_norm", 4 * a.q_lora_rank + c * a.q_lora_rank)
            linear_input("q_b_proj", a.q_lora_rank, "q_b_in")
        linear_input("kv_a_proj_with_mqa", h, "attn_in")
        add("kv_a_norm", 4 * a.kv_lora_rank + c * a.kv_lora_rank)
        linear_input("kv_b_proj", a.kv_lora_rank, "kv_b_in")
        add("q_rot", c * model.num_heads * nr)
        add("k_full", c * model.num_heads * nr)
        add("v", c * model.num_heads * nr)  # HF pads v to the qk head dim for SDPA / flash
        add("attn_out", c * model.num_heads * nr)
        add("softmax_lse", 4 * model.num_heads)
        if setup.attention == "eager":
            per_seq += 6 * model.num_heads
        linear_input("o_proj", model.num_heads * a.v_head_dim, "o_in")

    # ---- MLP, eq. A6 (dense) / A7 (MoE)
    def mlp(width: int, prefix: str, copies: float) -> None:
        names = ("gate_proj", "up_proj") if not model.fused_gate_up else ("gate_up_proj",)
        if not model.gated:
            names = ("up_proj",)
        for nm in names:
            linear_input(nm, h, prefix + "mlp_in")
        if model.gated:
            add(prefix + "gate_out", int(c * width * copies))
            if not swiglu_fused:  # a fused SwiGLU / GeGLU saves the gate and up outputs only (A10b, A10c)
                add(prefix + "act_out", int(c * width * copies))
            add(prefix + "up_out", int(c * width * copies))
        else:
            add(prefix + "up_out", int(c * width * copies))
        linear_input("down_proj", width, prefix + "down_in")
        if (trains_layer or (lora and "down_proj" in targets)) and copies != 1:
            # the shared-key bookkeeping above stored one copy; scale to the routed copies
            key = f"input:{prefix}down_in"
            if key in items:
                items[key] = int(items[key] * copies)

    transient = 0
    per_layer = backward_per_layer = 0
    if model.moe is None:
        mlp(model.intermediate_size, "", 1)
        transient = c * model.intermediate_size
    else:
        e = model.moe
        moe_frac = (model.num_layers - e.dense_layers) / model.num_layers
        dense_frac = 1 - moe_frac
        if dense_frac:
            before = dict(items)
            mlp(model.intermediate_size, "dense_", 1)
            for k in items:
                if k not in before:
                    items[k] = int(items[k] * dense_frac)
        before = dict(items)
        k = e.experts_per_token
        f = e.expert_intermediate_size
        add("router_softmax", 4 * e.num_experts)  # fp32 routing probabilities (saved)
        add("routing_indices", 4 * 8 * k)  # int64 index tensors of the token -> expert dispatch
        ce = expert_compute_bytes(rb, trains_layer)
        if trains_layer:
            add("router_input", c * h)  # the trained router linear's (bf16) input
            add("router_logits", c * e.num_experts)
        if trains_layer or experts_lora:
            # expert weights that need a gradient (trained, or peft's merged W + BA): the grouped matmuls save
            # their inputs too: routed tokens, the fused gate/up output, the activation and the product
            add("routed_inputs", ce * h * k)
            add("expert_gate_up_out", 2 * ce * f * k)
            add("expert_act_out", ce * f * k)
            add("expert_down_in", ce * f * k)
        else:
            # frozen experts: gate_up output (gate for the activation, up for the product) and the activation
            # output; the inputs and the product are not saved
            add("expert_gate_up_out", 2 * ce * f * k)
            add("expert_act_out", ce * f * k)
        add("routed_outputs", ce * h * k)  # expert outputs, kept by the routing-weight multiply
        if e.shared_experts:
            mlp(e.shared_expert_intermediate_size, "shared_", 1)
        for k in items:
            if k not in before:
                items[k] = int(items[k] * moe_frac)
        transient = c * max(model.intermediate_size * dense_frac, routed_working_width(model, setup))
        if experts_lora:
            merged, merged_grad = expert_lora_merged_bytes(model, lt, c)
            per_layer, backward_per_layer = int(merged * moe_frac), merged_grad
    if setup.compile:
        for name in compiled_recomputed_items(items, rb):
            items.pop(name)
    per_token = sum(items.values())
    # eager backward: the probabilities' bf16 gradient and the softmax backward's fp32 gradient while the bf16
    # probabilities are released: 5 bytes per score beyond the saved ones (traced, docs/accuracy.md)
    eager_scores = per_seq - mask_seq  # the eager score terms; SDPA's window mask (eq. A4b) has no transients
    bwd_seq = 5 * model.num_heads if eager_scores else 0
    fwd_seq = 3 * model.num_heads if eager_scores else 0
    fused_mlp = swiglu_fused and model.gated and model.moe is None
    return LayerInventory(
        per_token, per_seq, transient, items, forward_per_token_per_seq=fwd_seq, backward_per_token_per_seq=bwd_seq,
        per_layer=per_layer, backward_per_layer=backward_per_layer, mlp_grad_copies=1 if fused_mlp else 3,
    )


_LAYER_MEMO = SetupMemo(_layer_inventory, _LAYER_KEY)


COMPILE_RECOMPUTED_ACTIVATIONS = ("act_out", "dense_act_out", "shared_act_out", "expert_act_out")
"""SiLU outputs: the partitioner recomputes ``silu(gate)`` from the saved gate output in backward (eq. A10)."""


def compiled_recomputed_items(items: dict[str, int], rb: RecipeBytes) -> list[str]:
    """Saved tensors that ``torch.compile`` (inductor) does not keep for backward (eq. A10): the SiLU outputs.

    Inductor partitions the joint graph with ``min_cut_rematerialization_partition``, which recomputes cheap
    elementwise ops in backward instead of saving their outputs. Measured on a transformers Llama block with
    torch 2.13 (``torch.compile(backend="inductor")`` on the CPU, and the same partitioner through
    ``aot_eager_decomp_partition``; saved tensors counted with ``saved_tensors_hooks``): the SiLU output
    (``c*F`` per token) is recomputed from the gate output, and so are the fp32 copies of the RMSNorm inputs
    (``4h`` per norm; 16-bit residual) or the fp32 normalised outputs (``4h`` per norm; fp32 residual under AMP):
    44,592 -> 30,768 B/token at h 1024, F 2816. Only the SiLU part is applied: torchtune's published ladder
    (Llama 3.2 3B, A100, torch of Nov 2024) shows a compile saving that the SiLU and the fused loss (eq. L4)
    explain, and not the norm copies. So this errs high by ``4h`` per norm per token wherever the running torch
    recomputes the norm copies too (torch 2.13 does), and by duplicate autocast casts under AMP. Eager attention
    scores and MoE routing are left as they are (not measured)."""
    del rb  # the norm copies depend on it; kept in the signature for when they are applied
    return [k for k in items if k in COMPILE_RECOMPUTED_ACTIVATIONS]


def routed_working_width(model: ModelProfile, setup: Setup) -> float:
    """Eq. A7c: the expert-MLP width per token of a MoE block's working set (the gate / up outputs in forward, the
    MLP gradients in backward, eq. A9). transformers 5 runs the routed experts at once (``grouped_mm``: every routed
    token's ``f``-wide intermediates together, ``f·k`` per token). transformers 4 looped over the experts in Python
    (``MixtralSparseMoeBlock.forward`` in the 4.48.1 and 4.57.6 wheels: ``for expert_idx in ...``,
    ``index_add_``), so its forward and backward hold one expert's tokens at a time, ``T·k/E`` on average:
    ``f·k/E`` per token (``setup.moe_expert_loop``). The saved tensors are the same either way (A7). Errs low by the
    busiest expert's excess over the mean share. Measured: fms-acceleration's Mixtral-8x7B QLoRA on A100s
    (transformers 4.48.1): with the grouped working set its eight rows erred +4.6 to +15.7 % (the FOAK run on one GPU
    at 32,768 tokens 6.5 GiB high), with the loop's -0.9 to +4.5 % (docs/memory.md A7c)."""
    e = model.moe
    assert e is not None
    width = e.expert_intermediate_size * e.experts_per_token
    return width / e.num_experts if setup.moe_expert_loop else width


def expert_compute_bytes(rb: RecipeBytes, trains_layer: bool) -> int:
    """Bytes per element of the routed experts' activations (eq. A7a). transformers 5.24 runs the experts with
    ``torch.nn.functional.grouped_mm(input.to(weight.dtype), weight)`` (``integrations/moe.py``), and grouped_mm is
    not autocast-enabled, so the experts compute in the dtype their weights are stored in: fp32 when they train
    under AMP (hf-amp full or freeze), the compute dtype otherwise. torch 2.13's CUDA ``_grouped_mm`` accepts
    fp32 (``_grouped_mm_validate_inputs``) and runs non-bf16 inputs through its per-group ``mm`` fallback
    (``GroupedBlas.cpp``), so a GPU run keeps these fp32 tensors as the trace does."""
    if trains_layer and rb.autocast:
        return rb.trainable_weight
    return rb.compute


def expert_lora_merged_bytes(model: ModelProfile, targets: LoraTargets, compute: int) -> tuple[int, int]:
    """peft 0.21.2's LoRA on routed experts (eq. A7b): ``ParamWrapper`` registers a parametrization that folds
    ``W + scaling * B A`` into one full-size expert stack per forward (``_LoraFactorsProxy``: ``torch.baddbmm``
    in the weight's dtype, cached for the module's forward by ``parametrize.cached()``), and the grouped matmul
    saves that merged stack for its backward. Returns (saved bytes per MoE block, the extra its backward holds:
    the down stack's gradient while both stacks are saved, then the gate/up stack's gradient once the down stack
    is freed). Traced on DeepSeek-V2-Lite (64 experts, h 2048, F 1408, bf16): 704 + 352 MiB saved per MoE block,
    352 MiB more at its backward peak."""
    e = model.moe
    if e is None:
        return 0, 0
    h, f = model.hidden_size, e.expert_intermediate_size
    gate_up = compute * e.num_experts * 2 * f * h if targets.expert_gate_up else 0
    down = compute * e.num_experts * f * h if targets.expert_down else 0
    return gate_up + down, max(down, gate_up - down)


def checkpointed_layer_bytes_per_token(rb: RecipeBytes, hidden: int) -> int:
    """Eq. A8: a fully checkpointed block keeps only its input (residual dtype x h per token)."""
    return rb.residual * hidden


@dataclass(frozen=True)
class ActivationBytes:
    """Activation bytes at the end of forward and the extra working set in backward (eq. A1, A8, A9)."""

    saved: int
    forward_transient: int
    backward_transient: int
    inventory: LayerInventory
    trainable_layers: int
    checkpointed_layers: int
