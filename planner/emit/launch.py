"""``launch.sh``: check the plan, then start the chosen trainer with the exact command.

``bash launch.sh [MODE]`` runs one of the emitted trainers (the first one by default). It first runs
``plan validate --plan plan.json`` (skip with ``SKIP_VALIDATE=1``). On a multi-node cluster it needs the usual
variables on every node: ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. A plan that steps its
optimizer on the CPU exports ``OMP_NUM_THREADS`` (:func:`host_threads_lines`).
"""

from __future__ import annotations

import shlex

from planner.emit.common import Target, comment_block, header_lines

FILENAME = "launch.sh"
MASTER_PORT = 29500


def host_threads_lines(t: Target, section: int) -> list[str]:
    """For a plan whose optimizer steps on the CPU (ZeRO-Offload's CPU Adam, FSDP's CPU offload) with several GPUs per
    node: give each rank its share of the node's CPUs, unless the user set ``OMP_NUM_THREADS``.

    DeepSpeed's CPU Adam is one ``#pragma omp parallel for`` per 128M-element tile (deepspeed v0.19.2
    ``csrc/includes/cpu_adam.h``), so it runs on as many threads as OpenMP gives the rank. ``torchrun`` sets
    ``OMP_NUM_THREADS=1`` when it is unset and ``nproc_per_node > 1`` (torch ``distributed/run.py``
    ``config_from_args``); ``accelerate launch`` exports its ``--num_cpu_threads_per_process``, 1 by default on GPUs
    (accelerate 1.x ``commands/launch.py``, ``utils/launch.py``); LLaMA-Factory's ``FORCE_TORCHRUN`` and ``tune run``
    go through torchrun. Only the ``deepspeed`` launcher leaves it unset (all CPUs per rank) or, with
    ``--bind_cores_to_rank``, sets physical cores // ranks (``launcher/launch.py``, ``utils/numa.py``). So every
    launcher but DeepSpeed's steps the optimizer on one core per rank by default. The same share for every mode:
    ``nproc`` (the CPUs this shell may use) // GPUs per node, at least 1. The speed model's host throughput (eq. S15)
    is fitted to published runs whose launchers are mostly not stated (docs/speed.md S15)."""
    if t.setup.offload == "none" or t.cluster.gpus_per_node <= 1:
        return []
    g = t.cluster.gpus_per_node
    return [
        f"# {section}. The optimizer steps on the CPU: torchrun and accelerate launch give each rank 1 OpenMP thread unless",
        "#    OMP_NUM_THREADS is set; give each rank its share of this node's CPUs (tuneplan docs/speed.md S15).",
        f'export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-$(( $(nproc) / {g} > 0 ? $(nproc) / {g} : 1 ))}}"',
        "",
    ]


def launch_script(t: Target, modes: dict[str, list[str]], needs_script: set[str]) -> str:
    """``modes`` maps a launch mode (``hf``, ``deepspeed``, ``llamafactory``, ``torchtune``) to its command lines,
    in order of preference; ``needs_script`` names the modes that run the user's ``$TRAIN_SCRIPT``."""
    if not modes:
        raise ValueError("launch_script needs at least one launch mode")
    names = list(modes)
    default = names[0]
    lines = ["#!/usr/bin/env bash"]
    head = header_lines(t, "Launch script", f"bash launch.sh [{'|'.join(names)}]   (default: {default})")
    lines.append(comment_block(head).rstrip("\n"))
    lines += [
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "",
        "# 1. Check the plan before spending GPU time (plan validate runs a few real steps and compares).",
        'if [[ "${SKIP_VALIDATE:-0}" != 1 ]]; then plan validate --plan plan.json; fi',
        "",
    ]
    if t.multi_node:
        lines += [
            f"# 2. Multi-node: {t.cluster.nodes} nodes x {t.cluster.gpus_per_node} GPUs. Run this script on every node.",
            f'NNODES="${{NNODES:-{t.cluster.nodes}}}"',
            'NODE_RANK="${NODE_RANK:?set NODE_RANK: 0 on the master node, 1..NNODES-1 on the others}"',
            'MASTER_ADDR="${MASTER_ADDR:?set MASTER_ADDR to the address of the NODE_RANK 0 node}"',
            f'MASTER_PORT="${{MASTER_PORT:-{MASTER_PORT}}}"',
            f'if [[ "$NNODES" != {t.cluster.nodes} ]]; then',
            f'  echo "the plan is for {t.cluster.nodes} nodes, NNODES=$NNODES" >&2; exit 2',
            "fi",
            "",
        ]
    lines += host_threads_lines(t, 3 if t.multi_node else 2)
    lines.append(f'MODE="${{1:-{default}}}"')
    lines.append('case "$MODE" in')
    for name, cmds in modes.items():
        lines.append(f"  {name})")
        if name in needs_script:
            lines.append(
                '    TRAIN_SCRIPT="${TRAIN_SCRIPT:?set TRAIN_SCRIPT to your training script (see PLAN.md)}"'
            )
        lines += [f"    {c}" for c in cmds]
        lines.append("    ;;")
    lines.append("  *)")
    lines.append(f"    echo {shlex.quote('unknown mode: use one of ' + ', '.join(names))} >&2; exit 2 ;;")
    lines.append("esac")
    return "\n".join(lines) + "\n"
