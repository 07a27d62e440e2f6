"""The plan search: enumerate candidate Setups, keep those that fit with headroom, rank them, explain why.

Pure: no printing, no file I/O. The reasons behind a ranking are data (strings in each Plan and in the
SearchResult), rendered by :mod:`planner.app.render.report`.

Search space (``docs/planner.md``): method (full / LoRA / QLoRA unless fixed), precision recipe valid for the
GPU, optimizer (AdamW, 8-bit AdamW), sharding (DDP, ZeRO-1/2/3, FSDP full-shard), offload, activation
checkpointing, loss kernel (plain, Liger), micro-batch (powers of two up to the largest that fits) and
gradient accumulation to reach the global batch. Memory is monotone in the micro-batch and the speed model
non-decreasing in it, so each family's best plan is its largest micro-batch that fits, found by bisection
(:func:`bisect_ok` says where that does not hold; there every micro-batch up to the first miss is tried).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from planner.engine.calibration import CalibrationBook
from planner.engine.dataset import DatasetShape
from planner.engine.evaluate import (
    DEFAULT_HEADROOM,
    check_efficiency,
    check_headroom,
    evaluate,
    paged_overflow_bytes,
    usable_bytes,
)
from planner.engine.lora_targets import lora_targets
from planner.engine.rules import check_used
from planner.engine.results import Plan
from planner.engine.setup import Setup, SetupError
from planner.search.recipes import candidate_families as recipe_families
from planner.units import gib
from profiles.cluster import Cluster, make_cluster
from profiles.errors import InputError, unknown_choice_message, validation_message
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


def candidate_families(model: ModelProfile, cluster: Cluster, request: SearchRequest) -> list[dict[str, Any]]:
    """Every family of the recipe book (:mod:`planner.search.recipes`) as Setup fields but micro-batch and
    accumulation, simplest first."""
    return [fam.fields for fam in recipe_families(model, cluster, request.fixed)]


def _micro_batches(fixed: dict, global_batch: int, world: int) -> list[int]:
    """Powers of two dividing the per-rank share of the global batch (``world`` = data-parallel ranks)."""
    if "micro_batch" in fixed:
        return [fixed["micro_batch"]]
    per_rank = max(1, global_batch // world)
    if "grad_accum" in fixed:  # the global batch and the accumulation decide the micro-batch
        return [max(1, per_rank // fixed["grad_accum"])]
    mbs, m = [], 1
    while m <= min(per_rank, MAX_MICRO_BATCH):
        if per_rank % m == 0:
            mbs.append(m)
        m *= 2
    return mbs or [1]


def _grad_accum(global_batch: int, micro_batch: int, world: int, fixed: dict) -> int | None:
    if "grad_accum" in fixed:
        return fixed["grad_accum"]
    per_rank = max(1, global_batch // world)
    if per_rank % micro_batch:
        return None
    return per_rank // micro_batch


COMPLEXITY: dict[str, float] = {
    "loss": 0.25, "optimizer_in_backward": 0.3, "8bit": 0.5, "fp8": 0.6, "pure_bf16": 0.5,
    "activation_offload": 0.7, "subspace": 1.5, "paged": 1.75, "async_tp": 0.25, "tp": 2.0, "cp": 2.5,
}
"""Weights of the knobs in :func:`complexity`, cheapest first (research notes for issue 12, sec. 8): a loss kernel
< optimizer in backward < 8-bit states < FP8 < pure bf16 < activation offload < GaLore / BAdam / LISA < paged
states < TP < CP < CPU offload (5-6, below)."""


def complexity(s: Setup) -> float:
    """How much machinery a plan needs, to break ties between plans of equal speed (lower is simpler):
    DDP < ZeRO-1 < ZeRO-2 < FSDP < ZeRO-3, CPU offload, checkpointing, and the recipe book's knobs
    (:data:`COMPLEXITY`)."""
    w = COMPLEXITY
    c = {0: 0.0, 1: 1.0, 2: 2.0, 3: 4.0}[s.zero] + (3.0 if s.fsdp else 0.0)
    c += {"none": 0.0, "optimizer": 5.0, "optimizer+params": 6.0}[s.offload]
    c += 1.0 if s.checkpointing != "none" else 0.0
    c += w["paged"] if s.optimizer.startswith("paged") else 0.0
    c += w["8bit"] if s.optimizer.endswith("8bit") else (0.5 if s.optimizer not in ("adamw", "paged-adamw") else 0.0)
    c += w["loss"] if s.loss != "plain" else 0.0
    c += w["pure_bf16"] if s.recipe == "bf16" else 0.0
    c += w["optimizer_in_backward"] if s.steps_in_backward else 0.0
    c += w["activation_offload"] if s.activation_offload else 0.0
    c += w["subspace"] if s.subspace_optimizer != "none" else 0.0
    c += w["fp8"] if s.fp8 != "none" else 0.0
    c += (w["tp"] + (w["async_tp"] if s.async_tp else 0.0)) if s.tp > 1 else 0.0
    c += w["cp"] if s.cp > 1 else 0.0
    return c


def setup_tier(s: Setup) -> int:
    """:func:`tier` from the setup alone (paged states counted as on the GPU)."""
    return 2 if s.offload != "none" else (1 if s.subspace_optimizer != "none" else 0)


def tier(plan: Plan, paged_spill: int = 0) -> int:
    """The ranking tier (docs/planner.md "Ranking"), before speed: 0 = trains every parameter exactly, on the GPU;
    1 = GaLore / BAdam / LISA (a subspace per step, on the GPU); 2 = host-resident state (CPU offload, or paged
    optimizer states that do not fit the GPU and cross PCIe every step). The research's ladder (notes for issue
    12, sec. 8; torchtune memory_optimizations.rst: CPU offload 'only if the other techniques are not enough')."""
    s = plan.setup
    if s.offload != "none" or paged_spill > 0:
        return 2
    return 1 if s.subspace_optimizer != "none" else 0


def _score(plan: Plan, objective: str) -> tuple:
    """Sort key, best first. Throughput (and cost, which on a fixed cluster is proportional to 1 / tokens/s)
    ranks by :func:`tier` (exact and on the GPU, then GaLore / BAdam / LISA, then host-resident state), then
    tokens/s in 1 % buckets, then simpler plans, then larger micro-batches (fewer accumulation steps), then lower
    peak; memory ranks by peak."""
    mem, speed = plan.memory, plan.speed
    if objective == "memory":
        return (mem.peak_bytes, -speed.tokens_per_s)
    return (tier(plan, paged_overflow_bytes(mem, plan.usable_bytes)), -speed_bucket(speed.tokens_per_s), complexity(plan.setup),
            -plan.setup.micro_batch, mem.peak_bytes)


def display_family(s: Setup) -> tuple:
    """Plans are shown one per family: method (GaLore / BAdam / LISA apart), sharding, CPU offload, checkpointing,
    TP / CP, FP8, where the optimizer steps and whether its states are paged; the best micro-batch, optimizer and
    loss kernel of each."""
    return (s.method_label, s.zero, s.fsdp, s.offload, s.checkpointing, s.tp, s.cp, s.fp8 != "none",
            s.steps_in_backward, s.optimizer.startswith("paged"))


def speed_bucket(tokens_per_s: float) -> int:
    """Throughputs within 1 % of each other are ties: the speed model is not that precise."""
    import math

    return math.floor(math.log(max(tokens_per_s, 1e-9)) / math.log(1.01))


@dataclass(frozen=True)
class _Outcome:
    """One micro-batch of one family, evaluated: ``fit``, ``oom`` (the GPU), ``host`` (host RAM), ``excluded``
    (the caller's filter: ``reason``) or ``error`` (the setup is invalid: ``reason``)."""

    kind: Literal["fit", "oom", "host", "excluded", "error"]
    setup: Setup | None = None
    plan: Plan | None = None
    reason: str = ""


def _try_micro_batch(model: ModelProfile, cluster: Cluster, request: SearchRequest, fields: dict, mb: int,
                     ga: int | None) -> _Outcome:
    if ga is None:
        return _Outcome("error", reason=f"micro-batch {mb} does not divide the global batch")
    try:
        setup = Setup(**dict(fields, micro_batch=mb, grad_accum=ga))
        plan = evaluate(model, cluster, setup, request.calibration, headroom=request.headroom,
                        efficiency=request.efficiency, data=request.dataset, explain=False)
    except SetupError as e:
        return _Outcome("error", reason=str(e))
    except ValueError as e:
        return _Outcome("error", reason=validation_message(e))
    why = request.admit(setup) if request.admit is not None else None
    if why is not None:  # a possible setup the caller cannot use; the micro-batch does not change that
        return _Outcome("excluded", setup, plan, why)
    if not plan.fits_gpu:
        return _Outcome("oom", setup, plan)
    if not plan.fits_host:
        return _Outcome("host", setup, plan)
    return _Outcome("fit", setup, plan)


def _linear_walk(mbs: list[int], outcome: Callable[[int], _Outcome]) -> list[int]:
    """Every micro-batch from the smallest up to the first that does not fit the GPU (memory is monotone in the
    micro-batch), or the first invalid or filtered one; a host-RAM miss goes on (its record is kept)."""
    walk = []
    for mb in mbs:
        walk.append(mb)
        if outcome(mb).kind in ("oom", "error", "excluded"):
            break
    return walk


def bisect_ok(request: SearchRequest, fields: dict) -> bool:
    """Whether a family's best plan is its largest micro-batch that fits, so that the search may look for that one
    by bisection instead of trying every micro-batch. That holds where the speed model is non-decreasing in the
    micro-batch at a fixed global batch (fewer micro-steps, so fewer fixed costs and ZeRO-3 / FSDP gathers, and
    GEMMs at a larger M: :mod:`planner.engine.speed.kernels`) and the ranking prefers the larger micro-batch on a
    tie (:func:`_score`). It does not hold, and every micro-batch is tried, for: the memory objective (the
    smallest peak wins); a measured dataset (a larger micro-batch pads to a longer row); paged optimizer states
    (a larger peak spills more of them across PCIe). ``tests/planner/search/test_rank.py`` holds the two
    searches equal over the catalogue."""
    if request.objective == "memory" or request.dataset is not None:
        return False
    return not str(fields.get("optimizer", "adamw")).startswith("paged")


def _bisect_walk(mbs: list[int], outcome: Callable[[int], _Outcome]) -> list[int] | None:
    """The micro-batches to report when searching for the largest that fits by bisection: the largest first
    (when it fits, memory being monotone, it is the answer and nothing else is estimated), else the smallest, the
    boundary pair (the largest that fits and the next, which does not) and every one looked at on the way, in
    ascending order. ``None`` (fall back to :func:`_linear_walk`) when the smallest does not fit, or when any
    micro-batch looked at is invalid or filtered (the linear walk then stops where it always did)."""
    looked: set[int] = set()

    def fits(i: int) -> bool:
        looked.add(i)
        return outcome(mbs[i]).kind == "fit"

    lo, hi = 0, len(mbs) - 1
    if fits(hi):
        lo = hi
    elif not fits(0):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    if any(outcome(mbs[i]).kind in ("error", "excluded") for i in looked):
        return None
    # the linear walk keeps only the first miss above the fits: the misses above the boundary are dropped
    return [mbs[i] for i in sorted(looked) if i <= lo + 1]


def search(model: ModelProfile, cluster: Cluster, request: SearchRequest, with_suggestions: bool = True,
           bisect: bool = True) -> SearchResult:
    """Rank the plans that fit ``cluster`` with ``request.headroom`` free, best first. When none fits and
    ``with_suggestions``, :func:`suggest` says what is closest and what would change that. ``bisect``: look for
    each family's largest micro-batch that fits by bisection where that one is the family's best
    (:func:`bisect_ok`); False tries every micro-batch up to the first that does not fit (the same plans; a test
    holds them equal)."""
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
    recipe_book = recipe_families(model, cluster, f)
    if request.explicit:
        setups = []
        for fam in recipe_book:
            try:
                setups.append(Setup(**dict(fam.fields, micro_batch=1, grad_accum=1)))
            except ValueError:
                continue
        check_used(setups, request.explicit, searched=True)
    usable = usable_bytes(cluster.gpu.memory_bytes, request.headroom)
    fits: list[tuple[tuple, Plan]] = []
    rejected: list[Rejection] = []
    considered = 0
    first_error: str | None = None
    exclusions: dict[str, int] = {}
    status: dict[tuple, tuple[bool, bool]] = {}
    """family key -> (fits at some micro-batch, fits at the largest one): what the pruning rules read"""
    pruned: dict[str, int] = {}
    prune = request.objective != "memory"  # the rules are about speed: a saver always lowers memory
    for fam in recipe_book:
        dominated = None if not prune else next((sib for saver, sib in fam.siblings if sib in status and (
            status[sib][1] or (saver == "offload" and status[sib][0]))), None)
        if dominated is not None:
            saver = next(sv for sv, sib in fam.siblings if sib == dominated)
            pruned[saver] = pruned.get(saver, 0) + 1
            status[fam.key] = status[dominated]
            continue
        fields = fam.fields
        fam_fixed = {**f, "grad_accum": fields["grad_accum"]} if "grad_accum" in fields else f
        dp = max(1, world // (fields.get("tp", 1) * fields.get("cp", 1)))
        # a family that steps in backward cannot accumulate: its global batch is micro-batch x data-parallel ranks
        # (said in its reasons), so its micro-batches are searched even when the accumulation is fixed
        in_bwd = bool(fields.get("optimizer_in_backward") or fields.get("galore_layerwise"))
        if in_bwd and f.get("grad_accum", 1) != 1:
            continue  # the user fixed an accumulation such a family cannot run
        mbs = _micro_batches({k: v for k, v in f.items() if k != "grad_accum"} if in_bwd else f, gb, dp)
        tried: dict[int, _Outcome] = {}

        def outcome(mb: int, fields: dict = fields, fam_fixed: dict = fam_fixed, tried: dict = tried) -> _Outcome:
            if mb not in tried:
                tried[mb] = _try_micro_batch(model, cluster, request, fields, mb, _grad_accum(gb, mb, dp, fam_fixed))
            return tried[mb]

        walk = (_bisect_walk(mbs, outcome) if bisect and bisect_ok(request, fields) else None) or _linear_walk(mbs, outcome)
        fit_any = fit_max = False
        for mb in walk:
            o = outcome(mb)
            if o.kind == "error":
                first_error = first_error or o.reason
                continue
            if o.kind == "excluded":
                exclusions[o.reason] = exclusions.get(o.reason, 0) + 1
                continue
            considered += 1
            if o.kind in ("oom", "host"):
                mem, speed = o.plan.memory, o.plan.speed
                reason = (f"needs {gib(mem.peak_bytes)} per GPU > {gib(usable)} usable "
                          f"({request.headroom:.0%} headroom on {gib(cluster.gpu.memory_bytes)})") if o.kind == "oom" else (
                          f"needs {gib(mem.host_bytes)} host RAM per node > {gib(cluster.host_ram_bytes_per_node)} "
                          "(--host-ram-gib)")
                rejected.append(Rejection(o.setup, reason, mem.peak_bytes, speed.tokens_per_s))
                continue
            fit_any = True
            fit_max = fit_max or mb == mbs[-1]
            fits.append((_score(o.plan, request.objective), o.plan))
        status[fam.key] = (fit_any, fit_max)
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
    # one plan per family of (method, sharding, offload, checkpointing, parallelism, step placement, paging): the
    # best micro-batch / optimizer / loss of each
    seen: set[tuple] = set()
    families: list[Plan] = []
    for _, p in fits:
        key = display_family(p.setup)
        if key in seen:
            continue
        seen.add(key)
        families.append(p)
    ranked = families[: request.top]
    # the best plan of every searched method (GaLore, BAdam and LISA count as methods) is shown even when
    # another method fills the top N
    for method in dict.fromkeys(p.setup.method_label for p in families):
        if not any(p.setup.method_label == method for p in ranked):
            ranked.append(next(p for p in families if p.setup.method_label == method))
    # the ranked plans with their assumption lines (the search itself skips them: they are text)
    ranked = [evaluate(model, cluster, p.setup, request.calibration, headroom=request.headroom,
                       efficiency=request.efficiency, data=request.dataset) for p in ranked]
    plans = [
        p.model_copy(update={"rank": i + 1, "reasons": tuple(
            explain(p, i, ranked, rejected, usable, model, gb, world)
            + ([f"the best {p.setup.method_label} plan, shown beyond the top {request.top}"] if i >= request.top else [])
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
    if pruned:
        notes.append(
            f"{sum(pruned.values())} families skipped as dominated (a memory saver whose sibling without it already "
            "fits the largest micro-batch, or CPU offload whose in-memory sibling fits): "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(pruned.items())))
    if any(p.setup.steps_in_backward for p in plans):
        notes.append("plans stepping the optimizer in backward cannot accumulate: their global batch is "
                     "micro-batch x data-parallel GPUs (said in each)")
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
            model: ModelProfile, global_batch: int | None = None, world: int | None = None) -> list[str]:
    """Why this plan ranks here: what it trades (every technique says what it gave up), and which faster
    candidates did not fit; for a host-resident plan on top, why no in-memory plan exists."""
    s, m, sp = plan.setup, plan.memory, plan.speed
    world = world or sp.world_size
    out: list[str] = []
    cats = m.categories
    biggest = max(cats, key=lambda k: cats[k])
    out.append(f"peak {gib(m.peak_bytes)} in {m.peak_phase.replace('_', ' ')}; largest part: {biggest.replace('_', ' ')} {gib(cats[biggest])}")
    if s.method == "lora":
        out.append(f"LoRA rank {s.lora_rank}: trains only the adapters; base frozen in bf16 (quality may differ from full fine-tuning)")
    elif s.method == "qlora":
        out.append("QLoRA: 4-bit NF4 base saves memory but dequantises every layer each pass (slower than LoRA)")
    elif s.method == "full" and s.subspace_optimizer == "none":
        out.append("full fine-tuning: every parameter trains")
    out += technique_reasons(plan, global_batch, world)
    if s.checkpointing == "full":
        out.append(f"activation checkpointing: recomputes the forward ({sp.breakdown_s.get('recompute', 0):.2f} s/step) to fit a larger micro-batch or model")
    elif s.checkpointing == "op":
        out.append(f"per-op activation checkpointing (torchtitan): keeps matmul and attention outputs, recomputes every "
                   f"second matmul and the elementwise ops ({sp.breakdown_s.get('recompute', 0):.2f} s/step)")
    traffic = sharding_traffic_note(model, s, sp.world_size)
    if traffic:
        out.append(traffic)
    if s.offload != "none":
        out.append(f"offload {s.offload} to CPU: {gib(m.host_bytes)} host RAM per node, bounded by PCIe ({sp.breakdown_s.get('offload', 0):.2f} s/step)")
    if s.loss == "liger":
        out.append("Liger fused linear cross-entropy: logits never materialised")
    elif s.loss == "chunked":
        out.append("chunked cross-entropy: fp32 logits one chunk of 8 at a time")
    if index == 0 and tier(plan, paged_overflow_bytes(m, plan.usable_bytes)) == 2:
        in_memory = [r for r in rejected if r.peak_bytes and setup_tier(r.setup) < 2
                     and not r.setup.optimizer.startswith("paged") and "host RAM" not in r.reason]
        if in_memory:
            closest = min(in_memory, key=lambda r: r.peak_bytes or 1 << 62)
            out.append(
                f"no in-memory plan fits: the closest, {closest.setup.short()}, needs {gib(closest.peak_bytes)} per GPU, "
                f"{gib(closest.peak_bytes - usable)} over the usable {gib(usable)}; so state lives in host RAM")
    faster = [
        r for r in rejected
        if r.tokens_per_s and speed_bucket(r.tokens_per_s) > speed_bucket(sp.tokens_per_s) and r.peak_bytes
        and "host RAM" not in r.reason and setup_tier(r.setup) <= setup_tier(s)
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
        t_prev, t_this = (tier(prev, paged_overflow_bytes(prev.memory, prev.usable_bytes)),
                          tier(plan, paged_overflow_bytes(m, plan.usable_bytes)))
        if t_this > t_prev and sp.tokens_per_s > prev.speed.tokens_per_s:
            out.append(f"{sp.tokens_per_s / prev.speed.tokens_per_s:.2f}x faster than plan {index} but ranked after "
                       + ("every plan that trains all parameters exactly on the GPU" if t_this == 1 else
                          "every plan that keeps its state on the GPU"))
        elif speed_bucket(prev.speed.tokens_per_s) == speed_bucket(sp.tokens_per_s):
            out.append(f"as fast as plan {index} (within 1 %); ranked lower as it needs more machinery or memory")
        else:
            out.append(f"{ratio:.2f}x slower than plan {index}")
    return out


def technique_reasons(plan: Plan, global_batch: int | None, world: int) -> list[str]:
    """What each recipe-book technique of a plan gives up, one line each (issue 12)."""
    s, m, sp = plan.setup, plan.memory, plan.speed
    out: list[str] = []
    dp = s.data_parallel(world)
    if s.steps_in_backward:
        asked = f" (asked: {global_batch})" if global_batch and global_batch != s.micro_batch * dp else ""
        what = "layer-wise GaLore steps each parameter in backward" if s.galore_layerwise else "optimizer in backward"
        ranks = "GPUs" if dp == world else "data-parallel ranks"
        out.append(f"{what}: no gradient accumulation and no gradient clipping, so global batch = micro-batch x {ranks} "
                   f"= {s.micro_batch * dp}{asked}; frees the gradient buffer")
    if s.galore_rank is not None:
        out.append(f"GaLore rank {s.galore_rank}: each matrix's update lies in a rank-{s.galore_rank} subspace refreshed by "
                   f"an SVD every {s.galore_update_interval} steps (a different optimizer from AdamW: quality may differ)"
                   + ("; the logged gradient norm is zero in layer-wise mode" if s.galore_layerwise else ""))
    if s.badam:
        out.append("BAdam: one decoder block trains at a time (switching every 50 steps, full Adam on that block); "
                   "embeddings and LM head never train")
    if s.lisa_layers:
        out.append(f"LISA: {s.lisa_layers} randomly sampled blocks train per interval, embeddings and LM head always; LMFlow, "
                   "its only implementation, keeps the states of every block it has sampled (memory grows toward "
                   "full AdamW); no trainer tuneplan writes configs for runs it")
    if s.optimizer.endswith("8bit"):
        out.append(f"optimizer {s.optimizer}: block-wise 8-bit states (a quarter of fp32; may reduce stability)")
    elif s.optimizer not in ("adamw", "paged-adamw"):
        out.append(f"optimizer {s.optimizer}: smaller states than AdamW")
    if s.optimizer.startswith("paged"):
        paged = m.host_categories.get("paged_optimizer", 0) // max(1, m.gpus_per_node)
        spill = paged_overflow_bytes(m, plan.usable_bytes)
        out.append(f"paged optimizer: {gib(paged)} of states in CUDA unified memory, outside torch's allocator; "
                   + (f"{gib(spill)} do not fit the GPU and cross PCIe twice per step "
                      f"({sp.breakdown_s.get('offload', 0):.2f} s/step)" if spill else "they fit beside the peak: no paging"))
    if s.recipe == "bf16" and s.method in ("full", "freeze") and not s.badam:
        out.append("pure bf16: no fp32 master weights (small updates can round away)")
    if s.activation_offload:
        out.append(f"activation offload: {gib(m.host_categories.get('offloaded_activations', 0))} of block inputs per node "
                   "in pinned host RAM, copied while the GPU computes")
    if s.fp8 != "none":
        out.append(f"FP8 {s.fp8}: the blocks' linear layers multiply in FP8 (LM head, attention and norms stay bf16); "
                   + {"tensorwise": "one scale per tensor, the least accurate recipe; needs torch.compile to pay off",
                      "rowwise": "one scale per row: more accurate, slower GEMMs, bf16 all-gathers",
                      "te": "TransformerEngine delayed scaling (amax history)"}[s.fp8])
    if s.tp > 1:
        out.append(f"tensor parallel {s.tp} within a node: {s.tp} GPUs share each layer's matmuls; 8 collectives per block "
                   f"per micro-step on NVLink{' (async TP overlaps part with the matmuls)' if s.async_tp else ''}; "
                   f"data-parallel ranks = {dp}")
    if s.cp > 1:
        out.append(f"context parallel {s.cp}: each sequence split over {s.cp} GPUs, K/V all-gathered per layer")
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
