"""Result types of the engine: :class:`MemoryEstimate`, :class:`SpeedEstimate`, :class:`Plan`.

All sizes are integer bytes and all times float seconds; conversion to GiB happens only in reports.
``to_json`` produces the versioned JSON contract (``schema_version`` 1) that ``plan estimate --json``,
``plan trace --json`` and ``plan --json`` emit.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.engine.setup import Setup

SCHEMA_VERSION = 1

CATEGORIES: dict[str, str] = {
    "weights_trainable": "parameters that train, in their storage dtype (this rank's shard)",
    "weights_frozen": "frozen parameters (LoRA base, QLoRA NF4 base with its quantisation constants)",
    "gradients": "gradients of trainable parameters (and DeepSpeed's fp32 gradient partition)",
    "optimizer_states": "optimizer states (Adam m and v, 8-bit states, momentum, Adafactor factors)",
    "master_weights": "fp32 master copy of bf16 weights (DeepSpeed bf16 recipe)",
    "activations": "tensors saved for backward by the transformer blocks, and the live working set",
    "logits_loss": "logits, their fp32 upcast, the loss and the logits gradient",
    "temporaries": "transient tensors: autocast weight copies, QLoRA dequantised layer, optimizer-step temporaries",
    "comm_buffers": "ZeRO / DDP buckets, ZeRO-3 / FSDP gathered parameters and prefetch",
    "framework_overhead": "CUDA context and NCCL buffers, outside torch's allocator (nvidia-smi minus reserved)",
    "allocator_margin": "cuBLAS workspaces, allocator rounding and fragmentation (reserved minus tensors)",
}
"""Every per-GPU category, in display order, with what it holds."""

PHASES = ("after_load", "forward_peak", "backward_peak", "optimizer_peak")

_FIELD_DEFAULTS: dict[type, tuple[tuple[str, bool, object, object], ...]] = {}


def unchecked(cls: type[BaseModel], **values: object) -> BaseModel:
    """``cls.model_construct(**values)`` (no validation) at a fraction of its cost: what the plan search builds
    for each of its hundreds of candidates (``explain=False``); the plans it shows are re-made checked. The
    same object as pydantic's (``__dict__`` holds the given values and the defaults of the fields not given,
    ``model_fields_set`` the fields given; tests hold the two equal). Models with aliases, private attributes,
    ``model_post_init`` or extra fields allowed go through pydantic's own path."""
    spec = _FIELD_DEFAULTS.get(cls)
    if spec is None:
        if cls.__private_attributes__ or cls.__pydantic_post_init__ or cls.model_config.get("extra") == "allow" \
                or any(f.alias or f.validation_alias for f in cls.model_fields.values()):
            return cls.model_construct(**values)
        spec = _FIELD_DEFAULTS[cls] = tuple(
            (name, f.is_required(), f.default, f.default_factory) for name, f in cls.model_fields.items())
    d: dict[str, object] = {}
    given = set()
    for name, required, default, factory in spec:
        if name in values:
            d[name] = values[name]
            given.add(name)
        elif not required:
            d[name] = factory() if factory is not None else default
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", d)
    object.__setattr__(m, "__pydantic_fields_set__", given)
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


class MemoryEstimate(BaseModel):
    """Bytes per GPU rank by category at the peak, per phase, and host RAM per node."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    model: str
    gpu: str
    gpus_per_node: int
    nodes: int
    setup: Setup
    categories: dict[str, int] = Field(description="bytes live at the peak; sums to peak_bytes")
    phases: dict[str, int] = Field(description="total bytes live at each phase's peak")
    peak_phase: str
    capacity_bytes: int
    host_bytes: int = Field(description="host RAM per node for offloaded states, pinned buffers, the loader")
    host_categories: dict[str, int]
    assumptions: tuple[str, ...] = ()
    calibration: str = "uncalibrated"
    allocated_peak_bytes: int = Field(0, description="torch.cuda.max_memory_allocated: the largest phase's tensors "
                                      "plus the cuBLAS workspaces (eq. R1-R2); 0 in files written before it existed")
    reserved_peak_bytes: int = Field(0, description="torch.cuda.max_memory_reserved: allocated plus rounding and "
                                     "fragmentation (eq. R3)")
    phase_tensors: dict[str, int] = Field(default_factory=dict, description="tensor bytes at each phase's peak "
                                          "(the phase total less allocator margin and framework overhead)")
    phase_token_churn: dict[str, int] = Field(default_factory=dict, description="bytes of each phase's tensors that "
                                              "grow with the micro-batch's tokens (activations, logits; eq. R3b)")
    residual_tensor_bytes: int = Field(0, description="one bf16 residual-stream tensor of a micro-batch on one GPU, "
                                       "the activation size of eq. R3b")
    retry_floor_bytes: int = Field(0, description="the least the process holds on the GPU after the allocator frees "
                                   "its cache and retries a failed cudaMalloc (eq. R3c, + CUDA context and NCCL): above "
                                   "the card, out of memory although the capped peak fits; 0 in files written before it")

    @model_validator(mode="after")
    def _parts_sum(self) -> "MemoryEstimate":
        if set(self.categories) != set(CATEGORIES):
            raise ValueError(f"categories must be exactly {sorted(CATEGORIES)}")
        if set(self.phases) != set(PHASES):
            raise ValueError(f"phases must be exactly {PHASES}")
        for k, v in {**self.categories, **self.phases, **self.host_categories}.items():
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{k} = {v!r} is not a non-negative integer byte count")
        if self.peak_phase not in PHASES:
            raise ValueError(f"peak_phase {self.peak_phase!r} not in {PHASES}")
        if sum(self.categories.values()) != self.phases[self.peak_phase]:
            raise ValueError("categories do not sum to the peak phase's total")
        if max(self.phases.values()) != self.phases[self.peak_phase]:
            raise ValueError("peak_phase is not the largest phase")
        if sum(self.host_categories.values()) != self.host_bytes:
            raise ValueError("host categories do not sum to host_bytes")
        if self.allocated_peak_bytes and not (
                self.allocated_peak_bytes <= self.reserved_peak_bytes <= self.peak_bytes):
            raise ValueError("allocated <= reserved <= device (the peak) does not hold")
        return self

    @property
    def peak_bytes(self) -> int:
        """The device peak (what nvidia-smi shows for the process, eq. R7): every category. Fits are decided on it."""
        return self.phases[self.peak_phase]

    @property
    def fits(self) -> bool:
        """The run does not go out of memory (no headroom): the peak fits the card and so does what the allocator
        cannot give back when it retries (eq. R3c)."""
        return self.peak_bytes <= self.capacity_bytes and self.retry_floor_bytes <= self.capacity_bytes

    def to_json(self) -> dict:
        """The ``plan estimate --json`` contract (schema_version 1)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "cluster": {"gpu": self.gpu, "gpus_per_node": self.gpus_per_node, "nodes": self.nodes},
            "setup": self.setup.model_dump(),
            "per_gpu": {
                "peak_bytes": self.peak_bytes,
                "allocated_peak_bytes": self.allocated_peak_bytes or None,  # None: not modelled (hand-made)
                "reserved_peak_bytes": self.reserved_peak_bytes or None,
                "phase_tensor_bytes": dict(self.phase_tensors) or None,
                "retry_floor_bytes": self.retry_floor_bytes or None,
                "peak_phase": self.peak_phase,
                "capacity_bytes": self.capacity_bytes,
                "categories": dict(self.categories),
                "phases": dict(self.phases),
            },
            "per_host": {"bytes": self.host_bytes, "categories": dict(self.host_categories)},
            "fits": self.fits,
            "calibration": self.calibration,
            "assumptions": list(self.assumptions),
        }


class SpeedEstimate(BaseModel):
    """Step time split into compute / communication / offload / recompute, throughput and MFU."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    step_s: float = Field(gt=0, description="one optimizer step (all micro-batches of accumulation)")
    tokens_per_step: int = Field(gt=0, description="tokens processed per optimizer step, whole cluster")
    breakdown_s: dict[str, float] = Field(description="compute, communication, offload, recompute (exposed time)")
    model_flops_per_step: float = Field(gt=0, description="useful FLOPs (no recompute), whole cluster")
    hardware_flops_per_step: float = Field(gt=0, description="FLOPs executed, recompute included")
    peak_flops_per_gpu: float = Field(gt=0)
    efficiency: float = Field(gt=0, le=1, description="achievable fraction of peak used for compute time")
    world_size: int = Field(gt=0)
    calibration: str = "uncalibrated"
    assumptions: tuple[str, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.world_size

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: useful FLOPs per second over the cluster's peak (PaLM, app. B)."""
        return self.model_flops_per_step / self.step_s / (self.peak_flops_per_gpu * self.world_size)

    def to_json(self) -> dict:
        return {
            "step_s": self.step_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "mfu": self.mfu,
            "breakdown_s": dict(self.breakdown_s),
            "tokens_per_step": self.tokens_per_step,
            "model_flops_per_step": self.model_flops_per_step,
            "efficiency": self.efficiency,
            "calibration": self.calibration,
            "assumptions": list(self.assumptions),
        }


class Plan(BaseModel):
    """One setup judged on one cluster: its memory and speed estimates, the per-GPU limit it was judged
    against, and (when a search ranked it) its rank and the reasons. Made only by
    :func:`planner.engine.evaluate.evaluate` (the search re-ranks copies of those)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    rank: int = Field(0, ge=0, description="1 = best of a search; 0 = not ranked")
    setup: Setup
    memory: MemoryEstimate
    speed: SpeedEstimate
    usable_bytes: int = Field(gt=0, description="per-GPU limit: capacity x (1 - headroom)")
    host_capacity_bytes: int = Field(gt=0, description="host RAM per node")
    reasons: tuple[str, ...] = ()

    @property
    def headroom_bytes(self) -> int:
        """What is left of the usable per-GPU memory at the peak (negative: does not fit)."""
        return self.usable_bytes - self.memory.peak_bytes

    @property
    def fits_gpu(self) -> bool:
        return self.memory.peak_bytes <= self.usable_bytes

    @property
    def fits_host(self) -> bool:
        return self.memory.host_bytes <= self.host_capacity_bytes

    @property
    def fits(self) -> bool:
        """The peak fits the usable GPU memory and the host RAM fits a node."""
        return self.fits_gpu and self.fits_host

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "setup": self.setup.model_dump(),
            "memory": self.memory.to_json(),
            "speed": self.speed.to_json(),
            "usable_bytes": self.usable_bytes,
            "headroom_bytes": self.headroom_bytes,
            "host_capacity_bytes": self.host_capacity_bytes,
            "fits": self.fits,
            "reasons": list(self.reasons),
        }
