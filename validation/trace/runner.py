"""Trace one setup end to end: plan, build on fake tensors, run the steps under the tracker, summarise."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.engine.setup import Setup
from profiles.cluster import Cluster
from profiles.schema import ModelProfile
from validation.derive.config import quiet as _quiet
from validation.trace.build import build_model, real_run_semantics
from validation.trace.plan import AdamImpl, TracePlan, plan_trace
from validation.trace.result import TraceResult, build_estimate
from validation.trace.step import StepRunner, progress_total
from validation.trace.tracker import StorageTracker


def versions() -> dict[str, str]:
    import transformers

    out = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:  # peft is only needed for LoRA
        pass
    return out


@contextlib.contextmanager
def _host_offload(tracker: StorageTracker) -> Iterator[None]:
    """transformers' ``offload=True`` checkpointing wraps each checkpoint in ``save_on_cpu``; on a CPU trace that
    would be a device copy. Count the packed tensors in host RAM and the unpacked ones on the device."""
    import transformers.modeling_utils as mu

    def fake_save_on_cpu(pin_memory: bool = True, device_type: str = "cuda"):  # type: ignore[no-untyped-def]
        def pack(t: torch.Tensor) -> torch.Tensor:
            host = torch.empty_like(t)
            tracker.track(host, "offloaded_activations")
            return host

        def unpack(host: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(host)

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)

    original = getattr(mu, "save_on_cpu", None)
    mu.save_on_cpu = fake_save_on_cpu
    try:
        yield
    finally:
        if original is not None:
            mu.save_on_cpu = original


def run_trace(
    model: ModelProfile,
    cluster: Cluster,
    setup: Setup,
    steps: int = 2,
    adam_impl: AdamImpl = "fused",
    num_layers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    plan: TracePlan | None = None,
    fake: bool = True,
) -> TraceResult:
    """Trace ``setup``; ``fake=False`` runs the very same steps on real CPU tensors (the tests compare the
    two: they must agree byte for byte)."""
    plan = plan or plan_trace(model, cluster, setup, adam_impl)
    layers = num_layers or model.num_layers
    total = 1 + progress_total(steps, plan.micro_steps, layers)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(label, min(done, total), total)

    t0 = time.perf_counter()
    tracker = StorageTracker(plan.divisors, plan.host_divisors, vocab_size=model.vocab_size)
    with contextlib.ExitStack() as stack:
        mesh = None
        if plan.fsdp2:  # real FSDP2 on rank 0 of a fake process group (validation/trace/fsdp.py)
            from validation.trace.fsdp import fake_process_group, tag_fsdp_buffers

            mesh = stack.enter_context(fake_process_group(plan.world_size))
            stack.enter_context(tag_fsdp_buffers(tracker))
        stack.enter_context(_quiet())
        if fake:
            stack.enter_context(FakeTensorMode())
        stack.enter_context(real_run_semantics())
        stack.enter_context(_host_offload(tracker))
        net = build_model(model, setup, plan, num_layers=num_layers)
        if mesh is not None:
            from validation.trace.fsdp import shard_fsdp2

            net = shard_fsdp2(net, setup, mesh)
        tick("build")
        with tracker:
            runner = StepRunner(net, plan, setup, tracker, model.final_logit_softcap, progress=tick)
            runner.run(steps, setup.micro_batch, setup.seq_len, model.vocab_size)
        del runner, net
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress("done", total, total)
    vers = versions()
    if num_layers is not None and num_layers != model.num_layers:
        note = (f"traced with {num_layers} of {model.num_layers} layers (the full model is too slow or too large "
                f"to trace here); every number is for the truncated model")
        plan = _with_note(plan, note)
    est = build_estimate(model, cluster, setup, plan, tracker.records, vers)
    return TraceResult(estimate=est, records=tracker.records, plan=plan, seconds=seconds, ops=tracker.ops,
                       versions=vers, layers_traced=layers)


def _with_note(plan: TracePlan, note: str) -> TracePlan:
    from dataclasses import replace

    return replace(plan, assumptions=(note, *plan.assumptions))
