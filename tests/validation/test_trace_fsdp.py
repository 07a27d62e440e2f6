"""The trace runs real FSDP2: the same bytes as real ranks, and what accelerate's mixed precision really keeps.

Independent truth: the very same training steps run on two gloo ranks with real CPU tensors (torch.multiprocessing),
counted by the storage tracker and by the CPU allocator's own events under torch.profiler, give the bytes of the
fake-process-group trace.
"""

from __future__ import annotations

import collections
import os
import socket

import pytest

from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from validation.trace.runner import run_trace  # noqa: E402

GiB = 2**30


def tiny(**kw):
    """Llama shape, small enough for real CPU ranks (2 blocks, width 256, vocabulary 4096)."""
    upd = dict(hidden_size=256, intermediate_size=768, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
               vocab_size=4096, tie_embeddings=False)
    upd.update(kw)
    return get_model("llama-3.2-1b").model_copy(update=upd)


def amp_fsdp(**kw) -> Setup:
    return Setup(**{"method": "full", "recipe": "hf-amp", "fsdp": "full-shard", "seq_len": 128, "micro_batch": 2,
                    **kw})


def records(result):
    return [(r.step, r.phase, r.peak_bytes, r.end_bytes) for r in result.records]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_thread_gloo(store, rank: int, size: int, timeout):  # type: ignore[no-untyped-def]
    """Gloo with one worker thread. Gloo's worker keeps a finished collective (and so its input tensors) alive
    until it relocks its queue, after the waiter has woken (ProcessGroupGloo::runLoop: ``execute(work)``, then
    ``lock.lock(); workInProgress_[i].reset()``). With two workers (the default) a phase could close while the
    other worker still held the last reduce-scatter's input: CI once saw the embedding's 2 MiB bf16 gradient
    bucket alive at the end of backward. With one worker, a barrier runs after every earlier collective let go."""
    from torch.distributed import ProcessGroupGloo

    opts = ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [ProcessGroupGloo.create_default_device()]
    opts._threads = 1
    return ProcessGroupGloo(store, rank, size, opts)


def _training_thread_peak(prof) -> int:  # type: ignore[no-untyped-def]
    """The CPU allocator's peak of the bytes the training step itself allocates, from torch.profiler's [memory]
    events (the chrome trace: the event API carries no address).

    Counted: allocations on the training thread outside any ``c10d::`` collective, each until its free, on whichever
    thread that runs (paired by address). Left out, as the tracker (a dispatch mode of the training thread, which
    sees a collective as one op) leaves them out, and as NCCL does on a GPU, whose buffers live outside torch's
    allocator: gloo's own transport buffers. Some its worker allocates under the caller's thread-local state (about
    30 allocations, 12 MB per step here); others the collective's enqueue allocates on the training thread, inside
    the op: ``c10d::_reduce_scatter_base_`` clones its input there (``aten::clone`` under it in the trace), and the
    clone lives until the worker is done with it, a time the scheduler decides. CI met one block's 1.5 MiB bf16
    clone (1,573,888 bytes) alive at the step's peak, above the tracker, and earlier 2 MiB, the embedding's size;
    locally, with both cores loaded, 2 ranks in 24 showed one. FSDP2's own all-gather outputs and
    reduce-scatter inputs are allocated before the collective, in Python, and counted."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)["traceEvents"]
    events = sorted((e for e in trace if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    main = collections.Counter(e["tid"] for e in events).most_common(1)[0][0]
    collectives = [(e["ts"], e["ts"] + e["dur"]) for e in trace
                   if e.get("ph") == "X" and e.get("tid") == main and str(e.get("name", "")).startswith("c10d::")]

    def ours(e: dict) -> bool:
        return e["tid"] == main and not any(a <= e["ts"] <= b for a, b in collectives)

    live: dict[int, tuple[int, bool]] = {}
    current = peak = 0
    for e in events:
        addr, nbytes = e["args"]["Addr"], e["args"]["Bytes"]
        if nbytes > 0:
            live[addr] = (nbytes, ours(e))
            current += nbytes if live[addr][1] else 0
        else:
            size, counted = live.pop(addr, (0, False))  # a block allocated before the profiler started: not ours
            current -= size if counted else 0
        peak = max(peak, current)
    return peak


def _gloo_rank(rank: int, world: int, port: int, queue) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from validation.trace.tracker import StorageTracker

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.Backend.register_backend("gloo1", _one_thread_gloo, devices=["cpu"])
    dist.init_process_group("gloo1", rank=rank, world_size=world)
    end = StorageTracker.end

    def end_after_collectives_let_go(self) -> None:  # type: ignore[no-untyped-def]
        if self._open is not None:  # both ranks close the same phases in the same order
            dist.barrier()
        end(self)

    StorageTracker.end = end_after_collectives_let_go  # type: ignore[method-assign]  (this spawned rank only)
    try:
        cluster = parse_cluster(f"{world}xH100")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            one = run_trace(tiny(), cluster, amp_fsdp(), steps=1, fake=False)
        peak = _training_thread_peak(prof)
        two = run_trace(tiny(), cluster, amp_fsdp(), steps=2, fake=False)
        queue.put((rank, peak, one.estimate.peak_bytes, records(two)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fake_process_group_trace_equals_two_gloo_ranks():
    """Real FSDP2 on two gloo ranks (real tensors): every phase of both ranks equals the fake trace of rank 0 to
    within a few bytes (scalar bookkeeping tensors), and the CPU allocator's own count agrees with the tracker."""
    import torch.multiprocessing as mp

    world, port = 2, _free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gloo_rank, args=(r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict((r, rest) for r, *rest in (queue.get(timeout=600) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    fake = records(run_trace(tiny(), parse_cluster(f"{world}xH100"), amp_fsdp(), steps=2))
    for rank in range(world):
        allocator_peak, tracker_peak, real = got[rank]
        assert abs(allocator_peak - tracker_peak) <= 256  # torch.profiler's [memory] events vs the tracker
        assert [r[:2] for r in real] == [r[:2] for r in fake]
        for (_, _, peak_r, end_r), (_, _, peak_f, end_f) in zip(real, fake):
            assert abs(peak_r - peak_f) <= 256 and abs(end_r - end_f) <= 256


def test_fsdp_mixed_precision_keeps_no_autocast_weight_copies():
    """accelerate's bf16 MixedPrecisionPolicy gathers bf16 weights: autocast finds nothing to cast (0 bytes of
    copies), while plain AMP (no FSDP) keeps a bf16 copy of every linear weight from forward to backward."""
    fsdp = run_trace(tiny(), parse_cluster("8xH100"), amp_fsdp())
    plain = run_trace(tiny(), parse_cluster("H100"), amp_fsdp(fsdp=None))
    at = {r.phase: r.categories for r in fsdp.records if r.step == 2}
    assert at["forward"]["temporaries"] == 0
    assert at["forward"]["comm_buffers"] > 0  # gathered bf16 groups and all-gather buffers, traced for real
    plain_fwd = [r.categories for r in plain.records if r.step == 2 and r.phase == "forward"][0]
    assert plain_fwd["temporaries"] > 0
    # the residual stream is bf16 under FSDP mixed precision, fp32 under plain AMP: fewer activation bytes
    assert at["forward"]["activations"] < plain_fwd["activations"]


def test_fsdp_parameters_are_one_ranks_fp32_shard():
    from profiles.params import param_counts

    m = tiny()
    r = run_trace(m, parse_cluster("8xH100"), amp_fsdp())
    first = [x for x in r.records if x.phase == "after_load"][0].categories
    # FSDP2 pads each parameter's dim 0 to a multiple of the world size: at most 7 rows of padding each
    assert 4 * param_counts(m).total / 8 <= first["weights_trainable"] <= 4 * param_counts(m).total / 8 * 1.02
    assert any("FSDP2 run for real" in a for a in r.estimate.assumptions)


def test_trace_leaves_no_process_group_behind():
    import torch.distributed as dist

    run_trace(tiny(), parse_cluster("2xH100"), amp_fsdp(fsdp="shard-grad-op"), steps=1)
    assert not dist.is_initialized()


def _groups(net) -> list[str]:  # noqa: ANN001
    from torch.distributed.fsdp import FSDPModule

    return [n for n, m in net.named_modules() if isinstance(m, FSDPModule)]


@pytest.mark.parametrize("tied", [False, True])
def test_torchtune_wrapping_is_shard_model_with_custom_sharded_layers(tied):
    """torchtune's shard_model (torchtune/training/_distributed.py): one group per ``layers.<i>``, the embedding and
    an untied LM head on their own (``custom_sharded_layers: ['tok_embeddings', 'output']``, what the emitter
    writes), the root last; a tied head stays in the root."""
    from validation.trace.build import build_model
    from validation.trace.fsdp import fake_process_group, lm_head_tied, torchtune_fsdp2
    from validation.trace.plan import plan_trace

    m = tiny(tie_embeddings=tied)
    setup = Setup(method="full", recipe="bf16", fsdp="full-shard", seq_len=64, framework="torchtune")
    with fake_process_group(4) as mesh:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            net = build_model(m, setup, plan_trace(m, parse_cluster("4xH100"), setup))
            assert lm_head_tied(net) is tied
            net = torchtune_fsdp2(net, setup, mesh)
        groups = _groups(net)
    layers = [g for g in groups if g.split(".")[-2:-1] == ["layers"]]
    assert len(layers) == m.num_layers and groups[0] == ""  # the root (named_modules lists it first)
    separate = {g.split(".")[-1] for g in groups if g and g not in layers}
    assert separate == (set() if tied else {"embed_tokens", "lm_head"})


def test_torchtune_head_is_resharded_before_the_loss():
    """Eq. C4d against the real FSDP2 run: at the loss, torchtune's LM head group (resharded after its forward) holds
    one tail's bytes fewer than accelerate's tail group (kept gathered until backward), and the engine says the
    same (the trace is the truth: tests compare the forward peaks' difference, which nothing else changes)."""
    from planner.engine.evaluate import evaluate

    m, cl = tiny(vocab_size=32768), parse_cluster("4xH100")
    base = dict(method="full", recipe="bf16", fsdp="full-shard", seq_len=128, micro_batch=1)
    peak = {}
    for fw in ("hf", "torchtune"):
        s = Setup(**base, framework=fw)
        r = run_trace(m, cl, s, steps=2)
        traced = max(x.peak_bytes for x in r.records if x.step == 2 and x.phase == "forward")
        peak[fw] = (traced, evaluate(m, cl, s).memory.phase_tensors["forward_peak"])
    head = 2 * (m.vocab_size + 1) * m.hidden_size  # accelerate's tail group: LM head + final norm, bf16
    assert peak["hf"][0] - peak["torchtune"][0] == head
    assert peak["hf"][1] - peak["torchtune"][1] == head


def test_torchtune_wrapping_refuses_a_model_without_layers():
    """torchtune's shard_model raises when no ``layers.<i>`` module matched; the trace says so in one line."""
    from validation.trace import NotTraceable
    from validation.trace.fsdp import fake_process_group, torchtune_fsdp2

    setup = Setup(method="full", recipe="bf16", fsdp="full-shard", seq_len=64, framework="torchtune")
    with fake_process_group(2) as mesh:
        with pytest.raises(NotTraceable, match="layers.<i>"):
            torchtune_fsdp2(torch.nn.Sequential(torch.nn.Linear(8, 8)), setup, mesh)
