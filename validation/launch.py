"""Multi-GPU and multi-node validation: launch every rank with torchrun or the deepspeed launcher.

Each rank runs :mod:`validation.worker`, which builds the same model, wraps it as the plan says (DeepSpeed
ZeRO through ``deepspeed.initialize`` with the generated DeepSpeed JSON, FSDP2 ``fully_shard``, or DDP),
runs :func:`validation.runner.run_one` and writes its own record to ``DIR/runs/<run>/rank<R>.json``. The
parent appends every rank's record to ``measurements.jsonl`` (the report compares the largest rank).

Launcher choice: ``deepspeed --num_gpus G --module validation.worker`` for one-node DeepSpeed plans (ZeRO or
the ``deepspeed-bf16`` recipe) on CUDA; ``torchrun --nproc_per_node G -m validation.worker`` otherwise, and for
every multi-node plan (``--nnodes N --node_rank $NODE_RANK --master_addr $MASTER_ADDR --master_port
$MASTER_PORT``; run the same command on every node). On the CPU (tests) torchrun starts one gloo process per
rank.

The DeepSpeed config comes from :mod:`planner.emit` when it provides one for the setup, else from
:func:`validation.build.fallback_deepspeed_config` (stated in the record).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from validation.build import LR, fallback_deepspeed_config, uses_deepspeed
from planner.fileio import atomic_write_text
from validation.measurement import Measurement
from validation.spec import RunSpec, SpecError

MULTI_NODE_ENV = ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_PORT = "29512"


def deepspeed_config(spec: RunSpec) -> tuple[dict[str, Any], str]:
    """(DeepSpeed JSON for the plan, where it came from): ``planner.emit.deepspeed.deepspeed_config`` in its
    explicit flavour (what ``plan configs`` writes as ds_config.json), else the fallback."""
    from planner.emit.common import Target
    from planner.emit.deepspeed import deepspeed_config as emit_config
    from planner.engine.evaluate import evaluate

    m, c, s = spec.model, spec.cluster, spec.setup
    try:
        plan = evaluate(m, c, s).model_copy(update={"rank": 1})
        cfg = emit_config(Target(plan, m, c), "explicit")
    except ValueError as e:  # NotExpressible and friends: say why, run with the fallback
        return fallback_deepspeed_config(spec), f"validation.build.fallback_deepspeed_config (emit: {e})"
    cfg = _resolve_auto(cfg, spec)
    if "optimizer" not in cfg and s.optimizer == "adamw":
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": LR}}
    if spec.device == "cpu" or os.environ.get("TUNEPLAN_DS_TORCH_ADAM") == "1":
        opt = cfg.get("optimizer")
        if isinstance(opt, dict) and opt.get("type") == "AdamW" and s.offload == "none":
            opt.setdefault("params", {})["torch_adam"] = True  # no FusedAdam CUDA build on the CPU
    return cfg, "planner.emit.deepspeed.deepspeed_config (explicit)"


def _resolve_auto(cfg: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    from planner.emit.common import ADAM_BETAS, ADAM_EPS, MAX_GRAD_NORM, WEIGHT_DECAY
    from planner.engine.memory import zero_bucket_elements

    s = spec.setup
    fills = {
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        "train_batch_size": s.micro_batch * s.grad_accum * spec.world_size,
        "gradient_clipping": MAX_GRAD_NORM,
        **zero_bucket_elements(spec.model),
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "betas": list(ADAM_BETAS),
        "eps": ADAM_EPS,
        "enabled": True,
    }

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: (fills.get(k, v) if v == "auto" else walk(v)) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    out = walk(cfg)
    out.pop("_comment", None)
    return out


def launcher_name(spec: RunSpec) -> str:
    if spec.device == "cuda" and uses_deepspeed(spec.setup) and spec.cluster.nodes == 1:
        return "deepspeed"
    return "torchrun"


def launch_command(spec: RunSpec, out_dir: Path, spec_path: Path, run_id: str = "RUN_ID",
                   env: dict[str, str] | None = None) -> list[str]:
    """The command line that starts every local rank of ``spec`` (placeholders for unset multi-node env)."""
    env = dict(os.environ if env is None else env)
    c = spec.cluster
    worker = ["--spec", str(spec_path), "--out", str(out_dir), "--run-id", run_id]
    if launcher_name(spec) == "deepspeed":
        port = env.get("MASTER_PORT", DEFAULT_PORT)
        return ["deepspeed", "--num_gpus", str(c.gpus_per_node), "--master_port", port, "--module",
                "validation.worker", *worker]
    torchrun = ["torchrun"] if shutil.which("torchrun") else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*torchrun, "--nproc_per_node", str(c.gpus_per_node)]
    if c.nodes > 1:
        cmd += ["--nnodes", str(c.nodes), "--node_rank", env.get("NODE_RANK", "$NODE_RANK"),
                "--master_addr", env.get("MASTER_ADDR", "$MASTER_ADDR"),
                "--master_port", env.get("MASTER_PORT", "$MASTER_PORT")]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "validation.worker", *worker]


def run_distributed(spec: RunSpec, out_dir: str | Path, quiet: bool = False,
                    timeout_s: float | None = None) -> list[Measurement]:
    """Launch every local rank, wait (at most ``timeout_s``, default ``TUNEPLAN_LAUNCH_TIMEOUT`` or 3600 s),
    and return their records (one per rank of this node)."""
    timeout_s = timeout_s or float(os.environ.get("TUNEPLAN_LAUNCH_TIMEOUT", "3600"))
    from validation.records import new_run_id, record_failure

    out = Path(out_dir)
    if spec.cluster.nodes > 1:
        missing = [k for k in MULTI_NODE_ENV if k not in os.environ]
        if missing:
            raise SpecError(
                f"{spec.label}: a {spec.cluster.nodes}-node plan runs the same command on every node; set "
                f"{', '.join(missing)} (and run plan validate on each node), or validate on one node first"
            )
    import torch

    if spec.device == "cuda" and torch.cuda.device_count() < spec.cluster.gpus_per_node:
        return [record_failure(spec, new_run_id(spec),
                               f"the plan needs {spec.cluster.gpus_per_node} GPUs per node, this machine has "
                               f"{torch.cuda.device_count()}", launcher_name(spec))]
    run_id = new_run_id(spec)
    run_dir = out / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    atomic_write_text(spec_path, spec.model_dump_json(indent=1))
    if uses_deepspeed(spec.setup):
        cfg, source = deepspeed_config(spec)
        atomic_write_text(run_dir / "deepspeed.json", json.dumps({"source": source, "config": cfg}, indent=1))
    cmd = launch_command(spec, out, spec_path, run_id)
    log = run_dir / "launch.log"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    with log.open("w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = f"timeout after {timeout_s:.0f} s"
        except BaseException:  # Ctrl-C: stop every rank, then let the interrupt through
            os.killpg(proc.pid, signal.SIGTERM)
            raise
    records = []
    for p in sorted(run_dir.glob("rank*.json")):
        records.append(Measurement.model_validate_json(p.read_text(encoding="utf-8")))
    if not records:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return [record_failure(spec, run_id, f"{cmd[0]} exited with code {code} and no rank reported: "
                               + " | ".join(tail)[-400:], launcher_name(spec))]
    return records
