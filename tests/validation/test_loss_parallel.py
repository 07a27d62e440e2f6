"""Eq. T1b (``planner.engine.memory.loss_parallel_logits_bytes``) against torch's own loss-parallel cross-entropy.

Independent truth: torch's ``loss_parallel()`` decomposition (``torch/distributed/tensor/parallel/loss.py``) run on
real CPU tensors of a vocabulary-sharded DTensor over a fake process group, its live storage bytes counted by the
trace's :class:`~validation.trace.tracker.StorageTracker` (what ``torch.cuda.memory_allocated`` counts on a GPU).
torchtitan's step, as train.py runs it: ``loss = cross_entropy(pred.float(), labels)``, ``del pred``,
``loss.backward()``."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from planner.engine.memory import LogitsBytes, loss_parallel_logits_bytes  # noqa: E402


def _traced(tokens: int, vocab: int, tp: int) -> tuple[int, int, int]:
    """(forward peak, bytes left after forward, backward peak) of the loss on one TP rank's shard, logits and
    everything the loss makes, the incoming bf16 logits counted as the engine counts them (eq. L1: ``c`` per logit)."""
    import torch.nn.functional as F
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import loss_parallel

    from validation.trace.fsdp import fake_process_group
    from validation.trace.tracker import StorageTracker

    local = vocab // tp
    with fake_process_group(1) as mesh:
        leaf = torch.randn(tokens, local, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(0, vocab, (tokens,))
        tracker = StorageTracker({}, {}, vocab_size=None)
        with tracker:
            tracker.begin("forward", 1, "activations")
            pred = DTensor.from_local(leaf * 1, mesh, [Shard(1)])  # the LM head's bf16 output, made in forward
            with loss_parallel():
                loss = F.cross_entropy(pred.float(), labels)
                del pred
                tracker.begin("backward", 1, "activations")
                after_forward = tracker.current
                loss.backward()
            tracker.end()
    fwd, bwd = tracker.records
    return fwd.peak_bytes, after_forward, bwd.peak_bytes


@pytest.mark.parametrize("tokens,vocab", [(256, 4096), (512, 2048)])
def test_loss_parallel_bytes_match_torchs_decomposition(tokens: int, vocab: int):
    fwd, after, bwd = _traced(tokens, vocab, 1)
    eq = loss_parallel_logits_bytes(vocab, 2, tokens, 1)
    logits = tokens * vocab
    # forward: bf16 logits + fp32 copy + shifted + exp / result = 14 B per logit (eq. L1's plain loss: 10)
    assert fwd == pytest.approx(eq.forward_peak, rel=0.02)
    # what stays for backward once the logits are dropped: the saved fp32 result, 4 B per logit
    assert after == pytest.approx(eq.saved, rel=0.02)
    # backward: saved result + zeros_like + exp + sum = 16 B (traced: 14.00 / 4.00 / 16.01 B per logit)
    assert bwd == pytest.approx(eq.backward_peak, rel=0.02)
    assert eq.forward_peak == 14 * logits and eq.backward_peak == 16 * logits


def test_loss_parallel_divides_by_tp_and_exceeds_the_plain_loss():
    lp = loss_parallel_logits_bytes(128256, 2, 8192, 8)
    one = loss_parallel_logits_bytes(128256, 2, 8192, 1)
    assert lp.forward_peak * 8 == pytest.approx(one.forward_peak, rel=1e-4)
    assert isinstance(lp, LogitsBytes)
    # against eq. L1 on the same shard (10 / 4 / 12 B per logit): 4 B more in forward and backward
    local = 8192 * 16032
    assert lp.forward_peak - local * 10 == 4 * local and lp.backward_peak - local * 12 == 4 * local
