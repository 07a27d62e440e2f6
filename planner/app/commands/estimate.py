"""``plan estimate``: every byte and second of one explicit setup."""

from __future__ import annotations

import argparse

from planner.app.commands.common import (
    add_efficiency_arg,
    add_host_optimizer_arg,
    add_output_args,
    add_setup_args,
    add_target_args,
    calibration_book_from,
    print_json,
    resolve_target,
    setup_from_args,
)

NAME = "estimate"
HELP = "every byte and second of one explicit setup"
DESCRIPTION = """Estimate one explicit setup: memory per GPU by category and phase, host RAM, speed.
Unset flags take the trainers' defaults (see each flag). A flag the setup does not use (--lora-rank with
--method full, --double-quant without qlora, --checkpoint-every without checkpointing) is refused.
Exit status: 0 fits, 1 does not fit (GPU memory or host RAM), 2 bad input.

examples:
  plan estimate --model llama3-8b --gpus 8xA800 --zero 3 --checkpointing full --micro-batch 4
  plan estimate --model qwen2.5-7b --gpus 4090 --method qlora --checkpointing full
  plan estimate --model Qwen/Qwen2.5-7B --gpus 1xh100 --method lora --lora-targets q_proj,v_proj --json
  plan estimate --model qwen2.5-7b --gpus 4090 --method qlora --no-packing --micro-batch 4 --dataset train.jsonl
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    add_setup_args(parser, search=False)
    add_efficiency_arg(parser)
    add_host_optimizer_arg(parser)
    from planner.app.commands.data import add_dataset_args

    add_dataset_args(parser)
    add_output_args(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from planner.app.render.report import render_estimate
    from planner.engine.evaluate import evaluate
    from planner.plan_file import model_keys

    from planner.app.commands.data import dataset_from_args
    from planner.engine.dataset import data_train_time

    model, cluster = resolve_target(args)
    setup = setup_from_args(args, cluster, model)
    data = dataset_from_args(args, model)
    plan = evaluate(model, cluster, setup, calibration_book_from(args), efficiency=args.efficiency, data=data)
    epoch = data_train_time(plan.speed, setup, cluster.world_size, data) if data is not None else None
    from planner.app.track_record import read_track_record, track_record_json, track_record_line

    record, parallelism = read_track_record(), setup.parallelism_class(cluster.world_size)
    if args.json:
        out = plan.memory.to_json()
        out["speed"] = plan.speed.to_json()
        if epoch is not None:
            out["dataset"] = {"file": args.dataset, "rows": data.rows, "one_epoch": epoch.to_json()}
        out["per_host"]["capacity_bytes"] = plan.host_capacity_bytes
        out["per_host"]["fits"] = plan.fits_host
        out["fits"] = plan.memory.fits and plan.fits_host
        out.update(model_keys(model))  # so that plan configs / validate --plan re-read it anywhere
        out["track_record"] = track_record_json(record, cluster.gpu.family, parallelism=parallelism)  # no headroom
        print_json(out)
    else:
        render_estimate(Console(), plan.memory, plan.speed, plan.host_capacity_bytes,
                        track_record=track_record_line(record, cluster.gpu.family, parallelism=parallelism))
        if epoch is not None:
            print(f"one epoch of {args.dataset} ({data.rows:,} rows): {epoch}")
    return 0 if plan.memory.fits and plan.fits_host else 1
