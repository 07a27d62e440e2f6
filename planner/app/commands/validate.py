"""``plan validate``: train a plan for a few real steps, measure memory and speed, compare with the estimate."""

from __future__ import annotations

import argparse

from planner.app.commands.common import (
    SETUP_FIELD_OF,
    add_setup_args,
    non_negative_int,
    positive_float,
    positive_int,
    refuse_given,
    setup_from_args,
    setup_with_overrides,
)
from planner.app.errors import CliError

NAME = "validate"
HELP = "run a plan for a few real steps and compare memory and speed with the estimate"
DESCRIPTION = """Run a plan for real: build the model from its config with random weights on the device (no
download), train --warmup + --steps steps exactly as the setup says (precision recipe, LoRA / DoRA / QLoRA,
checkpointing, attention, loss, optimizer), record memory per phase, the profiler's memory timeline and the
CUDA allocator snapshot of one step, step times and tokens/s, and compare them with the estimate category by
category. Each finished run is appended to DIR/measurements.jsonl (an out-of-memory error is recorded as a
result); DIR/report.md and DIR/figures/ are rewritten from all records. Plans with more than one GPU are
launched with torchrun or the deepspeed launcher, each rank reporting. Feed DIR to plan calibrate.

examples:
  plan validate --model qwen2.5-0.5b --gpus H100 --method lora --seq 2048 --out runs/q05
  plan validate --plan plan.json --steps 5 --out runs/plan1
  plan validate --plan plan.json --seq 1024 --out runs/plan1-short   # the plan with a shorter sequence
  plan validate --matrix validation/gpu/matrix_h100.yaml --out runs/h100
  plan validate --model validation/data/tiny-qwen2.yaml --gpus H100 --device cpu --seq 64 --out /tmp/v

With --plan, setup flags change the plan's setup (re-estimated for the comparison); with --matrix only
--device applies, and any other run or setup flag is refused (put it in the matrix file). A flag the setup
does not use (--lora-rank with --method full, ...) is refused.

exit status: 0 every run ran, 1 a run ran out of memory, could not run here, or failed, 2 bad input.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to run (one of)")
    src.add_argument("--plan", metavar="FILE", help="a plan JSON: plan.json of plan configs, plan --json (its first "
                     "plan) or plan estimate --json; setup flags given with it change its setup")
    src.add_argument("--matrix", metavar="FILE", help="a YAML list of runs (see docs/validation.md)")
    src.add_argument("--model", metavar="MODEL",
                     help="model name or alias, a config.json path or folder, a hub id in the local HF cache, or a "
                          "ModelProfile YAML file (with --plan: overrides the plan's model)")
    src.add_argument("--gpus", metavar="SPEC", help="the plan's cluster: H100, 8xA800, 2x8xH100 (the estimate is for it)")
    src.add_argument("--host-ram-gib", type=positive_float, metavar="GIB", help="host RAM per node (estimate only)")
    src.add_argument("--inter-node-gb-s", type=positive_float, metavar="GB_S", help="inter-node bandwidth (estimate only)")
    add_setup_args(parser, search=False)
    r = parser.add_argument_group("how to run")
    r.add_argument("--steps", type=positive_int, default=3, metavar="N", help="timed steps after warm-up (default 3)")
    r.add_argument("--warmup", type=non_negative_int, default=2, metavar="K",
                   help="untimed steps first; the first allocates the optimizer states (default 2)")
    r.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where to run (default: cuda when available, else cpu); cpu runs tiny configs for tests")
    r.add_argument("--weights", metavar="PATH", help="load this local checkpoint folder instead of random weights")
    r.add_argument("--dataset", metavar="FILE.jsonl",
                   help="real samples ({'input_ids': [...]} or {'text': ...} per line), packed or padded as the "
                        "plan says (default: synthetic tokens at the plan's sequence length)")
    r.add_argument("--no-timeline", dest="timeline", action="store_false",
                   help="skip the profiled step (memory timeline, categories at the peak, allocator snapshot)")
    r.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                   help="skip the CUDA allocator snapshot (_record_memory_history) of the profiled step")
    r.add_argument("--profile-step", type=non_negative_int, metavar="K",
                   help="profile step K (0-based; default: one extra step after the timed ones)")
    r.add_argument("--out", default="validation-runs", metavar="DIR",
                   help="output folder: measurements.jsonl is appended, report.md rewritten (default: validation-runs)")
    r.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help="start no run after this many seconds (the runs not started are listed)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the runs (and the launch command of multi-GPU ones) without running anything")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def _device(arg: str | None) -> str:
    if arg:
        return arg
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _specs(args: argparse.Namespace) -> list:
    from validation.spec import (
        RunSpec,
        check,
        cluster_from,
        cluster_from_json,
        default_label,
        load_matrix,
        make_setup,
        read_plan_file,
        resolve_model,
    )

    device = _device(args.device)
    sources = [x for x in (args.plan, args.matrix) if x]
    if len(sources) > 1:
        raise CliError("give one of --plan or --matrix, not both")
    run = dict(steps=args.steps, warmup=args.warmup, device=device, weights=args.weights, dataset=args.dataset,
               timeline=args.timeline, snapshot=args.snapshot, profile_step=args.profile_step)
    if args.matrix:
        # the matrix file says what to run; of the flags only --device applies to it (the one rule: a flag that
        # would be ignored is refused)
        refuse_given(args, ["model", "gpus", "host_ram_gib", "inter_node_gb_s", "steps", "warmup", "weights",
                            "dataset", "timeline", "snapshot", "profile_step", *SETUP_FIELD_OF],
                     "with --matrix (put it in the matrix file, under defaults: or a run)")
        over = {"device": device} if args.device else {}
        return load_matrix(args.matrix, over)
    if args.plan:
        p = read_plan_file(args.plan)
        model = resolve_model(args.model) if args.model is not None else p["profile"]
        if args.gpus is not None:
            cluster = cluster_from(args.gpus, args.host_ram_gib, args.inter_node_gb_s)
        else:
            cluster = cluster_from_json(p["cluster"], args.host_ram_gib, args.inter_node_gb_s)
        where = f"plan {args.plan}: "
        setup = setup_with_overrides(make_setup(p["setup"], cluster, where).model_dump(), args, cluster, where, model)
    else:
        if args.model is None or args.gpus is None:
            raise CliError("give --plan FILE, --matrix FILE, or --model MODEL with --gpus SPEC")
        model = resolve_model(args.model)
        cluster = cluster_from(args.gpus, args.host_ram_gib, args.inter_node_gb_s)
        setup = setup_from_args(args, cluster, model)
    if args.profile_step is not None and args.profile_step >= args.warmup + args.steps:
        raise CliError(f"--profile-step {args.profile_step} is past the last step ({args.warmup + args.steps - 1})")
    spec = RunSpec(label=default_label(model, setup), model=model, cluster=cluster, setup=setup, **run)
    return [check(spec)]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    specs = _specs(args)
    console = Console(stderr=True)
    if args.dry_run:
        from validation.launch import launch_command

        for s in specs:
            line = f"{s.label}: {s.model.name} on {s.cluster.label()} ({s.device}), {s.setup.short()}, seq {s.setup.seq_len}"
            print(line)
            if s.world_size > 1:
                print("  " + " ".join(launch_command(s, Path(args.out), Path(args.out) / "spec.json")))
        return 0
    from planner.fileio import check_writable
    from validation.runner import run_all

    out = check_writable(args.out)  # appended to, never replaced; refused before anything runs
    skipped: list[str] = []
    done = run_all(specs, out, quiet=args.quiet, console=console, time_budget_s=args.time_budget, skipped=skipped)
    bad = [m for m in done if m.status != "ok"]
    print(f"{len(done)} record(s) appended to {out / 'measurements.jsonl'}; report: {out / 'report.md'}")
    for m in bad:
        print(f"  {m.label}: {m.status} after {m.reached}: {m.error}")
    if skipped:
        print(f"  not started (--time-budget {args.time_budget:g} s spent): {', '.join(skipped)}")
    return 1 if bad or skipped else 0
