"""The measured-evidence corpus: published real-GPU measurements of fine-tuning memory and speed.

One YAML file per source in ``profiles/evidence/`` (``<source-id>.yaml``), each holding a ``source`` block
(where the numbers come from: repository + path + commit, or paper + table, or a URL) and the ``records``
read from it. A record quotes the published row verbatim, names the model and cluster the way tuneplan
spells them, gives the setup as a plain dict of :class:`planner.engine.setup.Setup` field names (plus the reserved
keys in :data:`RESERVED_SETUP_KEYS` for what tuneplan cannot express yet), and says what was measured:
which kind of memory (allocated / reserved / active / device), which throughput (unit, whole job or per
GPU, real or padded tokens), or a published out-of-memory. Values are stored exactly as published, in the
published unit; consumers convert (see :func:`memory_bytes` and :func:`throughput_tokens_per_s`).

Schema and how to add a record: ``docs/evidence.md``. The checks that every shipped file passes (models
resolve, clusters parse, setups validate, published throughput below the GPU's peak, memory below its
capacity unless an OOM) live in ``tests/profiles/test_evidence.py``.

This module depends only on :mod:`profiles` itself: the setup stays a dict here, and turning it into a
``planner.engine.setup.Setup`` happens in the planner and in the tests. No torch.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from profiles.errors import ProfileError, validation_message

EVIDENCE_DIR = Path(__file__).resolve().parent / "evidence"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ID = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")

Framework = Literal[
    "torchtune",
    "hf-trainer",
    "hf-trainer+deepspeed",
    "hf-trainer+fsdp",
    "accelerate-fsdp",
    "torchtitan",
    "litgpt",
    "unsloth",
    "llama-factory",
    "ms-swift",
    "megatron",
    "nemo",
    "nemo-automodel",
    "deepspeed",
    "axolotl",
    "xtuner",
    "peft",
    "other",
]
"""The software that ran the measurement. ``hf-trainer+deepspeed`` / ``hf-trainer+fsdp``: the Hugging Face
Trainer (or a thin wrapper over it: TRL, ms-swift, LLaMA-Factory when they are named) with DeepSpeed / FSDP;
``peft``: a plain PyTorch loop over a peft model (PEFT's own benchmark)."""

MemoryKind = Literal["allocated", "reserved", "active", "device", "unknown"]
"""``allocated``: ``torch.cuda.max_memory_allocated``; ``reserved``: ``max_memory_reserved``; ``active``:
``memory_stats()['active_bytes.all.peak']``; ``device``: what nvidia-smi / NVML shows (reserved + CUDA
context + other processes); ``unknown``: the source does not say and its code could not be read."""

MemoryUnit = Literal["GiB", "GB", "MiB", "MB", "bytes"]
MEMORY_UNIT_BYTES: dict[str, float] = {"GiB": 2**30, "GB": 1e9, "MiB": 2**20, "MB": 1e6, "bytes": 1.0}

MemoryScope = Literal["per-gpu", "max-over-gpus", "sum-over-gpus"]
"""``per-gpu``: one GPU's figure (all ranks alike, or rank 0); ``max-over-gpus``: the largest rank's figure
(torchtitan's PP runs, ms-swift's two-GPU rows read as their larger value); ``sum-over-gpus``: a total."""

ThroughputUnit = Literal[
    "tokens/s",
    "samples/s",
    "steps/s",
    "s/step",
    "micro-steps/s",
    "s/micro-step",
    "min/1000 micro-steps",
    "s/run",
    "TFLOP/s",
]
"""``step`` is one optimizer step (``micro_batch x grad_accum`` rows per GPU); ``micro-step`` one forward and
backward of one micro-batch; ``s/run`` the wall time of a whole run whose size ``setup.run_steps`` /
``setup.run_tokens`` give; ``TFLOP/s`` a model-FLOP rate counted by the source's own formula, which the record
gives as ``flops_per_token`` (tokens/s = TFLOP/s x 1e12 / flops_per_token)."""

ThroughputScope = Literal["job", "per-gpu"]
TokenCount = Literal["real", "padded", "unknown"]
"""``real``: only non-padding tokens are counted; ``padded``: every position of every padded row (packed rows
have no padding, so both readings agree there); ``unknown``: the source does not say."""

Confidence = Literal["high", "medium", "low"]
SourceKind = Literal["repo", "paper", "blog", "docs"]

RESERVED_SETUP_KEYS: dict[str, str] = {
    "padding_efficiency": "real tokens / padded positions of the measured batches (1.0 = packed), when stated",
    "pp": "pipeline-parallel degree",
    "sequence_parallel": "sequence-parallel degree (DeepSpeed Ulysses / xtuner / ms-swift), 1 = off",
    "liger_kernels": "Liger fused RMSNorm / SwiGLU / RoPE beyond the loss",
    "unsloth": "Unsloth's patched kernels and offloaded gradient checkpointing",
    "fused_rmsnorm": "a fused (Triton) RMSNorm kernel (torchtitan norm_type fused_rmsnorm)",
    "fused_kernels": "fms-acceleration 'foak' fused ops and kernels (Triton RMSNorm, RoPE, cross-entropy, fused LoRA MLP)",
    "padding_free": "rows of a micro-batch concatenated with position ids and varlen FlashAttention (no padding, no cross-row attention)",
    "ep": "expert-parallel degree",
    "quant_bits": "base-weight quantisation bits other than NF4 QLoRA (GPTQ / AQLM / bnb int8), with quant_method",
    "quant_method": "quantisation scheme of the frozen base: 'gptq', 'bnb-int8', 'aqlm', 'awq'",
    "peft_method": "an adapter method tuneplan has no name for (IA3, VeRA, adapter v1/v2, ...)",
    "zero_plus_plus": "DeepSpeed ZeRO++ (quantised weights / gradients, hierarchical partitioning)",
    "dataset": "the training data set (its length distribution decides real tokens per row when not packed)",
    "avg_tokens": "mean real tokens per row of the data set, when the source states it",
    "run_steps": "optimizer steps covered by an 's/run' throughput",
    "run_tokens": "tokens covered by an 's/run' throughput, counted as the source counts them",
    "global_batch": "rows per optimizer step over the whole job, when stated instead of grad_accum",
}
"""Setup keys beyond :class:`planner.engine.setup.Setup`'s fields. A record may carry them; it then cannot be fully
expressed as a tuneplan Setup, and a consumer decides whether to use it (``docs/evidence.md``)."""

RESERVED_SETUP_VALUES: dict[str, dict[str, str]] = {
    "optimizer": {
        "lion": "Lion (one state)",
    },
    "method": {
        "adapter": "an adapter method other than LoRA (see setup.peft_method)",
        "prefix": "prefix / prompt tuning",
    },
}
"""Setup values outside :class:`planner.engine.setup.Setup`'s ``Literal`` choices that records may use."""


class EvidenceError(ProfileError):
    """A malformed evidence file: one line naming the file and what is wrong."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Source(_Frozen):
    """Where a table comes from. ``commit`` pins a repository file; ``url`` is given whenever one exists."""

    id: str = Field(description="= the file stem; unique; lower case, digits, . _ + -")
    kind: SourceKind
    title: str = Field(min_length=3)
    repo: str | None = Field(None, description="owner/name for kind repo (and docs kept in a repository)")
    path: str | None = None
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    url: str | None = None
    table: str = Field(min_length=2, description="which table / figure / section")
    framework: Framework
    framework_version: str | None = None
    notes: str = Field(min_length=10, description="how the table was made and what it reports, from the source")
    setup_defaults: dict[str, Any] = Field(
        default_factory=dict, description="setup keys every record of the source shares unless it sets its own: what "
        "the source's software does, such as loss_shift_copy for transformers before 4.49 (say why in notes)")

    @model_validator(mode="after")
    def _check(self) -> "Source":
        if not _ID.match(self.id):
            raise ValueError(f"source id {self.id!r} must be lower case letters, digits and . _ + -")
        if self.kind == "repo" and not (self.repo and self.path):
            raise ValueError("a repo source needs repo (owner/name) and path")
        if self.repo is not None and self.repo.count("/") != 1:
            raise ValueError(f"repo {self.repo!r} must be owner/name")
        if not (self.url or (self.repo and self.commit)):
            raise ValueError("give a url, or a repo with the commit the table was read at")
        return self


class Memory(_Frozen):
    """A published peak memory, in the unit published, with the kind the source's own code measures."""

    value: float = Field(gt=0)
    unit: MemoryUnit
    kind: MemoryKind
    scope: MemoryScope = "per-gpu"


class Throughput(_Frozen):
    """A published speed, in the unit published."""

    value: float = Field(gt=0)
    unit: ThroughputUnit
    scope: ThroughputScope
    counts: TokenCount = "unknown"
    flops_per_token: float | None = Field(
        None, gt=0, description="for unit TFLOP/s: the FLOPs per token of the source's own formula (required there)")

    @model_validator(mode="after")
    def _check(self) -> "Throughput":
        if (self.unit == "TFLOP/s") != (self.flops_per_token is not None):
            raise ValueError("flops_per_token is given exactly when the unit is TFLOP/s (the source's FLOPs per token)")
        return self


class Measured(_Frozen):
    """What the row reports: memory, throughput and / or a published out-of-memory."""

    memory: Memory | None = None
    memory_other: tuple[Memory, ...] = Field(
        (), description="further published memory figures of the same run, of other kinds (e.g. nvidia-smi beside allocated)"
    )
    throughput: Throughput | None = None
    oom: bool = Field(False, description="the run went out of memory (a published OOM)")

    @model_validator(mode="after")
    def _check(self) -> "Measured":
        if self.memory is None and self.throughput is None and not self.oom:
            raise ValueError("a record measures memory, throughput or an OOM")
        if self.oom and self.throughput is not None:
            raise ValueError("an OOM record has no throughput")
        if self.memory_other and self.memory is None:
            raise ValueError("memory_other needs a primary memory figure")
        return self


class Record(_Frozen):
    """One published measurement, mapped to a tuneplan setup."""

    id: str
    quote: str = Field(min_length=3, description="the published row / sentence, verbatim")
    model: str = Field(min_length=2, description="a tuneplan model name or alias, else the HF id")
    gpus: str = Field(min_length=2, description="a tuneplan cluster spec (8xA800, 2x8xH100, 4090)")
    framework: Framework | None = Field(None, description="overrides source.framework")
    setup: dict[str, Any]
    measured: Measured
    assumptions: tuple[str, ...] = ()
    confidence: Confidence
    unmappable: str | None = Field(None, description="why the setup cannot be mapped to tuneplan (kept anyway)")
    anomaly: str | None = Field(
        None, description="why the published numbers fail a physics check, when they do (kept on purpose)"
    )
    anomaly_affects: tuple[Literal["memory", "speed"], ...] = Field(
        ("memory", "speed"), description="which of the record's figures the anomaly puts in doubt (both by default: "
        "a setup the published memory cannot hold is not the setup the throughput was measured on either)"
    )

    def doubts(self, figure: Literal["memory", "speed"]) -> bool:
        """Whether the record's anomaly puts this figure in doubt (then it is listed, never counted or fitted)."""
        return self.anomaly is not None and figure in self.anomaly_affects

    @model_validator(mode="after")
    def _check(self) -> "Record":
        if not _ID.match(self.id):
            raise ValueError(f"record id {self.id!r} must be lower case letters, digits and . _ + -")
        if self.confidence != "high" and not self.assumptions:
            raise ValueError(f"record {self.id!r}: a {self.confidence}-confidence record states its assumptions")
        return self


class SourceFile(_Frozen):
    """The contents of one ``profiles/evidence/<source-id>.yaml``."""

    source: Source
    records: tuple[Record, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "SourceFile":
        seen: set[str] = set()
        for r in self.records:
            if r.id in seen:
                raise ValueError(f"duplicate record id {r.id!r}")
            seen.add(r.id)
        return self


class EvidenceRecord(_Frozen):
    """A record with its source attached: what :func:`corpus_records` yields."""

    source: Source
    record: Record

    @property
    def id(self) -> str:
        """Global id: ``<source-id>/<record-id>``."""
        return f"{self.source.id}/{self.record.id}"

    @property
    def framework(self) -> str:
        return self.record.framework or self.source.framework

    @property
    def setup(self) -> dict[str, Any]:
        """The record's setup keys over its source's ``setup_defaults``."""
        return {**self.source.setup_defaults, **self.record.setup}


def load_source_file(path: Path) -> SourceFile:
    """Load and validate one evidence file; :class:`EvidenceError` (one line) if it is malformed."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvidenceError(f"evidence file {path.name}: cannot read it as YAML ({first})") from e
    if not isinstance(data, dict):
        raise EvidenceError(f"evidence file {path.name}: expected a mapping with 'source' and 'records'")
    try:
        sf = SourceFile.model_validate(data)
    except ValidationError as e:
        raise EvidenceError(f"evidence file {path.name}: {validation_message(e)}") from e
    if sf.source.id != path.stem:
        raise EvidenceError(f"evidence file {path.name}: source.id {sf.source.id!r} differs from the file stem")
    return sf


def load_corpus(directory: Path | str | None = None) -> list[SourceFile]:
    """Every evidence file in ``directory`` (default: the shipped ``profiles/evidence/``), in name order."""
    d = Path(directory) if directory is not None else EVIDENCE_DIR
    if directory is None:
        return list(_shipped())
    return [load_source_file(p) for p in sorted(d.glob("*.yaml"))]


@functools.cache
def _shipped() -> tuple[SourceFile, ...]:
    return tuple(load_source_file(p) for p in sorted(EVIDENCE_DIR.glob("*.yaml")))


def corpus_records(directory: Path | str | None = None) -> list[EvidenceRecord]:
    """Every record of every source, flattened, each with its source attached."""
    return [EvidenceRecord(source=sf.source, record=r) for sf in load_corpus(directory) for r in sf.records]


def memory_bytes(m: Memory) -> float:
    """The published memory figure in bytes (``GB`` is 10**9, ``GiB`` 2**30, as published)."""
    return m.value * MEMORY_UNIT_BYTES[m.unit]


def row_tokens(setup: dict[str, Any]) -> float | None:
    """Real tokens per row: ``avg_tokens`` when stated; else ``seq_len`` for packed rows (``packing`` true,
    the :class:`planner.engine.setup.Setup` default) or ``seq_len x padding_efficiency`` when that is stated; else
    ``None`` (unpacked rows of unknown length)."""
    if setup.get("avg_tokens"):
        return float(setup["avg_tokens"])
    seq = setup.get("seq_len")
    if not seq:
        return None
    if setup.get("packing", True):
        return float(seq)
    if setup.get("padding_efficiency"):
        return float(seq) * float(setup["padding_efficiency"])
    return None


def tokens_per_step(setup: dict[str, Any], world_size: int) -> float | None:
    """Real tokens one optimizer step processes over the whole job: ``rows x`` :func:`row_tokens`, where rows
    are ``global_batch`` when the record gives it, else ``micro_batch x grad_accum x data-parallel ranks``
    with data-parallel ranks ``world_size / (tp x pp x cp)``. ``None`` when the row length is unknown or the
    record does not state its batch (the Setup defaults are not assumed for a published step time)."""
    per_row = row_tokens(setup)
    if per_row is None:
        return None
    if setup.get("global_batch"):
        return float(setup["global_batch"]) * per_row
    if "micro_batch" not in setup or "grad_accum" not in setup:
        return None
    model_parallel = int(setup.get("tp", 1) or 1) * int(setup.get("pp", 1) or 1) * int(setup.get("cp", 1) or 1)
    dp = max(world_size // model_parallel, 1)
    return float(setup.get("micro_batch", 1)) * float(setup.get("grad_accum", 1)) * dp * per_row


def throughput_tokens_per_s(t: Throughput, setup: dict[str, Any], world_size: int) -> float | None:
    """The published throughput as tokens per second of the whole job, or ``None`` if it cannot be derived.

    ``samples/s`` multiplies by :func:`row_tokens`; ``s/run`` needs ``run_tokens``; step-based units use
    :func:`tokens_per_step` and are whole-job by nature; ``TFLOP/s`` divides by the source's ``flops_per_token``
    (then reads as tokens/s). A ``per-gpu`` tokens/s, TFLOP/s or samples/s is
    multiplied by ``world_size``: every per-GPU figure in the corpus is job tokens / time / all GPUs
    (torchtitan divides each rank's tokens by the model-parallel size, so its TPS/GPU reads the same way).
    """
    v, u = t.value, t.unit
    if u == "TFLOP/s":
        v, u = v * 1e12 / t.flops_per_token, "tokens/s"
    if u == "tokens/s":
        job = v
    elif u == "samples/s":
        per = row_tokens(setup)
        if per is None:
            return None
        job = v * per
    elif u == "s/run":
        if not setup.get("run_tokens"):
            return None
        job = setup["run_tokens"] / v
    else:
        step_tokens = tokens_per_step(setup, world_size)
        if step_tokens is None:
            return None
        if u in ("steps/s", "s/step"):
            job = step_tokens * (v if u == "steps/s" else 1.0 / v)
        else:
            ga = float(setup.get("grad_accum", 1))
            micro = step_tokens / ga
            if u == "micro-steps/s":
                job = micro * v
            elif u == "s/micro-step":
                job = micro / v
            else:  # min/1000 micro-steps
                job = micro * 1000.0 / (v * 60.0)
    if t.scope == "per-gpu" and u in ("tokens/s", "samples/s"):
        return job * world_size
    return job
