"""One rank of a multi-GPU validation run (started by torchrun or the deepspeed launcher, see
:mod:`validation.launch`): ``python -m validation.worker --spec SPEC.json --out DIR --run-id ID``.

Reads the :class:`~validation.spec.RunSpec`, joins the process group (NCCL on CUDA, gloo on the CPU), runs
:func:`validation.runner.run_one` as this rank and writes the record to ``DIR/runs/ID/rank<R>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

TIMEOUT_ENV = "TUNEPLAN_DIST_TIMEOUT"
"""Seconds a rank waits in a collective before giving up (default 600)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation.worker")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher passes it
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    from validation.build import uses_deepspeed
    from validation.launch import deepspeed_config, launcher_name
    from planner.fileio import atomic_write_text
    from validation.runner import run_one
    from validation.spec import RunSpec

    spec = RunSpec.model_validate_json(Path(args.spec).read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", args.local_rank or 0))
    if spec.device == "cuda":
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    backend = "nccl" if spec.device == "cuda" else "gloo"
    ds_cfg = None
    if uses_deepspeed(spec.setup):
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        ds_cfg, _ = deepspeed_config(spec)
    elif not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    m = run_one(spec, args.out, rank=rank, launcher=launcher_name(spec), ds_config=ds_cfg, run_id=args.run_id)
    path = Path(args.out) / "runs" / args.run_id / f"rank{rank}.json"
    atomic_write_text(path, json.dumps(m.model_dump(mode="json")))
    if m.status != "ok":
        # the other ranks may wait in a collective for this one: leave at once, they fail with a clear error
        os._exit(0)
    if dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # another rank failed: its record says why
            pass
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
