"""Measure each block kind's activation inventory in place, under FakeTensorMode, and fit it exactly.

For each setup class (:data:`profiles.schema.SetupClass`), attention kernel and sequence regime, a prefix of the
model holding every block kind (at a position other than 0 where the model has one there) is built on fake
tensors exactly as ``plan trace`` builds it (:func:`validation.trace.build.build_model`), and one forward and
backward run at four ``(seq_len, micro_batch)`` points, under the same :class:`StorageTracker` as the trace.
Hooks on each block record (docs/memory.md eq. D2):

* **saved**: the storages the block created in its forward (its output excepted: the next block or the final
  norm keeps it) plus its input when that is still alive at the end of the forward; split by which modules
  keep them for backward (``torch.autograd.graph.saved_tensors_hooks``), so that the tensors only LoRA
  adapters keep can be dropped for adapters a setup does not use;
* **forward working set**: the largest live total while the block runs forward, beyond the bytes live when
  it started and the bytes it saves;
* **backward working set**: the largest live total while the block runs backward, beyond the bytes live
  when its output's gradient arrived, less that gradient (the engine's eq. A9 counts it in the working set);
* outside the blocks: the saved tensors that no block made (masks, rotary tables, the final norm's input,
  token ids and labels) and the logits / loss tensors (the last dimension is the vocabulary) at the end of
  the forward, their forward peak and their backward peak;
* the forward FLOPs of operators without a weight operand, per block (linear-attention and state-space
  scans; ``torch.utils.flop_counter``'s formulas), in the 16-bit SDPA run.

Each quantity is fitted as ``a * T + b * T * s + c`` (``T = b_micro * s``) through three points, and the fourth
point checks the fit (:attr:`~profiles.schema.TracedInventory.check_error`). The regimes split at every
sliding window and chunk size, because transformers builds a mask (and SDPA loses its grouped-query path) once
the sequence reaches the window.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import torch
from torch import nn

from planner.engine.setup import Setup
from profiles.schema import BlockInventory, Fit, ModelProfile, SavedPart, TracedInventory
from validation.trace.tracker import StorageTracker

SETUP_CLASSES: dict[str, Setup] = {
    "full-amp": Setup(recipe="hf-amp", method="full", allow_long_seq=True),
    "full-half": Setup(recipe="bf16", method="full", allow_long_seq=True),
    "lora-amp": Setup(recipe="hf-amp", method="lora", allow_long_seq=True),
    "lora-half": Setup(recipe="bf16", method="lora", allow_long_seq=True),
}
"""One setup per class, with the trainers' defaults (LoRA: all-linear, rank 8, alpha 16, dropout 0)."""
RANK, RANK2 = 8, 16
"""LoRA ranks traced: the inventory at rank 8 and its slope from a second trace at rank 16."""
UNIT = 64
"""Sequence points are multiples of this (or of a model's larger scan chunk, e.g. Mamba-2's ``mamba_chunk_size``):
chunked kernels (Gated DeltaNet 64, Mamba-2 128-256) pad the sequence to their chunk, so other lengths are not on
the same line."""


class _Tracker(StorageTracker):
    """StorageTracker that keeps every local maximum of the live activation bytes (a *moment*: the total just
    before a free that follows allocations), the logits' largest total per phase, and weight-free FLOPs."""

    def __init__(self, vocab: int) -> None:
        from validation.trace.plan import KINDS

        super().__init__({k: 1 for k in KINDS}, {}, vocab_size=vocab)
        self.moments: list[int] = []
        self.logits_max = 0
        self.block: int | None = None
        self.flops: dict[int, float] = {}
        self.count_flops = False
        self.param_storages: set[int] = set()

    def _settle(self) -> None:
        super()._settle()
        self.moments.append(self.cats["activations"])
        self.logits_max = max(self.logits_max, self.cats["logits_loss"])

    def now(self) -> int:
        if self._dirty:
            self._settle()
        return self.cats["activations"]

    def open(self) -> tuple[int, int]:
        """Start a window: (index into moments, live activation bytes now)."""
        now = self.now()
        return len(self.moments), now

    def window(self, start: tuple[int, int]) -> list[int]:
        """Every moment since ``start``: the live bytes then, each local maximum since, the live bytes now."""
        now = self.now()
        return [start[1], *self.moments[start[0]:], now]

    def reset_logits(self) -> None:
        if self._dirty:
            self._settle()
        self.logits_max = self.cats["logits_loss"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.count_flops and self.block is not None:
            from torch.utils._pytree import tree_leaves
            from torch.utils.flop_counter import flop_registry

            packet = func.overloadpacket
            if packet in flop_registry:
                tensors = [a for a in tree_leaves((args, kwargs or {})) if isinstance(a, torch.Tensor)]
                if not any(id(t.untyped_storage()) in self.param_storages for t in tensors):
                    self.flops[self.block] = self.flops.get(self.block, 0.0) + float(
                        flop_registry[packet](*args, **(kwargs or {}), out_val=out))
        return out


@dataclass
class Point:
    """What one traced (seq_len, micro_batch) point measured."""

    seq: int
    batch: int
    saved: list[dict[tuple[str, ...], int]]
    forward_working: list[list[int]]
    """per block: the working set at each moment of its forward (live bytes less those at its start and
    the bytes it saves)"""
    backward_working: list[list[int]]
    """per block: the working set at each moment of its backward (live bytes less those when its output's
    gradient arrived, that gradient excepted)"""
    outside: int
    logits_forward_peak: int
    logits_saved: int
    logits_backward_peak: int
    flops: list[float] = field(default_factory=list)


@dataclass
class _Run:
    fs: dict[int, int] = field(default_factory=dict)
    fe: dict[int, int] = field(default_factory=dict)
    act_start: dict[int, int] = field(default_factory=dict)
    live_start: dict[int, list] = field(default_factory=dict)
    """block -> the activation records live when its forward started (to tell what will outlive the forward)"""
    fwd_open: dict[int, tuple[int, int]] = field(default_factory=dict)
    wf: dict[int, list[int]] = field(default_factory=dict)
    in_rec: dict[int, Any] = field(default_factory=dict)
    """block -> the tracker record of its input's storage (records, not ids: ids of freed storages are reused)"""
    out_rec: dict[int, Any] = field(default_factory=dict)
    bwd_base: dict[int, int] = field(default_factory=dict)
    bwd_open: dict[int, tuple[int, int]] = field(default_factory=dict)
    wb: dict[int, list[int]] = field(default_factory=dict)
    open_bwd: int | None = None
    savers: dict[int, tuple[Any, set[str]]] = field(default_factory=dict)
    """id(record) -> (record, module paths that saved the storage for backward); the record is held, so its id
    stays unique"""
    stack: list[str] = field(default_factory=list)


class BlockProbe:
    """Hooks on a built (fake) model that measure every block in place, one :meth:`run` per point."""

    def __init__(self, net: nn.Module, layers: list[nn.Module], autocast: str | None, vocab: int,
                 savers: bool = True) -> None:
        self.net, self.layers, self.vocab = net, layers, vocab
        self.track_savers = savers
        """attribute saved tensors to the modules that keep them (only LoRA setups need it: which adapter)"""
        self.autocast = getattr(torch, autocast) if autocast else None
        self.tr: _Tracker | None = None
        self.run_state = _Run()
        for p in net.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._grad_ready)
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._pre(i), with_kwargs=True)
            layer.register_forward_hook(self._post(i))
            for path, mod in layer.named_modules():
                if path and savers:
                    mod.register_forward_pre_hook(self._push(path))
                    mod.register_forward_hook(self._pop())

    # -- hooks ---------------------------------------------------------------------------------------
    def _grad_ready(self, p: nn.Parameter) -> None:
        if self.tr is not None and p.grad is not None:
            self.tr.track(p.grad, "gradients")

    def _push(self, path: str) -> Callable:
        def hook(mod: nn.Module, args: Any) -> None:
            self.run_state.stack.append(path)
        return hook

    def _pop(self) -> Callable:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if self.run_state.stack:
                self.run_state.stack.pop()
        return hook

    def _pre(self, i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            tr, st = self.tr, self.run_state
            if tr is None or tr.default_tag != "activations":
                return
            x = args[0] if args else kwargs.get("hidden_states")
            st.fs[i] = tr.seq
            st.fwd_open[i] = tr.open()
            st.act_start[i] = st.fwd_open[i][1]
            st.live_start[i] = [r for r in tr._live.values() if r.tag == "activations"]
            tr.block = i
            st.stack = []
            if isinstance(x, torch.Tensor):
                st.in_rec[i] = tr._live.get(id(x.untyped_storage()))
                if i == 0 and x.requires_grad:
                    x.register_hook(self._bwd_end)
        return hook

    def _post(self, i: int) -> Callable:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            tr, st = self.tr, self.run_state
            if tr is None:
                return
            st.fe[i] = tr.seq
            st.wf[i] = tr.window(st.fwd_open[i])
            tr.block = None
            y = out[0] if isinstance(out, tuple) else out
            if isinstance(y, torch.Tensor):
                st.out_rec[i] = tr._live.get(id(y.untyped_storage()))
                if y.requires_grad:
                    y.register_hook(self._bwd_start(i))
        return hook

    def _close_bwd(self) -> None:
        st, tr = self.run_state, self.tr
        if st.open_bwd is not None and tr is not None:
            i = st.open_bwd
            st.wb[i] = [v - st.bwd_base[i] for v in tr.window(st.bwd_open[i])]
            st.open_bwd = None

    def _bwd_start(self, i: int) -> Callable:
        def hook(g: torch.Tensor) -> None:
            st, tr = self.run_state, self.tr
            assert tr is not None
            self._close_bwd()
            st.bwd_open[i] = tr.open()
            st.bwd_base[i] = st.bwd_open[i][1] - g.untyped_storage().nbytes()
            st.open_bwd = i
        return hook

    def _bwd_end(self, g: torch.Tensor) -> None:
        self._close_bwd()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = self.run_state
        saver = st.stack[-1] if (st.stack and self.tr is not None and self.tr.block is not None) else ""
        rec = self.tr._live.get(id(t.untyped_storage())) if self.tr is not None else None
        if rec is not None:
            st.savers.setdefault(id(rec), (rec, set()))[1].add(saver)
        return t

    # -- one point -----------------------------------------------------------------------------------
    def run(self, seq: int, batch: int, count_flops: bool = False) -> Point:
        from torch.autograd.graph import saved_tensors_hooks

        tr = _Tracker(self.vocab)
        self.tr, self.run_state = tr, _Run()
        for p in self.net.parameters():
            p.grad = None
            tr.track(p, "weights_trainable" if p.requires_grad else "weights_frozen")
            tr.param_storages.add(id(p.untyped_storage()))
        for b in self.net.buffers():
            tr.track(b, "buffers")
        tr.count_flops = count_flops
        n = len(self.layers)
        st = self.run_state
        with tr:
            tr.begin("forward", 1, "activations")
            tr.reset_logits()
            ids = torch.randint(0, self.vocab, (batch, seq))
            ctx = torch.autocast("cpu", dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()
            hooks = saved_tensors_hooks(self._pack, lambda t: t) if self.track_savers else contextlib.nullcontext()
            with hooks, ctx:
                out = self.net(input_ids=ids, labels=ids.clone(), use_cache=False)
            loss = out.loss
            del out, ids
            tr.now()
            logits_fwd_peak = tr.logits_max
            live = list(tr._live.values())
            saved: list[dict[tuple[str, ...], int]] = [dict() for _ in range(n)]
            created_saved = [0] * n
            inputs = {id(r): j for j, r in st.in_rec.items() if r is not None}
            outputs = {id(r) for r in st.out_rec.values() if r is not None}
            total_act = 0
            for rec in live:
                if rec.tag != "activations":
                    continue
                total_act += rec.nbytes
                i = next((j for j in range(n) if st.fs[j] < rec.seq <= st.fe[j]), None)
                if i is not None and id(rec) in outputs:
                    i = None  # a block's output: the next block's input (below) or the final norm's (outside)
                if i is None:
                    i = inputs.get(id(rec))
                    if i is None:
                        continue
                else:
                    created_saved[i] += rec.nbytes
                entry = st.savers.get(id(rec))
                sig = _signature(entry[1] if entry is not None else {""})
                saved[i][sig] = saved[i].get(sig, 0) + rec.nbytes
            logits_saved = tr.cats["logits_loss"]
            # a working set counts what is live while the block runs and will not be saved: its own
            # intermediates, and what was live before it that the forward drops (masks built for all blocks, the
            # residual stream's current tensor): live at its start minus what outlives the forward
            alive_end = {id(r) for r in live}
            persistent = [sum(r.nbytes for r in st.live_start[i] if id(r) in alive_end) for i in range(n)]
            wf = [[v - persistent[i] - created_saved[i] for v in st.wf[i]] for i in range(n)]
            st.live_start.clear()
            del live, alive_end
            outside = total_act - sum(sum(d.values()) for d in saved)
            tr.begin("backward", 1, "activations")
            tr.reset_logits()
            loss.backward()
            del loss
            self._close_bwd()
            tr.now()
            logits_bwd_peak = tr.logits_max
            tr.end()
        wb = [st.wb.get(i, [0]) for i in range(n)]
        flops = [tr.flops.get(i, 0.0) for i in range(n)]
        self.tr = None
        for p in self.net.parameters():
            p.grad = None
        return Point(seq, batch, saved, wf, wb, outside, logits_fwd_peak, logits_saved, logits_bwd_peak, flops)


def _signature(savers: set[str]) -> tuple[str, ...]:
    """Which LoRA adapters alone keep a storage: () when any other module (or none we saw) keeps it."""
    names = set()
    for s in savers:
        if ".lora_" not in s:
            return ()
        names.add(s.split(".lora_")[0].split(".")[-1])
    return tuple(sorted(names))


# ---- fitting ---------------------------------------------------------------------------------------------
BASES: dict[str, tuple[str, ...]] = {
    "full": ("per_token", "per_token_per_seq", "per_seq_squared", "per_seq", "per_sequence", "constant"),
    "b1": ("per_token", "per_token_per_seq", "constant"),
}
"""The terms a fit solves for: all six (three lengths at micro-batch 1 and 2); those of tensors that carry the
batch dimension (three lengths at one micro-batch size)."""


def _basis(term: str, s: int, b: int) -> Fraction:
    return Fraction({"per_token": b * s, "per_token_per_seq": b * s * s, "per_seq_squared": s * s, "per_seq": s,
                     "per_sequence": b, "constant": 1}[term])


def solve(pts: list[tuple[int, int, float]], basis: str = "full") -> Fit:
    """The fit through ``len(terms)`` points exactly (rational Gaussian elimination)."""
    terms = BASES[basis]
    n = len(terms)
    assert len(pts) == n, (len(pts), n)
    rows = [[_basis(t, s, b) for t in terms] + [Fraction(v)] for s, b, v in pts]
    for col in range(n):
        piv = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[piv] = rows[piv], rows[col]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col] / rows[col][col]
                rows[r] = [x - f * y for x, y in zip(rows[r], rows[col])]
    return Fit(**{t: float(rows[i][n] / rows[i][i]) for i, t in enumerate(terms)})


def regimes(windows: list[int]) -> list[tuple[int, int | None]]:
    """``[1, w1), [w1, w2), ..., [wk, None)`` for the distinct windows."""
    edges = sorted({w for w in windows if w and w > 1})
    out, lo = [], 1
    for w in edges:
        out.append((lo, w))
        lo = w
    out.append((lo, None))
    return out


def points(lo: int, hi: int | None, unit: int, avoid: int = 0) -> tuple[int, int, int]:
    """Three sequence lengths inside ``[lo, hi)``, multiples of ``unit`` and at least two of them (chunked
    kernels pad the sequence to their chunk and treat a single chunk apart), none equal to ``avoid`` (the
    vocabulary: the tracker tags a tensor whose last dimension is the vocabulary as logits). Short: a trace costs
    what the model's operators cost to dispatch, and kernels that loop over chunks run more with length."""
    u = unit
    while u >= 1:
        s1 = -(-max(lo, 2 * u) // u) * u
        while avoid in (s1, s1 + u, s1 + 2 * u):
            s1 += u
        if hi is None or s1 + 2 * u < hi:
            return s1, s1 + u, s1 + 2 * u
        u //= 2
    raise ValueError(f"regime [{lo}, {hi}) is too narrow to fit")


def _scale(p: Point) -> float:
    """What a check error is relative to: every saved activation byte of the traced prefix and the logits."""
    return float(sum(sum(d.values()) for d in p.saved) + p.outside + p.logits_saved) or 1.0


def _fit_points(pts: list[Point], get: Callable[[Point], float]) -> tuple[Fit, float]:
    """Fit the first six points (lengths s1-s3 at micro-batch 2 and 1, :func:`solve`) and check the seventh
    (micro-batch 3); the error is relative to the saved total at that point (:func:`_scale`)."""
    f = solve([(p.seq, p.batch, get(p)) for p in pts[:6]])
    check = pts[6]
    actual, pred = get(check), f.at(check.seq * check.batch, check.seq)
    return f, abs(pred - actual) / _scale(check)


def _dominates(a: Fit, b: Fit) -> bool:
    """``a >= b`` at every shape (all basis terms are non-negative)."""
    ka = (a.per_token, a.per_token_per_seq, a.per_seq_squared, a.per_seq, a.per_sequence, a.constant)
    kb = (b.per_token, b.per_token_per_seq, b.per_seq_squared, b.per_seq, b.per_sequence, b.constant)
    return all(x >= y - 1e-6 * max(1.0, abs(y)) for x, y in zip(ka, kb))


def _prune(fits: list[Fit], at: tuple[int, int]) -> tuple[Fit, ...]:
    keep: list[Fit] = []
    for f in sorted(fits, key=lambda f: -f.at(*at)):
        if not any(_dominates(g, f) for g in keep):
            keep = [g for g in keep if not _dominates(f, g)] + [f]
    return tuple(keep) or (Fit(),)


def _moments(pts: list[Point], series: list[list[int]], basis: str) -> tuple[Fit, ...]:
    """The envelope of the moments of a group of points that ran the same moments (else the largest value)."""
    at = (pts[0].seq * pts[0].batch, pts[0].seq)
    if len({len(x) for x in series}) != 1:
        return (solve([(p.seq, p.batch, max(v)) for p, v in zip(pts, series)], basis),)
    fits = [solve([(p.seq, p.batch, v[m]) for p, v in zip(pts, series)], basis)
            for m in range(len(series[0])) if max(v[m] for v in series) > 0]
    return _prune(fits, at)


def envelope(pts: list[Point], get: Callable[[Point], list[int]]
             ) -> tuple[tuple[Fit, ...], tuple[Fit, ...], float]:
    """A working set as the largest of its moments, each fitted exactly, keeping the moments no other dominates.

    When every point ran the same moments, each is fitted through six points (:func:`solve`) and the seventh
    checks the envelope. When the batch sizes ran different moments (at micro-batch 1 a size-1 dimension makes a
    copy unnecessary), micro-batch 2's three lengths give the envelope for larger batches (terms that carry the
    batch dimension) and micro-batch 1's three its own. When lengths ran different moments (a kernel looping over
    sequence chunks), the largest value is fitted. Returns (general, micro-batch-1 or empty, check error)."""
    series = [get(p) for p in pts]
    check = pts[6]
    if len({len(x) for x in series}) != 1:
        # the three lengths at micro-batch 2 give the envelope for larger batches (in-block working tensors
        # carry the batch dimension), the three at micro-batch 1 their own
        general = _moments(pts[0:3], series[0:3], "b1")
        b1 = _moments(pts[3:6], series[3:6], "b1")
        return general, (b1 if b1 != general else ()), 0.0
    fits = [solve([(p.seq, p.batch, v[m]) for p, v in zip(pts[:6], series[:6])])
            for m in range(len(series[0])) if max(v[m] for v in series) > 0]
    keep = _prune(fits, (check.seq * check.batch, check.seq))
    pred = max(f.at(check.seq * check.batch, check.seq) for f in keep)
    return keep, (), abs(pred - max(series[6])) / _scale(check)


@dataclass
class ClassRun:
    """The seven points of one setup class, attention kernel and regime."""

    setup_class: str
    attention: str
    lo: int
    hi: int | None
    pts: list[Point]
    rank_point: Point | None = None


def assemble(run: ClassRun, kinds: list[int], first_kind: int, rep: dict[int, int],
             rank_slopes: dict[int, dict[tuple[str, ...], float]] | None) -> TracedInventory:
    """Fit one class's points into a :class:`TracedInventory` (one BlockInventory per kind). ``first_kind`` is
    the kind of traced block 0 when that is the model's layer 0 (else -1: no first-block difference to fit)."""
    errors: list[float] = []
    labels: list[str] = []

    def fit(get: Callable[[Point], float], label: str = "") -> Fit:
        f, e = _fit_points(run.pts, get)
        errors.append(e)
        labels.append(label)
        return f

    blocks = []
    for k in kinds:
        i = rep[k]
        sigs = sorted({s for p in run.pts for s in p.saved[i]})
        parts = []
        for sig in sigs:
            f = fit(lambda p, i=i, sig=sig: p.saved[i].get(sig, 0), f"saved {k} {sig}")
            slope = (rank_slopes or {}).get(i, {}).get(sig, 0.0)
            parts.append(SavedPart(adapters=sig, size=f, per_token_per_rank=slope))
        fw, fw1, e1 = envelope(run.pts, lambda p, i=i: p.forward_working[i])
        bw, bw1, e2 = envelope(run.pts, lambda p, i=i: p.backward_working[i])
        errors += [e1, e2]
        labels += [f"forward working {k}", f"backward working {k}"]
        blocks.append(BlockInventory(saved=tuple(parts), forward_working=fw, backward_working=bw,
                                     forward_working_b1=fw1, backward_working_b1=bw1))
    k0 = first_kind
    first = Fit()
    if k0 >= 0 and rep[k0] != 0:
        first = fit(lambda p: sum(p.saved[0].values()) - sum(p.saved[rep[k0]].values()), "first block")
    return TracedInventory(
        setup_class=run.setup_class, attention=run.attention, seq_from=run.lo, seq_to=run.hi,  # type: ignore[arg-type]
        blocks=tuple(blocks), first_block=first,
        outside=fit(lambda p: p.outside, "outside"),
        logits_forward_peak=fit(lambda p: p.logits_forward_peak, "logits forward peak"),
        logits_saved=fit(lambda p: p.logits_saved, "logits saved"),
        logits_backward_peak=fit(lambda p: p.logits_backward_peak, "logits backward peak"),
        points=tuple((p.seq, p.batch) for p in run.pts),
        check_error=max(errors, default=0.0),
        check_worst=labels[errors.index(max(errors))] if errors else "",
    )


def rank_slopes(p8: Point, p16: Point, n: int) -> dict[int, dict[tuple[str, ...], float]]:
    """Saved bytes per token per unit of LoRA rank, per block and saver signature."""
    T = p8.seq * p8.batch
    out: dict[int, dict[tuple[str, ...], float]] = {}
    for i in range(n):
        sigs = set(p8.saved[i]) | set(p16.saved[i])
        out[i] = {s: (p16.saved[i].get(s, 0) - p8.saved[i].get(s, 0)) / (T * (RANK2 - RANK)) for s in sigs}
    return out


def _set_attention(net: nn.Module, attn: str) -> None:
    """Switch the attention kernel of a built model (or of the model inside a peft wrapper)."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    base.set_attn_implementation(attn)


def measure(profile: ModelProfile, layer_sets: dict[str, list[int]], kinds: list[int], rep_layer: dict[int, int],
            first_kind: int,
            windows: list[int], supports_sdpa: bool, unit: int,
            progress: Callable[[str], None] | None = None) -> tuple[tuple[TracedInventory, ...], dict[int, Fit]]:
    """Trace every setup class, kernel and regime on a model of the given layers (``layer_sets["full"]`` for the
    full classes, ``["lora"]``, which includes layer 0, for the LoRA ones; layer ``rep_layer[k]`` is of kind
    ``k``); return the inventories and each kind's mixer FLOPs fit."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from transformers.initialization import no_init_weights

    from profiles.cluster import parse_cluster
    from validation.build import decoder_layers
    from validation.derive.config import quiet
    from validation.trace.build import build_model, real_run_semantics
    from validation.trace.plan import plan_trace

    cluster = parse_cluster("A800")
    regs = regimes(windows)
    attentions = ["sdpa", "eager"] if supports_sdpa and profile.attn_logit_softcap is None else ["eager"]
    invs: list[TracedInventory] = []
    flops_fit: dict[int, Fit] = {}
    say = progress or (lambda s: None)
    for cls, base in SETUP_CLASSES.items():
        setup = base.model_copy(update={"attention": attentions[0]})
        plan = plan_trace(profile, cluster, setup)
        layers = layer_sets["lora" if cls.startswith("lora") else "full"]
        rep = {k: layers.index(rep_layer[k]) for k in kinds}
        k0 = first_kind if layers[0] == 0 else -1
        # weights hold no data under fake tensors: skip transformers' initialisation (it is most of a build)
        with quiet(), FakeTensorMode(), real_run_semantics(), no_init_weights():
            net = build_model(profile, setup, plan, layers=layers)
            lora = cls.startswith("lora")
            probe = BlockProbe(net, decoder_layers(net), plan.autocast_dtype, profile.vocab_size, savers=lora)
            slopes = None
            if lora:
                s1 = points(*regs[0], unit, avoid=profile.vocab_size)[0]
                p8 = probe.run(s1, 1)
                set2 = setup.model_copy(update={"lora_rank": RANK2, "lora_alpha": 2 * RANK2})
                net2 = build_model(profile, set2, plan, layers=layers)
                p16 = BlockProbe(net2, decoder_layers(net2), plan.autocast_dtype, profile.vocab_size).run(s1, 1)
                slopes = rank_slopes(p8, p16, len(layers))
                del net2
            for attn in attentions:
                _set_attention(net, attn)
                for lo, hi in regs:
                    say(f"{cls} {attn} seq {lo}..{hi - 1 if hi else 'inf'}")
                    s1, s2, s3 = points(lo, hi, unit, avoid=profile.vocab_size)
                    count = cls == "full-half" and attn == attentions[0]
                    pts = [probe.run(s1, 2, count), probe.run(s2, 2, count), probe.run(s3, 2), probe.run(s1, 1),
                           probe.run(s2, 1), probe.run(s3, 1), probe.run(s1, 3)]
                    invs.append(assemble(ClassRun(cls, attn, lo, hi, pts), kinds, k0, rep, slopes))
                    if count and hi is None:
                        for k in kinds:
                            i = rep[k]
                            a, b = pts[0], pts[1]
                            fa, fb = a.flops[i] / (a.seq * a.batch), b.flops[i] / (b.seq * b.batch)
                            slope = (fb - fa) / (b.seq - a.seq)
                            flops_fit[k] = Fit(per_token=fa - slope * a.seq, per_token_per_seq=slope)
            del probe, net
    return tuple(invs), flops_fit
