"""``plan profiles``: list and show the model and GPU profiles; ``plan profiles add`` derives one."""

from __future__ import annotations

import argparse

from planner.app.commands.common import print_json
from planner.units import gib_num

NAME = "profiles"
HELP = "list, show and derive model and GPU profiles"
DESCRIPTION = """List the model and GPU profiles, show one in full, or derive a model's profile from its code.

examples:
  plan profiles                 # both lists
  plan profiles models --json   # with where each profile came from (shipped / derived + cache file)
  plan profiles gpus
  plan profiles show llama3-8b  # a model (with parameter counts) or a GPU, by name or alias
  plan profiles show ./my-model/config.json
  plan profiles add ./my-model/config.json   # any architecture transformers builds (needs torch)
  plan profiles add google/gemma-3-1b-it     # a hub id whose config.json is in the local HF cache
  plan profiles add ./remote-model --trust-remote-code

`plan profiles add` builds the model on the meta device, accounts for every parameter, traces each kind of
block under FakeTensorMode and writes the profile to the cache ($TUNEPLAN_CACHE, else
$XDG_CACHE_HOME/tuneplan or ~/.cache/tuneplan); `plan --model` then uses it without torch.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=["models", "list", "gpus", "show", "add"], default=None,
                        help="models (or list) | gpus | show NAME | add MODEL (default: both lists)")
    parser.add_argument("name", nargs="?", help="with show: a model or GPU name, alias or config.json path; "
                        "with add: a config.json, a folder holding one, a hub id in the local HF cache, or a "
                        "shipped model name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="with add: run the model repository's own code for architectures transformers lacks")
    parser.add_argument("--as", dest="display_name", metavar="NAME",
                        help="with add: the profile's name (default: the config's folder or hub id)")


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
    from profiles.registry import all_gpus, get_gpu, get_model, origin

    console = Console()
    if args.what == "add":
        return _add(args, console)
    if args.trust_remote_code or args.display_name:
        raise CliError("--trust-remote-code and --as apply to plan profiles add")
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
        if kind == "model" and obj.derived is not None:  # the traced inventories are data for the engine
            d = obj.derived
            data["derived"] = {
                "from": f"transformers {d.transformers_version}'s {d.architecture} (torch {d.torch_version})",
                "blocks": "; ".join(f"{b.name} x{len(b.layers)}" for b in d.blocks),
                "inventories": f"{len(d.inventories)} traced (setup class x attention x sequence regime), largest "
                               f"fit miss {max((i.check_error for i in d.inventories), default=0):.1e}",
                "origin": origin(obj),
            }
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
    show_models = args.what in (None, "models", "list")
    show_gpus = args.what in (None, "gpus")
    if args.json:
        out: dict = {"schema_version": 1}
        if show_models:
            out["models"] = [_model_json(m) | {"origin": origin(m)} for m in _listed_models()]
        if show_gpus:
            out["gpus"] = [_gpu_json(g) for g in all_gpus()]
        print_json(out)
        return 0
    if show_models:
        listed = _listed_models()
        t = Table(title=f"models ({len(listed)})", title_justify="left", show_edge=False, header_style="bold")
        for col in ("name", "params", "active", "layers", "hidden", "heads/kv", "vocab", "max pos", "aliases", "from"):
            if col == "aliases":
                t.add_column(col)  # wraps between aliases; the table splits rather than cut one
            else:
                t.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
        for m in listed:
            pc = param_counts(m)
            t.add_row(
                m.name, f"{pc.total / 1e9:.2f}B", f"{pc.active / 1e9:.2f}B" if m.is_moe else "", str(m.num_layers),
                str(m.hidden_size), f"{m.num_heads}/{m.num_kv_heads}", f"{m.vocab_size:,}", f"{m.max_positions:,}",
                ", ".join(m.aliases[:3]),
                origin(m).split(":")[0] + (" (stale)" if "(stale" in origin(m) else ""),  # the cache is named below
            )
        print_table(console, t)
        from profiles.cache import broken_files, models_dir

        if any(origin(m).startswith("derived:") for m in listed):
            console.print(f"derived: plan profiles add, cached in {models_dir()}", highlight=False)
        if any("(stale" in origin(m) for m in listed):
            console.print("stale: derived by an older tuneplan, whose profiles lack terms the engine now uses; run "
                          "plan profiles add on its config again", highlight=False)

        for _path, why in broken_files():
            console.print(f"[yellow]skipped[/yellow] {why}", highlight=False)
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


def _listed_models() -> list:
    """Shipped profiles (hand-written, then derived), then the derived ones in the cache."""
    from profiles.cache import cached_profiles
    from profiles.registry import all_models

    return [*all_models(), *(m for m, _ in cached_profiles())]


def _add(args: argparse.Namespace, console) -> int:  # noqa: ANN001
    """``plan profiles add MODEL``: derive the profile from transformers' model code and cache it."""
    import sys
    import time

    from planner.app.errors import CliError
    from profiles.params import param_counts

    if not args.name:
        raise CliError("plan profiles add needs a MODEL: a config.json, a folder holding one, a hub id in the local "
                       "HF cache, or a shipped model name")
    try:
        from validation.trace import require_torch

        require_torch()
    except ImportError as e:
        raise CliError(f"deriving a profile builds the model with transformers: {e}") from None
    from profiles.cache import save
    from validation.derive import derive_named

    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    profile = derive_named(args.name, trust_remote_code=args.trust_remote_code, name=args.display_name,
                           progress=progress)
    path = save(profile)
    seconds = time.perf_counter() - t0
    pc = param_counts(profile)
    d = profile.derived
    if args.json:
        print_json({"name": profile.name, "path": str(path), "seconds": round(seconds, 1), "params": pc.as_dict(),
                    "blocks": [{"name": b.name, "layers": len(b.layers), "mixer": b.mixer, "attention": b.attention,
                                "window": b.window, "moe": b.moe} for b in d.blocks],
                    "max_check_error": max((i.check_error for i in d.inventories), default=0.0)})
        return 0
    console.print(f"[bold]{profile.name}[/bold]: {pc.total:,} parameters ({pc.active:,} active), "
                  f"{profile.num_layers} blocks of {len(d.blocks)} kind(s), derived in {seconds:.1f} s", highlight=False)
    for b in d.blocks:
        span = f", {b.attention}" + (f" {b.window}" if b.window else "") if b.attention else ""
        console.print(f"  {b.name}: {len(b.layers)} layers ({b.mixer}{span}{', MoE' if b.moe else ''})",
                      highlight=False)
    for line in profile.defaults_used:
        console.print(f"  default: {line}", highlight=False)
    console.print(f"written to {path}\nuse it: plan --model {profile.name!r} --gpus ...", highlight=False)
    return 0
