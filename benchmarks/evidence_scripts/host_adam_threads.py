"""The host optimizer step's throughput against its threads, measured: the mechanism docs/speed.md S15 names for the
7-10x spread of ``B_host`` between the published ZeRO-Offload runs (one OpenMP thread per rank under ``torchrun``,
``accelerate launch`` and ``torch.distributed.launch``; every CPU under the ``deepspeed`` launcher), which no
published measurement isolates.

    python benchmarks/evidence_scripts/host_adam_threads.py [--params 64] [--steps 6] [--out FILE]

What it measures. One flat fp32 partition of ``--params`` million parameters with its gradient, as ZeRO-Offload keeps
a rank's share on the host, stepped by DeepSpeed's CPU Adam (``DeepSpeedCPUAdam``, AdamW mode, the kernel ZeRO-Offload
calls) and by torch's ``AdamW`` on CPU tensors (FSDP's ``CPUOffload``: torch's default, the per-tensor loop on the
CPU), each configuration in fresh interpreters:

* one process at 1, 2, ... threads up to this machine's CPUs (``OMP_NUM_THREADS`` and ``torch.set_num_threads``):
  what one rank gets from the ``deepspeed`` launcher (all CPUs) against ``torchrun`` (one);
* as many processes as CPUs, one thread each, stepping at once (a file barrier after the warm-up): ``torchrun``'s
  ranks sharing the host.

Each process: 2 warm-up steps, then the median of ``--steps`` timed steps. Throughput is given in the unit of S15:
parameters stepped per second x 30 B (fp32 parameter, gradient and two moments read, three written, and
DeepSpeed's bf16 copy: ``planner.engine.speed`` counts 30 B for AdamW), summed over the processes that step at once.
It is this machine's CPU only: a server's socket has more cores and memory channels, so the absolute figures do not
carry over; the ratio between one thread and all of them, and what one thread streams, is the evidence.

The result (JSON, written atomically) goes to ``--out`` (default benchmarks/results/host_adam_threads.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from planner.engine.setup import Setup  # noqa: E402
from planner.engine.speed.compute import optimizer_step_bytes_per_param  # noqa: E402
from profiles.atomic import write_atomic  # noqa: E402
from childrun import out_refusal  # noqa: E402

IMPLS = ("deepspeed-cpu-adam", "torch-adamw")
BYTES_PER_PARAM = optimizer_step_bytes_per_param(
    Setup(method="full", recipe="deepspeed-bf16", zero=3, offload="optimizer"), on_gpu=False)
"""S15's count, from the engine: AdamW with fp32 states on the host and DeepSpeed's bf16 copy (30 B)."""


def child(impl: str, params_m: int, steps: int, barrier: str | None, index: int, count: int) -> dict:
    """One process's timed steps (OMP_NUM_THREADS is set by the parent before this interpreter started)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    torch.manual_seed(index)
    n = params_m * 1_000_000
    p = torch.nn.Parameter(torch.randn(n) * 0.02)
    p.grad = torch.randn(n) * 1e-3
    if impl == "deepspeed-cpu-adam":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        opt = DeepSpeedCPUAdam([p], lr=1e-4, adamw_mode=True)
    else:
        opt = torch.optim.AdamW([p], lr=1e-4)
    for _ in range(2):
        opt.step()
    if barrier:  # every process of the group has warmed up before any is timed
        Path(barrier, f"ready-{index}").touch()
        while len(list(Path(barrier).glob("ready-*"))) < count:
            time.sleep(0.01)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "threads": threads, "torch_threads": torch.get_num_threads(), "params": n,
            "step_s": statistics.median(times), "steps_s": times}


def run_group(impl: str, procs: int, threads: int, params_m: int, steps: int) -> dict:
    """``procs`` processes of ``threads`` threads each, stepping at once; their summed throughput."""
    with tempfile.TemporaryDirectory() as barrier:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu"}
        running = [subprocess.Popen([sys.executable, __file__, "--child", impl, str(params_m), str(steps), barrier,
                                     str(i), str(procs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env) for i in range(procs)]
        outs = []
        for proc in running:
            out, err = proc.communicate(timeout=900)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = (err.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{impl} with {procs} x {threads} threads failed: {tail}")
            outs.append(json.loads(lines[-1]))
    params_per_s = sum(o["params"] / o["step_s"] for o in outs)
    return {"impl": impl, "processes": procs, "threads_per_process": threads,
            "step_s": [round(o["step_s"], 4) for o in outs],
            "params_per_s": round(params_per_s), "gb_per_s": round(params_per_s * BYTES_PER_PARAM / 1e9, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=int, default=64, help="millions of parameters per process (default 64)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per process (default 6)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "host_adam_threads.json")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        impl, params_m, steps, barrier, index, count = args.child
        print(json.dumps(child(impl, int(params_m), int(steps), barrier, int(index), int(count))))
        return 0
    if args.params < 1 or args.steps < 1:
        print(f"error: --params {args.params} and --steps {args.steps} must be at least 1", file=sys.stderr)
        return 2
    why = out_refusal(args.out)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        print("error: DeepSpeed is not importable (pip install deepspeed; its CPU Adam builds on first use)",
              file=sys.stderr)
        return 2
    cpus = os.cpu_count() or 1
    runs = []
    try:
        for impl in IMPLS:
            for threads in sorted({1, *range(2, cpus + 1, max(1, cpus // 4))} | {cpus}):
                runs.append(run_group(impl, 1, threads, args.params, args.steps))
                print(json.dumps(runs[-1]), flush=True)
            if cpus > 1:
                runs.append(run_group(impl, cpus, 1, args.params, args.steps))
                print(json.dumps(runs[-1]), flush=True)
    except RuntimeError as e:  # a child failed (e.g. CPU Adam did not build): one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 1
    import deepspeed
    import torch

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = {f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx"))}
                break
    except OSError:
        pass
    doc = {"measured": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.processor() or platform.machine()}, {cpus} CPUs, SIMD {' '.join(sorted(flags))}",
           "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                        "python": platform.python_version()},
           "params_per_process": args.params * 1_000_000, "timed_steps": args.steps,
           "bytes_per_param": BYTES_PER_PARAM, "runs": runs}
    write_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
