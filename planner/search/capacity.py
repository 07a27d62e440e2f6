"""Capacity: what fits where. For a model x method x GPU kind: does it fit at the requested sequence, the
longest sequence and the largest micro-batch that fit, the fewest GPUs of that kind that fit it; and, for one
model across the GPU catalogue, "how many of which GPU do I need".

Pure: no printing, no file I/O. Every answer comes from :func:`planner.search.rank.search`, so *any* plan the
planner would accept counts as a fit (any sharding, offload, checkpointing, optimizer, loss kernel), with
the same headroom rule and the same global batch (64 sequences, rounded to the data-parallel size). To keep
each question cheap the search is restricted, never widened:

* a *probe* fixes the method, the sequence length and the micro-batch (1 unless the question is the
  micro-batch), asks for ``objective="memory"`` and ``top=1``, and leaves sharding, offload, optimizer and
  recipe searched. A fit question only needs "does anything fit"; the memory objective returns the smallest
  peak, which is also what the memory-versus-sequence figure draws. A probe also fixes the dimension
  that never raises memory, :data:`PROBE_DOMINANT` (full activation checkpointing): the smallest peak of the
  restricted space equals that of the whole space (pinned by ``tests/planner/search/test_capacity.py``), at half the
  cost. About 5-30 ms per probe on a 2-core CPU, most of it in :func:`planner.engine.speed.flops_per_token`.
* the plan shown for a cell (its speed and memory breakdown) is the fastest plan of the unrestricted search
  with the method and sequence fixed (``top=1``), as ``plan --method M`` would rank it first.

Search strategies (each assumes memory grows with what it searches, which the engine satisfies: activations
and logits grow with tokens, model states shrink or stay put as GPUs are added):

* longest sequence: binary search over multiples of :data:`SEQ_STEP` up to the model's max positions;
* largest micro-batch: doubling up to :data:`MAX_MICRO_BATCH`, then bisection between the last power of two
  that fits and the first that does not;
* fewest GPUs: 1, 2, 4, ... up to one node, then whole nodes by bisection up to :data:`MAX_NODES`.

A probe's global batch keeps the planner's default: ``ga = ceil(default / (micro-batch x GPUs))``
accumulation steps, so gradient-accumulation buffers count exactly as they do in ``plan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from planner.engine.calibration import CalibrationBook
from planner.engine.evaluate import DEFAULT_HEADROOM, evaluate, usable_bytes
from planner.engine.results import Plan
from planner.search.rank import MAX_MICRO_BATCH, SearchError, SearchRequest, SearchResult, default_global_batch, search
from planner.engine.setup import SetupError
from profiles.cluster import Cluster, make_cluster
from profiles.schema import GpuProfile, ModelProfile

SEQ_STEP = 256
"""Granularity of the longest-sequence answer, in tokens."""
MAX_NODES = 64
"""Largest cluster the fewest-GPUs question tries: 64 nodes."""
DEFAULT_SEQ = 2048
DEFAULT_METHODS: tuple[str, ...] = ("full", "lora", "qlora")
DEFAULT_MODELS: tuple[str, ...] = (
    "llama3.2-1b",
    "llama3.2-3b",
    "qwen2.5-7b",
    "llama3.1-8b",
    "qwen3-14b",
    "qwen2.5-32b",
    "llama3.1-70b",
)
"""A representative ladder from 1B to 70B when ``--models`` is absent."""
CURVE_SEQS: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
"""Sequence lengths of the memory-versus-sequence curves (cut at the model's max positions)."""

PROBE_DOMINANT: dict[str, str] = {"checkpointing": "full"}
"""Setup fields fixed in fit probes because no other choice lowers the peak (the search's alternative is no
checkpointing, which only adds saved activations). The loss kernel is no longer fixed (issue 12): the Liger loss
exists only in the HF / LLaMA-Factory bundle, and fixing it would drop torchtune's and torchtitan's plans (TP's
vocabulary-sharded logits, the optimizer in backward), which can have the smallest peak."""

Progress = Callable[[str], None]
"""Called once per finished unit of work with a short label; the CLI turns it into a progress bar."""


# ---- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpusNeeded:
    """The smallest cluster of one GPU kind that fits, and the fastest plan on it."""

    cluster: Cluster
    plan: Plan

    @property
    def gpus(self) -> int:
        return self.cluster.world_size

    def to_json(self) -> dict:
        return {
            "gpus": self.gpus,
            "gpus_per_node": self.cluster.gpus_per_node,
            "nodes": self.cluster.nodes,
            "cluster": self.cluster.label(),
            "plan": plan_summary(self.plan),
        }


@dataclass(frozen=True)
class CapacityCell:
    """One model x method on one cluster."""

    model: ModelProfile
    method: str
    cluster: Cluster
    seq_len: int
    plan: Plan | None
    """fastest plan at ``seq_len`` on ``cluster`` (None: nothing fits)"""
    min_peak_bytes: int | None
    """smallest peak per GPU any searched setup reaches at ``seq_len`` with micro-batch 1"""
    max_seq: int | None
    """longest multiple of SEQ_STEP that fits (None: not even SEQ_STEP fits)"""
    max_seq_capped: bool
    """max_seq stopped at the model's max positions, not at memory"""
    max_micro_batch: int | None
    """largest micro-batch that fits at ``seq_len`` (None: not even 1)"""
    max_micro_batch_capped: bool
    needed: GpusNeeded | None
    """fewest GPUs of this kind that fit at ``seq_len`` (None: not even MAX_NODES nodes)"""
    note: str | None = None
    """why nothing fits at ``seq_len``: the closest candidate and its reason, or why no candidate is valid
    (e.g. the sequence exceeds the model's max positions)"""

    @property
    def fits(self) -> bool:
        return self.plan is not None

    def to_json(self) -> dict:
        return {
            "model": self.model.name,
            "method": self.method,
            "seq_len": self.seq_len,
            "fits": self.fits,
            "plan": plan_summary(self.plan) if self.plan else None,
            "min_peak_bytes": self.min_peak_bytes,
            "max_seq": self.max_seq,
            "max_seq_capped_by_max_positions": self.max_seq_capped,
            "max_positions": self.model.max_positions,
            "max_micro_batch": self.max_micro_batch,
            "max_micro_batch_capped": self.max_micro_batch_capped,
            "fewest_gpus": self.needed.to_json() if self.needed else None,
            "why_not": self.note,
        }


@dataclass(frozen=True)
class MemoryCurve:
    """Smallest peak per GPU (any searched setup, micro-batch 1, host RAM permitting) at each sequence length,
    for one method."""

    model: ModelProfile
    method: str
    points: tuple[tuple[int, int], ...]
    """(sequence length, peak bytes per GPU)"""

    def to_json(self) -> dict:
        return {"model": self.model.name, "method": self.method,
                "points": [{"seq_len": s, "peak_bytes": b} for s, b in self.points]}


@dataclass(frozen=True)
class ClusterCapacity:
    """``plan capacity --gpus G``: every model x method on one cluster."""

    cluster: Cluster
    seq_len: int
    headroom: float
    usable_bytes: int
    methods: tuple[str, ...]
    cells: tuple[CapacityCell, ...]
    curves: tuple[MemoryCurve, ...] = ()
    kind: str = "cluster"

    def to_json(self) -> dict:
        c = self.cluster
        return {
            "schema_version": 1,
            "kind": "cluster",
            "cluster": {"gpu": c.gpu.name, "gpus_per_node": c.gpus_per_node, "nodes": c.nodes, "label": c.label()},
            "capacity_bytes": c.gpu.memory_bytes,
            "usable_bytes": self.usable_bytes,
            "headroom": self.headroom,
            "seq_len": self.seq_len,
            "methods": list(self.methods),
            "rows": [cell.to_json() for cell in self.cells],
            "memory_curves": [cv.to_json() for cv in self.curves],
        }


@dataclass(frozen=True)
class GpuRow:
    """One GPU kind x method for one model: the fewest GPUs that fit and the fastest plan on them."""

    gpu: GpuProfile
    method: str
    needed: GpusNeeded | None
    note: str | None = None

    def to_json(self) -> dict:
        return {
            "gpu": self.gpu.name,
            "memory_bytes": self.gpu.memory_bytes,
            "method": self.method,
            "fewest_gpus": self.needed.to_json() if self.needed else None,
            "note": self.note,
        }


@dataclass(frozen=True)
class CatalogueCapacity:
    """``plan capacity --model M``: how many of which GPU the model needs, per method."""

    model: ModelProfile
    seq_len: int
    headroom: float
    methods: tuple[str, ...]
    rows: tuple[GpuRow, ...]
    kind: str = "catalogue"

    def ranked(self, method: str) -> list[GpuRow]:
        """Rows of one method: those that fit first, fewest GPUs then fastest; then those that never fit."""
        rows = [r for r in self.rows if r.method == method]
        return sorted(rows, key=lambda r: (r.needed is None, r.needed.gpus if r.needed else 0,
                                           -(r.needed.plan.speed.tokens_per_s if r.needed else 0), r.gpu.name))

    def to_json(self) -> dict:
        return {
            "schema_version": 1,
            "kind": "catalogue",
            "model": self.model.name,
            "seq_len": self.seq_len,
            "headroom": self.headroom,
            "methods": list(self.methods),
            "max_nodes": MAX_NODES,
            "rows": [r.to_json() for m in self.methods for r in self.ranked(m)],
        }


def plan_summary(plan: Plan) -> dict:
    """The compact JSON of a plan in capacity output: setup, peak, categories, speed."""
    return {
        "setup": plan.setup.model_dump(),
        "summary": plan.setup.short(),
        "recipe": plan.setup.recipe,
        "peak_bytes": plan.memory.peak_bytes,
        "peak_phase": plan.memory.peak_phase,
        "categories": dict(plan.memory.categories),
        "tokens_per_s": plan.speed.tokens_per_s,
        "tokens_per_s_per_gpu": plan.speed.tokens_per_s_per_gpu,
        "mfu": plan.speed.mfu,
        "step_s": plan.speed.step_s,
    }


# ---- the probing machinery ---------------------------------------------------------------------------------


@dataclass
class Prober:
    """Runs restricted searches for one model and memoises them (keyed by cluster shape, method, seq, mb).

    ``fixed`` holds extra Setup fields every search keeps fixed (e.g. a LoRA rank); ``calibration`` is the
    same book ``plan`` ranks with, so a capacity answer and ``plan --method M`` agree.
    """

    model: ModelProfile
    headroom: float = DEFAULT_HEADROOM
    fixed: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationBook | None = None
    efficiency: float | None = None
    probes: int = 0
    searches: int = 0
    _cache: dict[tuple, SearchResult | str] = field(default_factory=dict)

    def _request(self, cluster: Cluster, fixed: dict, global_batch: int | None, objective: str) -> SearchRequest:
        return SearchRequest(
            fixed={**self.fixed, **fixed}, global_batch=global_batch, headroom=self.headroom,
            objective=objective, top=1, calibration=self.calibration, efficiency=self.efficiency,
        )

    def _run(self, key: tuple, cluster: Cluster, request: SearchRequest) -> SearchResult | str:
        if key not in self._cache:
            try:
                self._cache[key] = search(self.model, cluster, request, with_suggestions=False)
            except (SearchError, SetupError) as e:
                self._cache[key] = str(e)
        return self._cache[key]

    def probe(self, cluster: Cluster, method: str, seq: int, micro_batch: int = 1) -> SearchResult | str:
        """Smallest-peak search at this micro-batch (a str: why no candidate is valid)."""
        world = cluster.world_size
        ga = max(1, -(-default_global_batch(world) // (micro_batch * world)))
        key = ("probe", _cluster_key(cluster), method, seq, micro_batch)
        if key not in self._cache:
            self.probes += 1
        fixed = {**PROBE_DOMINANT, **self.fixed, "method": method, "seq_len": seq, "micro_batch": micro_batch,
                 "grad_accum": ga}
        return self._run(key, cluster, self._request(cluster, fixed, micro_batch * ga * world, "memory"))

    def fits(self, cluster: Cluster, method: str, seq: int, micro_batch: int = 1) -> bool:
        r = self.probe(cluster, method, seq, micro_batch)
        return not isinstance(r, str) and bool(r.plans)

    def min_peak(self, cluster: Cluster, method: str, seq: int) -> int | None:
        """Smallest peak bytes per GPU over the searched setups at micro-batch 1, fitting or not, among those
        whose host RAM fits a node (a GPU-memory rejection does not say; its estimate is redone to check)."""
        r = self.probe(cluster, method, seq, 1)
        if isinstance(r, str):
            return None
        best = r.plans[0].memory.peak_bytes if r.plans else None
        for x in sorted((x for x in r.rejected if x.peak_bytes), key=lambda x: x.peak_bytes or 0):
            if best is not None and x.peak_bytes >= best:
                break
            if x.peak_bytes <= r.usable_bytes:  # rejected for host RAM only
                continue
            if evaluate(self.model, cluster, x.setup, self.calibration, headroom=self.headroom).fits_host:
                return x.peak_bytes
        return best

    def why_not(self, cluster: Cluster, method: str, seq: int) -> str | None:
        """When nothing fits at micro-batch 1: the closest candidate and the search's reason, else None."""
        r = self.probe(cluster, method, seq, 1)
        if isinstance(r, str):
            return r
        if r.plans or not r.rejected:
            return None
        host_only = [x for x in r.rejected if x.peak_bytes is not None and x.peak_bytes <= r.usable_bytes]
        closest = host_only[0] if host_only else min(r.rejected, key=lambda x: x.peak_bytes or 1 << 62)
        return f"closest: {closest.setup.short()} {closest.reason}"

    def best(self, cluster: Cluster, method: str, seq: int) -> Plan | None:
        """The fastest plan at this sequence (micro-batch and the rest searched), as ``plan`` ranks it."""
        key = ("best", _cluster_key(cluster), method, seq)
        if key not in self._cache:
            self.searches += 1
        r = self._run(key, cluster, self._request(cluster, {"method": method, "seq_len": seq}, None, "throughput"))
        return None if isinstance(r, str) or not r.plans else r.plans[0]


def _cluster_key(c: Cluster) -> tuple:
    return (c.gpu.name, c.gpus_per_node, c.nodes, c.host_ram_bytes_per_node, c.inter_node_bandwidth_bytes_per_s)


def seq_problem(model: ModelProfile, seq: int, fixed: dict | None = None) -> str | None:
    """Why ``seq`` cannot be searched for ``model`` (beyond its max positions), else None."""
    if seq > model.max_positions and not (fixed or {}).get("allow_long_seq"):
        return f"--seq {seq} exceeds {model.name}'s max positions {model.max_positions}"
    return None


# ---- the questions -----------------------------------------------------------------------------------------


def longest_seq(prober: Prober, cluster: Cluster, method: str) -> tuple[int | None, bool]:
    """Longest multiple of :data:`SEQ_STEP` (up to max positions) at which some plan fits with micro-batch 1.

    Returns ``(seq, capped)``: ``capped`` when the model's max positions, not memory, stopped it; ``seq`` is
    None when not even :data:`SEQ_STEP` tokens fit. Bisection: about log2(max_positions / 256) probes.
    """
    top = prober.model.max_positions // SEQ_STEP
    if top < 1:
        return None, False
    if prober.fits(cluster, method, top * SEQ_STEP):
        return top * SEQ_STEP, True
    if not prober.fits(cluster, method, SEQ_STEP):
        return None, False
    lo, hi = 1, top  # lo fits, hi does not (in units of SEQ_STEP)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prober.fits(cluster, method, mid * SEQ_STEP):
            lo = mid
        else:
            hi = mid
    return lo * SEQ_STEP, False


def largest_micro_batch(prober: Prober, cluster: Cluster, method: str, seq: int) -> tuple[int | None, bool]:
    """Largest micro-batch (up to :data:`MAX_MICRO_BATCH`) at which some plan fits at ``seq``.

    Returns ``(micro_batch, capped)``; None when micro-batch 1 does not fit. Doubling, then bisection.
    """
    if not prober.fits(cluster, method, seq, 1):
        return None, False
    lo = 1
    while lo * 2 <= MAX_MICRO_BATCH and prober.fits(cluster, method, seq, lo * 2):
        lo *= 2
    if lo * 2 > MAX_MICRO_BATCH:
        return lo, lo == MAX_MICRO_BATCH
    hi = lo * 2  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prober.fits(cluster, method, seq, mid):
            lo = mid
        else:
            hi = mid
    return lo, False


def cluster_sizes(gpus_per_node: int) -> list[tuple[int, int]]:
    """(GPUs per node, nodes) in the order tried: 1, 2, 4, ... within a node, the full node, then nodes."""
    out, n = [], 1
    while n < gpus_per_node:
        out.append((n, 1))
        n *= 2
    out.append((gpus_per_node, 1))
    out += [(gpus_per_node, k) for k in range(2, MAX_NODES + 1)]
    return out


def fewest_gpus(
    prober: Prober,
    gpu: GpuProfile,
    method: str,
    seq: int,
    gpus_per_node: int | None = None,
    host_ram_gib: float | None = None,
    inter_node_gb_s: float | None = None,
) -> GpusNeeded | None:
    """The smallest cluster of ``gpu`` on which some plan fits at ``seq`` (None: not even 64 nodes).

    Sizes within one node are tried in order (a handful of probes); whole nodes are bisected, which assumes
    a fit on k nodes stays a fit on k + 1 (model states only shrink as data parallelism grows).
    """
    per_node = gpus_per_node or gpu.typical_gpus_per_node

    def cl(size: tuple[int, int]) -> Cluster:
        return make_cluster(gpu, size[0], size[1], host_ram_gib, inter_node_gb_s)

    sizes = cluster_sizes(per_node)
    single = [s for s in sizes if s[1] == 1]
    multi = [s for s in sizes if s[1] > 1]
    found: Cluster | None = None
    for s in single:
        if prober.fits(cl(s), method, seq):
            found = cl(s)
            break
    if found is None and multi and prober.fits(cl(multi[-1]), method, seq):
        lo, hi = -1, len(multi) - 1  # multi[hi] fits; multi[lo] does not (-1: the full single node)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if prober.fits(cl(multi[mid]), method, seq):
                hi = mid
            else:
                lo = mid
        found = cl(multi[hi])
    if found is None:
        return None
    plan = prober.best(found, method, seq)
    if plan is None:  # the micro-batch-1 probe fitted, so the full search has that plan too; be safe anyway
        return None
    return GpusNeeded(found, plan)


def capacity_cell(prober: Prober, cluster: Cluster, method: str, seq: int) -> CapacityCell:
    """Every capacity answer for one model x method on ``cluster``."""
    model = prober.model
    problem = seq_problem(model, seq, prober.fixed)
    max_seq, capped = longest_seq(prober, cluster, method)
    if problem:
        return CapacityCell(model, method, cluster, seq, None, None, max_seq, capped, None, False, None, problem)
    probe = prober.probe(cluster, method, seq, 1)
    if isinstance(probe, str):
        return CapacityCell(model, method, cluster, seq, None, None, max_seq, capped, None, False, None, probe)
    plan = prober.best(cluster, method, seq)
    mb, mb_capped = largest_micro_batch(prober, cluster, method, seq)
    needed = fewest_gpus(
        prober, cluster.gpu, method, seq, node_size(cluster),
        cluster.host_ram_bytes_per_node / 2**30, cluster.inter_node_bandwidth_bytes_per_s / 1e9,
    )
    return CapacityCell(model, method, cluster, seq, plan, prober.min_peak(cluster, method, seq),
                        max_seq, capped, mb, mb_capped, needed, None if plan else prober.why_not(cluster, method, seq))


def node_size(cluster: Cluster) -> int:
    """GPUs per node for the fewest-GPUs question: the cluster's own node shape when it spans nodes, else
    at least the GPU's typical server (``--gpus 4090`` is one GPU of a 4-GPU workstation)."""
    if cluster.nodes > 1:
        return cluster.gpus_per_node
    return max(cluster.gpus_per_node, cluster.gpu.typical_gpus_per_node)


def memory_curve(prober: Prober, cluster: Cluster, method: str, seqs: Sequence[int] = CURVE_SEQS) -> MemoryCurve:
    """Smallest peak per GPU at each sequence length up to the model's max positions (micro-batch 1); the
    max positions themselves are the last point when they fall between two of ``seqs``."""
    limit = prober.model.max_positions if not prober.fixed.get("allow_long_seq") else max(seqs)
    points_at = [s for s in seqs if s <= limit]
    if limit < max(seqs) and limit not in points_at:
        points_at.append(limit)
    points = []
    for s in points_at:
        p = prober.min_peak(cluster, method, s)
        if p is not None:
            points.append((s, p))
    return MemoryCurve(prober.model, method, tuple(points))


def capacity_for_cluster(
    models: Sequence[ModelProfile],
    cluster: Cluster,
    methods: Sequence[str] = DEFAULT_METHODS,
    seq: int = DEFAULT_SEQ,
    headroom: float = DEFAULT_HEADROOM,
    *,
    fixed: dict | None = None,
    calibration: CalibrationBook | None = None,
    efficiency: float | None = None,
    curves: bool = False,
    progress: Progress | None = None,
) -> ClusterCapacity:
    """Every model x method on ``cluster``; with ``curves`` also the memory-versus-sequence curves."""
    _check_methods(methods)
    cells, cvs = [], []
    for model in models:
        prober = Prober(model, headroom, dict(fixed or {}), calibration, efficiency)
        for method in methods:
            cells.append(capacity_cell(prober, cluster, method, seq))
            if curves:
                cvs.append(memory_curve(prober, cluster, method))
            if progress:
                progress(f"{model.name} {method}")
    usable = usable_bytes(cluster.gpu.memory_bytes, headroom)
    return ClusterCapacity(cluster, seq, headroom, usable, tuple(methods), tuple(cells), tuple(cvs))


def capacity_across_gpus(
    model: ModelProfile,
    gpus: Sequence[GpuProfile],
    methods: Sequence[str] = DEFAULT_METHODS,
    seq: int = DEFAULT_SEQ,
    headroom: float = DEFAULT_HEADROOM,
    *,
    fixed: dict | None = None,
    calibration: CalibrationBook | None = None,
    efficiency: float | None = None,
    host_ram_gib: float | None = None,
    inter_node_gb_s: float | None = None,
    progress: Progress | None = None,
) -> CatalogueCapacity:
    """For each GPU kind and method: the fewest GPUs (typical node shape of that GPU) that fit ``model``."""
    _check_methods(methods)
    prober = Prober(model, headroom, dict(fixed or {}), calibration, efficiency)
    problem = seq_problem(model, seq, prober.fixed)
    rows = []
    for gpu in gpus:
        for method in methods:
            if problem:
                rows.append(GpuRow(gpu, method, None, problem))
            else:
                needed = fewest_gpus(prober, gpu, method, seq, None, host_ram_gib, inter_node_gb_s)
                note = None
                if needed is None:
                    biggest = make_cluster(gpu, gpu.typical_gpus_per_node, MAX_NODES, host_ram_gib, inter_node_gb_s)
                    note = f"on {biggest.label()}: {prober.why_not(biggest, method, seq)}"
                rows.append(GpuRow(gpu, method, needed, note))
            if progress:
                progress(f"{gpu.name} {method}")
    return CatalogueCapacity(model, seq, headroom, tuple(methods), tuple(rows))


def _check_methods(methods: Sequence[str]) -> None:
    from typing import get_args

    from planner.engine.setup import Method

    valid = get_args(Method)
    if not methods:
        raise SearchError(f"no methods given; valid: {', '.join(valid)}")
    bad = [m for m in methods if m not in valid]
    if bad:
        raise SearchError(f"unknown method {bad[0]!r}; valid: {', '.join(valid)}")
