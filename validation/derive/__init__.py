"""Derive a model profile from transformers' own model code (``plan profiles add``; docs/memory.md eq. D1-D4).

:func:`derive_profile` reads a config the way transformers does (:mod:`validation.derive.config`), builds the
model on the meta device and accounts for every parameter (:mod:`validation.derive.structure`), then traces
each block kind's activation inventory under FakeTensorMode for every setup class, attention kernel and
sequence regime and fits it exactly (:mod:`validation.derive.inventory`). The result is a
:class:`~profiles.schema.ModelProfile` whose ``derived`` section the engine uses instead of its hand-written
formulas; :func:`profiles.cache.save` writes it to the per-user cache.

torch and transformers are imported only when a derivation runs.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from validation.derive.config import DeriveError, RawConfig, _first_line

__all__ = ["DeriveError", "RawConfig", "derive_named", "derive_profile", "derive_from_raw"]


def derive_named(model: str, trust_remote_code: bool = False, name: str | None = None,
                 progress: Callable[[str], None] | None = None) -> Any:
    """Derive from what ``plan profiles add MODEL`` names: a config.json, a folder holding one, a hub id in the
    local Hugging Face cache, or a shipped profile (its own config, or the config its hand-written numbers
    describe, :func:`profiles.hf_config.to_hf_config`)."""
    from pathlib import Path

    from profiles.errors import ProfileError, unknown_name_message
    from profiles.hf_config import find_config, to_hf_config
    from profiles.registry import _shipped, model_names

    if find_config(model) is not None:
        return derive_profile(model, trust_remote_code=trust_remote_code, name=name, progress=progress)
    shipped = _shipped(model)
    if shipped is not None:
        data = json.loads(shipped.derived.config_json) if shipped.derived is not None else to_hf_config(shipped)
        raw = RawConfig(data, None, shipped.name, shipped.hf_id)
        prof = derive_from_raw(raw, trust_remote_code=trust_remote_code, name=name or shipped.name,
                               progress=progress, aliases=shipped.aliases)
        return prof.model_copy(update={"source": shipped.source})
    p = Path(model).expanduser()
    if p.is_dir():
        raise DeriveError(f"no config.json in {model!r} (give a config.json path, a folder holding one, or a hub id "
                          "in the local HF cache)")
    if model.endswith(".json") or model.startswith((".", "/", "~")):
        raise DeriveError(f"no such file or folder {model!r} (give a config.json path, a folder holding one, or a "
                          "hub id in the local HF cache)")
    raise ProfileError(unknown_name_message("model", model, model_names(), "plan profiles models")
                       + "; or give a config.json, a folder holding one, or a hub id in the local HF cache")


def derive_profile(source: str, trust_remote_code: bool = False, name: str | None = None,
                   progress: Callable[[str], None] | None = None, inventories: bool = True) -> Any:
    """Derive the profile of ``source`` (a config.json path, a folder holding one, or a cached hub id)."""
    from validation.derive.config import load_raw

    raw = load_raw(source)
    return derive_from_raw(raw, trust_remote_code=trust_remote_code, name=name, progress=progress,
                           inventories=inventories)


def derive_from_raw(raw: RawConfig, trust_remote_code: bool = False, name: str | None = None,
                    progress: Callable[[str], None] | None = None, inventories: bool = True,
                    aliases: tuple[str, ...] = ()) -> Any:
    """Derive from a parsed config (``raw.data``); see :func:`derive_profile`."""
    import torch
    import transformers

    from profiles.cache import config_sha256
    from profiles.schema import DERIVATION, DerivedModel, ModelProfile, MoE
    from validation.derive.config import build, defaults_used, quiet, to_config
    from validation.derive.structure import read_structure

    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    cfg = to_config(raw, trust_remote_code)
    say(f"building {type(cfg).__name__} on the meta device")
    with quiet(), torch.device("meta"):
        model = build(cfg, trust_remote_code=trust_remote_code)
    arch = type(model).__name__
    st = read_structure(model, cfg)
    supports_sdpa = bool(getattr(type(model), "_supports_sdpa", True))
    del model
    say(f"{arch}: {st.num_layers} blocks of {len(st.blocks)} kind(s), parameters accounted for "
        f"({time.perf_counter() - t0:.1f} s)")

    heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    kv = int(getattr(cfg, "num_key_value_heads", 0) or 0) or heads
    if not heads:
        heads = kv = 1
    if heads % kv:
        kv = heads
    attn_kinds = [b for b in st.blocks if b.heads]
    head_dim = attn_kinds[0].qk_head_dim if attn_kinds else int(getattr(cfg, "head_dim", 0) or 0)
    head_dim = head_dim or max(st.hidden_size // heads, 1)
    windows = [b.window for b in st.blocks if b.window]
    sliding = next((b.window for b in st.blocks if b.attention == "sliding"), None)
    act = str(getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu"))
    gated = any(x.name in ("gate_proj", "gate_up_proj", "w1", "w3", "input_linear") or "gate_up" in x.name
                for x in st.linears if x.group in ("mlp", "moe"))
    mlp_kind = ("gated-gelu" if "gelu" in act else "gated-silu") if gated else ("gelu" if "gelu" in act else "relu")
    moe = None
    if st.experts:
        moe = MoE(num_experts=st.experts, experts_per_token=st.experts_per_token,
                  expert_intermediate_size=st.expert_width or 1, dense_layers=st.dense_layers
                  if st.dense_layers < st.num_layers else 0, experts_autocast=st.experts_autocast)
    dtype = str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "bfloat16").replace("torch.", "")
    if dtype not in ("bfloat16", "float16", "float32"):
        dtype = "bfloat16"
    max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    notes = [f"derived from transformers {transformers.__version__}'s {arch} on the meta device"]
    if not max_pos:
        max_pos = 1_048_576
        notes.append("the config has no max_position_embeddings (no positional limit); 1,048,576 assumed")
    kinds_line = "; ".join(f"{b.name} x{len(b.layers)} ({b.mixer}"
                           + (f", {b.attention}" if b.attention else "")
                           + (f" {b.window}" if b.window else "") + (", MoE" if b.moe else "") + ")"
                           for b in st.blocks)
    notes.append(f"blocks: {kinds_line}")
    derived = DerivedModel(
        transformers_version=transformers.__version__,
        derivation=DERIVATION,
        torch_version=torch.__version__.split("+")[0],
        architecture=arch,
        config_json=json.dumps(raw.data, sort_keys=True, separators=(",", ":")),
        config_sha256=config_sha256(raw.data),
        config_path=str(raw.path.absolute()) if (raw.path and trust_remote_code) else None,
        trust_remote_code=trust_remote_code,
        supports_sdpa=supports_sdpa,
        params=st.params,
        linear_layers=st.linears,
        blocks=tuple(st.blocks),
        layer_kinds=st.layer_kinds,
    )
    fields = dict(
        name=name or raw.name, source=raw.source, hf_id=raw.hf_id, aliases=aliases,
        model_type=str(cfg.model_type), hidden_size=st.hidden_size,
        intermediate_size=st.dense_width or st.expert_width or st.hidden_size,
        num_layers=st.num_layers, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        vocab_size=st.vocab_size, tie_embeddings=st.tie_embeddings, max_positions=max_pos,
        mlp_kind=mlp_kind, norm_kind=st.norm_kind, sliding_window=sliding,
        attn_logit_softcap=_float(getattr(cfg, "attn_logit_softcapping", None)),
        final_logit_softcap=_float(getattr(cfg, "final_logit_softcapping", None)),
        moe=moe, dtype=dtype, notes=". ".join(notes), defaults_used=defaults_used(raw, cfg), derived=derived,
    )
    profile = ModelProfile(**fields)
    if not inventories:
        return profile
    invs, flops = _inventories(profile, cfg, st, windows, supports_sdpa, say)
    blocks = tuple(b.model_copy(update={"mixer_flops": flops[k]}) if k in flops else b
                   for k, b in enumerate(st.blocks))
    derived = derived.model_copy(update={"inventories": invs, "blocks": blocks})
    profile = ModelProfile(**(fields | {"derived": derived}))
    say(f"derived in {time.perf_counter() - t0:.1f} s")
    return profile


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _inventories(profile: Any, cfg: Any, st: Any, windows: list[int], supports_sdpa: bool,
                 say: Callable[[str], None]) -> tuple[Any, dict[int, Any]]:
    """Pick the blocks to trace (one of each kind, at a position other than 0 where the model has one there,
    and block 0) and measure every class."""
    from validation.derive.inventory import measure

    kinds = list(range(len(st.blocks)))
    rep: dict[int, int] = {}
    for k in kinds:
        layers = st.blocks[k].layers
        later = [i for i in layers if i >= 1]
        rep[k] = later[0] if later else layers[0]
    remote = profile.derived.trust_remote_code

    def pick(want: list[int]) -> list[int]:
        if want == list(range(len(want))) or _same_kinds(cfg, want, remote):
            return want
        return list(range(max(want) + 1))  # the pattern is computed from the index: trace the prefix

    # LoRA: block 0 differs (its input needs no gradient), so it is traced too; full fine-tuning trains the
    # embedding, so block 0 is like any other and one block of each kind is enough
    lora_layers = pick(sorted({0, *rep.values()}) if st.num_layers >= 2 else [0])
    full_layers = pick(sorted(set(rep.values())))
    say(f"tracing blocks {', '.join(map(str, lora_layers))} under FakeTensorMode")
    import logging

    fake_log = logging.getLogger("torch._subclasses.fake_tensor")  # logs a failing op's traceback at ERROR
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # the DeriveError below says it in one line
    try:
        return measure(profile, {"full": full_layers, "lora": lora_layers}, kinds, rep, st.layer_kinds[0], windows,
                       supports_sdpa, scan_unit(cfg), progress=say)
    except DeriveError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        # the model code itself failed on this config (transformers accepted it, its forward does not run: e.g.
        # a hidden size that the head count does not divide); the user's config is at fault, not tuneplan
        raise DeriveError(f"{cfg.model_type}: transformers' model code fails to run a block of this config "
                          f"({_first_line(e)}); check the config's shapes") from None
    finally:
        fake_log.setLevel(level)


def scan_unit(cfg: Any) -> int:
    """Sequence points are multiples of the largest scan chunk in the config (Mamba-2 ``mamba_chunk_size``),
    at least :data:`~validation.derive.inventory.UNIT` (Gated DeltaNet's fixed chunk of 64)."""
    from validation.derive.inventory import UNIT

    sizes = [v for k, v in vars(cfg).items() if "chunk_size" in k and k not in ("attention_chunk_size",
             "chunk_size_feed_forward") and isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return max([UNIT, *sizes])


def _same_kinds(cfg: Any, chosen: list[int], remote: bool) -> bool:
    """Whether a model built with only the ``chosen`` layers has, block for block, the kinds of those layers
    (per-layer config lists are picked at the chosen indices; patterns computed from the index are not)."""
    import torch

    from validation.derive.config import build, quiet, selected
    from validation.derive.structure import decoder_layers, layer_signature

    sub = selected(cfg, chosen)
    try:
        with quiet(), torch.device("meta"):
            model = build(sub, trust_remote_code=remote)
    except DeriveError:  # the selection is not a valid config of this class: trace the prefix
        return False
    with quiet(), torch.device("meta"):
        _, layers = decoder_layers(model)
        got = [layer_signature(layer, sub, j) for j, layer in enumerate(layers)]
    # the signatures of the chosen layers in the full model, from a prefix build of the largest index
    pre = selected(cfg, list(range(max(chosen) + 1)))
    with quiet(), torch.device("meta"):
        model = build(pre, trust_remote_code=remote)
        _, layers = decoder_layers(model)
        full_sigs = {i: layer_signature(layers[i], pre, i) for i in chosen}
    return got == [full_sigs[i] for i in chosen]
