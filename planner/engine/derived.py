"""The engine's terms for a derived profile: measured inventories in place of the hand-written formulas.

A profile derived from transformers' model code (``plan profiles add``, ``profiles.schema.DerivedModel``)
carries, per setup class, attention kernel and sequence regime, each block kind's saved tensors and working
sets and the tensors outside the blocks, each an exact fit in the batch shape (docs/memory.md eq. D1-D4). The
functions here evaluate them for a :class:`~planner.engine.setup.Setup`; :mod:`planner.engine.memory` and
:mod:`planner.engine.speed.flops` call them where ``model.derived`` is set and keep their formulas otherwise.
:func:`unsupported` names the techniques whose effect on a measured inventory the engine does not model yet
(:mod:`planner.engine.rules` refuses them for derived profiles). Pure: no I/O, no torch.

What is measured and what is still a formula:

* measured: every block's saved bytes (split by which LoRA adapters keep them, with the slope in the rank),
  its forward and backward working sets, block 0's difference (its input needs no gradient under LoRA), the
  tensors outside the blocks, and the logits / loss bytes of the plain loss;
* formula, as for hand-written profiles: checkpointing (a checkpointed block keeps its input, eq. A8),
  selective checkpointing (drops the ``b s^2`` part), activation offload, chunked and Liger losses (eq. L2-L3),
  and LoRA dropout and DoRA (eq. A5's per-adapter terms on the measured layer shapes; the inventories are
  traced without them).
"""

from __future__ import annotations


from planner.engine.activations import ActivationBytes, LayerInventory
from planner.engine.dtypes import RecipeBytes
from planner.engine.facts import ModelFacts
from planner.engine.memo import SetupMemo
from planner.engine.setup import Setup, SetupError
from profiles.schema import DERIVATION, BlockInventory, Fit, ModelProfile, TracedInventory

TRACED_RANK = 8
"""LoRA rank of the traced inventories (validation.derive.inventory.RANK); other ranks use the measured slope."""


class DerivedInventoryMissing(SetupError):
    """The derived profile has no inventory for this setup class (an older or partial derivation): one line,
    exit 2 in the CLI, skipped by the search."""


def setup_class(setup: Setup, rb: RecipeBytes) -> str:
    """The traced class a setup falls in: weights train (full, freeze) or adapters do (LoRA, QLoRA); HF AMP
    (autocast over fp32 trainable weights) or 16-bit everywhere. Freeze under AMP keeps a 16-bit residual
    stream where full fine-tuning keeps an fp32 one; it uses the full-amp inventory (errs high by the
    difference of the norm inputs, at most 2 B per hidden element per token)."""
    trains = "full" if setup.method in ("full", "freeze") else "lora"
    return f"{trains}-{'amp' if rb.autocast else 'half'}"


def traced_attention(model: ModelProfile, setup: Setup) -> str:
    """``eager`` when eager is asked for or transformers cannot run SDPA for the model; FlashAttention-2 keeps
    what SDPA keeps (q, k, v, the output, one log-sum-exp per row)."""
    d = model.derived
    assert d is not None
    if setup.attention == "eager" or not d.supports_sdpa or model.attn_logit_softcap:
        return "eager"
    return "sdpa"


def inventory(model: ModelProfile, setup: Setup, rb: RecipeBytes) -> TracedInventory:
    """The traced inventory for ``setup``: its class, kernel and the regime holding its sequence length."""
    d = model.derived
    assert d is not None
    cls, attn, s = setup_class(setup, rb), traced_attention(model, setup), setup.seq_len
    for inv in d.inventories:
        if inv.setup_class == cls and inv.attention == attn and inv.seq_from <= s and (inv.seq_to is None
                                                                                      or s < inv.seq_to):
            return inv
    raise DerivedInventoryMissing(
        f"{model.name}: the derived profile has no traced inventory for {cls} with {attn} attention at seq {s}; "
        "re-derive it with plan profiles add")


def unsupported(setup: Setup) -> str | None:
    """The first technique of ``setup`` whose effect on a traced inventory the derived engine does not model,
    as a phrase, or None. The inventories are traced per device for one sequence on one rank without compilation,
    FP8 or a partial backward: tensor / context parallelism split the saved tensors in ways that differ by layer
    kind (a Mamba or Gated DeltaNet scan is not split like attention), inductor drops saved tensors per fused
    kernel, TransformerEngine keeps FP8 inputs, and BAdam / LISA pass gradients through frozen blocks (their
    inventories were not traced). Refusing is better than a silent wrong number (issue 13)."""
    if setup.tp > 1:
        return f"tensor parallelism (--tp {setup.tp})"
    if setup.cp > 1:
        return f"context parallelism (--cp {setup.cp})"
    if setup.compile:
        return "torch.compile (--compile)"
    if setup.fp8 == "te":
        return "TransformerEngine FP8 (--fp8 te)"
    if setup.method == "full" and (setup.badam or setup.lisa_layers):
        return "BAdam / LISA (a partial backward)"
    return None


def _adapted(facts: ModelFacts) -> set[str]:
    """The adapter names a traced :class:`~profiles.schema.SavedPart` may list: the adapted ``nn.Linear`` leaf
    names, and ``experts`` when peft adapts the routed experts (its ``ParamWrapper`` sits on the experts module)."""
    return set(facts.lora.modules) | ({"experts"} if facts.lora.experts else set())


def block_saved(block: BlockInventory, setup: Setup, targets: set[str], tokens: int) -> float:
    """Saved bytes of one block: every part some module other than an adapter keeps, and the parts kept by
    adapters the setup uses, at its rank."""
    total = 0.0
    for part in block.saved:
        if part.adapters and not (set(part.adapters) & targets):
            continue
        total += part.size.at(tokens, setup.seq_len)
        if part.adapters:
            total += (setup.lora_rank - TRACED_RANK) * part.per_token_per_rank * tokens
    return total


def _working(fits: tuple[Fit, ...], fits_b1: tuple[Fit, ...], setup: Setup, tokens: int) -> float:
    use = fits_b1 if (setup.micro_batch == 1 and fits_b1) else fits
    return max((f.at(tokens, setup.seq_len) for f in use), default=0.0)


def adapter_extras_per_token(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> float:
    """LoRA dropout's and DoRA's saved tensors per token and layer (averaged over the layers), on the measured
    linear layers; the traced inventories have neither (peft's defaults). Dropout keeps a 1-byte mask per adapted
    input and, without autocast, its output in the adapter dtype (under autocast the adapter's bf16 copy of the
    input, already in the inventory, is made from the dropout output instead of the input); DoRA keeps the base
    and LoRA outputs (eq. A5)."""
    if not setup.trains_adapters or (setup.lora_dropout == 0 and not setup.dora):
        return 0.0
    total = 0.0
    for x in facts.adapted:
        per = 0.0
        if setup.lora_dropout > 0:
            per += x.in_features + (0 if rb.autocast else rb.adapter * x.in_features)
        if setup.dora:
            per += 2 * rb.compute * x.out_features
        total += per * x.count
    return total / facts.model.num_layers


def activation_terms(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> ActivationBytes:
    """:func:`_activation_terms` through a :class:`~planner.engine.memo.SetupMemo` front: the plan search asks for
    the same blocks under hundreds of sharding / optimizer / offload choices, which change nothing here."""
    return _ACT_MEMO(facts, setup, rb)


def _activation_terms(facts: ModelFacts, setup: Setup, rb: RecipeBytes) -> ActivationBytes:
    """Saved activations of all blocks and the working sets, from the measured inventory (eq. D4).

    Per layer ``i``: its kind's saved bytes ``S_i`` (block 0 with its measured difference), or its input alone
    when checkpointed (eq. A8). The forward working set is the largest over layers of the block's own working
    set (plus its whole inventory when checkpointed, held until it exits) less what the blocks above it will
    save, because the peak of block ``i`` comes before they exist; the backward one likewise (a checkpointed
    block is recomputed first). Blocks below the first trainable one save nothing (freeze)."""
    model = facts.model
    d = model.derived
    assert d is not None
    inv = inventory(model, setup, rb)
    T, s, L = setup.micro_batch * setup.seq_len, setup.seq_len, model.num_layers
    targets = _adapted(facts)
    extras = adapter_extras_per_token(facts, setup, rb) * T
    # block 0's difference was traced with every linear adapted; with fewer adapters block 0 keeps less still
    # (what gradients would have carried to the missing adapters): errs high by at most one block's bytes
    first = L - setup.freeze_layers if setup.method == "freeze" else 0
    active = list(range(first, L))
    kept = float(rb.residual * model.hidden_size * T)
    # per kind once: saved bytes, the b s^2 part (selective checkpointing drops it), the working sets
    per_kind = [block_saved(b, setup, targets, T) + extras for b in inv.blocks]
    scores_kind = [sum(p.size.per_token_per_seq for p in b.saved) * T * s for b in inv.blocks]
    wf_kind = [_working(b.forward_working, b.forward_working_b1, setup, T) for b in inv.blocks]
    wb_kind = [_working(b.backward_working, b.backward_working_b1, setup, T) for b in inv.blocks]
    first_delta = inv.first_block.at(T, s)
    ckpt_on = setup.checkpointing == "full"
    selective = setup.checkpointing == "selective"
    every = setup.checkpoint_every
    n_ckpt = 0
    saved_total = 0.0
    full_sum = 0.0
    above = 0.0
    fwd_t = bwd_t = 0.0
    # walk from the top block down: a block's peak comes before the blocks above it save anything
    kept_on_gpu = -(-len(active) // every) if ckpt_on else 0  # checkpointed blocks, counted from the bottom
    for i in reversed(active):
        k = d.layer_kinds[i]
        full_i = per_kind[k] + (first_delta if i == 0 else 0.0)
        full_sum += full_i
        ck = ckpt_on and (i - first) % every == 0
        if ck:
            kept_on_gpu -= 1  # index among checkpointed blocks, from the bottom
            n_ckpt += 1
            saved_i = kept if (not setup.activation_offload or kept_on_gpu < 2) else 0.0
            recompute = full_i
        elif selective:
            saved_i = full_i - scores_kind[k]
            recompute = scores_kind[k]
        else:
            saved_i = full_i
            recompute = 0.0
        fwd_t = max(fwd_t, wf_kind[k] + (full_i if ck else 0.0) - above)
        bwd_t = max(bwd_t, wb_kind[k] + recompute - above)
        above += saved_i
        saved_total += saved_i
    saved = saved_total + inv.outside.at(T, s)
    n = max(len(active), 1)
    avg = LayerInventory(per_token=int(full_sum / n / T) if T else 0, per_token_per_seq=0, transient_per_token=0,
                         items={"derived: measured block inventory (average block)": int(full_sum / n)})
    return ActivationBytes(int(saved), int(max(fwd_t, 0)), int(max(bwd_t, 0)), avg, len(active), n_ckpt)


_ACT_MEMO = SetupMemo(_activation_terms, {
    "grad_accum": 1, "zero": 0, "fsdp": None, "offload": "none", "optimizer": "adamw", "loss": "plain",
    "framework": "hf", "padding_efficiency": 1.0, "packing": True, "optimizer_in_backward": False})
"""the fields :func:`_activation_terms` never reads (the recipe's bytes arrive as ``rb``, part of the key)"""


def logits_terms(model: ModelProfile, setup: Setup, rb: RecipeBytes, tokens: int) -> tuple[int, int, int] | None:
    """(forward peak, saved, backward peak) of the logits and loss for the plain loss, measured (eq. D4); None
    for the chunked and Liger losses, which keep their formulas (eq. L2-L3)."""
    if setup.loss != "plain":
        return None
    inv = inventory(model, setup, rb)
    s = setup.seq_len
    return (int(inv.logits_forward_peak.at(tokens, s)), int(inv.logits_saved.at(tokens, s)),
            int(inv.logits_backward_peak.at(tokens, s)))


def attention_core_flops(model: ModelProfile, seq_len: int, causal_full_square: bool) -> float:
    """Forward FLOPs per token of the token mixers besides their weights, averaged over the layers (eq. S2 for
    each block kind with softmax attention, its measured mixer FLOPs for linear-attention and state-space
    blocks).

    Softmax attention: ``2 * s_eff * heads * (d_qk + d_v)``, ``s_eff`` the mean number of keys a query sees:
    ``s / 2`` causal; within a sliding window ``w``, ``w - w^2 / (2 s)`` once ``s > w``; within chunks of ``c``
    (Llama 4), ``(n c^2 + r^2) / (2 s)`` for ``n`` full chunks and a remainder ``r``. Eager attention computes the
    full square (``s_eff = s``, ``causal_full_square``). Mixer FLOPs were counted with
    ``torch.utils.flop_counter`` on the operators without a weight operand (errs low by the elementwise work)."""
    d = model.derived
    assert d is not None
    s = seq_len
    total = 0.0
    for k in d.layer_kinds:
        b = d.blocks[k]
        if b.heads:
            if causal_full_square:
                s_eff = float(s)
            elif b.attention == "sliding" and b.window and s > b.window:
                s_eff = b.window - b.window * b.window / (2 * s)
            elif b.attention == "chunked" and b.window and s > b.window:
                n, r = divmod(s, b.window)
                s_eff = (n * b.window * b.window + r * r) / (2 * s)
            else:
                s_eff = s / 2
            total += 2.0 * s_eff * b.heads * (b.qk_head_dim + b.v_head_dim)
        total += max(b.mixer_flops.per_token + b.mixer_flops.per_token_per_seq * s, 0.0)
    return total / model.num_layers


def derived_activation_note(facts: ModelFacts, setup: Setup, rb: RecipeBytes, trainable_layers: int,
                            checkpointed_layers: int) -> str:
    """The assumption line of a derived profile's activations: which traced inventory, and what is a formula."""
    model = facts.model
    d = model.derived
    assert d is not None
    inv = inventory(model, setup, rb)
    line = (f"activations: inventory traced on transformers {d.transformers_version}'s {d.architecture} "
            f"({setup_class(setup, rb)}, {inv.attention}, docs/memory.md eq. D4), {trainable_layers} blocks saving, "
            f"{checkpointed_layers} checkpointed")
    if d.derivation < DERIVATION:
        line += (f"; STALE: derived by an older tuneplan (derivation {d.derivation} < {DERIVATION}): run `plan "
                 "profiles add` on its config again")
    if setup.method == "freeze" and rb.autocast:
        line += ("; freeze under AMP uses the full-fine-tuning inventory (fp32 residual stream): errs high by the "
                 "norm inputs' width")
    if setup.trains_adapters and (setup.lora_dropout or setup.dora):
        line += "; LoRA dropout / DoRA tensors added by eq. A5 on the measured layers (not traced)"
    return line
