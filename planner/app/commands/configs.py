"""``plan configs``: write a plan's trainer configs, launch.sh and PLAN.md into a folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from planner.app.commands.common import (
    add_search_args,
    add_setup_args,
    add_target_args,
    explicit,
    non_negative_float,
    positive_int,
    print_json,
    unit_float,
)
from planner.app.errors import CliError

NAME = "configs"
HELP = "write DeepSpeed / accelerate / LLaMA-Factory / torchtune / torchtitan configs and launch.sh for a plan"
TRAINER_CHOICES = ("hf-deepspeed", "hf-fsdp", "hf-ddp", "llamafactory", "torchtune", "torchtitan", "all")
DESCRIPTION = """Write ready-to-run trainer configs for a plan into a folder: DeepSpeed JSON (explicit and the
HF-integration "auto" flavour), accelerate config + TrainingArguments, LLaMA-Factory YAML, torchtune YAML and
torchtitan TOML (where they can express the plan), launch.sh and PLAN.md (the plan in words) with plan.json.

The plan is the top one of a search (same flags as `plan`) among the setups the named --trainer can run (with
--trainer all: that at least one of them can run), the N-th with --pick N, or a plan.json written by an
earlier run (--plan). With --trainer all, a trainer that cannot run the plan as planned is skipped with the
reason in PLAN.md; a --plan file that the named trainer cannot run is an error.

With --plan, setup flags change the plan's setup (e.g. --micro-batch 2 --grad-accum 4): the result is
re-estimated and PLAN.md says what changed and whether it still fits. Everywhere, a flag the chosen setup does
not use (--lora-rank with --method full, --freeze-layers without --method freeze, --double-quant without
qlora, --checkpoint-every without checkpointing; in a search: with no searched plan using it) is refused.

trainers: hf-deepspeed | hf-fsdp | hf-ddp (the HF Trainer under accelerate with that sharding),
          llamafactory, torchtune, torchtitan, all (the HF backend matching the plan, LLaMA-Factory, torchtune,
          torchtitan)

examples:
  plan configs --model llama3-8b --gpus 8xA800 --method full --trainer all --out runs/llama3-8b
  plan configs --model qwen2.5-7b --gpus 4090 --method qlora --trainer llamafactory --out runs/qwen-qlora
  plan configs --model llama3-70b --gpus 2x8xH100 --pick 2 --trainer hf-deepspeed --out runs/70b
  plan configs --plan runs/llama3-8b/plan.json --trainer torchtune --out runs/llama3-8b-tt --force
  plan configs --model qwen2.5-7b --gpus 4090 --method qlora --dataset train.jsonl --lr 1e-4 --neftune-alpha 5 --out runs/q

Every file carries the hyper-parameters (learning rate scaled to the plan's global batch, warm-up, epochs, LoRA
rank / alpha / dropout, schedule, eval split and interval, prompt masking, NEFTune, rsLoRA, LoRA+) with the reason
and source of each as a comment; PLAN.md lists them. The flags below override any of them.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser, gpus_required=False)
    for action in parser._actions:  # --plan supplies the model and the cluster
        if action.dest == "model":
            action.required = False
    add_setup_args(parser, search=True)
    g = parser.add_argument_group("which plan")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--pick", type=positive_int, default=1, metavar="N",
                       help="take the N-th ranked plan of the search (default: 1, the best)")
    which.add_argument("--plan", metavar="PLAN_JSON",
                       help="a plan.json from an earlier `plan configs`, `plan --json` output (its first plan) or "
                            "`plan estimate --json` output; re-estimated with this tuneplan. Setup flags given "
                            "with --plan change the plan's setup (re-estimated; PLAN.md says what changed and "
                            "whether it still fits); --global-batch is refused (the plan fixes the batch)")
    add_search_args(g)
    o = parser.add_argument_group("output")
    o.add_argument("--trainer", choices=TRAINER_CHOICES, default="all", help="which trainer's configs (default: all)")
    o.add_argument("--out", required=True, metavar="DIR", help="folder to write (refused if it exists and is not empty)")
    o.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    o.add_argument("--json", action="store_true", help="print what was written as JSON")
    from planner.app.commands.data import add_dataset_args

    add_dataset_args(parser)
    add_hparam_args(parser)


def add_hparam_args(parser: argparse.ArgumentParser) -> None:
    """Overrides of the recommended hyper-parameters (planner.engine.hparams); each defaults to the recommendation."""
    from planner.app.commands.common import positive_float
    from planner.engine.hparams import SCHEDULERS

    h = parser.add_argument_group("hyper-parameters (default: recommended, with the reason in PLAN.md and the files)")
    h.add_argument("--lr", type=positive_float, metavar="LR", help="learning rate")
    h.add_argument("--epochs", type=positive_float, metavar="N", help="epochs")
    h.add_argument("--warmup-ratio", type=unit_float, metavar="F", help="warm-up fraction of the steps, in [0, 1)")
    h.add_argument("--scheduler", choices=SCHEDULERS, help="learning-rate schedule after the warm-up")
    h.add_argument("--weight-decay", type=non_negative_float, metavar="W", help="AdamW weight decay")
    h.add_argument("--max-grad-norm", type=positive_float, metavar="N", help="gradient clipping norm")
    h.add_argument("--train-on-prompt", action=argparse.BooleanOptionalAction, default=None,
                   help="also train on the prompt tokens (default: no, responses only)")
    h.add_argument("--val-size", type=unit_float, metavar="F", help="held-out fraction for evaluation (0: none)")
    h.add_argument("--eval-steps", type=positive_int, metavar="N", help="evaluate every N optimizer steps")
    h.add_argument("--neftune-alpha", type=positive_float, metavar="A", help="NEFTune noise alpha, e.g. 5 (default: off)")
    h.add_argument("--rslora", action=argparse.BooleanOptionalAction, default=None,
                   help="rank-stabilised LoRA scaling alpha / sqrt(rank) (default: off)")
    h.add_argument("--loraplus-ratio", type=positive_float, metavar="R",
                   help="LoRA+: B's learning rate = R x A's, e.g. 16 (default: off)")


HPARAM_DESTS = {"lr": "learning_rate", "epochs": "epochs", "warmup_ratio": "warmup_ratio", "scheduler": "scheduler",
                "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "train_on_prompt": "train_on_prompt",
                "val_size": "val_size", "eval_steps": "eval_steps", "neftune_alpha": "neftune_alpha",
                "rslora": "use_rslora", "loraplus_ratio": "loraplus_lr_ratio"}


def hyper_parameters(args: argparse.Namespace, model, cluster, plan, data):  # noqa: ANN001, ANN201
    """The plan's :class:`planner.engine.hparams.HyperParams`: the dataset's size, the dropout's memory, the overrides."""
    from planner.engine.evaluate import evaluate
    from planner.engine.hparams import recommend

    s = plan.setup
    overrides = {field: getattr(args, dest, None) for dest, field in HPARAM_DESTS.items()}
    if not s.trains_adapters:
        for dest in ("rslora", "loraplus_ratio"):
            if getattr(args, dest, None) is not None:
                raise CliError(f"--{dest.replace('_', '-')} applies to LoRA/QLoRA plans; this plan is {s.method}")
    cost = None
    if s.trains_adapters:
        with_dropout = s.model_copy(update={"lora_dropout": 0.1})
        cost = (evaluate(model, cluster, with_dropout, data=data).memory.peak_bytes
                - evaluate(model, cluster, s, data=data).memory.peak_bytes)
    rows = steps = None
    if data is not None:
        from planner.engine.dataset import steps_per_epoch

        rows = data.rows
        steps = steps_per_epoch(s, cluster.world_size, data)
    try:
        return recommend(model, s, cluster.world_size, rows=rows, steps_per_epoch=steps, dropout_cost_bytes=cost,
                         overrides=overrides)
    except ValueError as e:
        raise CliError(str(e)) from None


def _from_search(args: argparse.Namespace):  # noqa: ANN202
    from planner.app.commands.common import resolve_target, search_request
    from planner.search.rank import SearchError, search

    if args.model is None or args.gpus is None:
        raise CliError("--model and --gpus are required (or pass --plan plan.json)")
    from planner.emit import refusal

    model, cluster = resolve_target(args)
    from planner.app.commands.data import dataset_from_args

    data = dataset_from_args(args, model)
    if args.trainer == "torchtune" and "framework" not in explicit(args):
        args.framework = "torchtune"  # its speed is torchtune's (per-step overhead, docs/speed.md S26)
    # rank only what the named trainer(s) can run (each emitter's own check, planner.emit.refusal)
    request = search_request(args, top=max(args.pick, 5), dataset=data,
                             admit=lambda setup: refusal(args.trainer, model, cluster, setup),
                             admit_label=f"--trainer {args.trainer}")
    try:
        result = search(model, cluster, request)
    except SearchError as e:
        raise CliError(str(e)) from None
    if not result.plans:
        hint = f"; {result.suggestions[0]}" if result.suggestions else ""
        raise CliError(f"no plan fits {model.name} on {cluster.label()}{hint} (see: plan --model ... --gpus ... --explain)")
    if args.pick > len(result.plans):
        n = len(result.plans)
        raise CliError(f"--pick {args.pick}: the search ranked only {n} plan(s); use --pick 1..{n}")
    return model, cluster, result.plans[args.pick - 1], data


def load_plan_json(args: argparse.Namespace):  # noqa: ANN202
    """Model, cluster and Plan from a plan JSON (one plan as ``plan configs`` writes it, ``plan --json`` output
    whose first plan is taken, or ``plan estimate --json`` output, the same forms ``plan validate --plan``
    reads). The setup is taken as written and re-estimated with this tuneplan (the file's numbers may come from
    another version); the search's reasons are kept."""
    from planner.app.commands.common import (
        calibration_book_from,
        explicit_setup_fields,
        refuse_given,
        setup_with_overrides,
    )
    from planner.engine.evaluate import evaluate
    from planner.engine.rules import flag_of
    from planner.plan_file import read_plan_file
    from planner.units import gib
    from profiles.cluster import make_cluster
    from profiles.registry import get_gpu, get_model

    refuse_given(args, ["global_batch"], "with --plan (the plan's micro-batch and accumulation fix the batch; "
                                         "change them with --micro-batch / --grad-accum)")
    pf = read_plan_file(args.plan)
    d, cl = pf.plan, pf.cluster
    old_peak = pf.peak_bytes if pf.peak_bytes is not None else 0
    model = pf.load_model()  # the stored profile: a plan made from a local config.json re-reads anywhere
    if args.model is not None and get_model(args.model).name != model.name:
        raise CliError(f"--model {args.model} differs from the plan's model {model.name}; drop --model")
    cluster = make_cluster(get_gpu(cl["gpu"]), cl["gpus_per_node"], cl["nodes"], args.host_ram_gib, args.inter_node_gb_s)
    if args.gpus is not None:
        from profiles.cluster import parse_cluster

        asked = parse_cluster(args.gpus)
        if (asked.gpu.name, asked.gpus_per_node, asked.nodes) != (cluster.gpu.name, cluster.gpus_per_node, cluster.nodes):
            raise CliError(f"--gpus {args.gpus} differs from the plan's cluster {cluster.label()}; drop --gpus")
    from planner.app.commands.data import dataset_from_args

    data = dataset_from_args(args, model)
    setup = setup_with_overrides(pf.setup, args, cluster, f"--plan {args.plan}: ", model)
    plan = evaluate(model, cluster, setup, calibration_book_from(args), headroom=args.headroom, data=data)
    reasons = list(d.get("reasons", []))
    if "headroom_bytes" not in d:
        reasons.append("not ranked by a search (from plan estimate --json)")
    overridden = sorted(f for f in explicit_setup_fields(args) if pf.setup.get(f) != getattr(setup, f))
    if overridden:
        reasons.append("setup changed on the command line: " + ", ".join(
            f"{flag_of(f)} {getattr(setup, f)} (the plan had {pf.setup.get(f)})" for f in overridden))
    if plan.memory.peak_bytes != old_peak:
        reasons.append(f"re-estimated by this tuneplan: peak {gib(plan.memory.peak_bytes, 2)} per GPU "
                       f"(the plan.json said {gib(old_peak, 2)})")
    if not plan.fits:
        why = (f"peak {gib(plan.memory.peak_bytes, 2)} per GPU > {gib(plan.usable_bytes, 2)} usable"
               if not plan.fits_gpu else f"host RAM {gib(plan.memory.host_bytes, 2)} per node > "
               f"{gib(plan.host_capacity_bytes, 2)}")
        reasons.append(f"DOES NOT FIT{' with the changes given' if overridden else ''}: {why} "
                       "(plan estimate shows the breakdown)")
    return model, cluster, plan.model_copy(update={"rank": int(d.get("rank", 1)), "reasons": tuple(reasons)}), data


def run(args: argparse.Namespace) -> int:
    from planner.emit import NotExpressible, Target, build_files, trainers_for
    from planner.fileio import check_output_folder, write_files

    check_output_folder(args.out, args.force)  # before the search: a bad --out is said at once
    if args.plan:
        model, cluster, plan, data = load_plan_json(args)
    else:
        model, cluster, plan, data = _from_search(args)
    # the command line, for PLAN.md's "Regenerate" (the CLI does not hand argv to commands; read it when it is ours)
    argv = getattr(args, "_argv", None) or (sys.argv[1:] if sys.argv[1:2] == ["configs"] else None)
    command = "plan " + " ".join(shlex.quote(a) for a in argv) if argv else ""
    target = Target(plan, model, cluster, command=command, hparams=hyper_parameters(args, model, cluster, plan, data))
    try:
        bundle = build_files(target, trainers_for(target, args.trainer))
    except NotExpressible as e:
        raise CliError(str(e)) from None
    written = write_files(bundle.files, args.out, force=args.force)
    if args.json:
        print_json({
            "out": str(Path(args.out)),
            "plan": plan.to_json(),
            "files": [str(p) for p in written],
            "trainers": [e.trainer for e in bundle.emitted],
            "not_expressible": {r.trainer: r.reason for r in bundle.refused},
        })
        return 0
    out = sys.stdout
    if not plan.fits:
        sys.stderr.write(f"warning: {next(r for r in plan.reasons if r.startswith('DOES NOT FIT'))}\n")
    out.write(f"plan {plan.rank}: {model.name} on {cluster.label()}: {plan.setup.short()}\n")
    out.write(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}\n")
    for r in bundle.refused:
        out.write(f"skipped {r.trainer}: {r.reason}\n")
    modes = [m for e in bundle.emitted for m in e.launch]
    out.write(f"next: read {Path(args.out) / 'PLAN.md'}, then bash {Path(args.out) / 'launch.sh'} [{'|'.join(modes)}]\n")
    return 0
