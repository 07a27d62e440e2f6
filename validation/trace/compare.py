"""Hold the analytic engine to the trace: allocated bytes per GPU rank, in total, by category and per phase.

The engine's peak includes ``framework_overhead`` and ``allocator_margin``, which a trace cannot see; the
comparison subtracts them (``planner.engine.memory.allocated_bytes``) and compares tensor bytes with tensor bytes.
``comm_buffers`` (DDP / ZeRO buckets, ZeRO-3 gathers) are not traced either (no process group): they are
subtracted from the engine's peak too and shown as their own delta. FSDP is the exception: the trace runs
real FSDP2 over a fake process group, so its gathered parameters and collective buffers are traced and
compared like any other category.
Errors are signed, ``(estimate - trace) / trace``: positive means the engine errs high.

:func:`per_layer_fit` measures one block's saved activations from traces of 1 and 2 blocks at two sequence
lengths, and splits them into a per-token and a per-token-per-position part (the latter is eager
attention's s^2 scores), the same two numbers the engine's ``LayerInventory`` carries.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from planner.engine.results import CATEGORIES, PHASES, MemoryEstimate
from planner.engine.setup import Setup
from profiles.cluster import Cluster
from profiles.schema import ModelProfile

NOT_TRACED = ("framework_overhead", "allocator_margin")
ACTIVATION_TERMS = ("activations", "logits_loss")


@dataclass(frozen=True)
class Comparison:
    """One case: traced and estimated allocated peaks, with the differences behind them."""

    case: str
    traced: int
    estimated: int
    traced_phase: str
    estimated_phase: str
    category_deltas: dict[str, int]
    """estimate - trace per category at the engine's peak phase (the trace's peak of that same phase)"""
    traced_categories: dict[str, int]
    """the trace's categories at the peak of the engine's peak phase"""
    estimated_categories: dict[str, int]
    phase_errors: dict[str, float]
    """per phase: (estimate - trace) / trace of that phase's allocated total"""
    traced_forward_activations: int = 0
    """activations + logits_loss at the trace's forward peak"""
    estimated_forward_activations: int = 0
    """the engine's forward-phase activations + logits_loss"""
    trace_seconds: float = 0.0
    substitutions: tuple[str, ...] = ()

    @property
    def error(self) -> float:
        return (self.estimated - self.traced) / self.traced

    @property
    def activation_error(self) -> float:
        """Error of the activation share: activations + logits and loss at the forward peak, where every
        block's saved tensors and the logits are live (the backward peak's moment differs between the two)."""
        t, e = self.traced_forward_activations, self.estimated_forward_activations
        return (e - t) / t if t else 0.0

    @classmethod
    def from_json(cls, d: dict) -> "Comparison":
        fields = {k: v for k, v in d.items() if k not in ("error", "activation_error")}
        fields["substitutions"] = tuple(fields.get("substitutions", ()))
        return cls(**fields)

    def to_json(self) -> dict:
        return {
            "case": self.case, "traced": self.traced, "estimated": self.estimated, "error": self.error,
            "activation_error": self.activation_error, "traced_phase": self.traced_phase,
            "estimated_phase": self.estimated_phase, "category_deltas": self.category_deltas,
            "traced_categories": self.traced_categories, "estimated_categories": self.estimated_categories,
            "phase_errors": self.phase_errors, "trace_seconds": self.trace_seconds,
            "traced_forward_activations": self.traced_forward_activations,
            "estimated_forward_activations": self.estimated_forward_activations,
            "substitutions": list(self.substitutions),
        }


def _allocated_phases(est: MemoryEstimate, overhead: int, margins: dict[str, int]) -> dict[str, int]:
    return {ph: est.phases[ph] - overhead - margins.get(ph, 0) for ph in PHASES}


def compare_estimates(case: str, traced: MemoryEstimate, estimated: MemoryEstimate,
                      trace_seconds: float = 0.0, phase_categories: dict[str, dict[str, int]] | None = None,
                      forward_activations: tuple[int, int] = (0, 0)) -> Comparison:
    """Compare a traced MemoryEstimate with the engine's (both for the same model, cluster and setup).

    ``phase_categories`` (phase -> the trace's categories at that phase's peak) lets the categories be
    compared at the engine's peak phase; without it they are taken at the trace's own peak.
    """
    from planner.engine.memory import tensor_bytes

    at = (phase_categories or {}).get(estimated.peak_phase, traced.categories)
    t_cats = {k: at.get(k, 0) for k in CATEGORIES if k not in NOT_TRACED}
    e_cats = {k: estimated.categories[k] for k in CATEGORIES if k not in NOT_TRACED}
    comm = 0 if estimated.setup.fsdp else e_cats["comm_buffers"]  # FSDP: traced for real (fsdp.py)
    e_alloc = dict(estimated.phase_tensors)  # the engine's tensor bytes per phase (no margin, no overhead)
    phase_errors = {ph: (e_alloc[ph] - traced.phases[ph]) / traced.phases[ph] if traced.phases[ph] else 0.0
                    for ph in PHASES}
    subs = tuple(a for a in traced.assumptions if a.startswith("not traceable"))
    return Comparison(
        case=case,
        traced=traced.peak_bytes,
        estimated=tensor_bytes(estimated) - comm,
        traced_phase=traced.peak_phase,
        estimated_phase=estimated.peak_phase,
        category_deltas={k: e_cats[k] - t_cats[k] for k in t_cats},
        traced_categories=t_cats,
        estimated_categories=e_cats,
        phase_errors=phase_errors,
        traced_forward_activations=forward_activations[0],
        estimated_forward_activations=forward_activations[1],
        trace_seconds=trace_seconds,
        substitutions=subs,
    )


def compare(case: str, model: ModelProfile, cluster: Cluster, setup: Setup, **trace_kw) -> Comparison:
    """Run the engine and the trace on one setup and compare them."""
    from planner.engine.evaluate import evaluate
    from validation.trace import trace_memory
    from validation.trace.plan import PHASE_OF

    est = evaluate(model, cluster, setup).memory
    tr = trace_memory(model, cluster, setup, **trace_kw)
    best: dict[str, object] = {}
    for r in tr.records:
        ph = PHASE_OF[r.phase]
        if ph not in best or r.peak_bytes > best[ph].peak_bytes:  # type: ignore[attr-defined]
            best[ph] = r
    cats = {ph: r.categories for ph, r in best.items()}  # type: ignore[attr-defined]
    fwd = (sum(cats["forward_peak"].get(k, 0) for k in ACTIVATION_TERMS),
           engine_forward_activations(model, setup))
    return compare_estimates(case, tr.estimate, est, tr.seconds, cats, fwd)


def engine_forward_activations(model: ModelProfile, setup: Setup) -> int:
    """The engine's forward-phase ``activations + logits_loss`` (as ``estimate_memory`` assembles them)."""
    from planner.engine.dtypes import recipe_bytes
    from planner.engine.facts import model_facts
    from planner.engine.memory import activation_bytes, forward_peak_parts, logits_loss_bytes

    rb = recipe_bytes(setup)
    acts = activation_bytes(model_facts(model, setup), setup, rb)
    lg = logits_loss_bytes(model, setup, rb, setup.micro_batch * setup.seq_len)
    return sum(forward_peak_parts(acts, lg))


@dataclass(frozen=True)
class Summary:
    cases: int
    median_abs_error: float
    max_abs_error: float
    worst_case: str
    within_8: int
    activation_median_abs_error: float
    activation_max_abs_error: float
    activation_worst_case: str
    failed: tuple[str, ...] = field(default_factory=tuple)

    def line(self) -> str:
        return (f"{self.cases} cases: median |error| {100 * self.median_abs_error:.2f} %, "
                f"max {100 * self.max_abs_error:.2f} % ({self.worst_case}), "
                f"{self.within_8}/{self.cases} within 8 %; activation share: median "
                f"{100 * self.activation_median_abs_error:.2f} %, max {100 * self.activation_max_abs_error:.2f} % "
                f"({self.activation_worst_case})"
                + (f"; {len(self.failed)} failed" if self.failed else ""))

    @property
    def meets_target(self) -> bool:
        """Issue 4's bound: median <= 3 % and every case within 8 %, on the total and the activation share."""
        return (self.median_abs_error <= 0.03 and self.max_abs_error <= 0.08
                and self.activation_median_abs_error <= 0.03 and self.activation_max_abs_error <= 0.08)


def summarize(results: list[Comparison], failed: tuple[str, ...] = ()) -> Summary:
    errs = [abs(c.error) for c in results]
    acts = [abs(c.activation_error) for c in results]
    worst = max(results, key=lambda c: abs(c.error))
    worst_act = max(results, key=lambda c: abs(c.activation_error))
    return Summary(
        cases=len(results),
        median_abs_error=statistics.median(errs),
        max_abs_error=max(errs),
        worst_case=worst.case,
        within_8=sum(e <= 0.08 for e in errs),
        activation_median_abs_error=statistics.median(acts),
        activation_max_abs_error=max(acts),
        activation_worst_case=worst_act.case,
        failed=failed,
    )


@dataclass(frozen=True)
class LayerFit:
    """One block's saved activation bytes: ``per_token * T + per_token_per_seq * T * s`` (T = b * s)."""

    traced_per_token: float
    traced_per_token_per_seq: float
    engine_per_token: int
    engine_per_token_per_seq: int


def per_layer_fit(model: ModelProfile, cluster: Cluster, setup: Setup, seqs: tuple[int, int] = (256, 512)
                  ) -> LayerFit:
    """Trace 1 and 2 blocks at two sequence lengths; the differences are one block's saved activations."""
    from planner.engine.activations import layer_inventory
    from planner.engine.dtypes import recipe_bytes
    from validation.trace import trace_memory

    def saved(layers: int, s: int) -> int:
        m = model.model_copy(update={"num_layers": layers})
        st = setup.model_copy(update={"seq_len": s, "checkpointing": "none", "method": setup.method,
                                      "freeze_layers": min(setup.freeze_layers, layers)})
        r = trace_memory(m, cluster, st, steps=1)
        fwd = [x for x in r.records if x.phase == "forward"][-1]
        return fwd.end_categories.get("activations", 0)

    per = []
    for s in seqs:
        per.append((saved(2, s) - saved(1, s)) / (setup.micro_batch * s))  # bytes per token per block
    (s1, s2), (p1, p2) = seqs, per
    b = (p2 - p1) / (s2 - s1)
    a = p1 - b * s1
    from planner.engine.facts import model_facts

    rb = recipe_bytes(setup)
    inv = layer_inventory(model_facts(model, setup), setup, rb, setup.method in ("full", "freeze"))
    return LayerFit(a, b, inv.per_token, inv.per_token_per_seq)


def traced_block_inventory(model: ModelProfile, cluster: Cluster, setup: Setup, block: int = 1
                           ) -> list[tuple[str, str, float]]:
    """Every tensor one block creates in the forward and still holds when the forward ends (its saved
    activations), as ``(tag, "op shape dtype", bytes per token)``, largest first.

    Traces a 2-block copy of ``model`` through one forward; the block is the second one, so nothing of the
    embedding or the LM head is counted. This is the per-tensor list behind :func:`per_layer_fit`.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from validation.trace import plan_trace
    from validation.trace.build import build_model, decoder_layers, real_run_semantics
    from validation.trace.step import StepRunner
    from validation.trace.tracker import StorageTracker

    small = model.model_copy(update={"num_layers": 2})
    st = setup.model_copy(update={"freeze_layers": min(setup.freeze_layers, 2)})
    plan = plan_trace(small, cluster, st)
    tracker = StorageTracker(plan.divisors, plan.host_divisors, vocab_size=model.vocab_size, record_ops=True)
    window: dict[str, int] = {}
    tokens = st.micro_batch * st.seq_len
    with FakeTensorMode(), real_run_semantics():
        net = build_model(small, st, plan)
        layer = decoder_layers(net)[block]

        def mark(key: str) -> None:
            window.setdefault(key, tracker.seq)

        layer.register_forward_pre_hook(lambda m, a: mark("start"))
        layer.register_forward_hook(lambda m, a, o: mark("end"))
        with tracker:
            runner = StepRunner(net, plan, st, tracker)
            tracker.begin("forward", 1, "activations")
            ids = torch.randint(0, model.vocab_size, (st.micro_batch, st.seq_len))
            ctx = torch.autocast("cpu", dtype=runner.autocast) if runner.autocast is not None else None
            if ctx is not None:
                with ctx:
                    loss = runner._loss(ids, ids.clone())
            else:
                loss = runner._loss(ids, ids.clone())
            recs = tracker.live_since(window["start"], window["end"])
            out = sorted(((r.tag, r.what, r.nbytes / tokens) for r in recs), key=lambda x: -x[2])
            del loss
    return out
