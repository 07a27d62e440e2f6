"""Run training steps as the trainer would, phase by phase, under a :class:`StorageTracker`.

One step = ``micro_steps`` x (forward + loss, backward) + optimizer step, as the HF Trainer runs it:
forward and loss under ``torch.autocast`` (AMP recipes), the model output dropped before backward, gradient
clipping (``max_grad_norm`` 1.0, foreach), ``optimizer.step()``, ``zero_grad(set_to_none=True)``.

Model-state tensors are tagged for the tracker as soon as they exist: parameters before the first step,
a gradient when autograd has accumulated it (``register_post_accumulate_grad_hook``), an optimizer state when
the optimizer stores it (the optimizer's ``state`` dict tags on assignment), master weights when made.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from validation.trace.build import decoder_layers
from validation.trace.plan import TracePlan
from validation.trace.tracker import StorageTracker

IGNORE_INDEX = -100
CHUNKS = 8
"""torchtune ``CEWithChunkedOutputLoss.num_output_chunks`` default"""
LOSS_SCALE = 2.0**16
BNB_BLOCK = 256
"""bitsandbytes ``Optimizer8bit.init_state``: one fp32 absmax per 256 values (``blocks = n // 256``)"""
BNB_MIN_8BIT_SIZE = 4096
"""bitsandbytes ``min_8bit_size``: smaller tensors keep fp32 states"""
BNB_PAGED_MIN_NUMEL = 100_000
"""bitsandbytes ``get_state_buffer``: only tensors of >= 1e5 elements get paged (unified-memory) states"""

Progress = Callable[[str], None]


class _TaggingState(dict):
    """One parameter's optimizer state: tensors stored here are tagged as optimizer states at once."""

    tracker: StorageTracker | None = None

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, torch.Tensor) and self.tracker is not None:
            self.tracker.track(value, "optimizer_states")
        super().__setitem__(key, value)


def _tagging_state(tracker: StorageTracker) -> defaultdict:
    cls = type("_BoundTaggingState", (_TaggingState,), {"tracker": tracker})
    return defaultdict(cls)


class Emulated8bitAdamW(torch.optim.Optimizer):
    """Allocates what bitsandbytes' AdamW allocates (``Optimizer2State.init_state``, 0.49.2): 8-bit: uint8 m and
    v, two fp32 absmax vectors of ``ceil(n / 256)``, fp32 m and v under 4096 values; 32-bit: fp32 m and v. Paged
    variants put m and v of tensors with >= 1e5 elements in unified memory (``get_state_buffer``): ``on_paged`` is
    called with each such state (the trace tags it as host memory). The update itself is one fused CUDA kernel
    with no temporaries, emulated as an in-place no-op."""

    def __init__(self, params: Any, eight_bit: bool = True, paged: bool = False,
                 on_paged: Callable[[torch.Tensor], None] | None = None) -> None:
        super().__init__(params, {})
        self.eight_bit, self.paged, self.on_paged = eight_bit, paged, on_paged

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    n = p.numel()
                    state["step"] = 0
                    if self.eight_bit and n >= BNB_MIN_8BIT_SIZE:
                        blocks = -(-n // BNB_BLOCK)
                        state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                        state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                        state["absmax1"] = torch.zeros((blocks,), dtype=torch.float32)
                        state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32)
                    else:
                        state["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        state["state2"] = torch.zeros_like(p, dtype=torch.float32)
                    if self.paged and n >= BNB_PAGED_MIN_NUMEL and self.on_paged is not None:
                        self.on_paged(state["state1"])
                        self.on_paged(state["state2"])
                state["step"] += 1


def make_optimizer(params: list[nn.Parameter], plan: TracePlan,
                   tracker: StorageTracker | None = None) -> torch.optim.Optimizer:
    """The optimizer the trainer would build for ``plan`` (HF Trainer ``optim`` names in comments)."""
    if plan.bnb_states:
        on_paged = (lambda t: tracker.track(t, "paged_optimizer")) if tracker is not None else None
        return Emulated8bitAdamW(params, eight_bit=plan.eight_bit_states, paged=plan.paged_states, on_paged=on_paged)
    if plan.optimizer == "adamw":  # adamw_torch_fused (HF default), or the implementation asked for
        kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[plan.adam_impl]
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, **kw)
    if plan.optimizer == "sgd":  # "sgd": torch.optim.SGD, foreach as torch picks on CUDA
        return torch.optim.SGD(params, lr=1e-3, foreach=True)
    if plan.optimizer == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)
    if plan.optimizer == "adafactor":  # "adafactor": transformers.optimization.Adafactor as the Trainer builds it
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {plan.optimizer!r}")


class StepRunner:
    """Holds the model, the optimizer and the tracker; :meth:`run` traces ``steps`` training steps."""

    def __init__(self, net: nn.Module, plan: TracePlan, setup: Any, tracker: StorageTracker,
                 final_logit_softcap: float | None = None, progress: Progress | None = None) -> None:
        self.net = net
        self.plan = plan
        self.setup = setup
        self.tracker = tracker
        self.softcap = final_logit_softcap
        self.progress = progress or (lambda label: None)
        self.autocast = getattr(torch, plan.autocast_dtype) if plan.autocast_dtype else None
        self.params = [p for p in net.parameters() if p.requires_grad]
        for p in net.parameters():
            tracker.track(p, "weights_trainable" if p.requires_grad else "weights_frozen")
        for b in net.buffers():
            tracker.track(b, "buffers")
        self.masters: dict[nn.Parameter, nn.Parameter] = {}
        if plan.deepspeed:
            for p in self.params:
                m = nn.Parameter(p.detach().float())
                tracker.track(m, "master_weights")
                self.masters[p] = m
                if plan.ds_persistent_fp32_grads:  # BF16_Optimizer.fp32_groups_gradients_flat, made at init
                    m.grad = torch.zeros_like(m)
                    tracker.track(m.grad, "grad_fp32")
        self.grad_partition: dict[nn.Parameter, torch.Tensor] = {}
        if plan.ds_grad_partition:  # stage3.py: grad_partitions_flat_buffer, allocated with the optimizer
            flat = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype)
            tracker.track(flat, "ds_grad_partition")
            offset = 0
            for p in self.params:
                self.grad_partition[p] = flat.narrow(0, offset, p.numel()).view_as(p)
                offset += p.numel()
        opt_params = list(self.masters.values()) if plan.deepspeed else self.params
        self.in_backward: dict[nn.Parameter, torch.optim.Optimizer] = {}
        if plan.optimizer_in_backward:
            for p in opt_params:
                o = make_optimizer([p], plan, tracker)
                o.state = _tagging_state(tracker)
                self.in_backward[p] = o
            self.optimizer = None
        else:
            self.optimizer = make_optimizer(opt_params, plan, tracker)
            self.optimizer.state = _tagging_state(tracker)
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._grad_ready)
        self._layer_hooks()

    # -- hooks -------------------------------------------------------------------------------------------
    def _grad_ready(self, p: nn.Parameter) -> None:
        self.tracker.track(p.grad, "gradients")
        if self.grad_partition:  # ZeRO-3: reduce into the partition buffer, free the full gradient
            self.grad_partition[p].add_(p.grad)
            p.grad = None
            return
        if self.in_backward:  # torchtune optimizer-in-backward: step and free each gradient as it lands
            opt = self.in_backward[p]
            opt.step()
            opt.zero_grad(set_to_none=True)
            p.grad = None

    def _layer_hooks(self) -> None:
        layers = decoder_layers(self.net)
        self.n_layers = len(layers)

        def fwd_hook(mod: nn.Module, args: Any, out: Any) -> None:
            if self.tracker.default_tag == "activations" and self._phase == "forward":
                self.progress("forward")
                t = out[0] if isinstance(out, tuple) else out
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    t.register_hook(lambda g: self.progress("backward"))

        for layer in layers:
            layer.register_forward_hook(fwd_hook)

    # -- one step ----------------------------------------------------------------------------------------
    _phase = "idle"

    @contextlib.contextmanager
    def _phase_of(self, name: str, step: int, tag: str) -> Iterator[None]:
        self._phase = name
        self.tracker.begin(name, step, tag)
        try:
            yield
        finally:
            self.tracker.end()
            self._phase = "idle"

    def _loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.plan.loss == "plain":  # what HF does: model(labels=...) upcasts the logits to fp32
            out = self.net(input_ids=ids, labels=labels, use_cache=False)
            loss = out.loss
            del out
            return loss
        # torchtune CEWithChunkedOutputLoss: logits per chunk of the sequence, fp32 upcast per chunk
        causal_lm = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        hidden = causal_lm.model(input_ids=ids, use_cache=False).last_hidden_state
        head = causal_lm.get_output_embeddings()
        shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
        total = None
        logit_chunks = [head(h) for h in hidden.chunk(CHUNKS, dim=1)]
        for logits, lab in zip(logit_chunks, shifted.chunk(CHUNKS, dim=1)):
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            part = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
            total = part if total is None else total + part
        return total / labels.numel()

    def _optimizer_step(self) -> None:
        plan = self.plan
        grads = [p.grad for p in self.params if p.grad is not None]
        if plan.deepspeed:  # the 16-bit gradients into the fp32 ones
            for p, m in self.masters.items():
                if p in self.grad_partition:  # ZeRO-3: the fp32 gradient comes from the 16-bit partition
                    m.grad = self.grad_partition[p].float()
                    self.tracker.track(m.grad, "grad_fp32")
                    continue
                if p.grad is None:
                    continue
                if plan.ds_persistent_fp32_grads:  # BF16_Optimizer.update_hp_grads: hp.add_(lp.grad.float())
                    m.grad.add_(p.grad.float())
                else:  # stage_1_and_2 step(): the fp32 partition is built here
                    m.grad = p.grad.float()
                    self.tracker.track(m.grad, "grad_fp32")
            grads = [m.grad for m in self.masters.values() if m.grad is not None]
        if plan.loss_scale and grads:
            torch._foreach_mul_(grads, 1.0 / LOSS_SCALE)
        if grads:
            torch.nn.utils.clip_grad_norm_(
                list(self.masters.values()) if plan.deepspeed else self.params, 1.0, foreach=True)
        if self.optimizer is not None:
            self.optimizer.step()
            if not plan.deepspeed:
                self.optimizer.zero_grad(set_to_none=True)
        if plan.deepspeed:
            with torch.no_grad():
                for p, m in self.masters.items():
                    p.detach().copy_(m)  # 16-bit weights updated from the master, in place
                    if p in self.grad_partition:
                        self.grad_partition[p].zero_()
                    if plan.ds_persistent_fp32_grads:
                        m.grad.zero_()
                    else:
                        m.grad = None
        for p in self.params:
            p.grad = None

    def run(self, steps: int, batch: int, seq: int, vocab: int) -> None:
        tr = self.tracker
        for step in range(1, steps + 1):
            tr.snapshot("after_load", step)
            for _ in range(self.plan.micro_steps):
                with self._phase_of("forward", step, "activations"):
                    ids = torch.randint(0, vocab, (batch, seq))
                    labels = ids.clone()
                    ctx = (torch.autocast("cpu", dtype=self.autocast) if self.autocast is not None
                           else contextlib.nullcontext())
                    with ctx:
                        loss = self._loss(ids, labels)
                    if self.plan.loss_scale:
                        loss = loss * LOSS_SCALE
                    del ids, labels
                self.progress("loss")
                with self._phase_of("backward", step, "activations"):
                    loss.backward()
                    del loss
            with self._phase_of("optimizer", step, "optimizer_temp"):
                self._optimizer_step()
            self.progress("optimizer")


def progress_total(steps: int, micro_steps: int, layers: int) -> int:
    """How many progress ticks :meth:`StepRunner.run` makes (forward and backward per layer, loss, step)."""
    return steps * (micro_steps * (2 * layers + 1) + 1)
