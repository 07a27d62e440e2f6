"""``plan profiles``: list and show the model and GPU profiles."""

from __future__ import annotations

import argparse

from planner.app.commands.common import print_json
from planner.units import gib_num

NAME = "profiles"
HELP = "list and show model and GPU profiles"
DESCRIPTION = """List the shipped model and GPU profiles, or show one in full.

examples:
  plan profiles                 # both lists
  plan profiles models --json
  plan profiles gpus
  plan profiles show llama3-8b  # a model (with parameter counts) or a GPU, by name or alias
  plan profiles show ./my-model/config.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=["models", "gpus", "show"], default=None,
                        help="models | gpus | show NAME (default: both lists)")
    parser.add_argument("name", nargs="?", help="with show: a model or GPU name, alias or config.json path")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _model_json(m) -> dict:  # noqa: ANN001
    from profiles.params import largest_layer_params, linear_layers, param_counts

    d = m.model_dump()
    d["params"] = param_counts(m).as_dict()
    d["largest_layer_params"] = largest_layer_params(m)
    d["linear_layers"] = [
        {"name": x.name, "in_features": x.in_features, "out_features": x.out_features, "bias": x.bias,
         "count": x.count, "group": x.group}
        for x in linear_layers(m)
    ]
    return d


def _gpu_json(g) -> dict:  # noqa: ANN001
    d = g.model_dump()
    d["memory_bytes"] = g.memory_bytes
    return d


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from planner.app.errors import CliError
    from planner.app.render.fit import print_table
    from profiles.errors import ProfileError
    from profiles.params import param_counts
    from profiles.registry import all_gpus, all_models, get_gpu, get_model

    console = Console()
    if args.what == "show":
        if not args.name:
            raise CliError("plan profiles show needs a NAME, e.g. plan profiles show llama3-8b")
        try:
            obj, kind = get_model(args.name), "model"
        except ProfileError as e:
            if not str(e).startswith("unknown model"):
                raise  # a config.json that exists but is broken: its own message
            try:
                obj, kind = get_gpu(args.name), "gpu"
            except ProfileError:
                raise ProfileError(
                    f"unknown model or GPU {args.name!r} (list all: plan profiles models, plan profiles gpus)"
                ) from None
        data = _model_json(obj) if kind == "model" else _gpu_json(obj)
        if args.json:
            print_json(data)
            return 0
        t = Table(title=obj.name, title_justify="left", show_edge=False)
        t.add_column("field", style="bold", no_wrap=True)
        t.add_column("value", overflow="fold")
        for k, v in data.items():
            if k == "linear_layers":
                v = ", ".join(f"{x['name']} {x['in_features']}x{x['out_features']} (x{x['count']})" for x in v)
            elif isinstance(v, dict):
                v = ", ".join(f"{a}: {b:,}" if isinstance(b, int) else f"{a}: {b}" for a, b in v.items())
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            t.add_row(k, str(v))
        console.print(t)
        return 0
    if args.name:
        raise CliError(f"unexpected argument {args.name!r}; did you mean plan profiles show {args.name}?")
    show_models = args.what in (None, "models")
    show_gpus = args.what in (None, "gpus")
    if args.json:
        out: dict = {"schema_version": 1}
        if show_models:
            out["models"] = [_model_json(m) for m in all_models()]
        if show_gpus:
            out["gpus"] = [_gpu_json(g) for g in all_gpus()]
        print_json(out)
        return 0
    if show_models:
        t = Table(title=f"models ({len(all_models())})", title_justify="left", show_edge=False, header_style="bold")
        for col in ("name", "params", "active", "layers", "hidden", "heads/kv", "vocab", "max pos", "aliases"):
            if col == "aliases":
                t.add_column(col)  # wraps between aliases; the table splits rather than cut one
            else:
                t.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
        for m in all_models():
            pc = param_counts(m)
            t.add_row(
                m.name, f"{pc.total / 1e9:.2f}B", f"{pc.active / 1e9:.2f}B" if m.is_moe else "", str(m.num_layers),
                str(m.hidden_size), f"{m.num_heads}/{m.num_kv_heads}", f"{m.vocab_size:,}", f"{m.max_positions:,}",
                ", ".join(m.aliases[:3]),
            )
        print_table(console, t)
    if show_gpus:
        t = Table(title=f"GPUs ({len(all_gpus())})", title_justify="left", show_edge=False, header_style="bold")
        for col in ("name", "memory GiB", "BF16 TFLOPS", "FP8 TFLOPS", "HBM GB/s", "link GB/s", "aliases"):
            if col in ("name", "aliases"):
                t.add_column(col)  # wraps at spaces ("A100 80GB SXM"); the table splits rather than cut a word
            else:
                t.add_column(col, justify="right", no_wrap=True)
        for g in all_gpus():
            t.add_row(
                g.name, gib_num(g.memory_bytes, 1), f"{g.bf16_tflops:g}" if g.bf16_tflops else "-",
                f"{g.fp8_tflops:g}" if g.fp8_tflops else "-", f"{g.hbm_bandwidth_gb_s:,.0f}",
                f"{g.intra_node_bandwidth_gb_s:g} {g.interconnect}", ", ".join(g.aliases[:3]),
            )
        print_table(console, t)
    return 0
