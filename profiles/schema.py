"""Validated data types for model architectures and GPUs.

Profiles are plain data: one YAML file per model in ``profiles/models/`` and one per GPU in
``profiles/gpus/``, each validated by these frozen pydantic models (``extra="forbid"``, a required source).
Derived quantities (parameter counts, linear-layer shapes) live in :mod:`profiles.params`, computed in one
place. Units are in the field names: ``_mib`` is 2**20 bytes, ``_gb_s`` is 10**9 bytes per second,
``_tflops`` is 10**12 floating-point operations per second.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

MlpKind = Literal["gated-silu", "gated-gelu", "gelu", "relu"]
"""``gated-*``: three matrices (gate, up, down) as in SwiGLU / GeGLU; ``gelu`` / ``relu``: two (up, down)."""

NormKind = Literal["rmsnorm", "layernorm", "layernorm-nonparametric"]
"""``layernorm-nonparametric`` (OLMo-1B) has no weight and no bias."""


GpuArch = Literal["volta", "turing", "ampere", "ada", "hopper", "blackwell", "cdna3", "davinci"]
"""Accelerator generation. NVIDIA: Volta sm70, Turing sm75, Ampere sm80/86, Ada sm89, Hopper sm90, Blackwell
sm100/120; AMD CDNA 3 (MI300); Huawei Da Vinci (Ascend)."""

FLASH_ATTENTION_ARCHS: frozenset[str] = frozenset({"ampere", "ada", "hopper", "blackwell", "cdna3"})
"""Generations FlashAttention-2 runs on: "Ampere, Ada, or Hopper GPUs (e.g., A100, RTX 3090, RTX 4090, H100).
Support for Turing GPUs (T4, RTX 2080) is coming soon" (Dao-AILab/flash-attention README, "Installation and
features"); ROCm build for MI200/MI300 (CDNA2/3) in the same README's "AMD ROCm Support"; Blackwell via the
FlashAttention-2 builds for sm100/sm120."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class MoE(_Frozen):
    """Mixture-of-experts fields, named after the Hugging Face config keys they come from."""

    num_experts: int = Field(gt=0, description="routed experts per MoE layer (num_local_experts / n_routed_experts)")
    experts_per_token: int = Field(gt=0, description="top-k routing (num_experts_per_tok)")
    expert_intermediate_size: int = Field(gt=0, description="MLP width of one routed expert (moe_intermediate_size)")
    shared_experts: int = Field(0, ge=0, description="always-active shared experts (n_shared_experts)")
    shared_expert_intermediate_size: int = Field(
        0, ge=0, description="total width of the shared-expert MLP (DeepSeek: n_shared_experts x moe_intermediate_size)"
    )
    shared_expert_gate: bool = Field(False, description="Qwen2-MoE style sigmoid gate h->1 on the shared expert")
    dense_layers: int = Field(0, ge=0, description="leading layers with a dense MLP (first_k_dense_replace)")
    router_bias: bool = False
    experts_autocast: bool = Field(
        False, description="the routed experts multiply through ops autocast casts per use (torch.bmm in the "
                           "module's own forward, as Llama 4's Llama4TextExperts; or nn.Linear experts in a "
                           "ModuleList): under autocast each fp32 expert weight gets a cached bf16 copy, like an "
                           "nn.Linear. False: transformers' experts interface (@use_experts_implementation, "
                           "grouped_mm), which casts by hand and keeps no copy")

    @model_validator(mode="after")
    def _check(self) -> "MoE":
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} > num_experts {self.num_experts}")
        if self.shared_experts and not self.shared_expert_intermediate_size:
            raise ValueError("shared_experts > 0 needs shared_expert_intermediate_size")
        return self


class MLA(_Frozen):
    """Multi-head latent attention (DeepSeek-V2/V3), named after the Hugging Face config keys."""

    q_lora_rank: int | None = Field(None, description="None: q_proj is a plain h -> heads*(nope+rope) matrix")
    kv_lora_rank: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)


Commercial = Literal["open", "conditional", "on-request", "non-commercial"]
COMMERCIAL: dict[str, str] = {
    "open": "an open-source licence (Apache-2.0, MIT): commercial use allowed",
    "conditional": "a custom licence that allows commercial use under conditions (user caps, use policies, "
    "attribution)",
    "on-request": "commercial use needs an application or registration with the model's publisher",
    "non-commercial": "research or non-commercial use only",
}


class ModelCard(_Frozen):
    """What a practitioner reads on a model card before choosing a base model (``plan select``), each fact with
    the URL it comes from in ``sources`` (the model card, the licence text). Optional on a profile: models without
    one are listed by ``plan select`` as skipped."""

    license: str = Field(min_length=1, description="licence name as the card gives it, e.g. 'apache-2.0', 'llama3.1'")
    license_url: str = Field(min_length=8)
    commercial: Commercial
    commercial_terms: str = Field("", description="the conditions in one line, e.g. '700M monthly active users'")
    languages: tuple[str, ...] = Field(min_length=1, description="ISO 639-1 codes the card names as supported")
    languages_note: str = Field("", description="what the card says beyond the named languages")
    training_tokens: float | None = Field(None, gt=0, description="pre-training tokens the card or report states")
    release_date: str = Field(description="YYYY-MM-DD, first public release of the weights")
    superseded_by: str | None = Field(None, description="the catalogue model that replaces it in its family")
    sources: dict[str, str] = Field(min_length=1, description="fact -> URL it comes from")
    unverified: tuple[str, ...] = Field((), description="facts no source in reach confirmed; checked by hand later")

    def __hash__(self) -> int:  # ModelProfile is hashed (memoised FLOPs); ``sources`` is a dict
        return hash((self.license, self.commercial, self.languages, self.training_tokens, self.release_date,
                     self.superseded_by, tuple(sorted(self.sources.items()))))

    @model_validator(mode="after")
    def _check(self) -> "ModelCard":
        import datetime

        from profiles.languages import LANGUAGES

        try:
            datetime.date.fromisoformat(self.release_date)
        except ValueError:
            raise ValueError(f"release_date {self.release_date!r} is not YYYY-MM-DD") from None
        bad = [c for c in self.languages if c not in LANGUAGES]
        if bad:
            raise ValueError(f"unknown language codes {bad}; use ISO 639-1 codes from profiles/languages.py")
        facts = ["license", "commercial", "languages", "release_date"]
        facts += [k for k in ("training_tokens", "superseded_by") if getattr(self, k) is not None]
        missing = [k for k in facts if k not in self.sources]
        if missing:
            raise ValueError(f"card facts without a source: {', '.join(missing)}")
        return self


MixerKind = Literal["attention", "linear-attention", "state-space", "convolution", "hybrid", "none"]
"""What mixes tokens in a block: softmax ``attention``; ``linear-attention`` (Gated DeltaNet, Qwen3-Next);
``state-space`` (Mamba-2); ``convolution`` (LFM2's short convolution); ``hybrid`` (attention and a state-space
layer side by side in one block, Falcon-H1); ``none``."""

AttentionSpan = Literal["full", "sliding", "chunked"]
"""Which keys a query sees: all earlier ones; the last ``window`` (sliding window); its own ``window``-sized
chunk (Llama 4's chunked attention)."""

SetupClass = Literal["full-amp", "full-half", "lora-amp", "lora-half"]
"""The precision and method classes a derived inventory is traced for: weights train (``full``, also the trainable
blocks of ``freeze``) or LoRA adapters train over a frozen 16-bit base (``lora``, also QLoRA); ``amp`` is HF AMP
(fp32 trainable weights under ``torch.autocast``; hf-amp, fp16-amp without DeepSpeed), ``half`` is 16-bit
everywhere (bf16, deepspeed-bf16). fp16 and bf16 have the same sizes."""


FIT_TERMS = ("per_token", "per_token_per_seq", "per_seq_squared", "per_seq", "per_sequence", "constant")


class Fit(_Frozen):
    """Bytes (or FLOPs) as an exact function of the batch shape, fitted to traced points (docs/memory.md eq. D3):
    ``per_token * T + per_token_per_seq * T * s + per_seq_squared * s^2 + per_seq * s + per_sequence * b +
    constant`` with ``b`` sequences of ``s`` tokens per micro-batch and ``T = b * s``. ``T * s = b * s^2`` is
    attention scores; ``s^2`` alone a mask built once for the whole batch; ``s`` alone rotary tables; ``b`` a
    state kept per sequence (linear attention's recurrent state)."""

    per_token: float = 0.0
    per_token_per_seq: float = 0.0
    per_seq_squared: float = 0.0
    per_seq: float = 0.0
    per_sequence: float = 0.0
    constant: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v: object) -> object:
        """A profile file writes a fit as its six coefficients in field order (compact, fast to parse)."""
        if isinstance(v, (list, tuple)):
            if len(v) != len(FIT_TERMS):
                raise ValueError(f"a fit has {len(FIT_TERMS)} coefficients ({', '.join(FIT_TERMS)}), got {len(v)}")
            return dict(zip(FIT_TERMS, v))
        return v

    @model_serializer(mode="plain")
    def _to_list(self) -> list[float | int]:
        return [int(x) if float(x).is_integer() else x for x in (getattr(self, t) for t in FIT_TERMS)]

    def at(self, tokens: int, seq_len: int) -> float:
        s = seq_len
        b = tokens / s if s else 0
        return (self.per_token * tokens + self.per_token_per_seq * tokens * s + self.per_seq_squared * s * s
                + self.per_seq * s + self.per_sequence * b + self.constant)


class SavedPart(_Frozen):
    """Saved tensors of one block that the same modules keep for backward.

    ``adapters`` lists the LoRA targets whose adapters alone keep these tensors (empty: kept whatever is
    adapted), so a setup adapting fewer linears drops the parts no remaining adapter keeps.
    ``per_token_per_rank`` is the slope in the LoRA rank (the ``r``-wide adapter outputs)."""

    adapters: tuple[str, ...] = ()
    size: Fit
    per_token_per_rank: float = 0.0


class BlockInventory(_Frozen):
    """What one kind of block holds in one setup class: the tensors it saves for backward (alive at the end
    of the forward) and its working sets beyond them, in forward and in its own backward (eq. D2).

    A working set is the largest of several moments inside the block (an MLP intermediate, attention scores),
    each an exact :class:`Fit`; which one is largest depends on the shape, so all candidates are kept
    (the moments no other moment dominates at every shape)."""

    saved: tuple[SavedPart, ...]
    forward_working: tuple[Fit, ...]
    backward_working: tuple[Fit, ...]
    forward_working_b1: tuple[Fit, ...] = Field(
        (), description="at micro-batch 1, when it differs (a tensor with a size-1 dimension is already "
                        "contiguous, so some copies happen only for larger batches); empty: as forward_working")
    backward_working_b1: tuple[Fit, ...] = ()


class TracedInventory(_Frozen):
    """Every block kind's inventory for one setup class, attention kernel and sequence regime, with the
    tensors saved outside the blocks and the logits / loss terms (eq. D2-D4)."""

    setup_class: SetupClass
    attention: Literal["sdpa", "eager"]
    seq_from: int = Field(ge=1, description="the regime's shortest sequence (windows change the saved tensors)")
    seq_to: int | None = Field(None, description="first sequence length beyond the regime; None: no end")
    blocks: tuple[BlockInventory, ...] = Field(description="one per DerivedModel.blocks entry, same order")
    first_block: Fit = Field(Fit(), description="block 0 minus its kind's inventory (its input needs no grad)")
    outside: Fit = Field(description="saved outside the blocks: embedding side, masks, rotary tables, final "
                                     "norm, token ids and labels")
    logits_forward_peak: Fit
    logits_saved: Fit
    logits_backward_peak: Fit
    points: tuple[tuple[int, int], ...] = Field(description="(seq_len, micro_batch) points traced")
    check_error: float = Field(0.0, description="largest |fit - trace| at a point not used in the fit, relative to "
                                                "every saved byte and the logits at that point")
    check_worst: str = Field("", description="the quantity with that largest check error")


class BlockKind(_Frozen):
    """One distinct kind of decoder block: the layers with the same modules, shapes and attention."""

    name: str
    layers: tuple[int, ...]
    mixer: MixerKind
    attention: AttentionSpan | None = None
    window: int | None = Field(None, description="sliding window or chunk size, tokens")
    rope: bool = True
    sinks: bool = Field(False, description="learned attention sinks (gpt-oss)")
    heads: int = Field(0, ge=0, description="query heads of the softmax attention (0: none)")
    qk_head_dim: int = Field(0, ge=0)
    v_head_dim: int = Field(0, ge=0)
    moe: bool = False
    params: int = Field(0, ge=0, description="parameters of one block of this kind")
    mixer_flops: Fit = Field(
        Fit(), description="forward FLOPs per token of the token mixer besides its weights and softmax attention "
                           "(linear attention / state-space scans), per_token + per_token_per_seq * s")


class DerivedLinear(_Frozen):
    """One linear-layer kind read off the built model (``count`` instances in the model)."""

    name: str = Field(description="module name as LoRA targets it (last path component); routed experts "
                                  "'experts.<tensor>'")
    path: str = Field(description="path inside the block, e.g. 'self_attn.q_proj'")
    in_features: int = Field(gt=0)
    out_features: int = Field(gt=0)
    bias: bool = False
    count: int = Field(gt=0)
    active_count: int = Field(ge=0)
    group: Literal["attention", "mlp", "moe"]
    role: Literal["linear", "router", "expert", "excluded"] = Field(
        "linear", description="'linear': an nn.Linear LoRA can adapt; 'router': MoE routing; 'expert': a routed "
                              "expert tensor (3-D, not nn.Linear in transformers >= 5); 'excluded': an nn.Linear peft "
                              "refuses to adapt (a Mamba model's out_proj)")


class DerivedParams(_Frozen):
    """Exact parameter counts of the model transformers builds, by group (profiles.params.GROUPS)."""

    embedding: int = Field(ge=0)
    attention: int = Field(ge=0)
    mlp: int = Field(ge=0)
    moe: int = Field(ge=0)
    norms: int = Field(ge=0)
    lm_head: int = Field(ge=0)
    active: int = Field(ge=0)
    largest_module: int = Field(gt=0, description="parameters of the largest single module (ZeRO-3 gathers it)")


DERIVATION = 2
"""The version of what ``plan profiles add`` reads off a model (validation/derive). A profile cached by an older
derivation misses fields the engine now uses (2: ``MoE.experts_autocast``); it is derived again when its config is
given, and ``plan profiles list`` and the estimate's assumptions call it stale when it is named."""


class DerivedModel(_Frozen):
    """What ``plan profiles add`` reads off transformers' own model code (validation/derive, docs/memory.md
    eq. D1-D4): the linear layers and parameter counts of the model built on the meta device, the block kinds,
    and each block kind's activation inventory traced under FakeTensorMode and fitted exactly."""

    transformers_version: str
    torch_version: str
    derivation: int = Field(1, ge=1, description="the DERIVATION that wrote it (files without the key: 1)")
    architecture: str = Field(description="the transformers class built, e.g. 'Gemma3ForCausalLM'")
    config_json: str = Field(description="the config the model was built from, as JSON (rebuilds it for plan trace)")
    config_sha256: str
    config_path: str | None = Field(None, description="remote code only: the model folder its code is loaded from")
    trust_remote_code: bool = False
    supports_sdpa: bool = True
    params: DerivedParams
    linear_layers: tuple[DerivedLinear, ...]
    blocks: tuple[BlockKind, ...]
    layer_kinds: tuple[int, ...] = Field(description="for each layer, its index in blocks")
    inventories: tuple[TracedInventory, ...] = ()

    def __hash__(self) -> int:
        # the engine caches per profile (functools.lru_cache): hashing every nested inventory on each call would
        # dominate the plan search; the config's hash and the versions identify a derivation
        return hash((self.config_sha256, self.transformers_version, self.torch_version, self.architecture,
                     len(self.inventories), self.trust_remote_code))

    @model_validator(mode="after")
    def _check(self) -> "DerivedModel":
        n = len(self.blocks)
        if any(not 0 <= k < n for k in self.layer_kinds):
            raise ValueError("layer_kinds points outside blocks")
        for inv in self.inventories:
            if len(inv.blocks) != n:
                raise ValueError(f"inventory {inv.setup_class}/{inv.attention} has {len(inv.blocks)} blocks, not {n}")
        return self


class ModelProfile(_Frozen):
    """One model architecture, with the numbers from its own ``config.json`` and where they came from."""

    name: str = Field(description="canonical display name, e.g. 'Llama-3.1-8B'")
    source: str = Field(min_length=8, description="URL of the config.json (or a verbatim copy) the numbers come from")
    hf_id: str | None = Field(None, description="Hugging Face hub id, e.g. 'meta-llama/Llama-3.1-8B'")
    aliases: tuple[str, ...] = ()
    model_type: str = Field(description="the config's model_type (what transformers dispatches on)")
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0, description="dense MLP width (for MoE models: the dense layers' width)")
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_embeddings: bool
    max_positions: int = Field(gt=0)
    mlp_kind: MlpKind = "gated-silu"
    norm_kind: NormKind = "rmsnorm"
    norms_per_layer: int = Field(2, ge=0, description="Gemma-2 has 4 (pre/post attention, pre/post MLP)")
    final_norm: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = Field(False, description="per-head RMSNorm on q and k (Qwen3), weight of size head_dim each")
    qk_norm_scope: Literal["head", "projection"] = Field(
        "head",
        description="'head': one q and one k norm weight of size head_dim shared by all heads (Qwen3); "
        "'projection': weights over the whole q and k projection widths, heads x head_dim and "
        "kv_heads x head_dim (OLMo-2, transformers/models/olmo2/modeling_olmo2.py)",
    )
    fused_qkv: bool = Field(False, description="one qkv matrix in the checkpoint (ChatGLM, InternLM2)")
    fused_gate_up: bool = Field(False, description="one gate_up matrix in the checkpoint (ChatGLM / GLM)")
    sliding_window: int | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    moe: MoE | None = None
    mla: MLA | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="the checkpoint's torch_dtype")
    transformers_buildable: bool = Field(
        True, description="False where transformers has no native class for model_type (remote code only)"
    )
    not_buildable_reason: str | None = None
    notes: str = ""
    unverified: tuple[str, ...] = Field((), description="fields no primary source confirmed")
    card: ModelCard | None = Field(None, description="licence, languages, training tokens, release: plan select")
    derived: DerivedModel | None = Field(
        None, description="set for profiles derived from transformers' model code (plan profiles add): the engine "
                          "uses its measured linear layers, counts and activation inventories")
    defaults_used: tuple[str, ...] = Field(
        (), description="config keys the config.json omitted, as 'key=value (source)': the value transformers' "
                        "config class fills in; stated in every estimate's assumptions")

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelProfile":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads {self.num_kv_heads} does not divide num_heads {self.num_heads}"
            )
        if self.moe is not None and self.moe.dense_layers > self.num_layers:
            raise ValueError("moe.dense_layers exceeds num_layers")
        if not self.transformers_buildable and not self.not_buildable_reason:
            raise ValueError("transformers_buildable: false needs not_buildable_reason")
        if self.derived is not None and len(self.derived.layer_kinds) != self.num_layers:
            raise ValueError(f"derived.layer_kinds has {len(self.derived.layer_kinds)} layers, not {self.num_layers}")
        return self

    @property
    def q_width(self) -> int:
        """Width of the query projection output (heads x head_dim; MLA: heads x (nope + rope))."""
        if self.mla:
            return self.num_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the key (= value) projection output: kv_heads x head_dim (GQA/MQA shrink it)."""
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def gated(self) -> bool:
        return self.mlp_kind.startswith("gated")


class GpuProfile(_Frozen):
    """One accelerator. Every number has an entry in ``sources``; figures no primary source confirmed are
    listed in ``unverified``. TFLOPS are dense (no 2:4 sparsity); None means the precision is unsupported."""

    name: str
    aliases: tuple[str, ...] = ()
    vendor: Literal["nvidia", "amd", "huawei"]
    arch: GpuArch = Field(description="architecture generation; decides kernel support (FlashAttention-2, FP8)")
    memory_mib: int = Field(gt=0, description="total memory as the driver reports it (nvidia-smi MiB)")
    memory_marketing_gb: int = Field(gt=0, description="the datasheet figure, for display only")
    hbm_bandwidth_gb_s: float = Field(gt=0)
    bf16_tflops: float | None = Field(None, description="dense tensor-core BF16 with FP32 accumulate")
    fp16_tflops: float | None = Field(None, description="dense tensor-core FP16 (FP32 accumulate where it differs)")
    fp8_tflops: float | None = None
    tf32_tflops: float | None = None
    interconnect: Literal["nvlink", "pcie", "xgmi", "hccs"]
    intra_node_bandwidth_gb_s: float = Field(
        gt=0, description="GPU-to-GPU bandwidth per GPU, one direction (NVLink/xGMI/HCCS, or PCIe for PCIe cards)"
    )
    pcie_gen: int = Field(ge=3, le=6)
    host_link: Literal["pcie", "nvlink-c2c"] = Field(
        "pcie", description="the GPU's link to its host CPU: PCIe, or NVLink-C2C on Grace superchips (GH200, GB200)"
    )
    pcie_bandwidth_gb_s: float = Field(gt=0, description="host link (PCIe x16, or host_link), one direction")
    typical_gpus_per_node: int = Field(8, gt=0)
    inter_node_bandwidth_gb_s: float = Field(
        gt=0, description="default inter-node bandwidth per node, one direction (overridable by a flag)"
    )
    host_ram_gib_per_node: int = Field(gt=0, description="default host RAM per node (overridable by a flag)")
    tdp_w: int | None = None
    default_mfu: float = Field(
        gt=0, lt=1, description="achievable model-FLOPs utilisation used until calibration data exists"
    )
    sources: dict[str, str] = Field(min_length=1, description="field -> where the number comes from")
    unverified: tuple[str, ...] = ()
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> "GpuProfile":
        if self.bf16_tflops is None and self.fp16_tflops is None:
            raise ValueError("a GPU needs bf16_tflops or fp16_tflops")
        numeric = [k for k, v in self.model_dump().items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        missing = [k for k in numeric if k not in self.sources and k not in ("typical_gpus_per_node",)]
        if missing:
            raise ValueError(f"no source for {', '.join(sorted(missing))}")
        return self

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def supports_bf16(self) -> bool:
        return self.bf16_tflops is not None

    @property
    def supports_fp8(self) -> bool:
        return self.fp8_tflops is not None

    @property
    def family(self) -> str:
        """The family docs/accuracy.md reports speed errors under: the architecture, with RTX-branded parts (GeForce
        and workstation) apart from the data-centre parts of the same architecture (their clocks and memory
        differ)."""
        return f"{self.arch}{'-consumer' if self.name.startswith('RTX') else ''}"

    @property
    def supports_flash_attention(self) -> bool:
        """FlashAttention-2 kernels exist for this generation (:data:`FLASH_ATTENTION_ARCHS`)."""
        return self.arch in FLASH_ATTENTION_ARCHS
