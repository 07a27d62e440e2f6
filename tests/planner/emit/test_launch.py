"""launch.sh: valid bash, `set -euo pipefail`, `plan validate` first, the multi-node variables when the cluster
has several nodes, and - run against stub commands on PATH - exactly the launcher commands PLAN.md promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from planner.emit import build_files, trainers_for
from planner.fileio import write_files
from tests.planner.emit.data.emit_cases import CASES, target

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")
STUBS = ("plan", "accelerate", "deepspeed", "llamafactory-cli", "tune")


def _bundle(case):
    t = target(case)
    return t, build_files(t, trainers_for(t, "all"))


@pytest.mark.parametrize("case", list(CASES))
def test_script_is_valid_bash_and_validates_first(case, tmp_path):
    _, b = _bundle(case)
    text = b.files["launch.sh"]
    p = tmp_path / "launch.sh"
    p.write_text(text)
    subprocess.run([BASH, "-n", str(p)], check=True)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "set -euo pipefail"
    assert lines[1] == 'cd "$(dirname "$0")"'
    assert "plan validate --plan plan.json" in lines[2]


def test_multi_node_variables_only_when_several_nodes():
    _, multi = _bundle("llama3-70b-full-zero3-offload-2x8xH100")
    _, single = _bundle("llama3-8b-full-zero3-8xA800")
    for var in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert f'{var}="${{{var}' in multi.files["launch.sh"]
        assert var not in single.files["launch.sh"]


def _stub_bin(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    for name in STUBS:
        s = bindir / name
        s.write_text(
            "#!/usr/bin/env bash\n"
            f'echo "$(basename "$0") $* | FORCE_TORCHRUN=${{FORCE_TORCHRUN:-}} NPROC_PER_NODE=${{NPROC_PER_NODE:-}} '
            f'NNODES=${{NNODES:-}} NODE_RANK=${{NODE_RANK:-}} OMP_NUM_THREADS=${{OMP_NUM_THREADS:-}}" >> {log}\n'
        )
        s.chmod(0o755)
    return bindir, log


def _run(tmp_path, case, mode, env_extra=None):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh folder per run
    t, b = _bundle(case)
    out = tmp_path / "run"
    write_files(b.files, out)
    bindir, log = _stub_bin(tmp_path)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "TRAIN_SCRIPT": "train.py", "HOME": str(tmp_path)}
    env.update(env_extra or {})
    r = subprocess.run([BASH, str(out / "launch.sh"), *([mode] if mode else [])], env=env, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, calls


def test_single_node_hf_deepspeed_runs_validate_then_accelerate(tmp_path):
    r, calls = _run(tmp_path, "llama3-8b-full-zero3-8xA800", None)
    assert r.returncode == 0, r.stderr
    assert calls[0].startswith("plan validate --plan plan.json")
    assert calls[1].startswith("accelerate launch --config_file accelerate_config.yaml train.py training_args.yaml")


def test_skip_validate_and_the_deepspeed_launcher(tmp_path):
    r, calls = _run(tmp_path, "llama3-8b-full-zero3-8xA800", "deepspeed", {"SKIP_VALIDATE": "1"})
    assert r.returncode == 0, r.stderr
    assert calls == ["deepspeed --num_gpus 8 train.py --deepspeed_config ds_config.json | FORCE_TORCHRUN= "
                     "NPROC_PER_NODE= NNODES= NODE_RANK= OMP_NUM_THREADS="]


def test_llamafactory_single_node(tmp_path):
    r, calls = _run(tmp_path, "llama3-8b-full-zero3-8xA800", "llamafactory", {"SKIP_VALIDATE": "1"})
    assert r.returncode == 0, r.stderr
    assert calls == ["llamafactory-cli train llamafactory.yaml | FORCE_TORCHRUN=1 NPROC_PER_NODE=8 NNODES= NODE_RANK= OMP_NUM_THREADS="]


def test_multi_node_needs_node_rank_and_master(tmp_path):
    r, calls = _run(tmp_path, "llama3-70b-full-zero3-offload-2x8xH100", "llamafactory", {"SKIP_VALIDATE": "1"})
    assert r.returncode != 0 and "NODE_RANK" in r.stderr and calls == []
    env = {"SKIP_VALIDATE": "1", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}
    r, calls = _run(tmp_path, "llama3-70b-full-zero3-offload-2x8xH100", "llamafactory", env)
    assert r.returncode == 0, r.stderr
    threads = max(1, len(os.sched_getaffinity(0)) // 8)  # what `nproc` prints: the CPUs this process may use
    assert calls == ["llamafactory-cli train llamafactory.yaml | FORCE_TORCHRUN=1 NPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 "
                     f"OMP_NUM_THREADS={threads}"]


@pytest.mark.parametrize("mode", ["hf", "deepspeed", "llamafactory"])
def test_a_cpu_optimizer_gets_the_nodes_cpus_not_one_thread_per_rank(tmp_path, mode):
    """torchrun and accelerate launch set OMP_NUM_THREADS=1 per rank when it is unset, which would run DeepSpeed's
    OpenMP CPU Adam on one core per rank: an offload plan's launch.sh exports CPUs // GPUs per node (at least 1), and a
    value the user set wins; a plan that keeps its optimizer on the GPU leaves the variable alone."""
    env = {"SKIP_VALIDATE": "1", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"}
    threads = max(1, len(os.sched_getaffinity(0)) // 8)
    r, calls = _run(tmp_path, "llama3-70b-full-zero3-offload-2x8xH100", mode, env)
    assert r.returncode == 0, r.stderr
    assert calls[0].endswith(f"OMP_NUM_THREADS={threads}")
    r, calls = _run(tmp_path, "llama3-70b-full-zero3-offload-2x8xH100", mode, {**env, "OMP_NUM_THREADS": "13"})
    assert r.returncode == 0, r.stderr
    assert calls[0].endswith("OMP_NUM_THREADS=13")
    r, calls = _run(tmp_path, "llama3-8b-full-zero3-8xA800", mode, {"SKIP_VALIDATE": "1"})
    assert r.returncode == 0, r.stderr
    assert calls[0].endswith("OMP_NUM_THREADS=")


def test_multi_node_accelerate_and_wrong_node_count(tmp_path):
    env = {"SKIP_VALIDATE": "1", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"}
    r, calls = _run(tmp_path, "llama3-70b-full-zero3-offload-2x8xH100", "hf", env)
    assert r.returncode == 0, r.stderr
    assert calls[0].startswith("accelerate launch --config_file accelerate_config.yaml --num_machines 2 --machine_rank 0 "
                               "--main_process_ip 10.0.0.1 --main_process_port 29500 train.py training_args.yaml")
    r, calls = _run(tmp_path, "llama3-70b-full-zero3-offload-2x8xH100", "hf", {**env, "NNODES": "3"})
    assert r.returncode == 2 and "the plan is for 2 nodes" in r.stderr and calls == []


def test_torchtune_and_unknown_mode(tmp_path):
    r, calls = _run(tmp_path, "llama3.1-8b-lora-fsdp-4xA800", "torchtune", {"SKIP_VALIDATE": "1", "MODEL_DIR": "/w/llama"})
    assert r.returncode == 0, r.stderr
    assert calls[0].startswith("tune run --nproc_per_node 4 lora_finetune_distributed --config torchtune.yaml model_dir=/w/llama")
    r, _ = _run(tmp_path, "llama3.1-8b-lora-fsdp-4xA800", "nope", {"SKIP_VALIDATE": "1"})
    assert r.returncode == 2 and "unknown mode" in r.stderr


def test_hf_mode_needs_train_script(tmp_path):
    t, b = _bundle("qwen2.5-7b-qlora-4090")
    write_files(b.files, tmp_path / "run")
    bindir, _ = _stub_bin(tmp_path)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SKIP_VALIDATE": "1", "HOME": str(tmp_path)}
    r = subprocess.run([BASH, str(tmp_path / "run" / "launch.sh"), "hf"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "TRAIN_SCRIPT" in r.stderr
