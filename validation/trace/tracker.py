"""Count live tensor storage bytes through a training step, per category and per phase.

:class:`StorageTracker` is a ``TorchDispatchMode``: every tensor an operator returns is looked at, and each
distinct untyped storage is counted once, from the op that created it until the storage is collected (a
weak reference with a callback). Views, in-place ops and outputs that alias an input add nothing. This is
what ``torch.cuda.memory_allocated`` counts on a GPU, minus the caching allocator's 512-byte rounding
(tracing.md: a fake trace and a real CPU run give byte-identical peaks). It is much faster than
``torch.distributed._tools.mem_tracker.MemTracker`` on deep models (no per-module bookkeeping).

Every storage carries a *tag* (see :data:`validation.trace.plan.KINDS`): parameters, gradients, optimizer
states and master weights are tagged by the step driver as it learns them (a gradient when autograd has
accumulated it, a state when the optimizer stores it); anything else gets the tag of the phase it was born
in: activations in forward / backward (``logits_loss`` when its last dimension is the vocabulary, an
``autocast_copy`` when it is a dtype cast of a weight), ``optimizer_temp`` in the optimizer step. Each tag has
a divisor (ZeRO / FSDP share of one rank) and may live in host RAM instead (offload).

Peaks are evaluated lazily, at the next allocation or free after a change, so that a tensor allocated and
tagged at once (an optimizer state created full-size and sharded at once) is never counted in between.

Two things real FSDP2 does are followed too (``validation/trace/fsdp.py`` runs it): a ``DTensor`` is counted by
its local shard (the mode lets DTensor desugar into local ops first, as torch's own ``MemTracker`` does), and
``UntypedStorage.resize_`` (how FSDP2 frees and re-allocates unsharded parameters in place, which no
``TorchDispatchMode`` sees) changes the bytes of the storage's record while the tracker is active.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from validation.trace.plan import KINDS

_WEIGHT_TAGS = frozenset({"weights_trainable", "weights_frozen"})
_CAST_OPS = frozenset({torch.ops.aten._to_copy.default})
_CATEGORIES = tuple(dict.fromkeys(KINDS.values()))


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2 parameters, gradients and optimizer states); any other tensor as is."""
    inner = getattr(t, "_local_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else t


def _share(nbytes: int, div: int) -> int:
    """Bytes of one rank's share: ``ceil(nbytes / div)``; 0 when ``div`` is 0 (not there at all)."""
    return 0 if div == 0 else -(-nbytes // div)


class _Rec:
    __slots__ = ("nbytes", "tag", "dev", "host", "ref", "seq", "what")

    def __init__(self, nbytes: int, tag: str, dev: int, host: int) -> None:
        self.nbytes = nbytes
        self.tag = tag
        self.dev = dev
        self.host = host
        self.ref: weakref.ref | None = None
        self.seq = 0
        self.what = ""


@dataclass
class PhaseRecord:
    """The peak of one phase of one step: total device bytes, the categories at that moment, host bytes."""

    phase: str
    step: int
    peak_bytes: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    host_peak_bytes: int = 0
    host_categories: dict[str, int] = field(default_factory=dict)
    end_bytes: int = 0
    end_categories: dict[str, int] = field(default_factory=dict)


class StorageTracker(TorchDispatchMode):
    """Live storage bytes by tag, with per-phase peaks. Enter it inside ``FakeTensorMode`` (or on real CPU
    tensors) and mark phases with :meth:`phase`."""

    def __init__(self, divisors: dict[str, int], host_divisors: dict[str, int], vocab_size: int | None = None,
                 record_ops: bool = False):
        super().__init__()
        self.record_ops = record_ops
        """keep, per storage, the op that made it with its shape and dtype (for per-block inventories)"""
        self.seq = 0
        self._op = ""
        self.divisors = dict(divisors)
        self.host_divisors = dict(host_divisors)
        self.vocab_size = vocab_size
        self._live: dict[int, _Rec] = {}
        self.current = 0
        self.host_current = 0
        self.cats = dict.fromkeys(_CATEGORIES, 0)
        self.host_cats = dict.fromkeys(_CATEGORIES, 0)
        self.default_tag = "activations"
        self.records: list[PhaseRecord] = []
        self._open: PhaseRecord | None = None
        self._dirty = False
        self.ops = 0
        self.paused = 0
        """> 0 while a framework computes shapes on tensors that a real run never allocates (DTensor's sharding
        propagation runs the op on global-shape fake tensors, under the trace's own fake mode when one is active)"""

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _settle(self) -> None:
        """Fold the current state into the open phase's peak (called before every change that frees)."""
        self._dirty = False
        r = self._open
        if r is None:
            return
        if self.current > r.peak_bytes or not r.categories:
            r.peak_bytes = self.current
            r.categories = dict(self.cats)
        if self.host_current > r.host_peak_bytes or not r.host_categories:
            r.host_peak_bytes = self.host_current
            r.host_categories = dict(self.host_cats)

    def _place(self, rec: _Rec, sign: int) -> None:
        cat = KINDS[rec.tag]
        self.current += sign * rec.dev
        self.cats[cat] += sign * rec.dev
        self.host_current += sign * rec.host
        self.host_cats[cat] += sign * rec.host

    def _make(self, nbytes: int, tag: str) -> _Rec:
        div = self.divisors.get(tag, 1)
        hdiv = self.host_divisors.get(tag)
        return _Rec(nbytes, tag, _share(nbytes, div), _share(nbytes, hdiv) if hdiv else 0)

    def _free(self, key: int) -> None:
        rec = self._live.pop(key, None)
        if rec is None:
            return
        if self._dirty:
            self._settle()
        self._place(rec, -1)

    def track(self, t: torch.Tensor, tag: str | None = None) -> None:
        """Count ``t``'s storage if it is new (with ``tag`` or the phase default); retag it if ``tag`` is given."""
        st = _local(t).untyped_storage()
        key = id(st)
        rec = self._live.get(key)
        if rec is not None:
            if tag is not None and tag != rec.tag:
                self._retag(rec, tag)
            return
        if self._dirty:
            self._settle()
        rec = self._make(st.nbytes(), tag or self.default_tag)
        self.seq += 1
        rec.seq = self.seq
        if self.record_ops:
            rec.what = f"{self._op} {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        rec.ref = weakref.ref(st, lambda _r, k=key: self._free(k))
        self._live[key] = rec
        self._place(rec, +1)
        self._dirty = True

    def _retag(self, rec: _Rec, tag: str) -> None:
        # no settle here: a tensor tagged right after it was made is counted with its final share only
        self._place(rec, -1)
        new = self._make(rec.nbytes, tag)
        rec.tag, rec.dev, rec.host = tag, new.dev, new.host
        self._place(rec, +1)
        self._dirty = True

    def live_since(self, seq: int, until: int | None = None) -> list[_Rec]:
        """Storages still alive that were created after allocation number ``seq`` (and up to ``until``)."""
        return [r for r in self._live.values() if r.seq > seq and (until is None or r.seq <= until)]

    def tag_of(self, t: torch.Tensor) -> str | None:
        rec = self._live.get(id(_local(t).untyped_storage()))
        return rec.tag if rec else None

    def _resized(self, st: torch.UntypedStorage) -> None:
        """``st`` was resized in place (FSDP2's ``free_storage`` / ``alloc_storage``): recount its bytes."""
        rec = self._live.get(id(st))
        if rec is None or rec.nbytes == st.nbytes():
            return
        if self._dirty or st.nbytes() < rec.nbytes:
            self._settle()
        self._place(rec, -1)
        new = self._make(st.nbytes(), rec.tag)
        rec.nbytes, rec.dev, rec.host = new.nbytes, new.dev, new.host
        self._place(rec, +1)
        self._dirty = True

    # -- mode entry: follow in-place storage resizes ---------------------------------------------------
    def __enter__(self):  # type: ignore[no-untyped-def]
        tracker = self
        original = torch.UntypedStorage.resize_
        self._orig_resize = original

        def resize_(st: torch.UntypedStorage, size: int):  # type: ignore[no-untyped-def]
            out = original(st, size)
            tracker._resized(st)
            return out

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *args):  # type: ignore[no-untyped-def]
        torch.UntypedStorage.resize_ = self._orig_resize  # type: ignore[method-assign]
        return super().__exit__(*args)

    # -- phases ------------------------------------------------------------------------------------------
    def begin(self, phase: str, step: int, default_tag: str) -> PhaseRecord:
        if self._dirty:
            self._settle()
        self.end()
        r = PhaseRecord(phase, step, self.current, dict(self.cats), self.host_current, dict(self.host_cats))
        self.records.append(r)
        self._open = r
        self.default_tag = default_tag
        return r

    def end(self) -> None:
        if self._open is not None:
            self._settle()
            self._open.end_bytes = self.current
            self._open.end_categories = dict(self.cats)
            self._open = None
        self.default_tag = "activations"

    def snapshot(self, phase: str, step: int) -> PhaseRecord:
        """A phase that is a moment (``after_load``): the bytes live now."""
        r = self.begin(phase, step, self.default_tag)
        self.end()
        return r

    # -- dispatch ----------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(getattr(t, "__name__", "") == "DTensor" for t in types):
            return NotImplemented  # let DTensor run its local ops, which come back through this mode
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        self.ops += 1
        if self.record_ops:
            self._op = func.__name__
        tag = None
        if func in _CAST_OPS and isinstance(args[0], torch.Tensor) and self.tag_of(args[0]) in _WEIGHT_TAGS:
            tag = "autocast_copy" if self.default_tag == "activations" else None
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                key = id(t.untyped_storage())
                if key in self._live:
                    continue
                this = tag
                if (this is None and self.default_tag == "activations" and self.vocab_size
                        and t.dim() >= 1 and t.shape[-1] == self.vocab_size):
                    this = "logits_loss"
                self.track(t, this)
        return out
