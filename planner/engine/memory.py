"""The memory engine: every byte of one fine-tuning step, per GPU rank and per host (docs/memory.md).

Pure functions, no I/O, no torch. :func:`estimate_memory` assembles a :class:`MemoryEstimate` from one
function per term:

* :mod:`planner.engine.facts` - which parameters train (full, freeze, LoRA / DoRA / QLoRA adapters), eq. M2,
  computed once per model and setup and passed to every function below as ``facts``
* :func:`planner.engine.bnb.quantized_frozen_bytes` - NF4 storage with block constants and double quantisation, eq. M3
* :func:`optimizer_state_bytes_per_param` / :func:`adafactor_state_elements` - eq. M4
* :func:`model_states` - weights, gradients, master copy and optimizer states under DDP / ZeRO-1/2/3 /
  FSDP and CPU offload, following DeepSpeed's own accounting, eq. M5
* :func:`zero_paper_model_state_bytes` - the ZeRO paper's 16-byte rule, kept for comparison, eq. M6
* :mod:`planner.engine.activations` - saved tensors per block, eq. A1-A9
* :func:`logits_loss_bytes` - logits, fp32 upcast, log-softmax, gradient; chunked and fused losses, eq. L1-L3, L5
* :func:`comm_buffer_bytes` - DDP buckets, ZeRO buckets, ZeRO-3 / FSDP gathered parameters, eq. C1-C4
* :func:`framework_overhead_bytes` / allocator margin - eq. F1-F2 (replaced by calibration data)
* :func:`host_bytes` - host RAM per node, eq. H1

The phases are the start of a steady-state step (``after_load``: optimizer states exist), the end of the
forward, the peak inside backward and the optimizer step; each phase's categories add up to its total.
"""

from __future__ import annotations

from functools import partial

from dataclasses import dataclass

from planner.engine.activations import (
    ActivationBytes,
    LayerInventory,
    checkpointed_layer_bytes_per_token,
    layer_inventory,
)
from planner.engine.bnb import (
    adam8bit_state_bytes_per_param,
    quantized_frozen_bytes,
)
from planner.engine.calibration import Calibration
from planner.engine.dtypes import RecipeBytes, fsdp_reduce_dtype_bytes, recipe_bytes
from planner.engine.facts import ModelFacts
from planner.engine.op_sac import op_sac_block_bytes
from planner.engine.rules import fsdp1_hf_lora_checkpointed
from planner.engine.results import CATEGORIES, MemoryEstimate, unchecked
from planner.engine.runtime_memory import (
    FRAGMENTATION,
    FRAGMENTATION_TENSOR_CAP_BYTES,
    STRANDED,
    cuda_context_bytes,
    fragmentation_class,
    fragmentation_size_scale,
    nccl_buffer_bytes,
    reserved_bytes,
    retry_floor_bytes,
)
from planner.engine.runtime_memory import allocated_bytes as rt_allocated_bytes
from planner.engine.setup import RECIPES, Setup
from planner.engine.techniques import (
    cp_kv_gather_bytes,
    fp8_temporary_bytes,
    fp8_weight_params,
    galore_bytes,
    paged_state_bytes,
    te_saved_input_saving,
    tp_layer_bytes_per_token,
)
from planner.units import GiB
from profiles.cluster import Cluster
from profiles.schema import ModelProfile

MiB = 2**20

# ---- constants, each with its source ------------------------------------------------------------------
DS_ADDITIONAL_BUFFER_FACTOR = 1.5
"""Host-side buffer factor DeepSpeed's own estimators apply to offloaded states
(``estimate_zero2_model_states_mem_needs(additional_buffer_factor=1.5)``, deepspeed 0.19.8)."""
HOST_PROCESS_BYTES = 4 * GiB
"""Host RSS of one training process (Python, torch, CUDA user-space libraries) [assumption]."""
LOSS_CHUNKS = 8
"""torchtune CEWithChunkedOutputLoss default ``num_output_chunks=8``."""


def adafactor_state_elements(facts: ModelFacts, setup: Setup) -> int:
    """Adafactor's factored second moment (Shazeer & Stern 2018, arXiv:1804.04235, alg. 4): a row and a
    column vector per matrix, a full vector for 1-D parameters; no first moment (HF default beta1=None)."""
    model = facts.model
    if setup.trains_adapters:
        lt = facts.lora
        r = setup.lora_rank
        n = sum(x.count * ((r + x.in_features) + (x.out_features + r)) for x in facts.adapted)
        if lt.experts and model.moe is not None:  # peft's stacked expert factors, 2-D per MoE layer
            e, h, f, r = model.moe.num_experts, model.hidden_size, model.moe.expert_intermediate_size, setup.lora_rank
            per_layer = ((e * 2 * r + h) + (2 * f + e * 2 * r)) * lt.expert_gate_up + (
                (e * r + f) + (h + e * r)) * lt.expert_down
            n += per_layer * (model.num_layers - model.moe.dense_layers)
        if setup.lora_train_embeddings:
            n += model.vocab_size + model.hidden_size
        if setup.lora_train_lm_head:
            n += model.vocab_size + model.hidden_size
        return n
    factored = sum(x.count * (x.in_features + x.out_features) for x in facts.linears)
    factored += 2 * (model.vocab_size + model.hidden_size) if not model.tie_embeddings else model.vocab_size + model.hidden_size
    vectors = facts.counts.norms
    n = factored + vectors
    if setup.method == "freeze":
        n = n * setup.freeze_layers // model.num_layers
    return n


def optimizer_state_bytes_per_param(setup: Setup, rb: RecipeBytes) -> float:
    """Bytes of optimizer state per trainable parameter (eq. M4). Adafactor is handled by shape instead.

    AdamW: two states (m, v) at the recipe's state dtype (Loshchilov & Hutter 2019). 8-bit AdamW:
    :func:`planner.engine.bnb.adam8bit_state_bytes_per_param`. bitsandbytes'
    32-bit (paged) AdamW keeps fp32 m and v whatever the parameter dtype (``Optimizer2State.init_state``,
    ``optim_bits=32``). SGD with momentum: one state. Where paged states live: :func:`paged_state_bytes`.
    """
    if setup.optimizer == "adamw":
        return 2 * rb.state
    if setup.optimizer == "paged-adamw":
        return 8.0  # bitsandbytes' 32-bit states are fp32 whatever the parameter dtype (Optimizer2State.init_state)
    if setup.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        return adam8bit_state_bytes_per_param()
    if setup.optimizer == "sgd-momentum":
        return rb.state
    return 0.0


@dataclass(frozen=True)
class ModelStates:
    """Per-GPU model-state bytes and what sits on the host instead (eq. M5)."""

    weights_trainable: int
    weights_frozen: int
    gradients: int
    optimizer_states: int
    master_weights: int
    host_optimizer: int
    host_params: int
    optimizer_step_temp: int
    gradients_step_only: int = 0
    """gradient bytes that exist only during the optimizer step (ZeRO-3's fp32 gradient partition)"""
    paged_optimizer: int = 0
    """optimizer states in CUDA unified memory (bitsandbytes paged optimizers, eq. M4b): outside torch's
    allocator; resident on the GPU only while free device memory lets them be, host memory otherwise"""


def _shard(n: float, sharded: bool, world: int) -> int:
    return int(n // world) if sharded else int(n)


def deepspeed_grads_partitioned(setup: Setup) -> bool:
    """Eq. M5d: whether DeepSpeed keeps only this rank's partition of the 16-bit gradients through backward.

    ZeRO-2 and ZeRO-3 always do. ZeRO-1 does at ``grad_accum`` 1 with ``overlap_comm`` and ``contiguous_gradients``
    (the configs ``plan configs`` writes; ``contiguous_gradients`` is DeepSpeed's default): at the accumulation
    boundary ``process_gradients`` sends every gradient through ``reduce_independent_p_g_buckets_and_remove_grads``
    as backward makes it, which copies it into the reduce bucket and points ``param.grad`` at the bucket
    (``grad_reduc.data = new_grad_tensor...``), so the full-size gradient is freed and only the partition's are
    copied on into ``grads_in_partition`` (deepspeed ``runtime/zero/stage_1_and_2.py``, HEAD edaa722 2026-08,
    lines 1193-1253 and 1730-1769). Under accumulation the non-boundary micro-steps keep full gradients, and without
    ``overlap_comm`` stage 1 reduces only after backward (``reduce_gradients``), so both keep them whole. Measured:
    ETH LSAIE's Llama-3-8B on 4 GH200 at batch 1 x 2048, DeepSpeed 0.18, logged the same per-rank
    ``max_memory_allocated`` under ZeRO-1 and ZeRO-2 (57.59-61.47 GB;
    profiles/evidence/lsaie-deepspeed-gh200-2025-12.yaml), where full 16-bit gradients would add 12 GB."""
    return setup.zero >= 2 or (setup.zero == 1 and setup.grad_accum == 1)


def model_states(facts: ModelFacts, cluster: Cluster, setup: Setup, rb: RecipeBytes) -> ModelStates:
    """Weights, gradients, master weights and optimizer states per GPU under the sharding (eq. M5).

    DeepSpeed stages follow DeepSpeed's own accounting (``estimate_zero2_model_states_mem_needs``: 2 B of
    16-bit params + 18 B/N = 2 16-bit grads + 4 fp32 grads + 4 fp32 master + 8 Adam, for ZeRO-2).
    The fp32 gradient partition exists only during the optimizer step (``single_partition_of_fp32_groups[i]
    .grad`` is built in ``step()`` and set to None after it), so DeepSpeed's static count equals ours at the
    optimizer peak. ZeRO-3 (``stage3.py``) keeps 16-bit param and gradient partitions, fp32 master and Adam
    (16 B/N) and converts a sub-group's gradients to fp32 at the step (+4 B/N): DeepSpeed's estimator's 18 B/N
    lies between the two (documented difference, tested). ZeRO-1 keeps the full 16-bit gradients (2 B) under
    gradient accumulation and only its partition at ``grad_accum`` 1 (:func:`deepspeed_grads_partitioned`, eq. M5d),
    and shards the rest; ZeRO-0 with DeepSpeed's bf16 optimizer keeps all 20 B. FSDP (FSDP2, both
    strategies) shards weights, gradients and states; shard-grad-op (``reshard_after_forward=False``) keeps
    the gathered compute-dtype copies from forward to backward, counted in comm buffers (eq. C4). DDP replicates everything. Optimizer offload moves fp32 grads,
    master and states to the host; parameter offload also the 16-bit weights (ZeRO-3 only).
    """
    N = cluster.world_size
    counts = facts.trainable
    z, fsdp = setup.zero, setup.fsdp
    deepspeed = z > 0
    step_only = 0
    shard_w = z == 3 or fsdp is not None  # FSDP2 keeps parameters sharded at rest for both strategies
    shard_g = z >= 2 or fsdp is not None
    shard_o = z >= 1 or fsdp is not None
    P_t = counts.trainable
    off_opt = setup.offload in ("optimizer", "optimizer+params")
    off_par = setup.offload == "optimizer+params"

    # weights
    if setup.method == "qlora":
        non_linear_frozen = counts.frozen - counts.frozen_linear
        frozen_b = quantized_frozen_bytes(counts.frozen_linear, setup.double_quant) + non_linear_frozen * rb.compute
    else:
        frozen_b = counts.frozen * rb.frozen_weight
    trainable_b = counts.trainable_base * rb.trainable_weight + counts.adapter * (
        rb.adapter if setup.trains_adapters else rb.trainable_weight
    )
    if off_par:
        host_params = _shard(trainable_b + frozen_b, True, N)
        trainable_b = frozen_b = 0
    else:
        host_params = 0
        trainable_b, frozen_b = _shard(trainable_b, shard_w, N), _shard(frozen_b, shard_w, N)

    # optimizer states
    paged = 0
    svd_temp = 0
    if setup.galore_rank is not None:
        gb = galore_bytes(facts, setup, rb)
        opt, svd_temp = gb.states + gb.projectors, gb.svd_workspace
    elif setup.optimizer == "adafactor":
        opt = adafactor_state_elements(facts, setup) * 4
    elif setup.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit"):
        opt, paged = paged_state_bytes(facts, setup)
        paged = _shard(paged, shard_o, N)
    else:
        opt = optimizer_state_bytes_per_param(setup, rb) * P_t
    master = rb.master * P_t
    grad32 = rb.grad32 * P_t
    grad16 = rb.grad16 * P_t
    if deepspeed:
        g_gpu = _shard(grad16, deepspeed_grads_partitioned(setup), N)
        host_opt = 0
        if off_opt:
            host_opt = _shard(opt + master + grad32, True, N)
            opt = master = 0
            g_gpu = 0 if z >= 2 else g_gpu
        else:
            opt, master = _shard(opt, True, N), _shard(master, True, N)
            # stage_1_and_2.py / stage3.py keep 16-bit gradient partitions through backward and build the
            # fp32 gradient partition only for the optimizer step (set to None after it)
            step_only = _shard(grad32, True, N)
    else:
        host_opt = 0
        g = grad32 + grad16
        g_gpu = _shard(g, shard_g, N)
        if off_opt:  # FSDP CPUOffload(offload_params) moves params+grads+states; we count states+grads
            host_opt = _shard(opt + g, True, N)
            opt, g_gpu = 0, 0
        else:
            opt = _shard(opt, shard_o, N)
    if setup.steps_in_backward:
        # gradients are freed right after each parameter's update: at most the largest tensor's gradient (under
        # FSDP2 the hook fires on the sharded gradient after the reduce-scatter: torchtune full_finetune_distributed)
        g_gpu = min(g_gpu, (rb.grad32 + rb.grad16) * facts.largest_module_params)
    step_temp = svd_temp
    if setup.optimizer == "adafactor":
        # transformers' Adafactor steps one tensor at a time, building an fp32 update of its size
        step_temp = max(step_temp, 3 * 4 * min(facts.largest_module_params, max(P_t, 1)))
    if setup.foreach_adamw:
        step_temp = max(step_temp, foreach_adamw_temp_bytes(facts, setup, int(opt)))
    return ModelStates(
        trainable_b, frozen_b, int(g_gpu), int(opt), int(master), int(host_opt), int(host_params), int(step_temp),
        int(step_only), paged_optimizer=int(paged),
    )


def foreach_adamw_temp_bytes(facts: ModelFacts, setup: Setup, state_bytes: int) -> int:
    """Eq. M4d: the temporary of torch's foreach AdamW step. ``_multi_tensor_adam`` (``torch/optim/adam.py``, torch
    2.13) computes ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`` for every tensor of a device/dtype group
    at once, then divides and adds eps in place: one second-moment-sized tensor per parameter, alive together
    until ``_foreach_addcdiv_`` (half of AdamW's ``state_bytes`` on this rank; under DeepSpeed, the flat fp32
    partition's). Stepping in backward (one optimizer per parameter) holds only the largest tensor's. The fused
    kernel keeps nothing. A test measures it on a real torch step. Exact for one parameter group (the trainers'
    usual two groups, with and without weight decay, each free theirs before the next: errs high there)."""
    v = state_bytes // 2
    if setup.steps_in_backward:
        return min(v, int(v // max(1, facts.trainable.trainable) * facts.largest_module_params))
    return v


def zero_paper_model_state_bytes(params: int, world: int, stage: int) -> int:
    """The ZeRO paper's 16-byte rule per GPU (Rajbhandari et al. 2020, arXiv:1910.02054, sec. 3 and fig. 1):
    2 B fp16 weights + 2 B fp16 grads + 12 B fp32 master, m, v (K = 12); stage 1 shards the 12, stage 2 also
    the grads, stage 3 everything (eq. M6). Kept for comparison with the folklore; the engine uses the
    recipe's real accounting (:func:`model_states`)."""
    P, N = params, world
    if stage == 0:
        return 16 * P
    if stage == 1:
        return 4 * P + 12 * P // N
    if stage == 2:
        return 2 * P + 14 * P // N
    return 16 * P // N


@dataclass(frozen=True)
class LogitsBytes:
    """Logits and loss bytes at the three moments that matter (eq. L1-L3)."""

    forward_peak: int
    saved: int
    backward_peak: int


def logits_loss_bytes(model: ModelProfile, setup: Setup, rb: RecipeBytes, tokens: int) -> LogitsBytes:
    """Logits, fp32 upcast and loss (eq. L1-L3).

    plain (L1): HF ``ForCausalLMLoss`` upcasts the bf16 logits (c*V per token) to fp32 (4V) and
    ``cross_entropy`` saves its fp32 log-softmax (4V); the trainer drops the outputs before backward, so
    4V stays saved; backward holds that, the incoming fp32 gradient and the outgoing one (12V) at its peak.
    Gemma-2's final soft-capping (``tanh``) keeps its bf16 output saved (+2V in every phase; the trace shows
    12V at the forward peak and 14V in backward, docs/accuracy.md).
    chunked (L2): torchtune's ``CEWithChunkedOutputLoss`` keeps all bf16 chunks (c*V) but upcasts one of 8
    chunks at a time; each chunk's log-softmax stays saved (4V in total).
    liger (L3): fused linear cross-entropy (Liger Kernel) never materialises full logits: one chunk of about
    h logits per token (fp32 + bf16), and the gradient of the hidden states (c*h) computed in the forward.
    """
    if unsloth_loss(setup) and not model.final_logit_softcap:  # the FOAK rules patch no soft-capped model
        return unsloth_logits_loss_bytes(model.vocab_size, rb.compute, tokens)
    if model.derived is not None:  # the plain loss measured on the model's own code (eq. D4)
        from planner.engine.derived import logits_terms

        measured = logits_terms(model, setup, rb, tokens)
        if measured is not None:
            fwd, saved, bwd = measured
            return LogitsBytes(fwd + shift_copy_bytes(model.vocab_size, tokens, setup), saved, bwd)
    V, h, c, T = model.vocab_size, model.hidden_size, rb.compute, tokens
    if setup.compile and setup.compile_loss and setup.loss in ("plain", "chunked") and not model.final_logit_softcap:
        return compiled_logits_loss_bytes(V, c, T, setup.loss)
    # Gemma-2 final soft-capping: tanh saves its bf16 output (2V); the divide is transient in forward
    cap_saved = 2 * V if model.final_logit_softcap else 0
    cap = cap_saved
    if setup.loss == "plain":
        fwd = T * (c * V + 4 * V + 4 * V + cap) + shift_copy_bytes(V, T, setup)
        return LogitsBytes(fwd, T * (4 * V + cap_saved), T * (12 * V + cap_saved))
    if setup.loss == "chunked":
        chunk = -(-T // LOSS_CHUNKS)
        fwd = T * c * V + chunk * 4 * V + T * 4 * V + T * cap
        bwd = T * 4 * V + chunk * (4 * V + 4 * V + c * V) + T * cap
        return LogitsBytes(fwd, T * (4 * V + cap_saved), bwd)
    # liger
    fwd = T * (4 * h + c * h + c * h)
    return LogitsBytes(fwd, T * c * h, T * c * h + T * 6 * h)


def shift_copy_bytes(vocab: int, tokens: int, setup: Setup) -> int:
    """Eq. L1b: the shifted fp32 copy of the logits that transformers' plain loss made before 4.49, at the loss's
    forward peak. ``ForCausalLMLoss`` in 4.46-4.48 (``transformers/loss/loss_utils.py`` in the 4.48.1 wheel):
    ``logits = logits.float()`` then ``shift_logits = logits[..., :-1, :].contiguous()``, both alive while
    ``cross_entropy`` makes its log-softmax; the Llama / Mistral forwards before 4.46 did the same in the model. From
    4.49 the labels are shifted instead (``nn.functional.pad(labels, (0, 1))``), which eq. L1 models. The copy is
    not saved for backward (log-softmax saves its output), so only the forward peak grows: ``(c + 12) V`` per token
    against L1's ``(c + 8) V``. ``setup.loss_shift_copy`` says the run used such a version; the planner plans for
    current ones."""
    return 4 * vocab * tokens if setup.loss_shift_copy and setup.loss == "plain" else 0


def unsloth_loss(setup: Setup) -> bool:
    """Whether the loss is Unsloth's cross-entropy kernel (eq. L5): ``--fused-kernels unsloth`` with the plain loss,
    eager (fms-acceleration's ``fast_loss: True`` swaps transformers' ``ForCausalLMLoss`` for it)."""
    return (setup.fused_library == "unsloth" and setup.loss == "plain"
            and not (setup.compile and setup.compile_loss))


def unsloth_logits_loss_bytes(vocab: int, compute: int, tokens: int) -> LogitsBytes:
    """Logits and loss under Unsloth's cross-entropy kernel as fms-acceleration installs it (eq. L5;
    foundation-model-stack/fms-acceleration at 24bdadb, ``plugins/fused-ops-and-kernels/src/fms_acceleration_foak/
    kernels/unsloth/cross_entropy_loss.py``: ``FastForCausalLMLoss`` and ``Fast_CrossEntropyLoss``; transformers
    >= 4.46 reaches it through the ``*-custom-loss`` rule). Forward: ``logits.float()`` (4V), then
    ``shift_logits = logits[..., :-1, :].contiguous()`` (4V) beside the bf16 logits (``c*V``); the kernel keeps one
    fp32 log-sum-exp per row and saves its fp32 input, the shifted copy (4V). Backward writes the gradient into that
    saved tensor in place (``return logits, None, None``) instead of allocating it; the slice's backward then makes
    the full-shape fp32 gradient (4V) beside it, and the upcast's backward casts that to ``c*V``: 8V at the peak
    against eq. L1's 12V. No log-softmax output either: against transformers 4.48's plain loss (L1b, ``(c + 12)V``)
    4V less at the forward peak too. Measured: fms-acceleration's A100 rows, FOAK against the same run without it on
    one GPU, where the peak is the loss (Mistral-7B LoRA 2.08 GiB at 16,384 tokens, 4.15 GiB at 32,768: 4.26V per
    token, of which the fused norms explain 0.26V). Errs low by the row statistics only."""
    V, c, T = vocab, compute, tokens
    return LogitsBytes(T * (c * V + 8 * V), T * 4 * V, T * 8 * V)


def compiled_logits_loss_bytes(vocab: int, compute: int, tokens: int, loss: str) -> LogitsBytes:
    """Logits and loss under ``torch.compile`` (eq. L4). Inductor fuses the fp32 upcast into the cross-entropy
    kernels and its partitioner saves the 16-bit logits and one row statistic instead of the fp32 log-softmax:
    measured on torch 2.13 (``saved_tensors_hooks`` around ``torch.compile``'d ``cross_entropy(x.float(), y)``):
    2.004 B per logit saved, against 4.002 eager. Chunked (torchtune compiles ``compute_cross_entropy``, the
    upcast + CE of one chunk, ``training.compile_loss``): the model's bf16 chunks are kept as the saved inputs;
    backward turns one chunk's saved logits into its bf16 gradient at a time (the CE nodes all run before the LM
    head's). Plain (the HF Trainer compiles the whole model, loss included): the same saving on the full logits,
    the bf16 gradient made next to them. Errs low by kernel workspaces inside the fused kernels; torchtune's own
    plain path (``output(h).float()`` eager, then a compiled loss on fp32 logits) saves 4 B per logit instead."""
    V, c, T = vocab, compute, tokens
    if loss == "chunked":
        chunk = -(-T // LOSS_CHUNKS)
        return LogitsBytes(T * c * V, T * c * V, T * c * V + chunk * c * V)
    return LogitsBytes(T * c * V, T * c * V, 2 * T * c * V)


def loss_parallel_logits_bytes(vocab: int, compute: int, tokens: int, tp: int) -> LogitsBytes:
    """Logits and loss under TP's loss parallel, eager (eq. T1b): torchtitan keeps the LM head's output sharded by
    vocabulary (``ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)``) and runs
    ``cross_entropy(pred.float(), labels)`` inside ``loss_parallel()``, which swaps aten's fused ``log_softmax`` for
    a Python decomposition over the local shard of ``V / t`` logits per token (torch
    ``distributed/tensor/parallel/loss.py``, ``_log_softmax`` and ``_nll_loss_and_log_softmax_backward``, the same
    lines in torch 2.13 and in the stored 2024 copies). Forward: the bf16 logits (``c``), their fp32 copy (4),
    ``shifted = x - x_max`` (4) and ``exp(shifted)`` or the result (4) alive together, ``c + 12`` B per local logit
    against eq. L1's ``c + 8``; the result (4) is saved. Backward: the saved result, ``zeros_like`` (4),
    ``exp(x)`` (4) and their sum (4), 16 B against L1's 12. Traced on real CPU tensors of a vocabulary-sharded
    DTensor with the trace's storage tracker (torch 2.13; tests/validation/test_loss_parallel.py): 14.00 / 4.00 /
    16.01 B per logit forward / saved / backward. Errs low by the row statistics (``V``-free) only."""
    local = tokens * (-(-vocab // tp))
    return LogitsBytes(local * (compute + 12), local * 4, local * 16)


def _layer_bytes(inv: LayerInventory, setup: Setup, rb: RecipeBytes, tokens: int, seq_len: int) -> float:
    """One block's saved bytes for ``tokens`` local tokens: the inventory (eq. A1), with TransformerEngine's FP8
    inputs (eq. F8) and tensor parallelism's split (eq. T1) applied."""
    per_token = tp_layer_bytes_per_token(inv, setup.tp)
    if setup.fp8 == "te":
        per_token -= te_saved_input_saving(inv, rb.compute)
    return per_token * tokens + inv.per_token_per_seq * tokens * seq_len / setup.tp


def local_tokens(setup: Setup) -> int:
    """Tokens of one micro-batch on one GPU: ``micro_batch x seq_len``, divided by the context-parallel degree
    (each CP rank holds ``seq_len / cp`` of every row; eq. T2)."""
    return setup.micro_batch * setup.seq_len // setup.cp


def residual_tensor_bytes(setup: Setup, hidden_size: int) -> int:
    """One bf16 residual-stream tensor of a micro-batch on one GPU (``local_tokens x hidden x 2 / tp``: tensor
    parallelism shards it, torchtitan's sequence-parallel norms and residual): the activation size eq. R3b's cap on the
    fragmented share is measured in (:data:`~planner.engine.runtime_memory.FRAGMENTATION_TENSOR_CAP_BYTES`)."""
    return local_tokens(setup) * hidden_size * 2 // setup.tp


TOKEN_CHURN_CATEGORIES = ("activations", "logits_loss")
"""The categories of a phase that grow with the micro-batch's tokens: eq. R3b's share of the churn."""


def activation_bytes(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> ActivationBytes:
    """Saved activations of all blocks plus the per-block working sets (eq. A1).

    Blocks below the first trainable one save nothing under the freeze method (no gradient flows there).
    Full checkpointing every k-th block keeps only those blocks' inputs (eq. A8) and recomputes one block
    at a time in backward; selective checkpointing drops the attention core (the eager s^2 terms; with
    SDPA / flash it keeps almost everything). Activation offload keeps two block inputs on the GPU.
    BAdam and LISA (eq. A11) train one / ``n`` blocks per step; the others pass gradients through with frozen
    weights (their linear layers save no input): the worst step of the schedule, BAdam's block 0 or any LISA
    draw, has every block in the backward path. Tensor parallelism divides all but the all-gathered block inputs
    by ``tp`` (eq. T1), context parallelism the tokens by ``cp`` (eq. T2).
    A derived profile uses its measured inventory instead (:func:`planner.engine.derived.activation_terms`, eq. D4).
    """
    if facts.model.derived is not None:
        from planner.engine.derived import activation_terms

        return activation_terms(facts, setup, rb)
    model = facts.model
    T = local_tokens(setup)
    s = setup.seq_len
    L = model.num_layers
    tp = setup.tp
    trains_layer = setup.method in ("full", "freeze")
    inv = layer_inventory(facts, setup, rb, trains_layer)
    active_layers = setup.freeze_layers if setup.method == "freeze" else L
    layer_full = _layer_bytes(inv, setup, rb, T, s)
    layer_avg = layer_full
    if setup.method == "full" and (setup.badam or setup.lisa_layers):
        n_train = 1 if setup.badam else min(setup.lisa_layers or 1, L)
        through = _layer_bytes(layer_inventory(facts, setup, rb, False), setup, rb, T, s)
        layer_avg = (n_train * layer_full + (L - n_train) * through) / L
    if setup.checkpointing == "full":
        ck = -(-active_layers // setup.checkpoint_every)  # blocks 0, k, 2k, ... are checkpointed
        kept = checkpointed_layer_bytes_per_token(rb, model.hidden_size) * T / tp
        if setup.activation_offload:
            saved = min(ck, 2) * kept + (active_layers - ck) * layer_avg
        else:
            saved = ck * kept + (active_layers - ck) * layer_avg
        bwd_extra = layer_full  # one block recomputed at a time
    elif setup.checkpointing == "op":
        # torchtitan's per-op SAC (eq. A12): each block keeps its input and the saved op outputs; its backward
        # re-runs the block and holds its full inventory, of which the cached outputs it consumes are a part
        ck = 0
        block, block_input = op_sac_block_bytes(facts, setup, rb, T)
        saved = active_layers * block
        bwd_extra = max(layer_full - (block - block_input), 0)
    elif setup.checkpointing == "selective":
        ck = 0
        scores = inv.per_token_per_seq * T * s / tp
        saved = active_layers * (layer_avg - scores)
        bwd_extra = scores
    else:
        ck = 0
        saved = active_layers * layer_avg
        bwd_extra = 0
    # final norm before the LM head (fp32 input + normalised output) and the token ids / labels; under TP the
    # norm runs sequence-parallel and the LM head (ColwiseParallel(input_layouts=Shard(1))) all-gathers its input
    # along the sequence and saves the gathered tensor, T x h, which TP does not divide (eq. T1)
    # (Liger's fused RMSNorm keeps its input in the residual dtype and one fp32 value per row instead, eq. A10b)
    norm_in = rb.residual * model.hidden_size + 4 if setup.fused_kernels else 4 * model.hidden_size
    head_side = T * (norm_in + rb.compute * model.hidden_size) / tp + T * 3 * 8
    if tp > 1:
        head_side += T * rb.compute * model.hidden_size
    saved += head_side
    # the working set while a block runs forward: its largest intermediate, and in backward the gradients
    # of the MLP intermediates (grad of the product, then of activation and up), eq. A9
    fwd_transient = max(inv.transient_per_token * T * 2 / tp, inv.forward_per_token_per_seq * T * s / tp)
    if setup.checkpointing == "op":  # eager attention's scores are made and dropped inside the block (eq. A12)
        fwd_transient = max(inv.transient_per_token * T * 2 / tp,
                            (inv.forward_per_token_per_seq + inv.per_token_per_seq) * T * s / tp)
    if setup.checkpointing == "full":
        fwd_transient += layer_full  # the block running forward holds all its intermediates until it exits
    bwd_transient = (
        bwd_extra
        + inv.transient_per_token * T * inv.mlp_grad_copies / tp
        + rb.compute * model.hidden_size * T * 2 / tp
        # the MLP runs backward (and frees its saved tensors, merged expert weights included) before attention
        + max(inv.backward_per_token_per_seq * T * s / tp, inv.backward_per_layer / tp)
    )
    return ActivationBytes(int(saved), int(fwd_transient), int(bwd_transient), inv, active_layers, ck)


def forward_peak_parts(acts: ActivationBytes, lg: LogitsBytes) -> tuple[int, int]:
    """(activations, logits_loss) at the forward peak: every block's saved tensors plus the larger of the
    last block's working set and the logits peak, which are never live together (eq. A9, L1)."""
    if acts.forward_transient > lg.forward_peak:
        return acts.saved + acts.forward_transient, 0
    return acts.saved, lg.forward_peak


def zero_bucket_elements(model: ModelProfile) -> dict[str, int]:
    """ZeRO bucket sizes the HF integration fills for ``"auto"`` (``transformers/integrations/deepspeed.py``):
    ``reduce_bucket_size = h*h``, ``stage3_prefetch_bucket_size = 0.9*h*h``,
    ``stage3_param_persistence_threshold = 10*h``. Shared by the engine and the config emitter."""
    h = model.hidden_size
    return {
        "reduce_bucket_size": h * h,
        "stage3_prefetch_bucket_size": int(0.9 * h * h),
        "stage3_param_persistence_threshold": 10 * h,
        "allgather_bucket_size": h * h,
    }


@dataclass(frozen=True)
class CommBytes:
    persistent: int
    forward: int
    backward: int
    """at the loss backward (every activation saved)"""
    optimizer: int
    backward_top: int | None = None
    """at the top block's backward (eq. A9's moment c); None: as ``backward``"""
    backward_end: int | None = None
    """at the end of backward (every gradient made); None: as ``backward``"""
    backward_embedding: int | None = None
    """FSDP2, a trained untied embedding: at its backward, after every block's (eq. C4c); None: no such moment"""


def comm_buffer_bytes(facts: ModelFacts, cluster: Cluster, setup: Setup, rb: RecipeBytes) -> CommBytes:
    """Communication and gather buffers per GPU (eq. C1-C4).

    C1 DDP (world > 1): the reducer's flat buckets hold a second copy of every gradient
    (``gradient_as_bucket_view=False``, the PyTorch and HF Trainer default); errs high if views are on.
    C2 ZeRO-1/2: two reduce buckets (``overlap_comm``) of ``reduce_bucket_size`` 16-bit elements and, at the
    step, an all-gather bucket of updated 16-bit parameters.
    C3 ZeRO-3: the gathered largest module and its 16-bit gradient (DeepSpeed's estimator counts
    ``4 * largest_layer_params``), plus the prefetch bucket (0.9 h^2) and the reduce buckets.
    C4 FSDP: full-shard gathers one block and prefetches the next (2 blocks of 16-bit params), keeps the
    root unit (embeddings, LM head) unsharded through the step, and unshards a block's gradients in
    backward; shard-grad-op keeps all 16-bit params gathered from forward to backward.
    """
    model = facts.model
    N = cluster.world_size
    c = rb.compute
    if N == 1 and setup.zero < 3 and setup.fsdp is None:
        return CommBytes(0, 0, 0, 0)
    b = zero_bucket_elements(model)
    if setup.fsdp is None and setup.zero == 0:
        g = (rb.grad32 + rb.grad16) * facts.trainable.trainable
        return CommBytes(g, 0, 0, 0)
    if setup.zero in (1, 2):
        buckets = 2 * b["reduce_bucket_size"] * c
        return CommBytes(buckets, 0, 0, b["allgather_bucket_size"] * c)
    if setup.zero == 3:
        largest = facts.largest_module_params
        buckets = 2 * b["reduce_bucket_size"] * c
        prefetch = b["stage3_prefetch_bucket_size"] * c
        gathered_fwd = largest * c + prefetch
        # params + their 16-bit gradient (the gradient only exists when the base weights train)
        gathered_bwd = (2 if setup.method in ("full", "freeze") else 1) * largest * c + prefetch
        return CommBytes(buckets, gathered_fwd, gathered_bwd, 0)
    if setup.fsdp_version == 1 and setup.fsdp == "full-shard":
        return fsdp1_comm_bytes(facts, cluster, setup, rb)
    return fsdp2_comm_bytes(facts, cluster, setup, rb)


def torchtune_separate_head(model: ModelProfile, setup: Setup) -> bool:
    """Eq. C4d: whether FSDP2 shards the LM head in a group of its own that reshards after forward: torchtune's
    ``shard_model`` with ``custom_sharded_layers: ['tok_embeddings', 'output']`` (torchtune/training/_distributed.py;
    set by torchtune's own configs for large vocabularies and written by tuneplan's torchtune emitter), for an
    untied LM head. accelerate instead keeps the final norm and LM head in one group that stays gathered from
    forward to backward (eq. C4); a tied head stays in torchtune's root, which never reshards."""
    return setup.framework == "torchtune" and not model.tie_embeddings


def fsdp_gather_width(setup: Setup, rb: RecipeBytes) -> int:
    """Bytes per element FSDP gathers (eq. C4, C4b): the compute dtype under a mixed-precision policy, else the
    stored weights' dtype (trainable weights for full fine-tuning, the frozen base otherwise)."""
    return rb.compute if rb.gathered else rb.trainable_weight if setup.method == "full" else rb.frozen_weight


def fsdp_block_bytes(facts: ModelFacts, setup: Setup, c: int, tp: int = 1) -> int:
    """One decoder block's gathered parameter bytes at width ``c`` (its TP shard under TP). QLoRA: FSDP gathers what a
    rank stores, the packed 4-bit weights and their constants (torchao's NF4Tensor implements
    ``fsdp_pre_all_gather`` on its quantized data and scalers; bitsandbytes' Params4bit under FSDP packs 4-bit values
    into ``bnb_4bit_quant_storage`` elements), not a bf16 copy: each linear is dequantised when it runs (the
    ``dequant`` temporary, eq. M3). The norms are gathered at ``c``; the adapters, a few MiB, are left out here as for
    every method. (TP is full fine-tuning only, rules.validate_setup.)"""
    block = facts.block_params // tp
    if setup.method != "qlora":
        return c * block
    lin = facts.trainable.frozen_linear // facts.model.num_layers
    return quantized_frozen_bytes(lin, setup.double_quant) + c * (block - lin)


def fsdp_reduce_bytes(grad_elements: int, c: int, world: int, shard_bytes: int = 4, reduce: int | None = None) -> int:
    """A unit's gradient reduction under FSDP (eq. C4): its unsharded gradient (``c`` bytes) and the reduce-scatter
    input (``reduce`` bytes, the policy's ``reduce_dtype``; ``c`` unless given), then the output (``1/N``, in the
    reduce dtype) and, where the sharded parameter has another dtype, the gradient shard cast to it
    (``shard_bytes / N``: the fp32 shard of fp32 parameters under a bf16 policy). Under FSDP2 with parameters
    already in the compute dtype (pure bf16) the output is the shard: pass ``shard_bytes=c``. torchtitan reduces in
    fp32 (``reduce=4``, :func:`planner.engine.dtypes.fsdp_reduce_dtype_bytes`)."""
    r = c if reduce is None else reduce
    return (c + r) * grad_elements + grad_elements * (r + (0 if shard_bytes == r else shard_bytes)) // world


def fsdp1_comm_bytes(facts: ModelFacts, cluster: Cluster, setup: Setup, rb: RecipeBytes) -> CommBytes:
    """Eq. C4b: gathered parameters under FSDP1 (``FullyShardedDataParallel``, full shard) as accelerate (before
    ``fsdp_version: 2``) and the HF Trainer wrap it: one unit per decoder block (``TRANSFORMER_BASED_WRAP``; for
    LoRA peft's ``fsdp_auto_wrap_policy`` also gives every adapter its own unit, so the block units are wholly
    frozen), and the root unit with everything else: input embedding, final norm, LM head.

    FSDP1 never reshards the root after forward (torch ``_runtime_utils._post_forward_reshard``: the root is
    skipped), so the root stays gathered from the first forward to the end of backward; beside it one decoder
    block is gathered (the one running; under ``BACKWARD_PRE`` the prefetched next one replaces it as it frees,
    and a LoRA unit, not a block, is what comes next in a frozen model's backward). When the base weights train,
    the root's unsharded gradient exists from the LM head's backward to the root's post-backward reduce at the
    end, and a block in backward holds its unsharded gradient, the reduce-scatter buffers and the prefetched
    next block. Matched against IBM fms-acceleration's 2-GPU Mistral-7B LoRA / QLoRA rows (torch 2.4.1,
    accelerate 1.0.1): the fitted intercepts of (peak - end of training) over micro-batch 2 and 4 are 962.1e6 B
    (LoRA) and 634.8e6 B (QLoRA) against 960.5e6 and 633.4e6 from this rule (root 524.3e6 + one block, bf16 or
    packed 4-bit; docs/fsdp1.md). Errs low by what CUDA streams add (reserved, eq. R3).
    Shard-grad-op under FSDP1 is counted as FSDP2's (:func:`fsdp2_comm_bytes`)."""
    model, counts = facts.model, facts.trainable
    N = cluster.world_size
    c = fsdp_gather_width(setup, rb)
    V, h = model.vocab_size, model.hidden_size
    root_params = V * h * (1 if model.tie_embeddings else 2) + (h if model.final_norm else 0)
    root = c * root_params
    block = facts.block_params
    pblock = fsdp_block_bytes(facts, setup, c)
    trains_base = setup.method == "full"
    g_root = root_params if trains_base else 0
    g_block = block if setup.method in ("full", "freeze") else counts.trainable // model.num_layers
    next_block = pblock if setup.method in ("full", "freeze") else 0
    block_bwd = pblock + fsdp_reduce_bytes(g_block, c, N) + next_block
    held = root + c * g_root  # the root and, once the LM head has run backward, its unsharded gradient
    return CommBytes(0, root + pblock, root + pblock, 0, backward_top=held + block_bwd, backward_end=held + block_bwd)


def fsdp1_no_sync_grad_bytes(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> int:
    """Eq. M5c: gradients FSDP1 keeps unsharded while it accumulates. Trainers that accumulate inside FSDP1's
    ``no_sync`` (the HF Trainer through accelerate's ``accumulate``; LitGPT through Fabric's ``no_backward_sync``,
    ``_FSDPBackwardSyncControl``) skip the reduce-scatter on every micro-step but the last, and FSDP1 keeps each
    unit's flat gradient unsharded meanwhile (torch FSDP docs, ``no_sync``: gradients are accumulated unsharded,
    which needs more memory). The flat gradient covers a unit's whole flat parameter: under
    ``use_orig_params=True`` a unit that mixes frozen and trainable weights gets a gradient for the frozen ones too
    (the FSDP docs' warning on mixed ``requires_grad``). Units: full fine-tuning, every parameter; LoRA under
    LitGPT (Lightning's ``FSDPStrategy(auto_wrap_policy={Block})``: the adapters share the block's unit), every
    block parameter; LoRA under the HF Trainer (peft's wrap policy: adapters in units of their own) and the freeze
    method, the trainable parameters only. In the flat parameter's dtype. Alive from the first micro-step's
    backward to the last one's reduce-scatter, so in forward and backward but not at the optimizer step. Against
    LitGPT's 2023-10 resource tables (A100 40GB, bf16-true, FSDP on 2 and 4 GPUs, 128 / micro-batch accumulation):
    Llama-2-7B LoRA at micro-batch 1 / 2 / 4 on 2 GPUs, 20.66 / 20.93 / 21.78 GiB measured; Llama-2-13B at 1 on 4
    GPUs, 33.13 GiB (docs/accuracy.md). Errs high by the sharded gradient of the last micro-step (``1/N``)."""
    if not (setup.fsdp is not None and setup.fsdp_version == 1 and setup.grad_accum > 1
            and setup.framework in ("hf", "litgpt")):
        return 0
    model, counts = facts.model, facts.trainable
    c = rb.compute if rb.gathered else rb.trainable_weight if setup.method == "full" else rb.frozen_weight
    if setup.method == "full" and not setup.badam:
        elements = facts.counts.total
    elif setup.trains_adapters and setup.framework == "litgpt":
        elements = facts.block_params * model.num_layers + counts.adapter
    else:
        elements = counts.trainable
    return c * elements


def fsdp1_retains_block_inputs(setup: Setup) -> bool:
    """Eq. A9d: whether FSDP1 keeps every checkpointed block input and its gradient until the end of backward.
    FSDP1 reshards a frozen unit (``use_orig_params=True``, accelerate's default; the flat parameter does not
    require grad) through ``register_multi_grad_hook`` on the unit's forward inputs (torch
    ``_runtime_utils._register_post_backward_reshard_only_hook``). Under reentrant checkpointing (the HF Trainer's
    default when ``gradient_checkpointing_kwargs`` is unset) those inputs are the detached leaves the recompute
    makes; the hook holds their ``AccumulateGrad`` nodes, so each leaf and its ``.grad`` live until
    ``_finalize_params`` removes the hooks in the final backward callback. Frozen block units: LoRA / QLoRA
    under peft's wrap policy (the adapters in units of their own; not LitGPT, whose block units hold the adapters
    and so require grad). The HF Trainer only: its gradient checkpointing is reentrant unless told otherwise;
    torchtune's FSDP1 recipes (0.1-0.2) wrap the same way, but whether their checkpoint wrapper re-enters was not
    read, so they are left out (errs low there if it does). ``Setup.reentrant`` False (``gradient_checkpointing_kwargs=
    {"use_reentrant": False}``, e.g. PEFT's ``examples/sft/run_peft_fsdp.sh``) turns it off: the non-reentrant
    checkpoint saves the real inputs, whose hooks fire as their gradients flow. Reproduced with real FSDP1 on a fake
    process group of 2 ranks (torch 2.13): per block, backward memory grows by the block input's gradient instead of
    falling by the input, and not with ``use_reentrant=False`` (docs/fsdp1.md)."""
    return fsdp1_hf_lora_checkpointed(setup) and setup.reentrant


def fsdp2_comm_bytes(facts: ModelFacts, cluster: Cluster, setup: Setup, rb: RecipeBytes) -> CommBytes:
    """Gathered parameters and FSDP2's collective buffers per GPU (eq. C4), as torch 2.13's ``fully_shard``
    runs on the groups accelerate 1.15's ``fsdp2_prepare_model`` makes: one per decoder block, the input
    embedding, a tail of final norm + LM head that stays gathered from forward to backward
    (``reshard_after_forward=False``; with tied embeddings the embedding is in it), the root.
    ``c`` is the gathered dtype (the compute dtype under mixed precision).

    From ``_fsdp_param_group.py``: in forward a group's flat all-gather output is kept until the next
    group's copy-out (``comm_ctx.all_gather_state``), so at the loss the tail is held twice (unsharded
    parameters + its all-gather output); the loss backward holds the tail once; when the LM head's gradient
    is reduced, the tail's unsharded gradient, the reduce-scatter input (a flat copy) and its output and
    fp32 shard coexist with the next block's prefetched all-gather; the embedding's backward at the very end
    does the same with the dense embedding gradient. A block in backward holds its parameters, their
    unsharded gradients, the reduce-scatter input and the prefetched next block. Traced with real FSDP2 on
    a fake process group (validation/trace/fsdp.py), equal byte for byte to two gloo ranks on the CPU.
    Errs low by what CUDA streams add: an all-gather issued ahead on its stream, and the reduce-scatter
    inputs FSDP2 keeps alive until the stream has used them (``reduce_scatter_states``).

    Recipe-book terms: under TP (eq. T4) each rank gathers its TP shard of every group (FSDP2 over DTensors);
    with torchao's float8 all-gather (torchtitan ``enable_fsdp_float8_all_gather``, tensorwise only; eq. F8) the
    converted linears' weights are gathered in fp8, 1 B per element."""
    model, counts = facts.model, facts.trainable
    N = cluster.world_size
    c = fsdp_gather_width(setup, rb)
    V, h = model.vocab_size, model.hidden_size
    tp = setup.tp
    head = (V * h + (h if model.final_norm else 0)) // tp
    emb = (0 if model.tie_embeddings else V * h) // tp
    block = facts.block_params // tp
    pblock = fsdp_block_bytes(facts, setup, c, tp)  # one block's gathered parameter bytes
    if setup.fp8 == "tensorwise":
        pblock -= (c - 1) * fp8_weight_params(facts) // model.num_layers // tp
    trains_base = setup.method == "full"
    g_head = head if trains_base else 0
    g_emb = emb if trains_base else 0
    g_block = block if setup.method in ("full", "freeze") else counts.trainable // model.num_layers // tp

    r = fsdp_reduce_dtype_bytes(setup, rb)  # torchtitan's policy reduces in fp32

    def reduce(g: int) -> int:  # FSDP2 keeps each gradient shard in its parameter's dtype (eq. C4)
        return fsdp_reduce_bytes(g, c, N, rb.trainable_weight, r)

    if setup.fsdp == "full-shard":
        forward = 2 * max(c * head, pblock)
        if torchtune_separate_head(model, setup):
            # torchtune's output group reshards when its forward returns, before the loss: only its all-gather
            # output, kept until the next group's copy-out, is alive at the loss (eq. C4d)
            forward = max(c * head, 2 * pblock)
        block_bwd = pblock + reduce(g_block) + pblock  # itself, its gradients, the prefetched next
        top = max(pblock + reduce(g_head), block_bwd)
        # a block's reduce-scatter input, which FSDP2 keeps until the next group reduces (reduce_scatter_states)
        rs_input_block = c * g_block
        if model.tie_embeddings and tp == 1:
            # eq. C4e, a tied LM head: the group that holds the shared weight (accelerate's tail, torchtune's root) is
            # gathered at the embedding lookup, the first thing forward runs, and stays gathered to the end of
            # backward (its gradient is complete only after the lookup's backward). At the loss it is held once,
            # beside the last block's all-gather output (no later group copies out in forward); each block's
            # backward runs beside it, the bottom one prefetching nothing (the next group is already gathered);
            # when the base trains, the lookup's backward holds it and the bottom block's reduce-scatter input
            # (the gradients are counted by eq. A9b's tied sum)
            held = c * head
            at_sum = held + rs_input_block if trains_base else None
            # at the loss's backward the last block's all-gather output is still alive in torchtune's wrapping and
            # already freed in accelerate's (both traced with real FSDP2)
            loss_bwd = held + (pblock if setup.framework == "torchtune" else 0)
            return CommBytes(0, held + pblock, loss_bwd, 0, backward_top=held + block_bwd,
                             backward_end=held + pblock + reduce(g_block), backward_embedding=at_sum)
        if not g_emb:
            end = max(reduce(g_emb), block_bwd)
            return CommBytes(0, forward, c * head, 0, backward_top=top, backward_end=end)
        # eq. C4c, a trained untied embedding (its own group, resharded after forward): the bottom block's backward
        # prefetches the embedding, not another block; then the embedding's backward holds its gathered weight, its
        # unsharded gradient and the bottom block's reduce-scatter input, which post_backward frees only when the
        # next group reduces (comm_ctx.reduce_scatter_states, one in flight); its post_backward reshards first and
        # then reduces (reduce(g_emb))
        bottom = pblock + reduce(g_block) + c * emb
        at_embedding = max(c * emb + c * g_emb + rs_input_block, reduce(g_emb))
        return CommBytes(0, forward, c * head, 0, backward_top=top, backward_end=bottom,
                         backward_embedding=at_embedding)
    # shard-grad-op: every group stays gathered from its forward to its backward
    gathered = c * (head + emb) + pblock * model.num_layers
    return CommBytes(0, gathered + max(c * head, pblock), gathered, 0, backward_top=gathered + reduce(g_head),
                     backward_end=c * emb + pblock + reduce(max(g_emb, g_block)))


def gradients_persist(setup: Setup) -> bool:
    """Whether gradient memory exists from the start of a step (before the forward), eq. M5b.

    Gradients are made in backward and freed after the step: ``zero_grad(set_to_none=True)`` (torch / HF
    Trainer); DeepSpeed ZeRO-1/2 frees the 16-bit gradients inside ``step()`` too (deepspeed 0.19.8
    ``stage_1_and_2.py``: ``free_grad_in_param_list`` and ``zero_grad(set_to_none=True)``; the
    ``grads_in_partition`` buffer is built in backward and dropped by ``_release_ipg_buffers``). They persist
    under gradient accumulation (the next micro-batch adds to them) and under ZeRO-3, whose 16-bit gradient
    partition is one flat buffer allocated with the optimizer (``stage3.py``: ``grad_partitions_flat_buffer``)."""
    return setup.grad_accum > 1 or setup.zero == 3


def framework_overhead_bytes(cluster: Cluster, calibration: Calibration | None = None) -> int:
    """Memory a process holds outside torch's caching allocator (eq. F1 = R4 + R5): the CUDA context
    (:func:`planner.engine.runtime_memory.cuda_context_bytes`, lazy loading) and NCCL's communicator buffers
    (:func:`~planner.engine.runtime_memory.nccl_buffer_bytes`, one communicator, NVLink or PCIe channel count).
    Replaced by the calibrated fixed overhead (nvidia-smi minus reserved of validation runs) when one exists.
    Errs low by the kernels a run loads lazily and by NVLS buffers on NVSwitch systems."""
    if calibration is not None:
        return calibration.fixed_overhead_bytes
    nvlink = cluster.gpu.interconnect != "pcie"
    return cuda_context_bytes() + nccl_buffer_bytes(cluster.world_size, nvlink)


def sharded_gathers(cluster: Cluster, setup: Setup) -> bool:
    """Whether parameters are all-gathered on a side stream each step (FSDP, ZeRO-3, on more than one GPU)."""
    return cluster.world_size > 1 and (setup.fsdp is not None or setup.zero == 3)


def run_fragmentation_class(cluster: Cluster, setup: Setup) -> str:
    """Which fragmentation class (eq. R3) a setup on a cluster falls in: the one place the engine, the corpus report
    and the validation report decide it (:func:`~planner.engine.runtime_memory.fragmentation_class` on the setup's
    packing, :func:`sharded_gathers` and whether the gathers are freed with ``record_stream``: all but FSDP2's)."""
    fsdp2 = setup.fsdp is not None and setup.fsdp_version == 2
    return fragmentation_class(setup.packing, sharded_gathers(cluster, setup), record_stream=not fsdp2)


def fragmentation_fraction(cluster: Cluster, setup: Setup) -> float:
    """The share of a step's freed-and-reallocated memory the caching allocator keeps in blocks it cannot reuse
    (eq. R3), by :func:`~planner.engine.runtime_memory.fragmentation_class`: side-stream parameter gathers, padded
    batches of changing shape, or neither. Values: :data:`~planner.engine.runtime_memory.FRAGMENTATION` (fitted to
    published allocated + nvidia-smi pairs, and FSDP2's to its runs' reserved and nvidia-smi figures, each source
    held out; docs/accuracy.md, memory section)."""
    return FRAGMENTATION[run_fragmentation_class(cluster, setup)]


def allocator_margin_bytes(tensor_bytes: int, churn_bytes: int, cluster: Cluster, setup: Setup, overhead: int,
                           calibration: Calibration | None = None, *, token_churn_bytes: int = 0,
                           residual_bytes: int = 0) -> tuple[int, int]:
    """``(allocated, reserved)`` of one phase from its tensor bytes (eq. R1-R3): allocated adds the cuBLAS
    workspaces; reserved adds the allocator's segment rounding and the fragmented share of ``churn_bytes``
    (the phase's bytes other than weights and optimizer states, which are allocated once; of its activations and
    logits, ``token_churn_bytes``, a share that stops growing beyond eq. R3b's tensor size, ``residual_bytes``),
    capped at the card less ``overhead`` (the allocator frees its cache and retries before it reports out of
    memory). Calibrated:
    the measured ``max_memory_reserved / max_memory_allocated`` of validation runs on this GPU and recipe."""
    allocated = rt_allocated_bytes(tensor_bytes, cluster.gpu.name)
    if calibration is not None:
        return allocated, max(allocated, int(calibration.allocator_factor * allocated))
    limit = cluster.gpu.memory_bytes - overhead
    return allocated, reserved_bytes(allocated, churn_bytes, fragmentation_fraction(cluster, setup), limit=limit,
                                     token_churn_bytes=token_churn_bytes, residual_bytes=residual_bytes)


def retry_floor(tensor_bytes: int, churn_bytes: int, cluster: Cluster, setup: Setup,
                calibration: Calibration | None = None, *, token_churn_bytes: int = 0, residual_bytes: int = 0) -> int:
    """Eq. R3c for one phase: what the allocator still holds after it frees its cache and retries a failed
    ``cudaMalloc`` (allocated + the stranded share of the fragmented churn, at most :data:`STRANDED` of the card, by
    fragmentation class). Above the card less the overhead, the run goes out of memory although eq. R3's capped
    reserved figure fits. Calibrated (a measured reserved / allocated ratio, no fragmentation model): allocated."""
    allocated = rt_allocated_bytes(tensor_bytes, cluster.gpu.name)
    if calibration is not None:
        return allocated
    cls = run_fragmentation_class(cluster, setup)
    return retry_floor_bytes(allocated, churn_bytes, FRAGMENTATION[cls], STRANDED[cls], cluster.gpu.memory_bytes,
                             token_churn_bytes=token_churn_bytes, residual_bytes=residual_bytes)


def host_bytes(
    model: ModelProfile, cluster: Cluster, setup: Setup, rb: RecipeBytes, ms: ModelStates
) -> dict[str, int]:
    """Host RAM per node (eq. H1): offloaded optimizer states (fp32 master, grads, Adam) and parameters of
    every rank on the node, DeepSpeed's pinned/temporary buffer factor on top, offloaded activations, and
    each process's own footprint. Paged optimizer states (eq. M4b) are budgeted in full on the host: unified memory
    allocated with ``cudaMemAttachHost`` has host backing for whatever the GPU evicts (errs high by the resident
    part)."""
    g = cluster.gpus_per_node
    T = local_tokens(setup)
    offloaded = (ms.host_optimizer + ms.host_params) * g
    act = 0
    if setup.activation_offload:
        act = model.num_layers * rb.residual * model.hidden_size * T * g // setup.tp
    out = {
        "offloaded_optimizer": ms.host_optimizer * g,
        "offloaded_params": ms.host_params * g,
        "pinned_buffers": int(offloaded * (DS_ADDITIONAL_BUFFER_FACTOR - 1)),
        "offloaded_activations": act,
        "processes": HOST_PROCESS_BYTES * g,
    }
    if ms.paged_optimizer:  # unified memory: backed by host pages whenever the GPU evicts them (eq. M4b)
        out["paged_optimizer"] = ms.paged_optimizer * g
    return out


def last_embedding_grad_bytes(facts: ModelFacts, setup: Setup, gpu_grads: int) -> int:
    """Eq. A9c: the gradient bytes that do not exist yet while the first block runs backward: the input embedding's,
    which autograd produces after every block (``embedding_dense_backward`` is the last node). Only for an untied
    embedding that trains, with whole gradients on the rank (no ZeRO-2/3 or FSDP partition: their per-rank share
    of the embedding is left in, erring high by it); a tied one already holds the LM head's gradient
    (:func:`tied_embedding_grad_sum_bytes`). Its share of the rank's gradient bytes is its share of the trainable
    parameters (every trainable gradient has one dtype). Traced: Qwen2.5-7B full bf16 s2048 peaks in the first
    block's backward with every gradient but the embedding's (docs/accuracy.md)."""
    model = facts.model
    if (model.tie_embeddings or setup.method != "full" or setup.badam or setup.zero >= 2 or setup.fsdp is not None
            or not facts.trainable.trainable):
        return 0
    return gpu_grads * facts.counts.embedding // facts.trainable.trainable


def fsdp_pending_grad_bytes(facts: ModelFacts, gpu_grads: int) -> tuple[int, int]:
    """Eq. C4c: the rank's gradient-shard bytes of the input embedding and of one decoder block, which FSDP2 makes
    in their groups' ``post_backward`` (after the bottom block's backward, and the embedding's): each group's share
    of the rank's gradient bytes is its share of the trainable parameters (one gradient dtype)."""
    t = facts.trainable.trainable
    if not t:
        return 0, 0
    return gpu_grads * facts.counts.embedding // t, gpu_grads * facts.block_params // t


def tied_embedding_grad_sum_bytes(model: ModelProfile, setup: Setup, rb: RecipeBytes) -> int:
    """Eq. A9b: the transient of a tied embedding's gradient at the end of backward. The weight is used twice, so
    autograd holds the LM head's gradient (made at the start of backward) in its input buffer until the embedding
    lookup's backward adds its dense gradient (``embedding_dense_backward``); the sum is a new tensor. At that
    moment three ``[V, h]`` gradients are alive beside every other gradient, two more than the ``.grad`` the step
    keeps. Only when the embedding trains (full fine-tuning, LISA; BAdam never trains it). The gradient has the
    parameter's dtype as the backward sees it: fp32 under AMP with fp32 weights, the compute dtype for bf16
    weights and for FSDP's gathered bf16 parameters; vocabulary-parallel TP divides it by ``tp``. Traced
    (Gemma-2-2B, hf-amp, s512 b4: the LM head's fp32 gradient, the embedding's and their sum, 3 x 2.20 GiB, at the
    backward peak; docs/accuracy.md). Exact for one rank's autograd; errs high where the LM head's gradient is
    reduced and freed before the embedding's arrives (none of the frameworks modelled does that)."""
    return 2 * tied_head_grad_bytes(model, setup)


def tied_head_grad_bytes(model: ModelProfile, setup: Setup) -> int:
    """One ``[V, h]`` gradient of a tied, trained embedding (eq. A9b), in the dtype the backward sees; 0 when the
    embedding is untied or frozen. The LM head's gradient of this size waits in autograd's input buffer from the top
    of backward to the lookup's backward."""
    if not model.tie_embeddings or setup.method != "full" or setup.badam:
        return 0
    from planner.engine.speed.comm import grad_comm_bytes  # the one rule for a gradient element's dtype

    return grad_comm_bytes(setup) * model.vocab_size * model.hidden_size // setup.tp


def estimate_memory(
    facts: ModelFacts, cluster: Cluster, setup: Setup, calibration: Calibration | None = None, explain: bool = True
) -> MemoryEstimate:
    """Every byte of one steady-state training step on one GPU rank, by category and phase, and the host.

    Assumes a valid setup (:func:`planner.engine.rules.validate_setup`); call it through
    :func:`planner.engine.evaluate.evaluate`, which checks the setup and builds ``facts`` once. ``explain=False``
    skips the assumption lines (the search judges hundreds of candidates and explains only the ones it shows)."""
    model = facts.model
    rb = recipe_bytes(setup)
    counts = facts.trainable
    ms = model_states(facts, cluster, setup, rb)
    acts = activation_bytes(facts, setup, rb)
    T = local_tokens(setup)
    lg = logits_loss_bytes(model, setup, rb, T)
    if setup.tp > 1:  # loss parallel: the logits stay sharded by vocabulary (torchtitan default, eq. T1)
        if setup.loss == "plain" and not (setup.compile and setup.compile_loss):  # the eager decomposition, eq. T1b
            lg = loss_parallel_logits_bytes(model.vocab_size, rb.compute, T, setup.tp)
        else:
            lg = LogitsBytes(lg.forward_peak // setup.tp, lg.saved // setup.tp, lg.backward_peak // setup.tp)
    cb = comm_buffer_bytes(facts, cluster, setup, rb)

    # temporaries: autocast's cached low-precision copies of fp32 trainable linear weights (alive from the
    # cast in forward until backward has used them), QLoRA's dequantised layer, adafactor's step buffers
    autocast_copies = rb.compute * counts.trainable_linear if rb.autocast else 0
    biggest_linear = facts.largest_linear_weight
    dequant = rb.compute * biggest_linear if setup.method == "qlora" else 0
    dora_tmp = rb.adapter * biggest_linear if setup.dora else 0
    # FP8 casts (eq. F8) and context parallelism's gathered K / V of one layer (eq. T3), forward and backward
    fp8_fwd, fp8_bwd = fp8_temporary_bytes(facts, setup, T, cluster.gpu.arch) if setup.fp8 != "none" else (0, 0)
    kv = cp_kv_gather_bytes(facts, setup, rb.compute)
    dequant += kv
    # layer-wise GaLore updates (and re-projects) inside backward: its SVD workspace lands there (eq. M4c)
    bwd_step_temp = ms.optimizer_step_temp if setup.steps_in_backward else 0

    gpu_grads = ms.gradients
    persistent_grads = gpu_grads if gradients_persist(setup) else 0
    if setup.zero == 0 and not persistent_grads and rb.master and setup.uses_deepspeed:
        # DeepSpeed's stage-0 bf16 optimizer allocates its fp32 gradient buffers at initialisation
        persistent_grads = rb.grad32 * counts.trainable

    base = {
        "weights_trainable": ms.weights_trainable,
        "weights_frozen": ms.weights_frozen,
        "gradients": persistent_grads,
        "optimizer_states": ms.optimizer_states,
        "master_weights": ms.master_weights,
        "activations": 0,
        "logits_loss": 0,
        "temporaries": 0,
        "comm_buffers": cb.persistent,
    }
    after_load = dict(base)
    fwd = dict(base)
    fwd["activations"], fwd["logits_loss"] = forward_peak_parts(acts, lg)
    # torchao's FP8 casts live inside a linear's forward or backward only (eq. F8): not beside the loss, whose LM
    # head is not converted; TransformerEngine's quantised weights stay from forward to backward
    fp8_at_loss = setup.fp8 == "te"
    fwd_at_loss = fwd["logits_loss"] > 0
    fwd["temporaries"] = autocast_copies + dequant + dora_tmp + (fp8_fwd if fp8_at_loss or not fwd_at_loss else 0)
    fwd["comm_buffers"] = cb.persistent + cb.forward

    # backward: the larger of (a) the loss backward with every activation still saved and (b) the end of
    # backward with every gradient allocated and one block's working set (eq. A9)
    bwd_a = dict(base)
    bwd_a["activations"] = acts.saved
    bwd_a["logits_loss"] = lg.backward_peak
    # full and per-op checkpointing recompute the blocks' weight casts; the LM head's copy, outside the blocks, is
    # saved by its matmul until the loss backward has run through it (eq. A12; traced, tests/validation/
    # test_engine_vs_trace_regressions.py)
    head_copy = rb.compute * model.vocab_size * model.hidden_size if setup.method == "full" and not setup.badam else 0
    kept_copies = min(head_copy, autocast_copies) if setup.checkpointing in ("full", "op") else autocast_copies
    bwd_a["temporaries"] = kept_copies + dequant + dora_tmp + (fp8_bwd if fp8_at_loss else 0)
    bwd_a["comm_buffers"] = cb.persistent + cb.backward
    head_grad = 0
    if setup.method == "full" and not setup.zero and setup.fsdp is None:
        head_grad = (rb.grad32 + rb.grad16) * model.vocab_size * model.hidden_size
    # the loss backward runs before the LM head's gradient exists
    bwd_c = dict(bwd_a)  # the top block's backward: every activation still saved, plus its working set
    bwd_c["activations"] = acts.saved + acts.backward_transient
    bwd_c["logits_loss"] = 0
    bwd_c["temporaries"] = kept_copies + dequant + dora_tmp + fp8_bwd
    bwd_c["gradients"] = max(persistent_grads, min(head_grad, gpu_grads))
    if cb.backward_top is not None:
        bwd_c["comm_buffers"] = cb.persistent + cb.backward_top
    bwd_b = dict(base)
    # the first block's backward: every gradient but the embedding's, whose lookup runs backward last (eq. A9c)
    bwd_b["gradients"] = gpu_grads - last_embedding_grad_bytes(facts, setup, gpu_grads)
    bwd_b["activations"] = acts.backward_transient
    bwd_b["temporaries"] = (dequant + dora_tmp + (rb.compute * biggest_linear if rb.autocast else 0) + fp8_bwd
                            + bwd_step_temp)
    bwd_b["comm_buffers"] = cb.persistent + (cb.backward if cb.backward_end is None else cb.backward_end)
    # the end of backward with a tied embedding: its dense gradient summed into the LM head's (eq. A9b)
    bwd_e = dict(bwd_b)
    bwd_e["activations"] = 0
    bwd_e["temporaries"] = tied_embedding_grad_sum_bytes(model, setup, rb) + bwd_step_temp
    moments = [bwd_a, bwd_c, bwd_b, bwd_e]
    if cb.backward_embedding is not None:
        # FSDP2 with a trained untied embedding (eq. C4c): the bottom block's backward runs before its own gradient
        # shard and the embedding's exist; the embedding's backward, with every block's working set freed, before
        # its own shard exists. A tied one (eq. C4e): the LM head's whole gradient waits in autograd's input buffer
        # from the top of backward to the lookup's (eq. A9b), where the sum of three [V, h] gradients is made; none
        # of them is the rank's shard, which comes last
        emb_shard, block_shard = fsdp_pending_grad_bytes(facts, gpu_grads)
        head_wait = tied_head_grad_bytes(model, setup)
        bwd_c["gradients"] += head_wait
        bwd_b["gradients"] = gpu_grads - emb_shard - block_shard + head_wait
        bwd_e["gradients"] = gpu_grads - emb_shard + head_wait
        bwd_e["comm_buffers"] = cb.persistent + cb.backward_embedding
        bwd_e["temporaries"] = tied_embedding_grad_sum_bytes(model, setup, rb) + bwd_step_temp
    if fsdp1_retains_block_inputs(setup):
        # the bottom block's backward under FSDP1's frozen-unit hooks (eq. A9d): every block input still saved, the
        # gradients of all but the bottom one, and the bottom block's working set
        bwd_f = dict(bwd_b)
        bwd_f["activations"] = (acts.saved + (model.num_layers - 1) * T * model.hidden_size * rb.residual
                                + acts.backward_transient)
        moments.append(bwd_f)
    bwd = dict(max(moments, key=lambda d: sum(d.values())))
    # FSDP1's no_sync keeps unsharded gradients across the accumulation micro-steps (eq. M5c)
    nosync = fsdp1_no_sync_grad_bytes(facts, setup, rb)
    fwd["gradients"] += nosync
    bwd["gradients"] += nosync

    opt = dict(base)
    opt["gradients"] = gpu_grads + ms.gradients_step_only
    opt["temporaries"] = ms.optimizer_step_temp
    opt["comm_buffers"] = cb.persistent + cb.optimizer

    phases_alloc = {"after_load": after_load, "forward_peak": fwd, "backward_peak": bwd, "optimizer_peak": opt}
    overhead = framework_overhead_bytes(cluster, calibration)
    phases: dict[str, dict[str, int]] = {}
    allocated_peak = reserved_peak = floor_peak = 0
    phase_tensors: dict[str, int] = {}
    phase_token_churn: dict[str, int] = {}
    residual = residual_tensor_bytes(setup, model.hidden_size)
    for name, cats in phases_alloc.items():
        tensors = phase_tensors[name] = int(sum(cats.values()))
        once = sum(int(cats[k]) for k in ("weights_trainable", "weights_frozen", "optimizer_states", "master_weights"))
        tok = phase_token_churn[name] = int(sum(cats[k] for k in TOKEN_CHURN_CATEGORIES))
        frag = dict(token_churn_bytes=tok, residual_bytes=residual)
        allocated, reserved = allocator_margin_bytes(tensors, tensors - once, cluster, setup, overhead, calibration,
                                                     **frag)
        allocated_peak, reserved_peak = max(allocated_peak, allocated), max(reserved_peak, reserved)
        floor_peak = max(floor_peak, retry_floor(tensors, tensors - once, cluster, setup, calibration, **frag))
        full = dict(cats)
        full["framework_overhead"] = overhead
        full["allocator_margin"] = reserved - tensors
        phases[name] = {k: int(full[k]) for k in CATEGORIES}
    totals = {k: sum(v.values()) for k, v in phases.items()}
    peak_phase = max(totals, key=lambda k: (totals[k], k == "backward_peak"))

    host = host_bytes(model, cluster, setup, rb, ms)
    calib = calibration.label if calibration is not None else "uncalibrated"
    assumptions = _assumptions(facts, cluster, setup, rb, acts, calibrated=calibration is not None) if explain else []
    make = MemoryEstimate if explain else partial(unchecked, MemoryEstimate)  # the search skips the checks, not the plans it shows
    return make(
        model=model.name,
        gpu=cluster.gpu.name,
        gpus_per_node=cluster.gpus_per_node,
        nodes=cluster.nodes,
        setup=setup,
        categories=phases[peak_phase],
        phases=totals,
        peak_phase=peak_phase,
        capacity_bytes=cluster.gpu.memory_bytes,
        host_bytes=sum(host.values()),
        host_categories=host,
        assumptions=tuple(assumptions),
        calibration=calib,
        allocated_peak_bytes=allocated_peak,
        reserved_peak_bytes=min(reserved_peak, totals[peak_phase]),
        phase_tensors=phase_tensors,
        phase_token_churn=phase_token_churn,
        residual_tensor_bytes=residual,
        retry_floor_bytes=floor_peak + overhead,
    )


def tensor_bytes(est: MemoryEstimate) -> int:
    """The peak's tensor bytes: the total less framework overhead and allocator margin (what the FakeTensor
    trace counts)."""
    return est.peak_bytes - est.categories["framework_overhead"] - est.categories["allocator_margin"]


def allocated_bytes(est: MemoryEstimate) -> int:
    """The peak as ``torch.cuda.max_memory_allocated`` would show it (eq. R1-R2): tensors plus the cuBLAS
    workspaces (what validation runs on a GPU compare against). Estimates read from files written before the
    field existed fall back to the tensor bytes."""
    return est.allocated_peak_bytes or tensor_bytes(est)


def _assumptions(
    facts: ModelFacts, cluster: Cluster, setup: Setup, rb: RecipeBytes, acts: ActivationBytes, calibrated: bool = False
) -> list[str]:
    from planner.engine.activations import effective_attention

    model = facts.model
    if model.derived is not None:
        from planner.engine.derived import derived_activation_note

        act_line = derived_activation_note(facts, setup, rb, acts.trainable_layers, acts.checkpointed_layers)
    else:
        act_line = (f"activations: generalised per-block inventory (docs/memory.md eq. A1), {acts.trainable_layers} "
                    f"blocks saving, {acts.checkpointed_layers} checkpointed")
    out = [
        f"recipe {setup.recipe}: {RECIPES[setup.recipe]}",
        f"trainable parameters: {facts.trainable.trainable:,} of {facts.counts.total:,}",
        act_line,
        "steady state: optimizer states exist from the start of the step (step >= 2)",
    ]
    if setup.foreach_adamw:
        out.append("AdamW foreach (torch.optim.AdamW's default, HF adamw_torch): one second-moment-sized temporary per "
                   "parameter at the optimizer step (eq. M4d)")
    elif setup.optimizer == "adamw":
        out.append("AdamW fused implementation (HF Trainer adamw_torch_fused, DeepSpeed FusedAdam): no step temporaries")
    if setup.method == "qlora":
        out.append(
            "QLoRA: NF4 frozen linears + " + ("double-quantised" if setup.double_quant else "fp32")
            + " block constants; embeddings, norms and LM head in the compute dtype; one dequantised layer transient"
        )
    if cluster.world_size > 1 and setup.zero == 0 and setup.fsdp is None:
        out.append("DDP gradient buckets are a second gradient copy (gradient_as_bucket_view=False)")
    if setup.zero:
        out.append("ZeRO bucket sizes as the HF integration fills 'auto': reduce h^2, prefetch 0.9 h^2")
    if setup.fsdp is not None and setup.fsdp_version == 1:
        out.append("FSDP1 (FullyShardedDataParallel) as accelerate and the HF Trainer wrap it: the root unit (embedding, "
                   "final norm, LM head) stays gathered from forward to the end of backward (eq. C4b)"
                   + ("; frozen LoRA block units under reentrant checkpointing keep every block input and its gradient "
                      "to the end of backward (eq. A9d)" if fsdp1_retains_block_inputs(setup) else "")
                   + ("; no_sync keeps unsharded gradients across the accumulation micro-steps (eq. M5c)"
                      if fsdp1_no_sync_grad_bytes(facts, setup, rb) else ""))
    elif setup.fsdp is not None:
        model = facts.model
        if torchtune_separate_head(model, setup):
            wrap = ("FSDP2 as torchtune's shard_model wraps it (block groups; embedding and LM head in groups of their "
                    "own, custom_sharded_layers, resharded after forward; eq. C4d)")
        elif setup.framework == "torchtune":
            wrap = "FSDP2 as torchtune's shard_model wraps it (block groups; the tied embedding in the root, eq. C4e)"
        else:
            wrap = "FSDP2 as accelerate wraps it (block groups, embedding, norm + LM head kept gathered)"
        if model.tie_embeddings and setup.framework != "torchtune":
            wrap += "; the tied weight gathered from the embedding lookup to the end of backward (eq. C4e)"
        out.append(wrap + ("; bf16 MixedPrecisionPolicy: bf16 gathered weights, no autocast copies (eq. M1b)"
                           if rb.gathered else ""))
    if setup.optimizer in ("paged-adamw", "paged-adamw-8bit"):
        out.append("bitsandbytes paged states of tensors >= 1e5 elements live in CUDA unified memory, outside torch's "
                   "allocator: counted in host RAM (eq. M4b)")
    if setup.compile:
        out.append(("torch.compile: fused loss saves 16-bit logits (eq. L4); " if setup.compile_loss else
                    "torch.compile of the blocks, the loss eager (fp32 log-softmax saved, eq. L1); ")
                   + "SiLU outputs recomputed (eq. A10)")
    if setup.trains_adapters and model.moe is not None:
        if facts.lora.experts:
            out.append("peft 0.21 adapts every routed expert (MLP targets moved to the fused expert parameters) and "
                       "saves a merged copy of each expert stack per block (eq. M2b, A7b)")
    if not setup.packing:
        out.append("padding: every micro-batch padded to --seq (worst case)")
    if effective_attention(model, setup) != setup.attention:
        out.append(f"{model.name}: transformers runs eager attention instead of {setup.attention} (logit soft-capping)")
    if model.is_moe and model.derived is None:
        out.append("MoE routing buffers modelled coarsely (eq. A7): least accurate term")
    for d in model.defaults_used:
        out.append(f"config.json omits {d.split(' (')[0].split('=')[0]}: transformers' default used, {d}")
    if calibrated:  # the calibration's measured reserved / allocated ratio replaces eq. R3 (allocator_margin_bytes)
        out.append("allocator margin: the calibration's measured max_memory_reserved / max_memory_allocated")
        return out
    frag = (f"allocator margin: {fragmentation_fraction(cluster, setup):.0%} of the memory freed and re-allocated "
            f"within a step stays fragmented ({run_fragmentation_class(cluster, setup)} class, eq. R3)")
    residual = residual_tensor_bytes(setup, model.hidden_size)
    scale = fragmentation_size_scale(residual)
    if scale < 1:
        frag += (f"; of the activations' share, {scale:.0%}: residual tensors of {residual / MiB:,.0f} MiB, past eq. "
                 f"R3b's {FRAGMENTATION_TENSOR_CAP_BYTES / MiB:,.0f} MiB, where one published source (ZeRO-3 runs) is "
                 "the evidence")
    out.append(frag)
    out.append(
        "framework overhead and allocator margin are defaults until calibrated (plan calibrate)"
    )
    return out
