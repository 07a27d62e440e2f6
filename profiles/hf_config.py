"""Hugging Face ``config.json`` <-> :class:`ModelProfile`, by explicit per-``model_type`` key mappings.

Reading a config is JSON parsing: this module never imports transformers. Each supported ``model_type``
has its own mapping of config keys to profile fields, mirroring the module structure of its transformers
implementation (``transformers/models/<type>/modeling_<type>.py``, version 5.24) or, for remote-code-only
types (``chatglm``, ``internlm2``), the model's own ``modeling_*.py``. An architecture with no mapping is
rejected with the list of supported ones: we never guess from ratios or key names.

Where a config.json may omit a key, the value transformers' config class would fill in is used, and only for
switches (biases, tying, sliding window); :data:`TRANSFORMERS_DEFAULTS` lists them and a test checks the table
against the config classes. Shape keys whose class default is some reference model's number (Gemma's
``head_dim`` 256, Mistral's ``num_key_value_heads`` 8, ...) are required instead.

:func:`to_hf_config` is the inverse: a plain dict that ``AutoConfig.for_model(**d)`` (or the model's remote
code) builds into the same architecture. Tests check the round trip and build every buildable profile on the
meta device for exact parameter counts.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from profiles.errors import ProfileError
from profiles.schema import MLA, ModelProfile, MoE

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "chatglm",
    "deepseek_v2",
    "deepseek_v3",
    "gemma",
    "gemma2",
    "glm",
    "internlm2",
    "llama",
    "mistral",
    "mixtral",
    "olmo",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
)
"""Every ``model_type`` with an explicit mapping, sorted."""

TRANSFORMERS_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
    "mistral": {"tie_word_embeddings": False, "sliding_window": 4096},
    "mixtral": {"tie_word_embeddings": False, "sliding_window": None},
    "qwen2": {"tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None},
    "qwen2_moe": {
        "tie_word_embeddings": False,
        "qkv_bias": True,
        "use_sliding_window": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "qwen3": {
        "tie_word_embeddings": False,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
    },
    "qwen3_moe": {
        "tie_word_embeddings": False,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "gemma": {"tie_word_embeddings": True, "attention_bias": False},
    "gemma2": {
        "tie_word_embeddings": True,
        "attention_bias": False,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    "olmo": {"tie_word_embeddings": False, "attention_bias": False},
    "olmo2": {"tie_word_embeddings": False, "attention_bias": False},
    "glm": {"tie_word_embeddings": False, "attention_bias": True},
    "phi3": {"tie_word_embeddings": False, "sliding_window": None},
    "deepseek_v2": {
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "first_k_dense_replace": 0,
    },
    "deepseek_v3": {"tie_word_embeddings": False, "attention_bias": False, "first_k_dense_replace": 3},
    # remote-code types: the defaults of their own configuration_*.py
    "chatglm": {
        "tie_word_embeddings": False,
        "add_qkv_bias": False,
        "add_bias_linear": False,
        "multi_query_attention": False,
        "rmsnorm": True,
        "post_layer_norm": True,
    },
    "internlm2": {"tie_word_embeddings": False, "bias": True},
}
"""Values transformers' config classes (``CONFIG_MAPPING[t]()``) use for switches a config.json may omit.

``chatglm`` and ``internlm2`` are remote code: THUDM's ``configuration_chatglm.py`` and InternLM's
``configuration_internlm2.py`` defaults (``bias=True`` there; InternLM2.5 configs say ``"bias": false``)."""

_ARCHITECTURES = {
    "chatglm": "ChatGLMModel",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "glm": "GlmForCausalLM",
    "internlm2": "InternLM2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}

NOT_BUILDABLE: dict[str, str] = {
    "chatglm": "model_type 'chatglm' is remote code only (THUDM's modeling_chatglm.py, trust_remote_code); "
    "transformers' native class for GLM-4 is model_type 'glm' (THUDM/glm-4-9b-hf)",
    "internlm2": "model_type 'internlm2' is remote code only (InternLM's modeling_internlm2.py, trust_remote_code); "
    "transformers has no native class for it",
}
"""Mapped model types that transformers cannot build without the model repository's own code."""

_KV_REQUIRED = frozenset(
    {"chatglm", "gemma", "gemma2", "glm", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}
)
"""Types whose config class defaults ``num_key_value_heads`` to a reference model's number, not to MHA."""

_HEAD_DIM_REQUIRED = frozenset({"chatglm", "gemma", "gemma2", "glm", "qwen3"})
"""Types whose config class defaults ``head_dim`` to a number (Gemma 256, GLM / Qwen3 128), not hidden / heads."""

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
    """Typed access to one config dict; every failure is a one-line :class:`ProfileError` naming ``src``."""

    def __init__(self, cfg: dict[str, Any], src: str, model_type: str):
        self.cfg, self.src, self.t = cfg, src, model_type
        self.defaults = TRANSFORMERS_DEFAULTS.get(model_type, {})

    def fail(self, problem: str) -> ProfileError:
        return ProfileError(f"{self.src}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.cfg

    def raw(self, key: str) -> Any:
        """The value of ``key``, or transformers' default for it, or a missing-key error."""
        if key in self.cfg:
            return self.cfg[key]
        if key in self.defaults:
            return self.defaults[key]
        raise self.fail(f"missing key {key!r} (model_type {self.t!r})")

    def int(self, key: str, default: int | None = None, allow_zero: bool = False) -> int:
        if key not in self.cfg and default is not None:
            return default
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
            need = "a non-negative" if allow_zero else "a positive"
            raise self.fail(f"{key} must be {need} integer, got {v!r}")
        return v

    def opt_int(self, key: str) -> int | None:
        """An integer that may be null (e.g. ``q_lora_rank``); the key itself must be present."""
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
        for k in keys:
            v = self.cfg.get(k)
            if v is not None:
                if v not in _GATED_ACTS:
                    raise self.fail(f"unsupported {k} {v!r} for model_type {self.t!r}; expected one of "
                                    f"{', '.join(sorted(_GATED_ACTS))}")
                return _GATED_ACTS[v]
        raise self.fail(f"missing key {keys[0]!r} (model_type {self.t!r})")

    def heads(
        self, hidden: int, head_dim_key: str | None = "head_dim", kv_key: str | None = "num_key_value_heads"
    ) -> dict:
        """num_heads, num_kv_heads and head_dim, with the divisibility checks.

        ``kv_key`` None means multi-head attention. A missing kv key means MHA where transformers' config class
        defaults it to None (-> num_attention_heads) and is an error where the class default is a reference
        model's number (:data:`_KV_REQUIRED`); likewise a missing head_dim is derived as hidden / heads except
        for :data:`_HEAD_DIM_REQUIRED`.
        """
        heads = self.int("num_attention_heads")
        if kv_key is None:
            kv = heads
        elif kv_key in self.cfg or self.t in _KV_REQUIRED:
            kv = self.int(kv_key)
        else:
            kv = heads
        if head_dim_key is not None and (self.t in _HEAD_DIM_REQUIRED or self.cfg.get(head_dim_key) is not None):
            head_dim = self.int(head_dim_key)
        else:
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


_READERS: dict[str, Callable[[_Reader], dict]] = {
    "chatglm": _chatglm,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "glm": _glm,
    "internlm2": _internlm2,
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "olmo": _olmo,
    "olmo2": _olmo2,
    "phi3": _phi3,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
}
assert tuple(sorted(_READERS)) == SUPPORTED_MODEL_TYPES


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
    if t not in _READERS:
        raise ProfileError(
            f"{source}: unknown model_type {t!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    r = _Reader(cfg, source, t)
    fields = _READERS[t](r)
    if t in NOT_BUILDABLE:
        fields |= {"transformers_buildable": False, "not_buildable_reason": NOT_BUILDABLE[t]}
    try:
        return ModelProfile(name=name, source=source, hf_id=hf_id, model_type=t, **fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "config"
        raise ProfileError(f"{source}: {where}: {err['msg']}") from e


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
        "architectures": [_ARCHITECTURES[p.model_type]],
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
        "architectures": [_ARCHITECTURES["chatglm"]],
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
        "architectures": [_ARCHITECTURES[p.model_type]],
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


_WRITERS: dict[str, Callable[[ModelProfile], dict]] = {
    "chatglm": _w_chatglm,
    "deepseek_v2": _w_deepseek,
    "deepseek_v3": _w_deepseek,
    "gemma": _w_gemma,
    "gemma2": _w_gemma2,
    "glm": _w_glm,
    "internlm2": _w_internlm2,
    "llama": _w_llama,
    "mistral": _w_mistral,
    "mixtral": _w_mixtral,
    "olmo": _w_olmo,
    "olmo2": _w_olmo2,
    "phi3": _w_phi3,
    "qwen2": _w_qwen2,
    "qwen2_moe": _w_qwen2_moe,
    "qwen3": _w_qwen3,
    "qwen3_moe": _w_qwen3_moe,
}
assert tuple(sorted(_WRITERS)) == SUPPORTED_MODEL_TYPES


def to_hf_config(profile: ModelProfile) -> dict[str, Any]:
    """A Hugging Face config dict for ``profile`` (pure dict building; no transformers import).

    For native types, ``transformers.AutoConfig.for_model(**d)`` builds the same architecture: the same
    modules and parameter counts (RoPE settings and token ids are left at the class defaults; they change no
    parameter). For remote-code types the dict uses the keys of the model's own ``configuration_*.py``.
    Raises :class:`ProfileError` if the profile has a feature the ``model_type`` cannot express.
    """
    if profile.model_type not in _WRITERS:
        raise ProfileError(
            f"{profile.name}: unknown model_type {profile.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return _WRITERS[profile.model_type](profile)
