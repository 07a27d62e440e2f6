"""Hugging Face ``config.json`` <-> :class:`ModelProfile` for the hand-written families: one entry per model type.

Reading a config is JSON parsing: this module never imports torch. Each hand-written ``model_type`` has ONE entry
in :data:`FAMILIES` (a :class:`Family`): the transformers class it builds, a reader mapping config keys to profile
fields, a writer for the inverse, and the defaults its config class fills in for keys a config.json may omit.
The readers mirror the module structure of the transformers implementation
(``transformers/models/<type>/modeling_<type>.py``, version 5.24) or, for the remote-code types (``chatglm``,
``internlm2``), the model's own ``modeling_*.py``. These families are the fast path that needs no torch; any
other architecture transformers builds gets its profile derived from the model code once (``plan profiles add``,
``validation.derive``), and ``tests/profiles/test_derived_equals_handwritten.py`` holds every family equal to its
derived profile.

A key the config.json omits takes the value transformers' config class gives it, as ``from_pretrained`` would:
read from the installed config class (built from the other keys, so derived values such as ``head_dim =
hidden_size / num_attention_heads`` come out right) when transformers is installed, else from the family's
table of class defaults (:attr:`Family.defaults`, transformers 5.24.0; a test checks the tables against the
classes). Every default used is recorded in the profile's ``defaults_used`` and stated in each estimate's
assumptions.

:func:`to_hf_config` is the inverse: a plain dict that ``AutoConfig.for_model(**d)`` (or the model's remote
code) builds into the same architecture. Tests check the round trip and build every buildable profile on the
meta device for exact parameter counts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from profiles.errors import ProfileError, validation_message
from profiles.schema import MLA, ModelProfile, MoE

TRANSFORMERS_VERSION_OF_TABLES = "5.24.0"
"""The transformers version whose config classes the default tables were read from."""

_UNSET = object()

_GATED_ACTS = {
    "silu": "gated-silu",
    "swish": "gated-silu",
    "swiglu": "gated-silu",
    "gelu": "gated-gelu",
    "gelu_new": "gated-gelu",
    "gelu_fast": "gated-gelu",
    "gelu_pytorch_tanh": "gated-gelu",
}
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# ----------------------------------------------------------------------------------------------------------------
# locating a config.json


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _cached_config(hub_id: str) -> Path | None:
    """``models--org--name/snapshots/<rev>/config.json``: the revision ``refs/main`` names, else the newest."""
    repo = hub_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text(encoding="utf-8").strip() / "config.json"
        if cand.is_file():
            return cand
    found = [d / "config.json" for d in snaps.iterdir() if (d / "config.json").is_file()]
    if not found:
        return None
    return max(found, key=lambda p: p.parent.stat().st_mtime)


def find_config(arg: str) -> Path | None:
    """Resolve ``--model`` to a config.json: a path to the file, a folder holding ``config.json``, or a hub id
    (``org/name``) whose config sits in the local Hugging Face cache. ``None`` if none of those exists.

    Nothing is downloaded. A path on disk wins over a hub id of the same spelling.
    """
    p = Path(arg).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        return p / "config.json" if (p / "config.json").is_file() else None
    if _HUB_ID.match(arg.strip()):
        return _cached_config(arg.strip())
    return None


def _hub_id_of(path: Path) -> str | None:
    """``org/name`` for a file inside ``models--org--name/snapshots/<rev>/``, else None."""
    parts = path.absolute().parts  # not resolve(): the cache's config.json is a symlink into blobs/
    for i, part in enumerate(parts):
        if part.startswith("models--") and i + 1 < len(parts) and parts[i + 1] == "snapshots":
            return part[len("models--") :].replace("--", "/", 1)
    return None


def profile_from_config_file(path: str | Path) -> ModelProfile:
    """Read a ``config.json`` into a :class:`ModelProfile`; :class:`ProfileError` (one line) if it can't."""
    path = Path(path)
    src = str(path.absolute())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"{src}: cannot read the file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ProfileError(f"{src}: not JSON (not UTF-8 text)") from e
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{src}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    hub_id = _hub_id_of(path)
    name = hub_id.split("/")[-1] if hub_id else (path.absolute().parent.name or path.stem)
    return profile_from_hf_config(cfg, source=src, name=name, hf_id=hub_id)


# ----------------------------------------------------------------------------------------------------------------
# reading


class _Reader:
    """Typed access to one config dict; every failure is a one-line :class:`ProfileError` naming ``src``.

    A key the dict omits takes transformers' default for the model type (:meth:`raw`), recorded in ``used``."""

    def __init__(self, cfg: dict[str, Any], src: str, model_type: str):
        self.cfg, self.src, self.t = cfg, src, model_type
        self.family = FAMILIES.get(model_type)
        self.used: list[str] = []
        self._instance: Any = _UNSET

    def fail(self, problem: str) -> ProfileError:
        return ProfileError(f"{self.src}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.cfg

    def _config_instance(self) -> Any:
        """transformers' config object built from this dict (None without transformers, for remote-code types,
        or when the class rejects the dict: then the table of defaults answers)."""
        if self._instance is _UNSET:
            self._instance = None
            if self.family is not None and self.family.remote_code is None and \
                    importlib.util.find_spec("transformers") is not None:
                try:
                    import logging
                    import warnings

                    from transformers import AutoConfig

                    logging.disable(logging.WARNING)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        data = {k: v for k, v in self.cfg.items() if k != "model_type"}
                        self._instance = AutoConfig.for_model(self.t, **data)
                except Exception:  # noqa: BLE001 - the class rejects the dict: fall back to the table
                    self._instance = None
                finally:
                    logging.disable(logging.NOTSET)
        return self._instance

    def default(self, key: str) -> tuple[bool, Any, str]:
        """(found, value, source) of transformers' default for ``key`` given the rest of the dict."""
        inst = self._config_instance()
        if inst is not None and hasattr(inst, key):
            import transformers

            return True, getattr(inst, key), f"{type(inst).__name__}, transformers {transformers.__version__}"
        fam = self.family
        if fam is not None and key in fam.defaults:
            where = (f"{fam.config_class} default, transformers {TRANSFORMERS_VERSION_OF_TABLES}"
                     if fam.remote_code is None else f"{fam.config_class} default")
            return True, fam.defaults[key], where
        return False, None, ""

    def raw(self, key: str) -> Any:
        """The value of ``key``, or transformers' default for it (recorded in ``used``), or a missing-key error."""
        if key in self.cfg:
            return self.cfg[key]
        found, value, source = self.default(key)
        if not found:
            raise self.fail(f"missing key {key!r} (model_type {self.t!r} has no default for it)")
        note = f"{key}={value!r} ({source})"
        if note not in self.used:
            self.used.append(note)
        return value

    def int(self, key: str, default: int | None = None, allow_zero: bool = False) -> int:
        if key not in self.cfg and default is not None:
            return default
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
            need = "a non-negative" if allow_zero else "a positive"
            raise self.fail(f"{key} must be {need} integer, got {v!r}")
        return v

    def opt_int(self, key: str) -> int | None:
        """An integer that may be null (e.g. ``q_lora_rank``)."""
        v = self.raw(key)
        return None if v is None else self.int(key)

    def bool(self, key: str) -> bool:
        v = self.raw(key)
        if not isinstance(v, bool):
            raise self.fail(f"{key} must be true or false, got {v!r}")
        return v

    def float_or_none(self, key: str) -> float | None:
        v = self.raw(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{key} must be a number or null, got {v!r}")
        return float(v)

    def dtype(self) -> str:
        v = self.cfg.get("dtype", self.cfg.get("torch_dtype"))
        if v is None:
            return "bfloat16"
        if v not in _DTYPES:
            raise self.fail(f"unsupported dtype {v!r}; expected one of bfloat16, float16, float32")
        return _DTYPES[v]

    def mlp_kind(self, *keys: str) -> str:
        """The gated MLP's activation from the first of ``keys`` the dict (or the class's defaults) has."""
        key = next((k for k in keys if self.cfg.get(k) is not None), None)
        if key is None:
            key = next((k for k in keys if self.default(k)[0] and self.default(k)[1] is not None), keys[0])
        v = self.raw(key)
        if v not in _GATED_ACTS:
            raise self.fail(f"unsupported {key} {v!r} for model_type {self.t!r}; expected one of "
                            f"{', '.join(sorted(_GATED_ACTS))}")
        return _GATED_ACTS[v]

    def heads(
        self, hidden: int, head_dim_key: str | None = "head_dim", kv_key: str | None = "num_key_value_heads"
    ) -> dict:
        """num_heads, num_kv_heads and head_dim, with the divisibility checks.

        ``kv_key`` None means multi-head attention; a kv count of None (omitted, and the class default None)
        means multi-head attention too, and a head_dim of None is ``hidden // heads``, as the config classes'
        ``__post_init__`` does. ``head_dim_key`` None: the architecture always derives it.
        """
        heads = self.int("num_attention_heads")
        kv = heads
        if kv_key is not None and (kv_key in self.cfg or self.default(kv_key)[0]):
            kv = heads if self.raw(kv_key) is None else self.int(kv_key)
        head_dim = None
        if head_dim_key is not None and (head_dim_key in self.cfg or self.default(head_dim_key)[0]):
            head_dim = None if self.raw(head_dim_key) is None else self.int(head_dim_key)
        if head_dim is None:
            if hidden % heads:
                raise self.fail(
                    f"hidden_size {hidden} is not divisible by num_attention_heads {heads} and there is no head_dim"
                )
            head_dim = hidden // heads
        if heads % kv:
            raise self.fail(f"{kv_key} {kv} does not divide num_attention_heads {heads}")
        return {"num_heads": heads, "num_kv_heads": kv, "head_dim": head_dim}

    def leading_dense_layers(self, num_layers: int) -> int:
        """Qwen-MoE ``mlp_only_layers`` / ``decoder_sparse_step`` as a count of leading dense layers."""
        step = self.int("decoder_sparse_step")
        only = self.raw("mlp_only_layers") or []
        if step != 1:
            raise self.fail(f"decoder_sparse_step {step} is not supported (only every layer MoE, step 1)")
        leading = isinstance(only, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in only)
        if not leading or sorted(only) != list(range(len(only))) or len(only) > num_layers:
            raise self.fail(f"mlp_only_layers {only!r} is not supported (only a leading run of layers 0..k-1)")
        return len(only)


def _base(r: _Reader) -> dict:
    """Keys shared by the Llama-like configs."""
    hidden = r.int("hidden_size")
    return {
        "hidden_size": hidden,
        "intermediate_size": r.int("intermediate_size"),
        "num_layers": r.int("num_hidden_layers"),
        **r.heads(hidden),
        "vocab_size": r.int("vocab_size"),
        "tie_embeddings": r.bool("tie_word_embeddings"),
        "max_positions": r.int("max_position_embeddings"),
        "dtype": r.dtype(),
    }


def _sliding(r: _Reader, use_key: str | None = None) -> int | None:
    if use_key is not None and not r.bool(use_key):
        return None
    v = r.raw("sliding_window")
    if v is None:
        return None
    return r.int("sliding_window")


def _llama(r: _Reader) -> dict:
    bias = r.bool("attention_bias")
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
        "mlp_bias": r.bool("mlp_bias"),
    }


def _mistral(r: _Reader) -> dict:
    # modeling_mistral.py: q/k/v/o without bias
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "sliding_window": _sliding(r),
    }


def _mixtral(r: _Reader) -> dict:
    d = _base(r)
    moe = MoE(
        num_experts=r.int("num_local_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        expert_intermediate_size=d["intermediate_size"],  # Mixtral's intermediate_size is one expert's width
    )
    return d | {"mlp_kind": r.mlp_kind("hidden_act"), "sliding_window": _sliding(r), "moe": moe}


def _qwen2(r: _Reader) -> dict:
    # modeling_qwen2.py: q/k/v always carry a bias, o_proj never
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": True,
        "sliding_window": _sliding(r, "use_sliding_window"),
    }


def _qwen2_moe(r: _Reader) -> dict:
    d = _base(r)
    shared = r.int("shared_expert_intermediate_size", allow_zero=True)
    moe = MoE(
        num_experts=r.int("num_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        expert_intermediate_size=r.int("moe_intermediate_size"),
        shared_experts=1 if shared else 0,
        shared_expert_intermediate_size=shared,
        shared_expert_gate=True,  # modeling_qwen2_moe.py builds shared_expert_gate (h -> 1) unconditionally
        dense_layers=r.leading_dense_layers(d["num_layers"]),
    )
    return d | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": r.bool("qkv_bias"),
        "sliding_window": _sliding(r, "use_sliding_window"),
        "moe": moe,
    }


def _qwen3(r: _Reader) -> dict:
    bias = r.bool("attention_bias")
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
        "qk_norm": True,
        "sliding_window": _sliding(r, "use_sliding_window"),
    }


def _qwen3_moe(r: _Reader) -> dict:
    bias = r.bool("attention_bias")
    d = _base(r)
    moe = MoE(
        num_experts=r.int("num_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        expert_intermediate_size=r.int("moe_intermediate_size"),
        dense_layers=r.leading_dense_layers(d["num_layers"]),
    )
    return d | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
        "qk_norm": True,
        "sliding_window": _sliding(r, "use_sliding_window"),
        "moe": moe,
    }


def _gemma(r: _Reader) -> dict:
    bias = r.bool("attention_bias")
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_activation", "hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
    }


def _gemma2(r: _Reader) -> dict:
    return _gemma(r) | {
        "norms_per_layer": 4,
        "sliding_window": _sliding(r),
        "attn_logit_softcap": r.float_or_none("attn_logit_softcapping"),
        "final_logit_softcap": r.float_or_none("final_logit_softcapping"),
    }


def _olmo(r: _Reader) -> dict:
    bias = r.bool("attention_bias")
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "norm_kind": "layernorm-nonparametric",
        "qkv_bias": bias,
        "o_bias": bias,
    }


def _olmo2(r: _Reader) -> dict:
    # modeling_olmo2.py: post-attention and post-feedforward RMSNorms only; q_norm / k_norm over full widths
    bias = r.bool("attention_bias")
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
        "qk_norm": True,
        "qk_norm_scope": "projection",
    }


def _glm(r: _Reader) -> dict:
    # modeling_glm.py: q/k/v bias from attention_bias, o_proj without; one gate_up_proj matrix
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": r.bool("attention_bias"),
        "fused_gate_up": True,
    }


def _phi3(r: _Reader) -> dict:
    # modeling_phi3.py: one qkv_proj, one gate_up_proj, no biases
    return _base(r) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "fused_qkv": True,
        "fused_gate_up": True,
        "sliding_window": _sliding(r),
    }


def _chatglm(r: _Reader) -> dict:
    # THUDM modeling_chatglm.py (GLM-4 / ChatGLM2-3): query_key_value, dense, dense_h_to_4h (2 x ffn), dense_4h_to_h
    hidden = r.int("hidden_size")
    kv_key = "multi_query_group_num" if r.bool("multi_query_attention") else None
    linear_bias = r.bool("add_bias_linear")
    return {
        "hidden_size": hidden,
        "intermediate_size": r.int("ffn_hidden_size"),
        "num_layers": r.int("num_layers"),
        **r.heads(hidden, "kv_channels", kv_key),
        "vocab_size": r.int("padded_vocab_size"),
        "tie_embeddings": r.bool("tie_word_embeddings"),
        "max_positions": r.int("seq_length"),
        "dtype": r.dtype(),
        "mlp_kind": "gated-silu",
        "norm_kind": "rmsnorm" if r.bool("rmsnorm") else "layernorm",
        "final_norm": r.bool("post_layer_norm"),
        "qkv_bias": r.bool("add_qkv_bias") or linear_bias,
        "o_bias": linear_bias,
        "mlp_bias": linear_bias,
        "fused_qkv": True,
        "fused_gate_up": True,
    }


def _internlm2(r: _Reader) -> dict:
    # InternLM modeling_internlm2.py: wqkv and wo carry config.bias; w1/w3/w2 never do
    bias = r.bool("bias")
    hidden = r.int("hidden_size")
    return _base(r) | r.heads(hidden, head_dim_key=None) | {
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
        "fused_qkv": True,
    }


def _deepseek(r: _Reader) -> dict:
    # modeling_deepseek_v2.py / _v3.py: MLA attention, leading dense layers, then routed + shared experts
    hidden = r.int("hidden_size")
    L = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    kv = r.int("num_key_value_heads", default=heads)
    if heads % kv:
        raise r.fail(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    if r.has("moe_layer_freq") and r.raw("moe_layer_freq") != 1:
        raise r.fail(f"moe_layer_freq {r.raw('moe_layer_freq')!r} is not supported (only 1: every layer after "
                     "first_k_dense_replace is MoE, as transformers builds it)")
    if r.t == "deepseek_v2" and r.bool("mlp_bias"):
        raise r.fail("mlp_bias true is not supported for deepseek_v2 (routed experts carry no bias)")
    mla = MLA(
        q_lora_rank=r.opt_int("q_lora_rank"),
        kv_lora_rank=r.int("kv_lora_rank"),
        qk_rope_head_dim=r.int("qk_rope_head_dim"),
        qk_nope_head_dim=r.int("qk_nope_head_dim"),
        v_head_dim=r.int("v_head_dim"),
    )
    expert = r.int("moe_intermediate_size")
    shared = r.int("n_shared_experts", allow_zero=True) if r.raw("n_shared_experts") is not None else 0
    dense = r.int("first_k_dense_replace", allow_zero=True)
    if dense > L:
        raise r.fail(f"first_k_dense_replace {dense} exceeds num_hidden_layers {L}")
    moe = MoE(
        num_experts=r.int("n_routed_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        expert_intermediate_size=expert,
        shared_experts=shared,
        shared_expert_intermediate_size=shared * expert,
        dense_layers=dense,
    )
    bias = r.bool("attention_bias")
    notes = ""
    mtp = r.cfg.get("num_nextn_predict_layers")
    if mtp:
        notes = (f"num_nextn_predict_layers {mtp} (multi-token-prediction layers) not counted: transformers does "
                 "not build them. Router e_score_correction_bias is a buffer in transformers, not counted.")
    return {
        "hidden_size": hidden,
        "intermediate_size": r.int("intermediate_size"),
        "num_layers": L,
        "num_heads": heads,
        "num_kv_heads": kv,
        "head_dim": mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        "vocab_size": r.int("vocab_size"),
        "tie_embeddings": r.bool("tie_word_embeddings"),
        "max_positions": r.int("max_position_embeddings"),
        "dtype": r.dtype(),
        "mlp_kind": r.mlp_kind("hidden_act"),
        "qkv_bias": bias,
        "o_bias": bias,
        "moe": moe,
        "mla": mla,
        "notes": notes,
    }


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A nested ``text_config`` (multimodal wrappers) with the outer model_type, tying and dtype as fallbacks."""
    inner = cfg.get("text_config")
    if not isinstance(inner, dict):
        return cfg
    out = dict(inner)
    for k in ("model_type", "tie_word_embeddings", "torch_dtype", "dtype"):
        if k not in out and k in cfg:
            out[k] = cfg[k]
    return out


def profile_from_hf_config(
    cfg: dict[str, Any], source: str, name: str, hf_id: str | None = None
) -> ModelProfile:
    """Map a parsed config.json to a :class:`ModelProfile`, by the explicit mapping of its ``model_type``.

    ``source`` names the file (or URL) in every error. Raises :class:`ProfileError` with one line on a missing
    key, a bad value, heads that do not divide, or a ``model_type`` with no mapping (the supported ones listed).
    """
    if not isinstance(cfg, dict):
        raise ProfileError(f"{source}: expected a JSON object at the top level, got {type(cfg).__name__}")
    cfg = _text_config(cfg)
    t = cfg.get("model_type")
    if t is None:
        raise ProfileError(f"{source}: missing key 'model_type'")
    if t not in FAMILIES:
        raise ProfileError(
            f"{source}: model_type {t!r} has no hand-written mapping (those: {', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"derive its profile from transformers' model code once with `plan profiles add {source}` (needs "
            "torch and transformers), then plan uses it"
        )
    r = _Reader(cfg, source, t)
    fam = FAMILIES[t]
    fields = fam.read(r)
    if fam.remote_code:
        fields |= {"transformers_buildable": False, "not_buildable_reason": fam.remote_code}
    if r.used:
        fields["defaults_used"] = tuple(r.used)
    try:
        return ModelProfile(name=name, source=source, hf_id=hf_id, model_type=t, **fields)
    except ValidationError as e:
        raise ProfileError(f"{source}: {validation_message(e, 'config')}") from e


# ----------------------------------------------------------------------------------------------------------------
# writing


def _act(p: ModelProfile) -> str:
    if p.mlp_kind == "gated-silu":
        return "silu"
    if p.mlp_kind == "gated-gelu":
        return "gelu_pytorch_tanh"
    raise ProfileError(f"{p.name}: mlp_kind {p.mlp_kind!r} has no config.json form for model_type {p.model_type!r}")


def _need(p: ModelProfile, ok: bool, what: str) -> None:
    if not ok:
        raise ProfileError(f"{p.name}: model_type {p.model_type!r} cannot express {what}")


def _common_out(p: ModelProfile) -> dict[str, Any]:
    return {
        "architectures": [FAMILIES[p.model_type].architecture],
        "model_type": p.model_type,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "num_key_value_heads": p.num_kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab_size,
        "tie_word_embeddings": p.tie_embeddings,
        "max_position_embeddings": p.max_positions,
        "hidden_act": _act(p),
        "dtype": p.dtype,
    }


def _check_plain(p: ModelProfile, *, moe: bool = False, qk_norm: bool = False, norms: int = 2,
                 norm_kind: str = "rmsnorm", fused_qkv: bool = False, fused_gate_up: bool = False) -> None:
    """Refuse profile features the target model_type's module structure does not have."""
    _need(p, (p.moe is not None) == moe, "a MoE block" if p.moe is not None else "a dense MLP")
    _need(p, p.mla is None, "MLA attention")
    _need(p, p.qk_norm == qk_norm, "q/k norms" if p.qk_norm else "the absence of q/k norms")
    _need(p, p.norms_per_layer == norms, f"{p.norms_per_layer} norms per layer")
    _need(p, p.norm_kind == norm_kind, f"norm_kind {p.norm_kind!r}")
    _need(p, p.final_norm, "a model without a final norm")
    _need(p, p.fused_qkv == fused_qkv, "fused_qkv " + str(p.fused_qkv).lower())
    _need(p, p.fused_gate_up == fused_gate_up, "fused_gate_up " + str(p.fused_gate_up).lower())


def _w_llama(p: ModelProfile) -> dict:
    _check_plain(p)
    _need(p, p.qkv_bias == p.o_bias, "different q/k/v and o biases")
    _need(p, p.sliding_window is None, "a sliding window")
    return _common_out(p) | {"attention_bias": p.qkv_bias, "mlp_bias": p.mlp_bias}


def _no_bias(p: ModelProfile) -> None:
    _need(p, not (p.qkv_bias or p.o_bias or p.mlp_bias), "linear biases")


def _w_mistral(p: ModelProfile) -> dict:
    _check_plain(p)
    _no_bias(p)
    return _common_out(p) | {"sliding_window": p.sliding_window}


def _w_mixtral(p: ModelProfile) -> dict:
    _check_plain(p, moe=True)
    _no_bias(p)
    e = p.moe
    assert e is not None
    _need(p, not e.shared_experts and not e.dense_layers and not e.router_bias, "shared experts or dense layers")
    _need(p, e.expert_intermediate_size == p.intermediate_size, "an expert width other than intermediate_size")
    return _common_out(p) | {
        "num_local_experts": e.num_experts,
        "num_experts_per_tok": e.experts_per_token,
        "sliding_window": p.sliding_window,
    }


def _sliding_out(p: ModelProfile) -> dict:
    return {"use_sliding_window": p.sliding_window is not None, "sliding_window": p.sliding_window}


def _w_qwen2(p: ModelProfile) -> dict:
    _check_plain(p)
    _need(p, p.qkv_bias and not p.o_bias and not p.mlp_bias, "biases other than q/k/v")
    return _common_out(p) | _sliding_out(p)


def _mlp_only(e: MoE) -> dict:
    return {"decoder_sparse_step": 1, "mlp_only_layers": list(range(e.dense_layers))}


def _w_qwen2_moe(p: ModelProfile) -> dict:
    _check_plain(p, moe=True)
    e = p.moe
    assert e is not None
    _need(p, not p.o_bias and not p.mlp_bias and not e.router_bias, "o / MLP / router biases")
    _need(p, e.shared_experts in (0, 1) and e.shared_expert_gate, "shared experts other than one gated shared expert")
    return _common_out(p) | _sliding_out(p) | _mlp_only(e) | {
        "qkv_bias": p.qkv_bias,
        "num_experts": e.num_experts,
        "num_experts_per_tok": e.experts_per_token,
        "moe_intermediate_size": e.expert_intermediate_size,
        "shared_expert_intermediate_size": e.shared_expert_intermediate_size,
    }


def _w_qwen3(p: ModelProfile) -> dict:
    _check_plain(p, qk_norm=True)
    _need(p, p.qk_norm_scope == "head", "projection-wide q/k norms")
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    return _common_out(p) | _sliding_out(p) | {"attention_bias": p.qkv_bias}


def _w_qwen3_moe(p: ModelProfile) -> dict:
    _check_plain(p, moe=True, qk_norm=True)
    e = p.moe
    assert e is not None
    _need(p, p.qk_norm_scope == "head", "projection-wide q/k norms")
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    _need(p, not e.shared_experts and not e.router_bias, "shared experts or a router bias")
    return _common_out(p) | _sliding_out(p) | _mlp_only(e) | {
        "attention_bias": p.qkv_bias,
        "num_experts": e.num_experts,
        "num_experts_per_tok": e.experts_per_token,
        "moe_intermediate_size": e.expert_intermediate_size,
    }


def _w_gemma(p: ModelProfile) -> dict:
    _check_plain(p)
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    _need(p, p.sliding_window is None and p.attn_logit_softcap is None, "a sliding window or softcaps")
    d = _common_out(p) | {"attention_bias": p.qkv_bias}
    d["hidden_activation"] = d.pop("hidden_act")
    return d


def _w_gemma2(p: ModelProfile) -> dict:
    _check_plain(p, norms=4)
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    d = _common_out(p) | {
        "attention_bias": p.qkv_bias,
        "sliding_window": p.sliding_window,
        "attn_logit_softcapping": p.attn_logit_softcap,
        "final_logit_softcapping": p.final_logit_softcap,
    }
    d["hidden_activation"] = d.pop("hidden_act")
    return d


def _w_olmo(p: ModelProfile) -> dict:
    _check_plain(p, norm_kind="layernorm-nonparametric")
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    return _common_out(p) | {"attention_bias": p.qkv_bias}


def _w_olmo2(p: ModelProfile) -> dict:
    _check_plain(p, qk_norm=True)
    _need(p, p.qk_norm_scope == "projection", "per-head q/k norms")
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    return _common_out(p) | {"attention_bias": p.qkv_bias}


def _w_glm(p: ModelProfile) -> dict:
    _check_plain(p, fused_gate_up=True)
    _need(p, not p.o_bias and not p.mlp_bias, "o / MLP biases")
    return _common_out(p) | {"attention_bias": p.qkv_bias}


def _w_phi3(p: ModelProfile) -> dict:
    _check_plain(p, fused_qkv=True, fused_gate_up=True)
    _no_bias(p)
    return _common_out(p) | {"sliding_window": p.sliding_window}


def _w_internlm2(p: ModelProfile) -> dict:
    _check_plain(p, fused_qkv=True)
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias, "these biases")
    d = _common_out(p) | {"bias": p.qkv_bias, "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    }}
    d.pop("head_dim")  # InternLM2 derives head_dim = hidden_size // num_attention_heads
    _need(p, p.hidden_size == p.num_heads * p.head_dim, "head_dim != hidden_size / num_attention_heads")
    return d


def _w_chatglm(p: ModelProfile) -> dict:
    _need(p, p.moe is None and p.mla is None and not p.qk_norm and p.norms_per_layer == 2, "this block structure")
    _need(p, p.fused_qkv and p.fused_gate_up and p.mlp_kind == "gated-silu", "unfused or non-SwiGLU layers")
    _need(p, p.norm_kind in ("rmsnorm", "layernorm"), f"norm_kind {p.norm_kind!r}")
    _need(p, p.o_bias == p.mlp_bias and (p.qkv_bias or not p.o_bias), "this bias combination")
    return {
        "architectures": [FAMILIES["chatglm"].architecture],
        "model_type": "chatglm",
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "hidden_size": p.hidden_size,
        "ffn_hidden_size": p.intermediate_size,
        "num_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "multi_query_attention": p.num_kv_heads != p.num_heads,
        "multi_query_group_num": p.num_kv_heads,
        "kv_channels": p.head_dim,
        "padded_vocab_size": p.vocab_size,
        "seq_length": p.max_positions,
        "add_qkv_bias": p.qkv_bias,
        "add_bias_linear": p.o_bias,
        "rmsnorm": p.norm_kind == "rmsnorm",
        "post_layer_norm": p.final_norm,
        "tie_word_embeddings": p.tie_embeddings,
        "torch_dtype": p.dtype,
    }


def _w_deepseek(p: ModelProfile) -> dict:
    e, a = p.moe, p.mla
    _need(p, e is not None and a is not None, "attention without MLA or an MLP without experts")
    assert e is not None and a is not None
    _need(p, p.norms_per_layer == 2 and p.norm_kind == "rmsnorm" and p.final_norm and not p.qk_norm, "these norms")
    _need(p, p.qkv_bias == p.o_bias and not p.mlp_bias and not e.router_bias, "these biases")
    _need(p, not p.fused_qkv and not p.fused_gate_up and not e.shared_expert_gate, "fused or gated layers")
    _need(p, e.shared_expert_intermediate_size == e.shared_experts * e.expert_intermediate_size,
          "a shared-expert width other than n_shared_experts x moe_intermediate_size")
    _need(p, p.head_dim == a.qk_nope_head_dim + a.qk_rope_head_dim, "head_dim != qk_nope + qk_rope")
    return {
        "architectures": [FAMILIES[p.model_type].architecture],
        "model_type": p.model_type,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "num_key_value_heads": p.num_kv_heads,
        "vocab_size": p.vocab_size,
        "tie_word_embeddings": p.tie_embeddings,
        "max_position_embeddings": p.max_positions,
        "hidden_act": _act(p),
        "dtype": p.dtype,
        "attention_bias": p.qkv_bias,
        "q_lora_rank": a.q_lora_rank,
        "kv_lora_rank": a.kv_lora_rank,
        "qk_rope_head_dim": a.qk_rope_head_dim,
        "qk_nope_head_dim": a.qk_nope_head_dim,
        "v_head_dim": a.v_head_dim,
        "n_routed_experts": e.num_experts,
        "num_experts_per_tok": e.experts_per_token,
        "moe_intermediate_size": e.expert_intermediate_size,
        "n_shared_experts": e.shared_experts,
        "first_k_dense_replace": e.dense_layers,
        "moe_layer_freq": 1,
        # greedy top-k over all experts: group-limited routing changes no parameter
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
    }


@dataclass(frozen=True)
class Family:
    """One hand-written ``model_type``: the transformers class it builds, how its config.json reads into a
    profile and writes back, and the defaults its config class fills in for keys a config.json may omit."""

    architecture: str
    """the class ``from_pretrained`` builds (``architectures`` in a written config)"""
    read: Callable[[_Reader], dict]
    write: Callable[[ModelProfile], dict]
    config_class: str
    defaults: dict[str, Any] = field(default_factory=dict)
    """class-level defaults of the config class (transformers 5.24.0; remote-code types: their own
    configuration file's), for every key the reader uses; None where ``__post_init__`` derives the value
    (``head_dim``, ``num_key_value_heads``), which the reader then does the same way"""
    remote_code: str | None = None
    """why transformers cannot build it without the model repository's code (``trust_remote_code``)"""


FAMILIES: dict[str, Family] = {
    "chatglm": Family(
        "ChatGLMModel", _chatglm, _w_chatglm, "THUDM configuration_chatglm.py ChatGLMConfig",
        defaults={"tie_word_embeddings": False, "add_qkv_bias": False, "add_bias_linear": False,
                  "multi_query_attention": False, "rmsnorm": True, "post_layer_norm": True},
        remote_code="model_type 'chatglm' is remote code only (THUDM's modeling_chatglm.py, trust_remote_code); "
                    "transformers' native class for GLM-4 is model_type 'glm' (THUDM/glm-4-9b-hf)"),
    "deepseek_v2": Family(
        "DeepseekV2ForCausalLM", _deepseek, _w_deepseek, "DeepseekV2Config",
        defaults={"attention_bias": False, "first_k_dense_replace": 0, "head_dim": None, "hidden_act": "silu",
                  "hidden_size": 4096, "intermediate_size": 11008, "kv_lora_rank": 512,
                  "max_position_embeddings": 2048, "mlp_bias": False, "moe_intermediate_size": 1407,
                  "n_routed_experts": 64, "n_shared_experts": 2, "num_attention_heads": 32,
                  "num_experts_per_tok": None, "num_hidden_layers": 32, "num_key_value_heads": None,
                  "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                  "tie_word_embeddings": False, "v_head_dim": 128, "vocab_size": 102400}),
    "deepseek_v3": Family(
        "DeepseekV3ForCausalLM", _deepseek, _w_deepseek, "DeepseekV3Config",
        defaults={"attention_bias": False, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
                  "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 4096,
                  "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1,
                  "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
                  "num_key_value_heads": 128, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                  "tie_word_embeddings": False, "v_head_dim": 128, "vocab_size": 129280}),
    "gemma": Family(
        "GemmaForCausalLM", _gemma, _w_gemma, "GemmaConfig",
        defaults={"attention_bias": False, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 3072,
                  "intermediate_size": 24576, "max_position_embeddings": 8192, "num_attention_heads": 16,
                  "num_hidden_layers": 28, "num_key_value_heads": 16, "tie_word_embeddings": True,
                  "vocab_size": 256000}),
    "gemma2": Family(
        "Gemma2ForCausalLM", _gemma2, _w_gemma2, "Gemma2Config",
        defaults={"attention_bias": False, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                  "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
                  "intermediate_size": 9216, "max_position_embeddings": 8192, "num_attention_heads": 8,
                  "num_hidden_layers": 26, "num_key_value_heads": 4, "sliding_window": 4096,
                  "tie_word_embeddings": True, "vocab_size": 256000}),
    "glm": Family(
        "GlmForCausalLM", _glm, _w_glm, "GlmConfig",
        defaults={"attention_bias": True, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
                  "intermediate_size": 13696, "max_position_embeddings": 131072, "num_attention_heads": 32,
                  "num_hidden_layers": 40, "num_key_value_heads": 2, "tie_word_embeddings": False,
                  "vocab_size": 151552}),
    "internlm2": Family(
        "InternLM2ForCausalLM", _internlm2, _w_internlm2, "InternLM configuration_internlm2.py InternLM2Config",
        defaults={"tie_word_embeddings": False, "bias": True},
        remote_code="model_type 'internlm2' is remote code only (InternLM's modeling_internlm2.py, "
                    "trust_remote_code); transformers has no native class for it"),
    "llama": Family(
        "LlamaForCausalLM", _llama, _w_llama, "LlamaConfig",
        defaults={"attention_bias": False, "head_dim": None, "hidden_act": "silu", "hidden_size": 4096,
                  "intermediate_size": 11008, "max_position_embeddings": 2048, "mlp_bias": False,
                  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": None,
                  "tie_word_embeddings": False, "vocab_size": 32000}),
    "mistral": Family(
        "MistralForCausalLM", _mistral, _w_mistral, "MistralConfig",
        defaults={"head_dim": None, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                  "max_position_embeddings": 131072, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": 8, "sliding_window": 4096, "tie_word_embeddings": False,
                  "vocab_size": 32000}),
    "mixtral": Family(
        "MixtralForCausalLM", _mixtral, _w_mixtral, "MixtralConfig",
        defaults={"head_dim": None, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                  "max_position_embeddings": 131072, "num_attention_heads": 32, "num_experts_per_tok": 2,
                  "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
                  "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 32000}),
    "olmo": Family(
        "OlmoForCausalLM", _olmo, _w_olmo, "OlmoConfig",
        defaults={"attention_bias": False, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
                  "max_position_embeddings": 2048, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": None, "tie_word_embeddings": False, "vocab_size": 50304}),
    "olmo2": Family(
        "Olmo2ForCausalLM", _olmo2, _w_olmo2, "Olmo2Config",
        defaults={"attention_bias": False, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
                  "max_position_embeddings": 2048, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": None, "tie_word_embeddings": False, "vocab_size": 50304}),
    "phi3": Family(
        "Phi3ForCausalLM", _phi3, _w_phi3, "Phi3Config",
        defaults={"hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 8192,
                  "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": None, "sliding_window": None, "tie_word_embeddings": False,
                  "vocab_size": 32064}),
    "qwen2": Family(
        "Qwen2ForCausalLM", _qwen2, _w_qwen2, "Qwen2Config",
        defaults={"hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 22016,
                  "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": 32, "sliding_window": 4096, "tie_word_embeddings": False,
                  "use_sliding_window": False, "vocab_size": 151936}),
    "qwen2_moe": Family(
        "Qwen2MoeForCausalLM", _qwen2_moe, _w_qwen2_moe, "Qwen2MoeConfig",
        defaults={"decoder_sparse_step": 1, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 5632,
                  "max_position_embeddings": 32768, "mlp_only_layers": None, "moe_intermediate_size": 1408,
                  "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 24,
                  "num_key_value_heads": 16, "qkv_bias": True, "shared_expert_intermediate_size": 5632,
                  "sliding_window": 4096, "tie_word_embeddings": False, "use_sliding_window": False,
                  "vocab_size": 151936}),
    "qwen3": Family(
        "Qwen3ForCausalLM", _qwen3, _w_qwen3, "Qwen3Config",
        defaults={"attention_bias": False, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
                  "intermediate_size": 22016, "max_position_embeddings": 32768, "num_attention_heads": 32,
                  "num_hidden_layers": 32, "num_key_value_heads": 32, "sliding_window": 4096,
                  "tie_word_embeddings": False, "use_sliding_window": False, "vocab_size": 151936}),
    "qwen3_moe": Family(
        "Qwen3MoeForCausalLM", _qwen3_moe, _w_qwen3_moe, "Qwen3MoeConfig",
        defaults={"attention_bias": False, "decoder_sparse_step": 1, "hidden_act": "silu", "hidden_size": 2048,
                  "intermediate_size": 6144, "max_position_embeddings": 32768, "mlp_only_layers": None,
                  "moe_intermediate_size": 768, "num_attention_heads": 32, "num_experts": 128,
                  "num_experts_per_tok": 8, "num_hidden_layers": 24, "num_key_value_heads": 4,
                  "sliding_window": 4096, "tie_word_embeddings": False, "use_sliding_window": False,
                  "vocab_size": 151936}),
}
"""Every hand-written model type, one entry each."""

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(FAMILIES))
"""Every ``model_type`` with a hand-written mapping, sorted."""
NOT_BUILDABLE: dict[str, str] = {t: f.remote_code for t, f in FAMILIES.items() if f.remote_code}
"""Mapped model types that transformers cannot build without the model repository's own code."""
TRANSFORMERS_DEFAULTS: dict[str, dict[str, Any]] = {t: f.defaults for t, f in FAMILIES.items()}
"""The default tables by model type (a view of :data:`FAMILIES`)."""


def to_hf_config(profile: ModelProfile) -> dict[str, Any]:
    """A Hugging Face config dict for ``profile`` (pure dict building; no transformers import).

    For native types, ``transformers.AutoConfig.for_model(**d)`` builds the same architecture: the same
    modules and parameter counts (RoPE settings and token ids are left at the class defaults; they change no
    parameter). For remote-code types the dict uses the keys of the model's own ``configuration_*.py``.
    Raises :class:`ProfileError` if the profile has a feature the ``model_type`` cannot express. A derived
    profile returns the config it was derived from.
    """
    if profile.derived is not None:  # the config it was derived from
        return json.loads(profile.derived.config_json)
    if profile.model_type not in FAMILIES:
        raise ProfileError(
            f"{profile.name}: unknown model_type {profile.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return FAMILIES[profile.model_type].write(profile)
