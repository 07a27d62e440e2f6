"""Host time of one FSDP1 unit per forward + backward, measured: the prior of eq. S26b (docs/speed.md).

    python benchmarks/evidence_scripts/fsdp1_unit_overhead.py [--blocks 64] [--repeats 3] [--out FILE]

Why it matters. Under FSDP1 (``FullyShardedDataParallel``) every unit runs Python hooks each micro-step (pre-forward
unshard, post-forward reshard, the same again for a checkpointed block's recompute, pre-backward unshard,
post-backward gradient reduction), each with a collective. transformers' Trainer gives a PEFT model peft's
``fsdp_auto_wrap_policy`` (transformers 4.44 ``Trainer._fsdp_qlora_plugin_updates``; peft 0.12
``utils/other.py``), which makes every trainable leaf, each LoRA A and B matrix, a unit of its own; torchtune 0.1's
``lora_fsdp_wrap_policy`` and Answer.AI's fsdp_qlora do the same. Mistral-7B with adapters on q, k, v, o then has
256 adapter units beside its 32 blocks, and fms-acceleration's OrcaMath runs on 2 A100s lose about 0.8 s per
micro-step to them, whatever the batch (docs/speed.md S26b cites the CSV).

What it measures. A toy model of ``--blocks`` blocks, each a frozen 64 x 64 linear and a LoRA pair (64 -> 4 -> 64)
so that the arithmetic is negligible, under FSDP1 FULL_SHARD with ``use_orig_params=True`` on this machine's CPU
(gloo, one rank: FSDP then shards nothing and its collectives are local, so this is the hooks' Python cost, a lower
bound for a GPU run, whose unshards also launch NCCL collectives and may wait on the rate limiter). Two wrappings:
peft's (each trainable leaf its own unit, and each block) and the one fms-acceleration's fused-kernel plugin
switches to (adapters ignored by FSDP, blocks wrapped). Each runs in a fresh interpreter, 3 warm-up iterations,
then the mean of 10; the difference divided by the extra units is the host time per unit per forward + backward.
The result (JSON, written atomically) goes to ``--out`` (default benchmarks/results/fsdp1_unit_overhead.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from childrun import out_refusal, run_json_child  # noqa: E402
from profiles.atomic import write_atomic  # noqa: E402


def child(mode: str, blocks: int) -> dict:
    """One wrapping, timed in this interpreter (through :func:`run_child`)."""
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29600 + (mode == "wrap"))), ("RANK", "0"),
                 ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(k, v)
    import functools

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    torch.set_num_threads(1)

    class Lora(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.A = nn.Linear(64, 4, bias=False)
            self.B = nn.Linear(4, 64, bias=False)

        def forward(self, x):  # noqa: ANN001, ANN202
            return x + self.B(self.A(x))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = nn.Linear(64, 64)
            self.base.requires_grad_(False)
            self.lora = Lora()

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.lora(self.base(x))

    model = nn.Sequential(*[Block() for _ in range(blocks)])
    kw = dict(device_id=torch.device("cpu"), use_orig_params=True, sharding_strategy=ShardingStrategy.FULL_SHARD)
    if mode == "wrap":  # peft's fsdp_auto_wrap_policy: every trainable leaf, and every block
        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: isinstance(m, Block) or (
            not list(m.children()) and getattr(m, "weight", None) is not None and m.weight.requires_grad))
        fsdp = FSDP(model, auto_wrap_policy=policy, **kw)
    else:  # the adapters outside FSDP, blocks wrapped
        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: isinstance(m, Block))
        fsdp = FSDP(model, auto_wrap_policy=policy, ignored_modules=[b.lora for b in model], **kw)
    x = torch.randn(8, 64)
    times = []
    for it in range(13):
        t = time.perf_counter()
        fsdp(x.requires_grad_()).sum().backward()
        if it >= 3:
            times.append(time.perf_counter() - t)
    units = len(FSDP.fsdp_modules(fsdp))
    dist.destroy_process_group()
    return {"mode": mode, "blocks": blocks, "units": units, "mean_s": statistics.fmean(times),
            "torch": torch.__version__}


def run_child(mode: str, blocks: int) -> dict:
    return run_json_child(__file__, [mode, str(blocks)], f"FSDP1 {mode} at {blocks} blocks")


def per_unit_s(runs: list[dict]) -> float:
    """Host seconds per extra FSDP unit per forward + backward: the median time difference over the median unit
    difference between the two wrappings."""
    wrap = [r for r in runs if r["mode"] == "wrap"]
    ign = [r for r in runs if r["mode"] == "ignore"]
    dt = statistics.median(r["mean_s"] for r in wrap) - statistics.median(r["mean_s"] for r in ign)
    du = statistics.median(r["units"] for r in wrap) - statistics.median(r["units"] for r in ign)
    return dt / du


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=64, help="blocks of the toy model (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh runs of each wrapping (default 3)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fsdp1_unit_overhead.json")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "BLOCKS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    if args.blocks < 1 or args.repeats < 1:
        ap.error(f"--blocks {args.blocks} and --repeats {args.repeats} must both be at least 1")
    why = out_refusal(args.out)
    if why:
        ap.error(why)
    try:
        runs = [run_child(mode, args.blocks) for _ in range(args.repeats) for mode in ("wrap", "ignore")]
    except RuntimeError as e:  # a child failed: one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 1
    doc = {"measured": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
           f"{platform.python_version()}", "torch": runs[0]["torch"], "per_unit_s": per_unit_s(runs), "runs": runs}
    write_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"FSDP1 host time per unit per forward + backward: {doc['per_unit_s'] * 1e3:.2f} ms "
          f"({runs[0]['units']} against {runs[1]['units']} units); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
