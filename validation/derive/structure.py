"""Read the engine's facts off a model built on the meta device (docs/memory.md eq. D1).

Every parameter of the built model is accounted for, or the derivation stops with a one-line
:class:`~validation.derive.config.DeriveError` naming the module it cannot place:

* the input embedding, the LM head (absent from ``named_parameters`` when tied), norms (a module whose class
  or name says norm, anywhere);
* inside each decoder block: ``nn.Linear`` layers (what LoRA adapts), routed experts (3-D tensors whose first
  dimension is the expert count, with their 2-D biases), routers, ``nn.Conv1d`` token mixers (state-space and
  short-convolution layers), and per-head or per-channel vectors of the token mixer (attention sinks,
  ``A_log``, ``dt_bias``, ``D``);
* anything else (an embedding inside a block, a 2-D parameter that is not a linear layer, a module outside the
  blocks that is not an embedding, norm or head) is a layer kind the engine cannot model: an error.

Groups follow :data:`profiles.params.GROUPS`: the token mixer's parameters are ``attention``, the MLP's are
``mlp`` in blocks without routed experts and ``moe`` in blocks with them (router, experts, shared experts), any
norm is ``norms``. Blocks with the same modules, shapes and per-layer config entries form one
:class:`~profiles.schema.BlockKind`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from profiles.schema import BlockKind, DerivedLinear, DerivedParams
from validation.derive.config import DeriveError, per_layer_keys

MIXER_WORDS = ("attn", "attention", "mamba", "mixer", "conv", "ssm", "deltanet", "token_mix", "recurrent",
               "linear_attn", "operator")
"""Container names of a block's token mixer (``self_attn``, ``linear_attn``, ``mamba``, ``conv``, ...)."""
MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward", "moe", "expert", "block_sparse", "shared")
"""Container names of a block's MLP (``mlp``, ``feed_forward``, ``block_sparse_moe``, ``shared_mlp``, ...)."""
ROUTER_WORDS = ("gate", "router")
PEFT_MAMBA_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
PEFT_MAMBA_EXCLUDED = frozenset({"out_proj", "conv1d"})
"""peft refuses LoRA on these modules of these model types (peft 0.21.2 ``tuners_utils.py``,
``_check_lora_target_modules_mamba``): they are never among a derived profile's LoRA targets."""
TOPK_ATTRS = ("top_k", "num_experts_per_tok", "topk", "moe_topk", "num_experts_per_token", "top_k_experts")


def is_norm(name: str, module: Any) -> bool:
    cls = type(module).__name__.lower()
    last = name.split(".")[-1].lower()
    return "norm" in cls or "norm" in last or last.startswith(("ln", "layernorm"))


@dataclass
class _Linear:
    path: str
    name: str
    in_features: int
    out_features: int
    bias: bool
    group: str
    role: str
    per_layer: int
    active_per_layer: int
    count: int = 0
    active: int = 0


@dataclass
class Structure:
    """What the meta model says, before any trace."""

    params: DerivedParams
    linears: tuple[DerivedLinear, ...]
    blocks: list[BlockKind]
    layer_kinds: tuple[int, ...]
    hidden_size: int
    vocab_size: int
    tie_embeddings: bool
    num_layers: int
    experts: int = 0
    experts_per_token: int = 0
    expert_width: int = 0
    dense_layers: int = 0
    dense_width: int = 0
    experts_autocast: bool = False
    """the routed experts run through autocast-enabled ops (see :func:`experts_autocast`)"""
    norm_kind: str = "rmsnorm"
    notes: list[str] = field(default_factory=list)


def decoder_layers(model: Any) -> tuple[str, list[Any]]:
    """The decoder block list: the first ``nn.ModuleList`` named ``...layers`` (``model.layers``)."""
    from torch import nn

    for name, mod in model.named_modules():
        if name.split(".")[-1] in ("layers", "h", "blocks") and isinstance(mod, nn.ModuleList) and len(mod):
            return name, list(mod)
    raise DeriveError(f"{type(model).__name__}: no list of decoder blocks (model.layers) found")


def _container_group(path: str, moe_layer: bool, owner: str) -> str:
    first = path.split(".")[0].lower()
    if any(w in first for w in MLP_WORDS):
        return "moe" if moe_layer else "mlp"
    if any(w in first for w in MIXER_WORDS):
        return "attention"
    raise DeriveError(f"cannot account for layer {owner}.{path}: it is neither a token mixer (attention, "
                      "state-space, convolution) nor an MLP by its name")


def _experts_of(layer: Any) -> tuple[int, Any] | None:
    """(experts, module) when the block holds routed experts as 3-D tensors (transformers >= 5) or a
    ModuleList named experts."""
    from torch import nn

    for name, mod in layer.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            continue
        own = list(mod.named_parameters(recurse=False))
        three = [p for _, p in own if p.dim() == 3]
        if three:
            return int(three[0].shape[0]), mod
        if name.split(".")[-1] == "experts" and isinstance(mod, nn.ModuleList) and len(mod):
            return len(mod), mod
    return None


def experts_autocast(mod: Any) -> bool:
    """Whether a routed-experts module multiplies through ops that autocast casts per use (and caches: the cast
    of a leaf fp32 weight is kept until autocast exits, then saved for backward). transformers' experts interface
    (``integrations/moe.py``, ``@use_experts_implementation``: its ``__init__`` sets ``has_gate`` and
    ``is_transposed``) dispatches to ``grouped_mm``, which is not autocast-enabled and casts the input to the
    weight's dtype by hand: no copy. A module with its own forward (Llama 4's ``Llama4TextExperts``:
    ``torch.bmm``) or a ModuleList of ``nn.Linear`` experts goes through autocast's cast policy: a copy per
    weight. Assumption: an undecorated module's own forward uses matmul-family ops (bmm / matmul / einsum /
    linear), all on autocast's lower-precision list."""
    from torch import nn

    if isinstance(mod, nn.ModuleList):
        return True
    return not (hasattr(mod, "has_gate") and hasattr(mod, "is_transposed"))


def _top_k(layer: Any, cfg: Any) -> int:
    for mod in layer.modules():
        for attr in TOPK_ATTRS:
            v = getattr(mod, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    for attr in TOPK_ATTRS:
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    raise DeriveError(f"{type(layer).__name__}: has routed experts but no top-k setting "
                      f"({', '.join(TOPK_ATTRS)}) on its modules or config")


def _expert_dims(pname: str, shape: tuple[int, ...], hidden: int) -> tuple[int, int]:
    """(in, out) of one expert's matrix from a 3-D ``(E, a, b)`` tensor: the hidden side is the input except for
    the down projection. transformers stores some as (E, in, out) and some as (E, out, in)."""
    a, b = shape[1], shape[2]
    down = any(w in pname.lower() for w in ("down", "w2", "output", "out_proj", "c_proj"))
    if down:
        return (a, b) if b == hidden else (b, a)
    return (a, b) if a == hidden else (b, a)


def _mixer(layer: Any) -> str:
    """The kind of token mixer, from the module classes of the block."""
    names = " ".join(type(m).__name__.lower() for m in layer.modules())
    paths = " ".join(n.lower() for n, _ in layer.named_modules())
    ssm = "mamba" in names or "mamba" in paths or ("mixer" in names and "a_log" in _param_names(layer))
    linear = "deltanet" in names or "linear_attn" in paths or "lightning" in names
    conv = ("shortconv" in names or ".conv" in (" " + paths)) and not ssm and not linear
    attn = any(("attention" in type(m).__name__.lower()) and not any(w in type(m).__name__.lower() for w in
               ("linear", "lightning", "deltanet")) for m in layer.modules())
    if attn and (ssm or linear):
        return "hybrid"
    if ssm:
        return "state-space"
    if linear:
        return "linear-attention"
    if conv and not attn:
        return "convolution"
    return "attention" if attn else "none"


def _param_names(layer: Any) -> str:
    return " ".join(n.lower() for n, _ in layer.named_parameters())


def _attention_of(layer: Any) -> Any:
    for name, mod in layer.named_modules():
        cls = type(mod).__name__.lower()
        if "attention" in cls and not any(w in cls for w in ("linear", "lightning", "deltanet")) and name:
            return mod
    return None


def _span(cfg: Any, i: int, attn: Any) -> tuple[str | None, int | None]:
    """Which keys a layer's queries see: full, a sliding window, or a chunk (transformers' ``layer_types``)."""
    if attn is None:
        return None, None
    types = getattr(cfg, "layer_types", None)
    lt = types[i] if isinstance(types, list) and i < len(types) else None
    win = getattr(attn, "sliding_window", None)
    if lt == "chunked_attention":
        return "chunked", int(getattr(cfg, "attention_chunk_size"))
    if lt == "sliding_attention" or (lt is None and win):
        w = win or getattr(cfg, "sliding_window", None)
        return ("sliding", int(w)) if w else ("full", None)
    if lt is None and getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) \
            and not isinstance(types, list):
        return "sliding", int(cfg.sliding_window)
    return "full", None


def read_structure(model: Any, cfg: Any) -> Structure:
    """Account for every parameter of ``model`` (built on the meta device from ``cfg``)."""
    from torch import nn

    prefix, layers = decoder_layers(model)
    L = len(layers)
    if L != cfg.num_hidden_layers:
        raise DeriveError(f"{type(model).__name__}: {L} blocks built, config says {cfg.num_hidden_layers}")
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if emb is None or not hasattr(emb, "weight"):
        raise DeriveError(f"{type(model).__name__}: no input embedding")
    hidden = int(emb.weight.shape[1])
    vocab = int(emb.weight.shape[0])
    tied = head is not None and head.weight is emb.weight
    groups = dict.fromkeys(("embedding", "attention", "mlp", "moe", "norms", "lm_head"), 0)
    inactive = 0
    seen: set[int] = set()

    # ---- outside the blocks
    layer_ids = {id(p) for layer in layers for p in layer.parameters()}
    module_of = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            module_of.setdefault(id(p), (mname, mod))
    norm_kinds = set()
    for name, p in model.named_parameters():
        if id(p) in layer_ids or id(p) in seen:
            continue
        seen.add(id(p))
        mname, mod = module_of[id(p)]
        if p is emb.weight:
            groups["embedding"] += p.numel()
        elif head is not None and p is head.weight:
            groups["lm_head"] += p.numel()
        elif head is not None and mod is head:  # an LM-head bias
            groups["lm_head"] += p.numel()
        elif is_norm(mname, mod):
            groups["norms"] += p.numel()
            norm_kinds.add(type(mod).__name__)
        else:
            raise DeriveError(f"cannot account for layer {mname} ({type(mod).__name__}): a module outside the "
                              "decoder blocks that is not an embedding, a norm or the LM head")

    # ---- inside the blocks
    linears: dict[tuple, _Linear] = {}
    signatures: list[tuple] = []
    kinds_info: list[dict] = []
    experts_seen = topk_seen = 0
    cast_experts = False
    dense_layers = 0
    for i, layer in enumerate(layers):
        owner = f"{prefix}.{i}"
        ex = _experts_of(layer)
        moe_layer = ex is not None
        k = _top_k(layer, cfg) if moe_layer else 0
        E = ex[0] if ex else 0
        cast_experts = cast_experts or (ex is not None and experts_autocast(ex[1]))
        layer_params = 0
        per_layer_lin: dict[tuple, int] = {}
        for path, mod in layer.named_modules():
            own = list(mod.named_parameters(recurse=False))
            if not own:
                continue
            n_own = sum(p.numel() for _, p in own)
            layer_params += n_own
            if is_norm(path, mod):
                groups["norms"] += n_own
                norm_kinds.add(type(mod).__name__)
                continue
            if isinstance(mod, nn.Embedding):
                raise DeriveError(f"cannot account for layer {owner}.{path} ({type(mod).__name__}): an embedding "
                                  "inside a decoder block (per-layer embeddings) is a layer kind the engine does not "
                                  "model")
            group = _container_group(path, moe_layer, owner)
            last = path.split(".")[-1]
            if isinstance(mod, nn.Linear):
                routerish = moe_layer and any(w in last.lower() for w in ROUTER_WORDS) and \
                    mod.out_features in (E, 1) and "proj" not in last.lower()
                role = "router" if routerish else "linear"
                if role == "linear" and cfg.model_type in PEFT_MAMBA_TYPES and last in PEFT_MAMBA_EXCLUDED:
                    role = "excluded"
                key = (path, last, mod.in_features, mod.out_features, mod.bias is not None, group, role)
                per_layer_lin[key] = per_layer_lin.get(key, 0) + 1
                groups[group] += n_own
                continue
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                groups[group] += n_own  # depthwise short convolutions of state-space / conv mixers
                continue
            three = [(pn, p) for pn, p in own if p.dim() == 3]
            if three:  # routed experts: (E, a, b) matrices and (E, b) biases
                biases = {pn: p for pn, p in own if p.dim() == 2 and p.shape[0] == three[0][1].shape[0]}
                for pn, p in three:
                    a, b = _expert_dims(pn, tuple(p.shape), hidden)
                    bias = next((bn for bn in biases if bn.startswith(pn)), None)
                    key = (f"{path}.{pn}", f"experts.{pn}", a, b, bias is not None, group, "expert")
                    per_layer_lin[key] = per_layer_lin.get(key, 0) + int(p.shape[0])
                    n = p.numel() + (biases[bias].numel() if bias else 0)
                    inactive += n * (p.shape[0] - k) // p.shape[0]
                used = {pn for pn, _ in three} | {bn for bn in biases if any(bn.startswith(pn) for pn, _ in three)}
                rest = [(pn, p) for pn, p in own if pn not in used]
                if any(p.dim() > 1 for _, p in rest):
                    raise DeriveError(f"cannot account for layer {owner}.{path} ({type(mod).__name__}): expert "
                                      f"parameters {', '.join(pn for pn, _ in rest)} are not expert matrices or biases")
                groups[group] += n_own
                experts_seen = max(experts_seen, int(three[0][1].shape[0]))
                continue
            if moe_layer and any(w in last.lower() for w in ROUTER_WORDS) and len(own) <= 2 and \
                    own[0][1].dim() == 2 and own[0][1].shape[0] == E:
                w = own[0][1]
                key = (path, last, int(w.shape[1]), int(w.shape[0]), len(own) == 2, group, "router")
                per_layer_lin[key] = per_layer_lin.get(key, 0) + 1
                groups[group] += n_own
                continue
            big = [pn for pn, p in own if p.dim() > 1]
            if big:
                raise DeriveError(
                    f"cannot account for layer {owner}.{path} ({type(mod).__name__}): its parameters "
                    f"{', '.join(big)} are matrices but it is not nn.Linear, a convolution or routed experts")
            groups[group] += n_own  # per-head / per-channel vectors: sinks, A_log, dt_bias, D
        # ModuleList-of-MLP experts (older implementations): nn.Linear inside "experts.N."
        for key, n in list(per_layer_lin.items()):
            path, last, a, b, bias, group, role = key
            parts = path.split(".")
            if role == "linear" and "experts" in parts and parts[parts.index("experts") + 1:][:1] and \
                    parts[parts.index("experts") + 1].isdigit():
                del per_layer_lin[key]
                j = parts.index("experts")
                gkey = (".".join(parts[:j + 1] + parts[j + 2:]), f"experts.{last}", a, b, bias, group, "expert")
                per_layer_lin[gkey] = per_layer_lin.get(gkey, 0) + n
                p_each = a * b + (b if bias else 0)
                inactive += p_each * (n - k * n // E) if E else 0
        for key, n in per_layer_lin.items():
            path, last, a, b, bias, group, role = key
            active = (n * k // E) if role == "expert" and E else n
            rec = linears.get(key)
            if rec is None:
                rec = linears[key] = _Linear(path, last, a, b, bias, group, role, n, active)
            rec.count += n
            rec.active += active
        if moe_layer:
            topk_seen = topk_seen or k
        else:
            dense_layers += 1
        attn = _attention_of(layer)
        span, window = _span(cfg, i, attn)
        signatures.append(layer_signature(layer, cfg, i))
        heads = int(getattr(cfg, "num_attention_heads", 0) or 0) if attn is not None else 0
        qk = int(getattr(attn, "qk_head_dim", None) or getattr(attn, "head_dim", 0) or 0) if attn is not None else 0
        v = int(getattr(attn, "v_head_dim", None) or qk) if attn is not None else 0
        rope_flag = getattr(attn, "use_rope", None) if attn is not None else None
        kinds_info.append(dict(
            mixer=_mixer(layer), attention=span, window=window, heads=heads, qk_head_dim=qk, v_head_dim=v,
            rope=bool(rope_flag) if rope_flag is not None else attn is not None,
            sinks=attn is not None and any(pn.split(".")[-1] == "sinks" for pn, _ in attn.named_parameters()),
            moe=moe_layer, params=layer_params,
            label=_label(cfg, i, span, moe_layer)))
    total_layer_params = sum(info["params"] for info in kinds_info)
    accounted = groups["attention"] + groups["mlp"] + groups["moe"]
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if sum(groups.values()) != total:
        raise DeriveError(f"{type(model).__name__}: accounted {sum(groups.values()):,} of {total:,} parameters")
    del total_layer_params, accounted

    # ---- block kinds, in order of first appearance
    kind_of: dict[tuple, int] = {}
    blocks: list[BlockKind] = []
    layer_kinds = []
    for i, sig in enumerate(signatures):
        if sig not in kind_of:
            info = kinds_info[i]
            kind_of[sig] = len(blocks)
            blocks.append(BlockKind(
                name=info["label"], layers=(), mixer=info["mixer"], attention=info["attention"],
                window=info["window"], rope=info["rope"], sinks=info["sinks"], heads=info["heads"],
                qk_head_dim=info["qk_head_dim"], v_head_dim=info["v_head_dim"], moe=info["moe"],
                params=info["params"]))
        layer_kinds.append(kind_of[sig])
    names = [b.name for b in blocks]
    for j, b in enumerate(blocks):
        name = b.name if names.count(b.name) == 1 else f"{b.name}#{names[:j + 1].count(b.name)}"
        blocks[j] = b.model_copy(update={"name": name, "layers": tuple(i for i, k in enumerate(layer_kinds) if k == j)})

    largest = 0
    for mod in model.modules():
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        largest = max(largest, own)
    params = DerivedParams(
        embedding=groups["embedding"], attention=groups["attention"], mlp=groups["mlp"], moe=groups["moe"],
        norms=groups["norms"], lm_head=groups["lm_head"], active=total - inactive, largest_module=largest)
    lin = tuple(
        DerivedLinear(name=r.name, path=r.path, in_features=r.in_features, out_features=r.out_features, bias=r.bias,
                      count=r.count, active_count=r.active, group=r.group, role=r.role)  # type: ignore[arg-type]
        for r in linears.values())
    # MLP widths: the input width of the projection back to the hidden size
    dense_width = max((r.in_features for r in linears.values() if r.group == "mlp" and r.out_features == hidden
                       and r.role == "linear"), default=0)
    expert_width = max((r.in_features for r in linears.values() if r.role == "expert" and r.out_features == hidden),
                       default=0)
    norm_kind = "layernorm" if any("layernorm" in n.lower() and "rms" not in n.lower() for n in norm_kinds) \
        else "rmsnorm"
    return Structure(params=params, linears=lin, blocks=blocks, layer_kinds=tuple(layer_kinds), hidden_size=hidden,
                     vocab_size=vocab, tie_embeddings=tied, num_layers=L, experts=experts_seen,
                     experts_per_token=topk_seen, expert_width=expert_width, dense_layers=dense_layers,
                     dense_width=dense_width, experts_autocast=cast_experts, norm_kind=norm_kind)


def layer_signature(layer: Any, cfg: Any, i: int) -> tuple:
    """What makes two blocks the same kind: their modules (names, classes, parameter shapes), their per-layer
    config entries (``layer_types``, ``no_rope_layers``, ...) and which keys their queries see."""
    mods = tuple((path, type(mod).__name__, tuple(tuple(p.shape) for p in mod.parameters(recurse=False)))
                 for path, mod in layer.named_modules())
    per_layer_cfg = tuple((key, repr(getattr(cfg, key)[i])) for key in per_layer_keys(cfg))
    return (mods, per_layer_cfg, _span(cfg, i, _attention_of(layer)))


def _label(cfg: Any, i: int, span: str | None, moe: bool) -> str:
    types = getattr(cfg, "layer_types", None)
    lt = types[i] if isinstance(types, list) and i < len(types) else None
    base = str(lt) if lt else (f"{span}_attention" if span else "block")
    return base + ("+moe" if moe else "")
