"""``plan --model M --gpus G``: rank the training plans that fit, fastest first, and explain them."""

from __future__ import annotations

import argparse

from planner.app.commands.common import (
    add_efficiency_arg,
    add_output_args,
    add_search_args,
    add_setup_args,
    add_target_args,
    positive_float,
    positive_int,
    print_json,
    resolve_target,
    search_request,
)
from planner.app.errors import CliError

NAME = None
HELP = "rank the training plans that fit"
DESCRIPTION = """Rank the training plans that fit the cluster, fastest first, each with its memory breakdown,
its speed, and why it beat the others. Every setup flag you pass fixes that dimension; the rest are searched.
A flag that no searched plan uses (--lora-rank with --method full, --freeze-layers without --method freeze)
is refused.

examples:
  plan --model llama3-8b --gpus 8xA800
  plan --model qwen2.5-7b --gpus 4090 --seq 4096
  plan --model llama3-70b --gpus 2x8xH100 --method lora --json
  plan --model llama3-8b --gpus 8xA800 --dataset-tokens 2e9 --epochs 3 --price-per-gpu-hour 2.1
  plan --model qwen2.5-7b --gpus 4090 --dataset train.jsonl --no-packing --epochs 3
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser)
    add_setup_args(parser, search=True)
    g = parser.add_argument_group("search")
    add_search_args(g)
    g.add_argument("--objective", default="throughput", metavar="OBJ",
                   help="rank by throughput (tokens/s), cost (per token) or memory (lowest peak) (default: throughput)")
    g.add_argument("--top", type=positive_int, default=5, metavar="N", help="plans to show (default: 5)")
    g.add_argument("--explain", action="store_true", help="also list every rejected candidate with its reason")
    add_efficiency_arg(g)
    t = parser.add_argument_group("training time and cost")
    t.add_argument("--dataset-tokens", type=positive_float, metavar="N", help="tokens in the dataset, e.g. 2e9")
    t.add_argument("--samples", type=positive_float, metavar="N", help="samples in the dataset (with --avg-tokens)")
    t.add_argument("--avg-tokens", type=positive_float, metavar="N", help="average tokens per sample")
    t.add_argument("--epochs", type=positive_float, default=1.0, metavar="N", help="epochs (default: 1)")
    t.add_argument("--price-per-gpu-hour", type=float, metavar="USD", help="price of one GPU-hour, for the cost")
    from planner.app.commands.data import add_dataset_args

    add_dataset_args(parser)
    add_output_args(parser)


def dataset_tokens(args: argparse.Namespace) -> float | None:
    if args.dataset_tokens:
        return args.dataset_tokens
    if args.samples or args.avg_tokens:
        if not (args.samples and args.avg_tokens):
            raise CliError("--samples needs --avg-tokens (and the other way round), or pass --dataset-tokens")
        return args.samples * args.avg_tokens
    return None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from planner.app.render.report import render_search
    from planner.search.rank import SearchError, search
    from planner.engine.speed.train_time import train_time
    from planner.plan_file import model_keys

    model, cluster = resolve_target(args)
    from planner.app.commands.data import dataset_from_args

    data = dataset_from_args(args, model)
    if data is not None and (args.dataset_tokens or args.samples or args.avg_tokens):
        raise CliError("--dataset measures the tokens; drop --dataset-tokens / --samples / --avg-tokens")
    tokens = dataset_tokens(args)
    req = search_request(
        args, objective=args.objective, top=args.top, price_per_gpu_hour=args.price_per_gpu_hour,
        efficiency=args.efficiency, dataset=data,
    )
    try:
        result = search(model, cluster, req)
    except SearchError as e:
        raise CliError(str(e)) from None

    def tt(plan):  # noqa: ANN001, ANN202
        if data is not None:
            from planner.engine.dataset import data_train_time

            return data_train_time(plan.speed, plan.setup, cluster.world_size, data, args.epochs, args.price_per_gpu_hour)
        if tokens is None:
            return None
        return train_time(plan.speed, tokens, args.epochs, args.price_per_gpu_hour)

    from planner.app.track_record import class_bias_note, read_track_record, track_record_json, track_record_line

    record = read_track_record()

    def caveat(plan):  # noqa: ANN001, ANN202
        return class_bias_note(record, plan.setup.parallelism_class(cluster.world_size))

    if args.json:
        out = {
            "schema_version": 1,
            "model": model.name,
            **model_keys(model),
            "cluster": {"gpu": cluster.gpu.name, "gpus_per_node": cluster.gpus_per_node, "nodes": cluster.nodes},
            "global_batch": result.global_batch,
            "headroom": args.headroom,
            "objective": args.objective,
            "plans": [],
            "rejected": len(result.rejected),
            "notes": result.notes,
            "suggestions": result.suggestions,
            "track_record": track_record_json(record, cluster.gpu.family, args.headroom),
        }
        if data is not None:
            out["dataset"] = {"file": args.dataset, "rows": data.rows, "tokens_after_cutoff": data.real_tokens(args.seq)}
        for p in result.plans:
            d = p.to_json()
            t = tt(p)
            if t is not None:
                d["train_time"] = t.to_json()
            d["speed_caveat"] = caveat(p)
            out["plans"].append(d)
        if args.explain:
            out["rejected_candidates"] = [
                {"setup": r.setup.model_dump(), "reason": r.reason, "peak_bytes": r.peak_bytes} for r in result.rejected
            ]
        print_json(out)
    else:
        render_search(Console(), result, explain=args.explain,
                      train_time=tt if (tokens or data is not None) else None,
                      track_record=track_record_line(record, cluster.gpu.family, args.headroom), caveat=caveat)
    return 0 if result.plans else 1
