"""The plan search: enumerate candidate Setups, keep those that fit with headroom, rank them, explain why.

Pure: no printing, no file I/O. The reasons behind a ranking are data (strings in each Plan and in the
SearchResult), rendered by :mod:`planner.app.render.report`.

Search space (``docs/planner.md``): method (full / LoRA / QLoRA unless fixed), precision recipe valid for the
GPU, optimizer (AdamW, 8-bit AdamW), sharding (DDP, ZeRO-1/2/3, FSDP full-shard), offload, activation
checkpointing, loss kernel (plain, Liger), micro-batch (powers of two up to the largest that fits) and
gradient accumulation to reach the global batch. Memory is monotone in the micro-batch, so each family
doubles its micro-batch until the first one that does not fit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from planner.engine.calibration import CalibrationBook
from planner.engine.dataset import DatasetShape
from planner.engine.evaluate import DEFAULT_HEADROOM, check_efficiency, check_headroom, evaluate, usable_bytes
from planner.engine.lora_targets import lora_targets
from planner.engine.rules import check_used
from planner.engine.results import Plan
from planner.engine.setup import Setup, SetupError, candidate_recipes
from planner.units import gib
from profiles.cluster import Cluster, make_cluster
from profiles.errors import InputError, unknown_choice_message
from profiles.schema import ModelProfile

Objective = Literal["throughput", "cost", "memory"]
OBJECTIVES = ("throughput", "cost", "memory")
DEFAULT_GLOBAL_BATCH = 64
"""Default global batch in sequences: LLaMA-Factory's example SFT configs use 1-2 per device x 8 accumulation
on 8 GPUs (64-128 sequences); we take 64 (rounded up to a multiple of the data-parallel size)."""
MAX_MICRO_BATCH = 64
"""Search bound on the micro-batch (a search limit, not a hardware fact; larger values rarely speed anything up
and fit only tiny models)."""


@dataclass(frozen=True)
class SearchRequest:
    """What the user asked for: fixed Setup fields, the global batch, the fit margin and the objective."""

    fixed: dict[str, Any] = field(default_factory=dict)
    global_batch: int | None = None
    headroom: float = DEFAULT_HEADROOM
    objective: Objective = "throughput"
    top: int = 5
    price_per_gpu_hour: float | None = None
    calibration: CalibrationBook | None = None
    """every calibration known (the app layer reads them); None: uncalibrated"""
    efficiency: float | None = None
    """an explicit override of the speed model's achieved fraction of peak"""
    dataset: DatasetShape | None = None
    """a measured dataset (``plan --dataset``): memory at its longest batch, speed at its padding / packing"""
    admit: Callable[[Setup], str | None] | None = None
    """the caller's filter: why a candidate is not searched at all (e.g. ``plan configs --trainer X``: X cannot
    run it, :func:`planner.emit.refusal`), or None to search it. None: every candidate is searched"""
    explicit: frozenset[str] = frozenset()
    """the Setup fields the user gave explicitly: one that every searched family ignores is refused
    (:func:`planner.engine.rules.check_used`)"""
    admit_label: str = ""
    """what the filter stands for, for the notes and the error (e.g. ``--trainer hf-fsdp``)"""


@dataclass(frozen=True)
class Rejection:
    setup: Setup
    reason: str
    peak_bytes: int | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class SearchResult:
    model: ModelProfile
    cluster: Cluster
    request: SearchRequest
    plans: list[Plan]
    rejected: list[Rejection]
    considered: int
    global_batch: int
    usable_bytes: int
    notes: list[str]
    suggestions: list[str]
    excluded: int = 0
    """candidate families the request's ``admit`` filter kept out of the search"""


class SearchError(InputError):
    """A bad search request (one line)."""


def check_request(request: SearchRequest) -> None:
    """The request's own rules, in one place: a known objective, a headroom in range, a non-negative, finite
    price, an efficiency in (0, 1]. Raises :class:`SearchError` / :class:`SetupError` (one line)."""
    if request.objective not in OBJECTIVES:
        raise SearchError(unknown_choice_message("--objective", str(request.objective), OBJECTIVES))
    check_headroom(request.headroom)
    price = request.price_per_gpu_hour
    if price is not None and not (0 <= price < float("inf")):
        raise SearchError(f"--price-per-gpu-hour {price!r} is not a finite price >= 0")
    if request.efficiency is not None:
        check_efficiency(request.efficiency)


def default_global_batch(world: int) -> int:
    """64 sequences, rounded up to a multiple of the data-parallel size."""
    return -(-DEFAULT_GLOBAL_BATCH // world) * world


def _recipes(cluster: Cluster, sharding: tuple[int, str | None], fixed: dict) -> list[str]:
    if "recipe" in fixed:
        return [fixed["recipe"]]
    return list(candidate_recipes(cluster.gpu.supports_bf16, *sharding))


def _shardings(cluster: Cluster, fixed: dict) -> list[tuple[int, str | None]]:
    if "fsdp" in fixed and fixed["fsdp"]:
        return [(0, fixed["fsdp"])]
    if "zero" in fixed:
        return [(fixed["zero"], None)]
    if cluster.world_size == 1:
        return [(0, None), (2, None), (3, None)]  # ZeRO on one GPU only pays off with offload
    return [(0, None), (1, None), (2, None), (3, None), (0, "full-shard")]


def _offloads(sharding: tuple[int, str | None], world: int, fixed: dict) -> list[str]:
    if "offload" in fixed:
        return [fixed["offload"]]
    zero, fsdp = sharding
    if zero == 0 and fsdp is None:
        return ["none"]
    if world == 1 and zero:
        return ["optimizer", "optimizer+params"] if zero == 3 else ["optimizer"]
    if zero == 3:
        return ["none", "optimizer", "optimizer+params"]
    return ["none", "optimizer"] if zero >= 2 else ["none"]


def candidate_families(model: ModelProfile, cluster: Cluster, request: SearchRequest) -> list[dict[str, Any]]:
    """Every combination of the searched dimensions except micro-batch / accumulation."""
    f = request.fixed
    methods = [f["method"]] if "method" in f else ["full", "lora", "qlora"]
    optimizers = [f["optimizer"]] if "optimizer" in f else ["adamw", "adamw-8bit"]
    ckpts = [f["checkpointing"]] if "checkpointing" in f else ["none", "full"]
    losses = [f["loss"]] if "loss" in f else ["plain", "liger"]
    out = []
    for method, shard, opt, ck, loss in itertools.product(methods, _shardings(cluster, f), optimizers, ckpts, losses):
        for recipe in _recipes(cluster, shard, f):
            for off in _offloads(shard, cluster.world_size, f):
                fam = dict(f)
                fam.update(
                    method=method, zero=shard[0], fsdp=shard[1], optimizer=opt, checkpointing=ck,
                    loss=loss, recipe=recipe, offload=off,
                    # Liger's loss comes with its fused kernels (LLaMA-Factory enable_liger_kernel patches both)
                    fused_kernels=f.get("fused_kernels", loss == "liger"),
                )
                out.append(fam)
    return out


def _micro_batches(fixed: dict, global_batch: int, world: int) -> list[int]:
    if "micro_batch" in fixed:
        return [fixed["micro_batch"]]
    per_rank = global_batch // world
    if "grad_accum" in fixed:  # the global batch and the accumulation decide the micro-batch
        return [per_rank // fixed["grad_accum"]]
    mbs, m = [], 1
    while m <= min(per_rank, MAX_MICRO_BATCH):
        if per_rank % m == 0:
            mbs.append(m)
        m *= 2
    return mbs or [1]


def _grad_accum(global_batch: int, micro_batch: int, world: int, fixed: dict) -> int | None:
    if "grad_accum" in fixed:
        return fixed["grad_accum"]
    per_rank = global_batch // world
    if per_rank % micro_batch:
        return None
    return per_rank // micro_batch


def complexity(s: Setup) -> float:
    """How much machinery a plan needs, to break ties between plans of equal speed (lower is simpler):
    DDP < ZeRO-1 < ZeRO-2 < FSDP < ZeRO-3, offload, checkpointing, non-default optimizer / loss / recipe."""
    c = {0: 0.0, 1: 1.0, 2: 2.0, 3: 4.0}[s.zero] + (3.0 if s.fsdp else 0.0)
    c += {"none": 0.0, "optimizer": 5.0, "optimizer+params": 6.0}[s.offload]
    c += 1.0 if s.checkpointing != "none" else 0.0
    c += 0.5 if s.optimizer != "adamw" else 0.0
    c += 0.25 if s.loss != "plain" else 0.0
    c += 0.5 if s.recipe == "bf16" else 0.0
    return c


def _score(plan: Plan, objective: str) -> tuple:
    """Sort key, best first. Throughput (and cost, which on a fixed cluster is proportional to 1 / tokens/s)
    ranks by tokens/s in 1 % buckets, then simpler plans, then larger micro-batches (fewer accumulation
    steps), then lower peak; memory ranks by peak."""
    mem, speed = plan.memory, plan.speed
    if objective == "memory":
        return (mem.peak_bytes, -speed.tokens_per_s)
    return (-speed_bucket(speed.tokens_per_s), complexity(plan.setup), -plan.setup.micro_batch, mem.peak_bytes)


def speed_bucket(tokens_per_s: float) -> int:
    """Throughputs within 1 % of each other are ties: the speed model is not that precise."""
    import math

    return math.floor(math.log(max(tokens_per_s, 1e-9)) / math.log(1.01))


def search(model: ModelProfile, cluster: Cluster, request: SearchRequest, with_suggestions: bool = True) -> SearchResult:
    """Rank the plans that fit ``cluster`` with ``request.headroom`` free, best first. When none fits and
    ``with_suggestions``, :func:`suggest` says what is closest and what would change that."""
    check_request(request)
    world = cluster.world_size
    gb = request.global_batch or default_global_batch(world)
    f = request.fixed
    if f.get("fsdp") and f.get("zero"):
        raise SearchError(f"choose ZeRO or FSDP, not both (got --zero {f['zero']} and --fsdp {f['fsdp']})")
    if f.get("method", "lora") in ("lora", "qlora"):
        # an explicit but wrong --lora-targets is an error even though full fine-tuning plans would not use it
        lora_targets(model, f.get("lora_targets", "all-linear"))
    if gb % world:
        raise SearchError(
            f"global batch {gb} is not divisible by the data-parallel size {world}; "
            f"use a multiple of {world}, e.g. {default_global_batch(world)}"
        )
    if "micro_batch" in f and "grad_accum" in f and f["micro_batch"] * f["grad_accum"] * world != gb:
        if request.global_batch is not None:
            raise SearchError(
                f"global batch {gb} != micro-batch {f['micro_batch']} x accumulation {f['grad_accum']} x "
                f"data-parallel size {world} = {f['micro_batch'] * f['grad_accum'] * world}"
            )
        gb = f["micro_batch"] * f["grad_accum"] * world
    if "micro_batch" in f and (gb // world) % f["micro_batch"]:
        raise SearchError(
            f"global batch {gb} is not divisible into micro-batch {f['micro_batch']} x accumulation x "
            f"data-parallel size {world}"
        )
    if "grad_accum" in f and "micro_batch" not in f and (gb // world) % f["grad_accum"]:
        raise SearchError(
            f"global batch {gb} is not divisible into accumulation {f['grad_accum']} x micro-batch x "
            f"data-parallel size {world}"
        )
    families = candidate_families(model, cluster, request)
    if request.explicit:
        setups = []
        for fam in families:
            try:
                setups.append(Setup(**dict(fam, micro_batch=1, grad_accum=1)))
            except ValueError:
                continue
        check_used(setups, request.explicit, searched=True)
    usable = usable_bytes(cluster.gpu.memory_bytes, request.headroom)
    fits: list[tuple[tuple, Plan]] = []
    rejected: list[Rejection] = []
    considered = 0
    first_error: str | None = None
    exclusions: dict[str, int] = {}
    for fam in families:
        for mb in _micro_batches(f, gb, world):
            ga = _grad_accum(gb, mb, world, f)
            if ga is None:
                continue
            try:
                setup = Setup(**dict(fam, micro_batch=mb, grad_accum=ga))
                plan = evaluate(model, cluster, setup, request.calibration, headroom=request.headroom,
                                efficiency=request.efficiency, data=request.dataset, explain=False)
            except SetupError as e:
                first_error = first_error or str(e)
                break
            except ValueError as e:
                first_error = first_error or str(e).splitlines()[-1]
                break
            why = request.admit(setup) if request.admit is not None else None
            if why is not None:  # a possible setup the caller cannot use; the micro-batch does not change that
                exclusions[why] = exclusions.get(why, 0) + 1
                break
            considered += 1
            mem, speed = plan.memory, plan.speed
            if not plan.fits_gpu:
                rejected.append(
                    Rejection(
                        setup,
                        f"needs {gib(mem.peak_bytes)} per GPU > {gib(usable)} usable "
                        f"({request.headroom:.0%} headroom on {gib(cluster.gpu.memory_bytes)})",
                        mem.peak_bytes,
                        speed.tokens_per_s,
                    )
                )
                break  # larger micro-batches need more memory
            if not plan.fits_host:
                rejected.append(
                    Rejection(
                        setup,
                        f"needs {gib(mem.host_bytes)} host RAM per node > {gib(cluster.host_ram_bytes_per_node)} "
                        "(--host-ram-gib)",
                        mem.peak_bytes,
                        speed.tokens_per_s,
                    )
                )
                continue
            fits.append((_score(plan, request.objective), plan))
    excluded = sum(exclusions.values())
    if considered == 0 and exclusions:  # possible setups existed, the caller's filter kept them all out
        what = request.admit_label or "the filter"
        # the reason that keeps out most of the search space (the emitters check what no re-plan changes first)
        common = max(exclusions, key=lambda r: (exclusions[r], -list(exclusions).index(r)))
        more = f" (and {len(exclusions) - 1} other reason{'s' if len(exclusions) > 2 else ''})" if len(exclusions) > 1 else ""
        raise SearchError(f"no searched setup passes {what} on {cluster.label()}: {common}{more}")
    if considered == 0 and first_error:
        raise SearchError(first_error)
    fits.sort(key=lambda t: t[0])
    # one plan per family of (method, sharding, offload, checkpointing): the best micro-batch / optimizer / loss
    seen: set[tuple] = set()
    families: list[Plan] = []
    for _, p in fits:
        s = p.setup
        key = (s.method, s.zero, s.fsdp, s.offload, s.checkpointing)
        if key in seen:
            continue
        seen.add(key)
        families.append(p)
    ranked = families[: request.top]
    # the best plan of every searched method is shown even when another method fills the top N
    for method in dict.fromkeys(p.setup.method for p in families):
        if not any(p.setup.method == method for p in ranked):
            ranked.append(next(p for p in families if p.setup.method == method))
    # the plans shown are judged again with their assumption lines (candidates were judged without them)
    ranked = [evaluate(model, cluster, p.setup, request.calibration, headroom=request.headroom,
                       efficiency=request.efficiency, data=request.dataset) for p in ranked]
    plans = [
        p.model_copy(update={"rank": i + 1, "reasons": tuple(
            explain(p, i, ranked, rejected, usable, model)
            + ([f"the best {p.setup.method} plan, shown beyond the top {request.top}"] if i >= request.top else [])
        )})
        for i, p in enumerate(ranked)
    ]
    notes = [
        f"global batch {gb} sequences of {f.get('seq_len', 2048)} tokens"
        + ("" if request.global_batch else " (default: 64, rounded to the data-parallel size; --global-batch)"),
        f"fits = peak per GPU <= {gib(usable)} ({1 - request.headroom:.0%} of {gib(cluster.gpu.memory_bytes)}, --headroom {request.headroom})",
        f"{considered} candidates estimated, {len(fits)} fit, {len(rejected)} rejected",
    ]
    if excluded:
        notes.append(f"{excluded} candidate families not searched: {request.admit_label or 'the filter'} cannot run them")
    suggestions = [] if plans or not with_suggestions else suggest(model, cluster, request, rejected, usable)
    return SearchResult(model, cluster, request, plans, rejected, considered, gb, usable, notes, suggestions, excluded)


def sharding_traffic_note(model: ModelProfile, setup: Setup, world_size: int) -> str | None:
    """What ZeRO-3 / FSDP full-shard costs in communication for *this* setup: the bytes per GPU per optimizer
    step of the speed model's own collectives (:func:`planner.engine.speed.comm.communication_bytes_per_gpu`,
    eqs. S10, S12) against the same setup under ZeRO-2. Not the paper's fixed 1.5x (Rajbhandari et al. 2020,
    sec. 7: full fine-tuning, one micro-step): with adapters the gathers move the frozen base weights while
    ZeRO-2 reduces only the tiny adapter gradients, and gradient accumulation repeats the gathers."""
    if not (setup.zero == 3 or setup.fsdp == "full-shard") or world_size <= 1:
        return None
    from planner.engine.facts import model_facts
    from planner.engine.speed.comm import communication_bytes_per_gpu

    facts = model_facts(model, setup)
    sharded = communication_bytes_per_gpu(facts, setup, world_size)
    zero2 = communication_bytes_per_gpu(facts, setup.model_copy(update={"zero": 2, "fsdp": None}), world_size)
    what = "all parameters (the frozen base too)" if setup.trains_adapters or setup.method == "freeze" else "parameters"
    ratio = f"{sharded / zero2:,.1f}x" if zero2 else "more than"
    return (f"parameters sharded: {what} gathered in forward and backward of every micro-step; "
            f"{gib(sharded)} sent per GPU per step, {ratio} the {gib(zero2)} ZeRO-2 would send")


def explain(plan: Plan, index: int, ranked: list[Plan], rejected: list[Rejection], usable: int,
            model: ModelProfile) -> list[str]:
    """Why this plan ranks here: what it trades, and which faster candidates did not fit."""
    s, m, sp = plan.setup, plan.memory, plan.speed
    out: list[str] = []
    cats = m.categories
    biggest = max(cats, key=lambda k: cats[k])
    out.append(f"peak {gib(m.peak_bytes)} in {m.peak_phase.replace('_', ' ')}; largest part: {biggest.replace('_', ' ')} {gib(cats[biggest])}")
    if s.method == "lora":
        out.append(f"LoRA rank {s.lora_rank}: trains only the adapters; base frozen in bf16 (quality may differ from full fine-tuning)")
    elif s.method == "qlora":
        out.append("QLoRA: 4-bit NF4 base saves memory but dequantises every layer each pass (slower than LoRA)")
    elif s.method == "full":
        out.append("full fine-tuning: every parameter trains")
    if s.checkpointing == "full":
        out.append(f"activation checkpointing: recomputes the forward ({sp.breakdown_s.get('recompute', 0):.2f} s/step) to fit a larger micro-batch or model")
    traffic = sharding_traffic_note(model, s, sp.world_size)
    if traffic:
        out.append(traffic)
    if s.offload != "none":
        out.append(f"offload {s.offload} to CPU: {gib(m.host_bytes)} host RAM per node, bounded by PCIe ({sp.breakdown_s.get('offload', 0):.2f} s/step)")
    if s.optimizer != "adamw":
        out.append(f"optimizer {s.optimizer}: smaller states than fp32 AdamW")
    if s.loss == "liger":
        out.append("Liger fused linear cross-entropy: logits never materialised")
    faster = [
        r for r in rejected
        if r.tokens_per_s and speed_bucket(r.tokens_per_s) > speed_bucket(sp.tokens_per_s) and r.peak_bytes
        and "host RAM" not in r.reason
    ]
    if faster and index == 0:
        best = max(faster, key=lambda r: r.tokens_per_s or 0)
        out.append(
            f"faster but did not fit: {best.setup.short()} ({best.tokens_per_s:,.0f} tokens/s) {best.reason}; "
            f"it would need {gib(best.peak_bytes - usable)} more per GPU"
        )
    if index > 0:
        prev = ranked[index - 1]
        ratio = prev.speed.tokens_per_s / sp.tokens_per_s
        if speed_bucket(prev.speed.tokens_per_s) == speed_bucket(sp.tokens_per_s):
            out.append(f"as fast as plan {index} (within 1 %); ranked lower as it needs more machinery or memory")
        else:
            out.append(f"{ratio:.2f}x slower than plan {index}")
    return out


def suggest(model: ModelProfile, cluster: Cluster, request: SearchRequest, rejected: list[Rejection], usable: int) -> list[str]:
    """When nothing fits: the closest candidate and what would change that, with numbers."""
    out: list[str] = []
    gpu_short = [r for r in rejected if "host RAM" not in r.reason]
    host_short = [r for r in rejected if "host RAM" in r.reason]
    if gpu_short:
        closest = min(gpu_short, key=lambda r: r.peak_bytes or 1 << 62)
        out.append(
            f"closest on GPU memory: {closest.setup.short()} needs {gib(closest.peak_bytes or 0)} per GPU, "
            f"{gib((closest.peak_bytes or 0) - usable)} over the usable {gib(usable)}"
        )
    if host_short:
        best = max(host_short, key=lambda r: r.tokens_per_s or 0)
        out.append(f"fits the GPUs but not host RAM: {best.setup.short()} {best.reason}")
    f = request.fixed
    base = SearchRequest(**{**request.__dict__, "top": 1})
    # more GPUs of the same kind
    for n in (2, 4, 8, 16, 32, 64):
        if n <= cluster.world_size:
            continue
        nodes = max(1, n // cluster.gpu.typical_gpus_per_node)
        per = n // nodes
        bigger = make_cluster(cluster.gpu, per, nodes, cluster.host_ram_bytes_per_node / 2**30,
                              cluster.inter_node_bandwidth_bytes_per_s / 1e9)
        try:
            r = search(model, bigger, SearchRequest(**{**base.__dict__, "global_batch": None}), False)
        except (SearchError, SetupError):
            continue
        if r.plans:
            out.append(f"more GPUs: {bigger.label()} fits ({r.plans[0].setup.short()})")
            break
    if f.get("method") not in ("qlora",):
        try:
            r = search(model, cluster, SearchRequest(**{**base.__dict__, "fixed": {**f, "method": "qlora"}}), False)
            if r.plans:
                out.append(f"QLoRA fits: {r.plans[0].setup.short()} at {gib(r.plans[0].memory.peak_bytes)} per GPU")
        except (SearchError, SetupError):
            pass
    seq = f.get("seq_len", 2048)
    while seq > 256:
        seq //= 2
        try:
            r = search(model, cluster, SearchRequest(**{**base.__dict__, "fixed": {**f, "seq_len": seq}}), False)
        except (SearchError, SetupError):
            break
        if r.plans:
            out.append(f"shorter sequence: --seq {seq} fits ({r.plans[0].setup.short()})")
            break
    return out
