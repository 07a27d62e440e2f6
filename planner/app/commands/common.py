"""Flags shared by every command: model and cluster, the Setup flags (the contract of issue 3), output.

``add_setup_args(parser, search=True)`` leaves every Setup flag unset by default, so the search knows
which dimensions the user fixed; ``search=False`` (``plan estimate``, ``trace``, ``validate``) fills the
documented defaults of :class:`planner.engine.setup.Setup`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, get_args

from planner.app.errors import CliError
from planner.engine.evaluate import DEFAULT_HEADROOM, check_efficiency, check_headroom
from planner.engine.rules import check_used, validate_setup
from planner.engine.speed.compute import FOREACH_ADAMW_PASSES, FUSED_ADAMW_PASSES
from planner.engine.setup import (
    KERNEL_LIBRARIES, Attention, Checkpointing, Fp8, Framework, KernelLibrary, Loss, Method, Optimizer, OptimizerKernel,
    Recipe, Setup, default_recipe,
)
from profiles.errors import InputError, validation_message
from profiles.cluster import Cluster, parse_cluster
from profiles.registry import get_model
from profiles.schema import ModelProfile


def _number_arg(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses with ``cast`` and accepts what ``ok`` accepts; anything else (NaN,
    infinities, words) is one line: ``expected <what>, got '<text>'``."""

    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")) or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v

    return parse


positive_int = _number_arg(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = _number_arg(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number_arg(float, lambda v: v > 0, "a positive number")
non_negative_float = _number_arg(float, lambda v: v >= 0, "a number >= 0")
fraction_arg = _number_arg(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
"""A number in (0, 1]."""
unit_float = _number_arg(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def add_target_args(parser: argparse.ArgumentParser, gpus_required: bool = True) -> None:
    g = parser.add_argument_group("model and hardware")
    g.add_argument("--model", required=True, metavar="MODEL",
                   help="model name or alias (llama3-8b, qwen2.5-7b), a config.json path, a folder holding one, "
                        "or a hub id in the local HF cache; list: plan profiles models")
    g.add_argument("--gpus", required=gpus_required, metavar="SPEC",
                   help="cluster: 8xA800, 2x8xH100 (nodes x GPUs per node x GPU), 4090; list: plan profiles gpus")
    g.add_argument("--host-ram-gib", type=positive_float, metavar="GIB",
                   help="host RAM per node (default: the GPU profile's typical server, e.g. 1024 for 8xH100)")
    g.add_argument("--inter-node-gb-s", type=positive_float, metavar="GB_S",
                   help="inter-node bandwidth per node, one direction, GB/s (default: the GPU profile's, e.g. 400)")


def add_setup_args(parser: argparse.ArgumentParser, search: bool = False) -> None:
    """The Setup flags. With ``search=True`` every default is None (= let the search choose)."""
    d = Setup()

    def default(value: Any) -> Any:
        return None if search else value

    def dflt(value: Any) -> str:
        return " (default: searched)" if search else f" (default: {value})"

    g = parser.add_argument_group("training setup" + (" (each flag fixes that dimension)" if search else ""))
    g.add_argument("--method", choices=get_args(Method), default=default(d.method),
                   help=f"full | lora | qlora | freeze {dflt(d.method)}")
    g.add_argument("--recipe", choices=get_args(Recipe), default=default(None),
                   help="precision recipe: hf-amp | deepspeed-bf16 | bf16 | fp16-amp "
                        + ("(default: searched: deepspeed-bf16 under ZeRO, hf-amp or bf16 otherwise; "
                           "fp16-amp on GPUs without bf16)" if search else
                           "(default: deepspeed-bf16 with ZeRO, hf-amp otherwise; fp16-amp on GPUs without bf16)"))
    g.add_argument("--optimizer", choices=get_args(Optimizer), default=default(d.optimizer),
                   help=f"optimizer {dflt(d.optimizer)}")
    g.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=default(None),
                   help="DeepSpeed ZeRO stage; 0 = DDP" + dflt(0))
    g.add_argument("--fsdp", choices=["full-shard", "shard-grad-op"], default=None,
                   help="use PyTorch FSDP with this sharding strategy instead of ZeRO")
    g.add_argument("--fsdp-version", type=int, choices=[1, 2], default=None,
                   help="FSDP implementation: 2 = fully_shard (accelerate fsdp_version 2, torchtune, torchtitan; "
                   "default), 1 = FullyShardedDataParallel (accelerate before fsdp_version 2, Lightning 2.x)")
    g.add_argument("--optimizer-kernel", choices=get_args(OptimizerKernel), default=None,
                   help="how torch's AdamW runs on the GPU: fused (default; torch fused=True, HF adamw_torch_fused, "
                   "torchtune fused: True, DeepSpeed FusedAdam) or foreach (torch.optim.AdamW's own default, HF "
                   f"adamw_torch before torch 2.8): {FOREACH_ADAMW_PASSES} passes over the states instead of "
                   f"{FUSED_ADAMW_PASSES} "
                   "(docs/speed.md S8c)")
    g.add_argument("--offload", choices=["none", "optimizer", "optimizer+params"], default=default(d.offload),
                   help="offload optimizer states (ZeRO >= 1) or also parameters (ZeRO-3) to CPU RAM" + dflt(d.offload))
    g.add_argument("--checkpointing", choices=get_args(Checkpointing), default=default(d.checkpointing),
                   help="activation checkpointing: none | full | selective (attention only) | op (torchtitan's per-op "
                   "SAC: matmul and attention outputs saved, every second matmul recomputed)" + dflt(d.checkpointing))
    g.add_argument("--checkpoint-every", type=positive_int, default=default(d.checkpoint_every), metavar="K",
                   help="checkpoint every K-th block only (default 1: all blocks)")
    g.add_argument("--reentrant", action=argparse.BooleanOptionalAction, default=None,
                   help="the HF Trainer's checkpointing re-enters (default) or not (--no-reentrant: "
                   "gradient_checkpointing_kwargs={'use_reentrant': False}); FSDP1 + LoRA only (docs/memory.md A9d)")
    g.add_argument("--attention", choices=get_args(Attention), default=default(d.attention),
                   help=f"attention kernel: sdpa | flash (FlashAttention-2) | fa3 (FlashAttention-3, Hopper) | "
                   f"fa4 (FlashAttention-4, Blackwell) | eager (default: {d.attention})")
    g.add_argument("--loss", choices=get_args(Loss), default=default(d.loss),
                   help="loss kernel: plain (fp32 logits) | chunked | liger (fused linear CE)" + dflt(d.loss))
    g.add_argument("--micro-batch", type=positive_int, default=default(d.micro_batch), metavar="N",
                   help=f"per-GPU micro-batch {dflt(d.micro_batch)}")
    g.add_argument("--grad-accum", type=positive_int, default=default(d.grad_accum), metavar="N",
                   help=f"gradient accumulation steps {dflt(d.grad_accum)}")
    g.add_argument("--seq", type=positive_int, default=d.seq_len, metavar="N",
                   help=f"sequence length in tokens (default: {d.seq_len})")
    g.add_argument("--packing", action=argparse.BooleanOptionalAction, default=default(d.packing),
                   help="pack sequences to full length (default: on)")
    g.add_argument("--lora-rank", type=positive_int, default=d.lora_rank, metavar="R",
                   help=f"LoRA rank (default: {d.lora_rank}, LLaMA-Factory's)")
    g.add_argument("--lora-alpha", type=positive_int, default=None, metavar="A",
                   help="LoRA alpha (default: 2 x rank)")
    g.add_argument("--lora-targets", default=d.lora_targets, metavar="LIST",
                   help="all-linear or a comma list, e.g. q_proj,v_proj (default: all-linear)")
    g.add_argument("--lora-dropout", type=unit_float, default=d.lora_dropout, metavar="P",
                   help="LoRA dropout; > 0 keeps a dropped copy of each adapted input (default: 0)")
    g.add_argument("--dora", action="store_true", help="DoRA: LoRA with magnitude vectors (peft use_dora)")
    g.add_argument("--lora-train-embeddings", action="store_true", help="also train embed_tokens (new tokens)")
    g.add_argument("--lora-train-lm-head", action="store_true", help="also train lm_head (new tokens)")
    g.add_argument("--freeze-layers", type=positive_int, default=d.freeze_layers, metavar="K",
                   help=f"freeze method: train the last K blocks (default: {d.freeze_layers})")
    g.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=d.double_quant,
                   help="QLoRA double quantisation of the block constants (default: on)")
    g.add_argument("--optimizer-in-backward", action="store_true",
                   help="step the optimizer per parameter during backward (needs --grad-accum 1)")
    g.add_argument("--activation-offload", action="store_true",
                   help="offload checkpointed block inputs to CPU (needs --checkpointing full)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (fused elementwise kernels)")
    g.add_argument("--fused-kernels", nargs="?", const="liger", default=None, choices=get_args(KernelLibrary),
                   metavar="LIB", help="fused Triton kernels, by library (a bare --fused-kernels is liger): "
                   + "; ".join(f"{k}: {v}" for k, v in KERNEL_LIBRARIES.items()))
    g.add_argument("--framework", choices=get_args(Framework), default=default(d.framework),
                   help="the trainer that runs the plan (its per-step overhead; megatron: Transformer Engine's fused "
                   "attention on Hopper+)" + dflt(d.framework))
    g.add_argument("--padding-efficiency", type=fraction_arg, default=d.padding_efficiency, metavar="F",
                   help="real tokens / processed positions, in (0, 1]: padding or unfilled packs "
                        "(default: 1.0, rows full; --dataset measures it)")
    r = parser.add_argument_group("recipe book" + (" (searched where a trainer runs them; each flag fixes it)" if search else ""))
    r.add_argument("--galore-rank", type=positive_int, default=None, metavar="R",
                   help="GaLore: project gradients to rank R (LLaMA-Factory use_galore; full fine-tuning, no ZeRO/FSDP)")
    r.add_argument("--galore-update-interval", type=positive_int, default=None, metavar="N",
                   help=f"GaLore: recompute the projection every N steps (default: {d.galore_update_interval})")
    r.add_argument("--galore-layerwise", action="store_true",
                   help="GaLore layer-wise: step each parameter in backward (one GPU, --grad-accum 1)")
    r.add_argument("--badam", action="store_true",
                   help="BAdam: train one decoder block at a time (LLaMA-Factory use_badam; one GPU or ZeRO-3, --recipe bf16)")
    r.add_argument("--lisa-layers", type=positive_int, default=None, metavar="N",
                   help="LISA: train N sampled blocks per interval (LMFlow; modelled, no config is written)")
    r.add_argument("--fp8", choices=get_args(Fp8), default=default(d.fp8),
                   help="FP8 training of the linear layers: tensorwise | rowwise (torchao) | te (TransformerEngine); "
                        "Ada / Hopper / Blackwell / MI300X only" + dflt(d.fp8))
    r.add_argument("--tp", type=positive_int, default=default(d.tp), metavar="T",
                   help="tensor-parallel degree within a node (torchtitan, with --fsdp full-shard)" + dflt(d.tp))
    r.add_argument("--cp", type=positive_int, default=default(d.cp), metavar="C",
                   help="context-parallel degree (torchtitan ring attention, with --fsdp full-shard)" + dflt(d.cp))
    r.add_argument("--async-tp", action="store_true", help="torchtitan asynchronous TP (needs --tp > 1 and --compile)")
    g.add_argument("--allow-long-seq", action="store_true",
                   help="allow --seq beyond the model's max positions (you extend RoPE yourself)")


SETUP_FIELD_OF: dict[str, str] = {
    name: ("seq_len" if name == "seq" else name)
    for name in ("method", "recipe", "optimizer", "optimizer_kernel", "zero", "fsdp", "fsdp_version", "offload",
                 "checkpointing", "checkpoint_every", "reentrant",
                 "attention", "loss", "micro_batch", "grad_accum", "seq", "packing", "lora_rank", "lora_alpha",
                 "lora_targets", "lora_dropout", "dora", "lora_train_embeddings", "lora_train_lm_head",
                 "freeze_layers", "double_quant", "optimizer_in_backward", "activation_offload", "compile",
                 "allow_long_seq", "fused_kernels", "framework", "padding_efficiency", "galore_rank",
                 "galore_update_interval", "galore_layerwise", "badam", "lisa_layers", "fp8", "tp", "cp", "async_tp")
}
"""argparse destination of every Setup flag (:func:`add_setup_args`) -> the Setup field it sets."""


def explicit(args: argparse.Namespace) -> frozenset[str]:
    """The destinations the command line set (:func:`planner.app.cli.explicit_dests`); empty when a command
    is called without the CLI."""
    return getattr(args, "_explicit", frozenset())


def explicit_setup_fields(args: argparse.Namespace) -> frozenset[str]:
    """The Setup fields whose flags the command line gave, whatever their values."""
    return frozenset(SETUP_FIELD_OF[d] for d in explicit(args) if d in SETUP_FIELD_OF)


def refuse_given(args: argparse.Namespace, dests: tuple[str, ...] | list[str], why: str) -> None:
    """The one rule for flags, for flags that a whole mode ignores (``--global-batch`` with ``--plan``, setup
    flags with ``--matrix``): refuse the first one given, naming it and why."""
    for d in dests:
        if d in explicit(args):
            raise CliError(f"--{d.replace('_', '-')} is not used {why}; drop it")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (integer bytes) instead of tables")


def resolve_target(args: argparse.Namespace) -> tuple[ModelProfile, Cluster | None]:
    model = get_model(args.model)
    cluster = None
    if getattr(args, "gpus", None) is not None:  # an empty --gpus "" is a bad spec, not an absent one
        cluster = parse_cluster(args.gpus, args.host_ram_gib, args.inter_node_gb_s)
    return model, cluster


def setup_from_args(args: argparse.Namespace, cluster: Cluster, model: ModelProfile | None = None) -> Setup:
    """A fully resolved Setup from explicit flags (``plan estimate`` and friends). With ``model``, an
    impossible setup is refused first (:func:`planner.engine.rules.validate_setup`), then a flag the setup
    ignores (:func:`planner.engine.rules.check_used`)."""
    zero = args.zero if args.zero is not None else 0
    recipe = args.recipe or default_recipe(cluster.gpu.supports_bf16, zero, args.fsdp)
    fields = dict(
        recipe=recipe, method=args.method, optimizer=args.optimizer, zero=zero, fsdp=args.fsdp,
        fsdp_version=args.fsdp_version or 2, optimizer_kernel=args.optimizer_kernel or "fused",
        offload=args.offload, checkpointing=args.checkpointing, checkpoint_every=args.checkpoint_every,
        reentrant=True if args.reentrant is None else args.reentrant,
        attention=args.attention, loss=args.loss, micro_batch=args.micro_batch, grad_accum=args.grad_accum,
        seq_len=args.seq, packing=args.packing, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        lora_dropout=args.lora_dropout, dora=args.dora, lora_train_embeddings=args.lora_train_embeddings,
        lora_train_lm_head=args.lora_train_lm_head, freeze_layers=args.freeze_layers,
        double_quant=args.double_quant, optimizer_in_backward=args.optimizer_in_backward,
        activation_offload=args.activation_offload, compile=args.compile, allow_long_seq=args.allow_long_seq,
        fused_kernels=bool(args.fused_kernels), kernel_library=args.fused_kernels or "liger", framework=args.framework,
        padding_efficiency=args.padding_efficiency,
        galore_rank=args.galore_rank, galore_layerwise=args.galore_layerwise, badam=args.badam,
        lisa_layers=args.lisa_layers, fp8=args.fp8, tp=args.tp, cp=args.cp, async_tp=args.async_tp,
    )
    if args.galore_update_interval is not None:
        fields["galore_update_interval"] = args.galore_update_interval
    try:
        setup = Setup(**fields)
    except Exception as e:  # pydantic ValidationError -> one line
        raise CliError(f"invalid setup: {validation_message(e)}") from None
    if model is not None:
        validate_setup(setup, model, cluster)
    check_used([setup], explicit_setup_fields(args))  # the one rule for flags the setup ignores
    return setup


def setup_with_overrides(base: dict[str, Any], args: argparse.Namespace, cluster: Cluster, where: str,
                         model: ModelProfile) -> Setup:
    """A plan file's setup with the setup flags given on the command line applied on top (``--plan`` with
    ``plan configs`` / ``plan validate``): each given flag replaces the plan's value; what the plan derived
    from a replaced value is derived again (the recipe from --zero / --fsdp unless --recipe is given, the LoRA
    alpha from --lora-rank unless --lora-alpha is given). Flags the resulting setup ignores are refused, as
    everywhere (:func:`planner.engine.rules.check_used`)."""
    given = explicit_setup_fields(args)
    dest_of = {f: d for d, f in SETUP_FIELD_OF.items()}
    fields = dict(base)
    for f in given:
        fields[f] = getattr(args, dest_of[f])
    if "fsdp" in given and fields.get("fsdp") and "zero" not in given:
        fields["zero"] = 0
    if "zero" in given and fields.get("zero") and "fsdp" not in given:
        fields["fsdp"] = None
    if given & {"zero", "fsdp"} and "recipe" not in given:
        fields["recipe"] = default_recipe(cluster.gpu.supports_bf16, fields.get("zero", 0), fields.get("fsdp"))
    if "lora_rank" in given and "lora_alpha" not in given:
        fields["lora_alpha"] = None  # Setup: 2 x rank
    if "activation_offload" in given and fields.get("activation_offload") and "checkpointing" not in given:
        fields["checkpointing"] = "full"
    try:
        setup = Setup(**fields)
    except Exception as e:  # pydantic ValidationError -> one line
        raise CliError(f"{where}invalid setup: {validation_message(e)}") from None
    validate_setup(setup, model, cluster)
    check_used([setup], given)
    return setup


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _checked(check: Any, text: str, what: str) -> float:
    """An argparse type that parses a number and applies the engine's own rule (one rule, one place)."""
    try:
        return check(float(text))
    except ValueError as e:  # float() failed, or the rule's InputError (a ValueError)
        msg = str(e) if isinstance(e, InputError) else f"expected a number, got {text!r}"
        raise argparse.ArgumentTypeError(msg.replace(f"{what} ", "", 1) if isinstance(e, InputError) else msg) from None


def headroom_arg(text: str) -> float:
    return _checked(check_headroom, text, "headroom")


def efficiency_arg(text: str) -> float:
    return _checked(check_efficiency, text, "efficiency")


def add_headroom_arg(g: Any) -> None:
    g.add_argument("--headroom", type=headroom_arg, default=DEFAULT_HEADROOM, metavar="F",
                   help=f"fraction of GPU memory kept free, in (0, 0.9) (default: {DEFAULT_HEADROOM})")


def add_efficiency_arg(g: Any) -> None:
    g.add_argument("--efficiency", type=efficiency_arg, metavar="F",
                   help="override the achievable fraction of peak FLOPS, in (0, 1] (default: calibrated, else the "
                        "GPU's default)")


def add_host_optimizer_arg(g: Any) -> None:
    from planner.engine.speed.offload import HOST_OPTIMIZER_PUBLISHED_GB_S

    lo, hi = HOST_OPTIMIZER_PUBLISHED_GB_S
    g.add_argument("--host-optimizer-gbs", type=positive_float, metavar="GBS",
                   help="what one node's CPU optimizer step streams, in GB/s, under CPU offload (eq. S15: DeepSpeed's CPU "
                        f"Adam, torch AdamW for FSDP). It depends on the host's DRAM, cores and software: published runs "
                        f"imply {lo:g}-{hi:g} GB/s (docs/speed.md S15); default: the corpus fit")


def calibration_book_from(args: argparse.Namespace):  # noqa: ANN201
    """The calibration book, with ``--host-optimizer-gbs`` (when given) in place of the fitted host-optimizer
    throughput of both implementations; the speed parameters' source line says so."""
    import dataclasses

    from planner.app.calibration_io import load_calibration_book

    book = load_calibration_book()
    gbs = getattr(args, "host_optimizer_gbs", None)
    if gbs is None:
        return book
    sp = book.speed
    speed = sp.model_copy(update={
        "host_optimizer_bytes_per_s": {k: gbs * 1e9 for k in ("deepspeed", "fsdp")},
        "fitted": tuple(f for f in sp.fitted if not f.startswith("host_optimizer_bytes_per_s")),
        "source": f"{sp.source}; host optimizer {gbs:g} GB/s per node given (--host-optimizer-gbs)",
    })
    return dataclasses.replace(book, speed=speed)


def add_search_args(g: argparse._ArgumentGroup) -> None:
    """--global-batch, --headroom and --host-optimizer-gbs, shared by ``plan`` and ``plan configs`` (so their
    rankings agree)."""
    g.add_argument("--global-batch", type=positive_int, metavar="N",
                   help="sequences per optimizer step, all GPUs (default: 64, rounded to a multiple of the GPU count)")
    add_headroom_arg(g)
    add_host_optimizer_arg(g)


SEARCHED = ("method", "recipe", "optimizer", "zero", "offload", "checkpointing", "loss", "micro_batch", "grad_accum", "packing",
            "fp8", "tp", "cp", "galore_rank", "galore_update_interval", "lisa_layers")
"""Setup flags whose absence lets the search choose."""


def fixed_from_args(args: argparse.Namespace) -> dict:
    """The Setup fields the user fixed on the command line."""
    fixed: dict = {"seq_len": args.seq}
    for name in SEARCHED:
        v = getattr(args, name, None)
        if v is not None:
            fixed[name] = v
    if args.fsdp:
        fixed["fsdp"] = args.fsdp
        fixed.setdefault("zero", 0)
    for name in ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "freeze_layers", "double_quant",
                 "attention", "checkpoint_every", "framework", "padding_efficiency", "fsdp_version", "optimizer_kernel",
                 "reentrant"):
        v = getattr(args, name, None)
        if v is not None:
            fixed[name] = v
    for flag in ("dora", "lora_train_embeddings", "lora_train_lm_head", "optimizer_in_backward",
                 "activation_offload", "compile", "allow_long_seq", "galore_layerwise", "badam", "async_tp"):
        if getattr(args, flag, False):
            fixed[flag] = True
    if getattr(args, "fused_kernels", None):
        fixed["fused_kernels"] = True
        fixed["kernel_library"] = args.fused_kernels
    if args.activation_offload:
        fixed.setdefault("checkpointing", "full")
    if args.optimizer_in_backward or getattr(args, "galore_layerwise", False):
        fixed.setdefault("grad_accum", 1)
    if fixed.get("tp", 1) > 1 or fixed.get("cp", 1) > 1:
        fixed.setdefault("fsdp", "full-shard")
        fixed.setdefault("zero", 0)
    return fixed


def search_request(args: argparse.Namespace, **kw: Any):  # noqa: ANN201
    """The SearchRequest the flags describe, with the calibration book (``plan`` and ``plan configs``, so
    their rankings agree)."""
    from planner.search.rank import SearchRequest

    return SearchRequest(fixed=fixed_from_args(args), global_batch=args.global_batch, headroom=args.headroom,
                         calibration=calibration_book_from(args), explicit=explicit_setup_fields(args), **kw)
