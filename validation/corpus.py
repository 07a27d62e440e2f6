"""The evidence corpus (``profiles/evidence/``) as cases the engine can be held against: each mappable record
becomes a model, a cluster, a :class:`~planner.engine.setup.Setup` and what was measured (tokens/s of the
whole job; a peak of a stated memory kind; a published out-of-memory).

A record is skipped, with the reason kept, when it cannot be expressed: a model or GPU outside the catalogue,
a technique tuneplan cannot model yet (pipeline / sequence parallelism, quantisation other than NF4, ...), a
throughput whose token count cannot be derived. Skipped records stay in
the accuracy report's list, so nothing is silently dropped.

Pure: reads the shipped corpus through :mod:`profiles.evidence`, imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.engine.setup import Setup, SetupError
from profiles.cluster import Cluster, parse_cluster
from profiles.errors import InputError, validation_message
from profiles.evidence import EvidenceRecord, Memory, corpus_records, memory_bytes, throughput_tokens_per_s
from profiles.registry import get_model
from profiles.schema import ModelProfile

FRAMEWORK_OF: dict[str, str] = {
    "torchtune": "torchtune",
    "hf-trainer": "hf",
    "hf-trainer+deepspeed": "hf",
    "hf-trainer+fsdp": "hf",
    "accelerate-fsdp": "hf",
    "llama-factory": "hf",
    "ms-swift": "hf",
    "axolotl": "hf",
    "torchtitan": "torchtitan",
    "litgpt": "litgpt",
    "peft": "other",
    "xtuner": "other",
    "deepspeed": "other",
    "unsloth": "other",
    "megatron": "megatron",
    "nemo": "megatron",
    "nemo-automodel": "other",
    "other": "other",
}
"""Evidence frameworks -> tuneplan's :data:`~planner.engine.speed.params.Framework` (the ones whose speed differs
through their per-step and per-layer overheads)."""

NOT_MODELLED: dict[str, str] = {
    "pp": "pipeline parallelism",
    "sequence_parallel": "sequence parallelism",
    "unsloth": "Unsloth's kernels",
    "ep": "expert parallelism",
    "quant_bits": "quantisation other than NF4",
    "quant_method": "quantisation other than NF4",
    "peft_method": "an adapter other than LoRA / DoRA",
    "zero_plus_plus": "ZeRO++",
}
"""Reserved setup keys whose technique the engine cannot model yet: such records are skipped with this reason
(when the value is not the neutral one: pp 1, unsloth false, ...). FP8, TP, CP, async TP, GaLore, BAdam and LISA
left this table when they became Setup fields (issue 12)."""

METADATA_KEYS = ("dataset", "avg_tokens", "run_steps", "run_tokens", "global_batch")
"""Reserved keys that describe the data or the run, used by the throughput conversion only."""

NEUTRAL = {"pp": 1, "sequence_parallel": 1, "ep": 1, "unsloth": False, "zero_plus_plus": False}
FP8_BOOLEANS = {False: "none"}
"""A record's ``fp8: false`` is the Setup's ``fp8: none``; ``fp8: true`` without the recipe stays unmappable (the
recipe decides the GEMM speed)."""


@dataclass(frozen=True, eq=False)
class Case:
    """One corpus record expressed as tuneplan inputs."""

    id: str
    source: str
    model: ModelProfile
    cluster: Cluster
    setup: Setup
    framework: str
    confidence: str
    record: EvidenceRecord
    notes: tuple[str, ...] = ()
    fit: bool = True
    """False: evaluated and reported, but not used to fit (an assumption the fit should not lean on)"""


@dataclass(frozen=True, eq=False)
class SpeedCase(Case):
    tokens_per_s: float = 0.0
    """measured real tokens per second of the whole job"""


@dataclass(frozen=True, eq=False)
class MemoryCase(Case):
    measured_bytes: float | None = None
    kind: str = "unknown"
    """allocated | reserved | active | device | unknown (profiles.evidence.MemoryKind)"""
    oom: bool = False
    other: tuple[Memory, ...] = ()


@dataclass
class Skipped:
    id: str
    reason: str


@dataclass
class Corpus:
    speed: list[SpeedCase] = field(default_factory=list)
    memory: list[MemoryCase] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _fields(rec: EvidenceRecord) -> tuple[dict[str, Any], list[str]]:
    """The Setup fields a record describes, and notes on the mapping. Raises ValueError (with the reason)
    when the record uses a technique the engine cannot model yet."""
    raw: dict[str, Any] = rec.setup
    for key, what in NOT_MODELLED.items():
        if key in raw and raw[key] not in (None, NEUTRAL.get(key, None)):
            raise ValueError(f"uses {what} ({key}: {raw[key]}), not modelled yet")
    notes: list[str] = []
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k in Setup.model_fields}
    if raw.get("padding_free"):
        fields["packing"] = True
        notes.append("padding-free batches (varlen attention, no cross-row attention) modelled as packing")
    if raw.get("liger_kernels") or raw.get("fused_kernels") or raw.get("fused_rmsnorm"):
        fields["fused_kernels"] = True
    if isinstance(fields.get("fp8"), bool):
        if fields["fp8"] not in FP8_BOOLEANS:
            raise ValueError("uses FP8 training without naming the recipe (fp8: true), not modelled")
        fields["fp8"] = FP8_BOOLEANS[fields["fp8"]]
    fields["framework"] = FRAMEWORK_OF.get(rec.framework, "other")
    fields.setdefault("allow_long_seq", True)
    return fields, notes


def _make(fields: dict[str, Any]) -> Setup:
    try:
        return Setup(**fields)
    except (SetupError, ValueError) as e:
        raise ValueError(f"setup does not validate: {validation_message(e)}") from None


def speed_setup(rec: EvidenceRecord) -> tuple[Setup, tuple[str, ...], bool]:
    """The Setup whose step time the record's throughput measures (unpacked rows: processed at their mean
    length), notes, and whether the record may drive a fit. Raises ValueError with the reason."""
    fields, notes = _fields(rec)
    raw = rec.setup  # the record over its source's setup_defaults, as _fields reads it
    fit = True
    if raw.get("padding_free") and raw.get("avg_tokens"):
        # rows concatenated without padding, attention within each row: processed = the real tokens
        fields["seq_len"] = max(1, round(float(raw["avg_tokens"])))
        notes.append(f"padding-free rows of {raw['avg_tokens']} tokens on average: attention within each row")
    elif not fields.get("packing", True) and raw.get("padding_efficiency") and raw.get("avg_tokens"):
        # dynamic padding with a known real/padded ratio: rows processed at the mean padded length
        fields["seq_len"] = max(1, round(float(raw["avg_tokens"]) / float(raw["padding_efficiency"])))
        notes.append(f"dynamically padded rows: mean padded length {fields['seq_len']} tokens, "
                     f"{raw['padding_efficiency']:.1%} of them real")
    elif not fields.get("packing", True) and "padding_efficiency" not in raw:
        avg = raw.get("avg_tokens")
        if not avg:
            raise ValueError("throughput of unpacked rows of unknown length (no avg_tokens or padding_efficiency)")
        fields["seq_len"] = max(1, round(float(avg)))
        notes.append(f"unpacked rows of {avg} real tokens on average: processed length taken as that mean "
                     "(the batch-max padding is unknown: errs fast for micro-batch > 1; not fitted then)")
        fit = int(raw.get("micro_batch", 1)) == 1
    return _make(fields), tuple(notes), fit


def memory_setup(rec: EvidenceRecord) -> tuple[Setup, tuple[str, ...]]:
    """The Setup whose peak the record's memory measures: ``seq_len`` is the longest row (the cut-off), as
    the peak happens at the longest batch."""
    fields, notes = _fields(rec)
    return _make(fields), tuple(notes)


def load(records: list[EvidenceRecord] | None = None) -> Corpus:
    """Every record of the corpus as speed and memory cases, and the ones skipped with why."""
    out = Corpus()
    for rec in records if records is not None else corpus_records():
        r = rec.record
        if r.unmappable:
            out.skipped.append(Skipped(rec.id, f"unmappable: {r.unmappable}"))
            continue
        try:
            model = get_model(r.model)
            cluster = parse_cluster(r.gpus)
            mem_setup, mem_notes = memory_setup(rec)
        except (InputError, ValueError) as e:
            out.skipped.append(Skipped(rec.id, str(e)))
            continue
        base = dict(id=rec.id, source=rec.source.id, model=model, cluster=cluster,
                    framework=mem_setup.framework, confidence=r.confidence, record=rec)
        m = r.measured
        if m.throughput is not None:
            try:
                setup, notes, fit = speed_setup(rec)
                tps = throughput_tokens_per_s(m.throughput, rec.setup, cluster.world_size)
                if tps is None:
                    raise ValueError("throughput cannot be converted to tokens/s (row length or batch not stated)")
                out.speed.append(SpeedCase(**base, setup=setup, notes=notes, fit=fit and not r.doubts("speed"),
                                           tokens_per_s=tps))
            except ValueError as e:
                out.skipped.append(Skipped(rec.id, f"speed: {e}"))
        if m.memory is not None or m.oom:
            out.memory.append(MemoryCase(
                **base, setup=mem_setup, notes=mem_notes, fit=not r.doubts("memory"),
                measured_bytes=memory_bytes(m.memory) if m.memory is not None else None,
                kind=m.memory.kind if m.memory is not None else "unknown", oom=m.oom, other=m.memory_other,
            ))
    return out


def gpu_family(case: Case) -> str:
    """The GPU family a case is reported under: the architecture, with consumer and data-centre parts of one
    architecture kept apart (their clocks and memory differ)."""
    return case.cluster.gpu.family

