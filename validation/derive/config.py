"""Read a model's config the way transformers does, and build the model from it on the meta device.

The config comes from a ``config.json`` file, a folder holding one, or a hub id whose config sits in the local
Hugging Face cache (nothing is downloaded: :func:`profiles.hf_config.find_config`). transformers' own config
class for the ``model_type`` fills in every key the file omits, exactly as ``from_pretrained`` would, and the
keys it filled in are listed (:func:`defaults_used`). Multimodal configs (Gemma 3 4B+, Llama 4) are reduced
to their text decoder (``get_text_config()``): the profile is the language model that fine-tuning trains.

Remote-code architectures (an ``auto_map`` and no class in transformers) run the model repository's own code
only when the user passes ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from profiles.errors import ProfileError


class DeriveError(ProfileError):
    """A profile cannot be derived: one line naming what and why (the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class RawConfig:
    """A parsed config.json and where it came from."""

    data: dict[str, Any]
    path: Path | None
    name: str
    hf_id: str | None

    @property
    def source(self) -> str:
        if self.hf_id:
            return f"https://huggingface.co/{self.hf_id}/blob/main/config.json"
        return str(self.path.absolute()) if self.path else self.name


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' and torch's warnings while building (they are about weights, not shapes)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
            hf_logging.set_verbosity(level)


def load_raw(source: str) -> RawConfig:
    """Find and parse the config.json ``source`` names (a path, a folder, or a cached hub id)."""
    from profiles.hf_config import _hub_id_of, find_config

    path = find_config(source)
    if path is None:
        p = Path(source).expanduser()
        if p.exists():
            raise DeriveError(f"no config.json in {source!r} (give a config.json path, a folder holding one, "
                              "or a hub id in the local HF cache)")
        raise DeriveError(f"{source!r} is not a config.json, a folder holding one, or a hub id in the local "
                          "Hugging Face cache (nothing is downloaded; `huggingface-cli download ID config.json` "
                          "fetches just the config)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeriveError(f"{path}: not a readable JSON config ({e})") from e
    if not isinstance(data, dict):
        raise DeriveError(f"{path}: expected a JSON object at the top level")
    hub_id = _hub_id_of(path)
    name = hub_id.split("/")[-1] if hub_id else (path.absolute().parent.name or path.stem)
    return RawConfig(data, path, name, hub_id)


def to_config(raw: RawConfig, trust_remote_code: bool = False) -> Any:
    """The transformers config object of the text decoder, built by the model type's own config class."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    t = raw.data.get("model_type")
    if not t:
        raise DeriveError(f"{raw.source}: missing key 'model_type' (transformers dispatches on it)")
    try:
        with quiet():
            if t in CONFIG_MAPPING:
                data = {k: v for k, v in raw.data.items() if k != "model_type"}
                cfg = AutoConfig.for_model(t, **data)
            elif raw.data.get("auto_map"):
                if not trust_remote_code:
                    raise DeriveError(
                        f"{raw.source}: model_type {t!r} is not in transformers {_tf_version()} and ships its own "
                        "code (auto_map); pass --trust-remote-code to run that code (it executes Python from the "
                        "model's folder)")
                if raw.path is None:
                    raise DeriveError(f"{raw.source}: remote code needs the model's folder")
                cfg = AutoConfig.from_pretrained(str(raw.path.parent), trust_remote_code=True)
            else:
                raise DeriveError(f"{raw.source}: model_type {t!r} is not in transformers {_tf_version()} and the "
                                  "config has no auto_map (remote code); upgrade transformers")
    except DeriveError:
        raise
    except Exception as e:  # the config class rejected a value
        raise DeriveError(f"{raw.source}: transformers' {t} config rejects it: {_first_line(e)}") from e
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    text.use_cache = False
    return text


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def _first_line(e: BaseException) -> str:
    """``Type: first line`` of an exception, for a one-line error; a first line that only introduces the next
    (ends with ':', as transformers' strict-dataclass validation errors do) takes the next line with it."""
    msg = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = msg[0] if msg else ""
    if text.endswith(":") and len(msg) > 1:
        text = f"{text} {msg[1]}"
    return f"{type(e).__name__}: {text}"[:300]


_STRUCTURAL = re.compile(
    r"(size|dim|heads|layers|expert|window|bias|act|activation|vocab|tie_word|norm|rank|chunk|kernel|layer_types|"
    r"interval|step|sink|rope_layers|position|topk|top_k|group|shared|dense|conv|state|mamba|linear)", re.I)
_NOT_STRUCTURAL = re.compile(
    r"(_eps$|epsilon|token_id|initializer|dropout|use_cache|^output_|^return_|dtype|^pad_|^bos_|^eos_|"
    r"_range$|_std$|multiplier|scale|^id2label|^label2id|^problem_type|tokenizer|^task|^prefix|^chunk_size_feed)",
    re.I)


def defaults_used(raw: RawConfig, cfg: Any) -> tuple[str, ...]:
    """Architecture keys the config.json omits, each with the value transformers' config class filled in:
    ``"head_dim=256 (Gemma3TextConfig default)"``. Token ids, initialisation and numerical-stability settings
    are left out: they change no tensor the planner counts."""
    data = raw.data.get("text_config") if isinstance(raw.data.get("text_config"), dict) else raw.data
    out = []
    for key, value in sorted(cfg.to_dict().items()):
        if key in data or key.startswith("_") or key in ("architectures", "model_type", "transformers_version"):
            continue
        if not _STRUCTURAL.search(key) or _NOT_STRUCTURAL.search(key):
            continue
        if isinstance(value, (dict, list)) and len(json.dumps(value)) > 80:
            value = json.dumps(value)[:77] + "..."
        out.append(f"{key}={value} ({type(cfg).__name__} default)")
    return tuple(out)


INDEX_LIST_SUFFIXES = ("_idxs", "_indices", "_ids", "moe_layers", "mlp_only_layers", "dense_layers")
"""Config lists of layer *indices* (LFM2 ``full_attn_idxs``, Llama 4 ``moe_layers``, Qwen-MoE
``mlp_only_layers``), as opposed to lists with one entry per layer (``layer_types``, ``no_rope_layers``)."""


def _is_index_list(key: str) -> bool:
    return key.endswith(INDEX_LIST_SUFFIXES)


def per_layer_keys(cfg: Any) -> list[str]:
    """Config attributes that hold one entry per layer (``layer_types``, ``no_rope_layers``, ...): lists as long
    as the model is deep whose name says layer (Falcon-H1's two ``mlp_multipliers`` are not per layer)."""
    L = cfg.num_hidden_layers
    return [k for k, v in vars(cfg).items()
            if isinstance(v, list) and len(v) == L and "layer" in k and not k.startswith("_")
            and not _is_index_list(k)]


def index_keys(cfg: Any) -> list[str]:
    """Config attributes that list layer indices."""
    return [k for k, v in vars(cfg).items() if isinstance(v, list) and _is_index_list(k) and not k.startswith("_")
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v)]


def truncated(cfg: Any, num_layers: int) -> Any:
    """A copy of ``cfg`` with the first ``num_layers`` layers (every per-layer list cut to match)."""
    return selected(cfg, list(range(num_layers)))


def selected(cfg: Any, layers: list[int]) -> Any:
    """A copy of ``cfg`` with only the given layers, in order: per-layer lists picked at those indices, index
    lists renumbered. Whether the built model really has those layers' kinds is for the caller to check
    (a pattern computed from the layer index, such as ``first_k_dense_replace``, is not remapped)."""
    out = copy.deepcopy(cfg)
    for key in per_layer_keys(cfg):
        v = list(getattr(cfg, key))
        setattr(out, key, [v[i] for i in layers])
    for key in index_keys(cfg):
        v = list(getattr(cfg, key))
        setattr(out, key, [layers.index(i) for i in v if i in layers])
    out.num_hidden_layers = len(layers)
    return out


def build(cfg: Any, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_config``; a config transformers cannot build is a one-line DeriveError.
    Call on the meta device (``with torch.device("meta")``) or inside FakeTensorMode."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet():
            return AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as e:
        raise DeriveError(
            f"transformers {_tf_version()} cannot build {type(cfg).__name__} from this config: {_first_line(e)}"
        ) from e


def profile_config(profile: Any, num_layers: int | None = None, layers: list[int] | None = None) -> Any:
    """The config object a derived profile was built from (``plan trace`` rebuilds the model from it), with the
    first ``num_layers`` layers or the given ``layers`` only."""
    d = profile.derived
    raw = RawConfig(json.loads(d.config_json), Path(d.config_path) if d.config_path else None, profile.name,
                    profile.hf_id)
    cfg = to_config(raw, d.trust_remote_code)
    if layers is not None:
        return selected(cfg, layers)
    return truncated(cfg, num_layers) if num_layers is not None else cfg
