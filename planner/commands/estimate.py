"""``plan estimate``: every byte and second of one explicit setup."""

from __future__ import annotations

import argparse

from planner.commands.common import (
    add_output_args,
    add_setup_args,
    add_target_args,
    print_json,
    resolve_target,
    setup_from_args,
)
from planner.errors import CliError

NAME = "estimate"
HELP = "every byte and second of one explicit setup"
DESCRIPTION = """Estimate one explicit setup: memory per GPU by category and phase, host RAM, speed.
Unset flags take the trainers' defaults (see each flag).

examples:
  plan estimate --model llama3-8b --gpus 8xA800 --zero 3 --checkpointing full --micro-batch 4
  plan estimate --model qwen2.5-7b --gpus 4090 --method qlora --checkpointing full
  plan estimate --model Qwen/Qwen2.5-7B --gpus 1xh100 --method lora --lora-targets q_proj,v_proj --json
  plan estimate --model qwen2.5-7b --gpus 4090 --method qlora --no-packing --micro-batch 4 --dataset train.jsonl
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    add_setup_args(parser, search=False)
    parser.add_argument("--efficiency", type=float, metavar="F",
                        help="override the achievable fraction of peak FLOPS (default: calibrated, else the GPU's)")
    from planner.commands.data import add_dataset_args

    add_dataset_args(parser)
    add_output_args(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from planner.calibration_io import calibration_for
    from planner.memory import estimate_memory
    from planner.report import render_estimate
    from planner.speed import estimate_speed

    if args.efficiency is not None and not 0 < args.efficiency <= 1:
        raise CliError(f"--efficiency {args.efficiency} is outside (0, 1]")
    model, cluster = resolve_target(args)
    setup = setup_from_args(args, cluster)
    from planner.commands.data import dataset_from_args

    data = dataset_from_args(args, model)
    cal = calibration_for(cluster.gpu.name, setup.recipe)
    label = getattr(cal, "label", None) or "uncalibrated"
    eff = args.efficiency or getattr(cal, "mfu", None)
    epoch = None
    if data is None:
        est = estimate_memory(model, cluster, setup, cal)
        speed = estimate_speed(model, cluster, setup, efficiency=eff, calibration_label=label)
    else:
        from planner.dataset import data_memory, data_speed, data_train_time

        est = data_memory(model, cluster, setup, data, cal)
        speed = data_speed(model, cluster, setup, data, efficiency=eff, calibration_label=label)
        epoch = data_train_time(speed, setup, cluster.world_size, data)
    if args.json:
        out = est.to_json()
        out["speed"] = speed.to_json()
        if epoch is not None:
            out["dataset"] = {"file": args.dataset, "rows": data.rows, "one_epoch": epoch.to_json()}
        out["per_host"]["capacity_bytes"] = cluster.host_ram_bytes_per_node
        out["per_host"]["fits"] = est.host_bytes <= cluster.host_ram_bytes_per_node
        print_json(out)
    else:
        render_estimate(Console(), est, speed, cluster.host_ram_bytes_per_node)
        if epoch is not None:
            print(f"one epoch of {args.dataset} ({data.rows:,} rows): {epoch}")
    return 0
