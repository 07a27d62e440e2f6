"""``PLAN.md`` (the plan in words) and ``plan.json`` (``Plan.to_json()``, the input of ``plan validate``)."""

from __future__ import annotations

import json

from planner.emit import deepspeed as ds
from planner.emit.common import TRAINERS, Emitted, NotExpressible, Target, gib, header_lines
from planner.plan_file import model_keys
from planner.units import gib_num
from planner.engine.results import CATEGORIES, PHASES
from planner.engine.setup import ATTENTION, CHECKPOINTING, FP8, LOSSES, METHODS, OPTIMIZERS, RECIPES

FILENAME = "PLAN.md"
JSON_FILENAME = "plan.json"

FILE_ROLES: dict[str, str] = {
    "PLAN.md": "this file: the plan in words",
    "plan.json": "the plan (tuneplan's JSON contract); `plan validate --plan plan.json` checks it on the GPUs",
    "launch.sh": "checks the plan, then starts the trainer you name (`bash launch.sh MODE`)",
    ds.HF_FILENAME: "DeepSpeed config, HF-integration flavour (`\"auto\"` filled by transformers)",
    ds.EXPLICIT_FILENAME: "DeepSpeed config with every number written out (for the `deepspeed` launcher)",
    "accelerate_config.yaml": "accelerate launch config for the HF Trainer",
    "training_args.yaml": "transformers TrainingArguments (`HfArgumentParser(TrainingArguments).parse_yaml_file`)",
    "hf_model.yaml": "from_pretrained kwargs (dtype, attention, 4-bit config) and peft LoraConfig kwargs",
    "llamafactory.yaml": "LLaMA-Factory `llamafactory-cli train` config",
    "llamafactory_accelerate.yaml": "accelerate FSDP config used to launch LLaMA-Factory",
    "torchtune.yaml": "torchtune recipe config (`tune run`)",
    "torchtitan.toml": "torchtitan 0.2.2 job config (`torchrun -m torchtitan.train --job.config_file torchtitan.toml`)",
}

DEEPSPEED_CHOICES = [
    "`overlap_comm: true` at every stage: DeepSpeed's docs say the default is `false`, its code "
    "(`deepspeed/runtime/zero/config.py`, `overlap_comm_valid`) turns it on only at stage 3; the memory estimate "
    "counts the two reduce buckets overlap keeps in flight.",
    "`reduce_bucket_size` = h², `stage3_prefetch_bucket_size` = 0.9·h², `stage3_param_persistence_threshold` = 10·h "
    "(h = hidden size): the values transformers fills for `\"auto\"` (`integrations/deepspeed.py`), written out in "
    "the explicit file. DeepSpeed's own defaults disagree between docs and code (prefetch: docs table 5e8, code "
    "5e7; persistence: docs example 1e6, docs table and code 1e5), so neither default is relied on.",
    "`stage3_max_live_parameters` and `stage3_max_reuse_distance` = 1e9 (docs and code agree), "
    "`stage3_gather_16bit_weights_on_model_save: true` so that `save_model` writes a usable 16-bit checkpoint.",
    "`gradient_clipping` 1.0, DeepSpeed's and the HF Trainer's default, written so both sides agree.",
    "Comments: JSON has none, so the DeepSpeed files carry a top-level `\"_comment\"` list; DeepSpeed 0.19.8 ignores "
    "unknown top-level keys but refuses them inside every block (pydantic `extra=\"forbid\"`), so it appears only "
    "there. `plan.json` carries no comment: it is the plan as `plan validate` reads it.",
]


def plan_json(t: Target) -> str:
    """``Plan.to_json()`` plus the model's profile and local folder (:func:`planner.plan_file.model_keys`), so
    ``plan configs --plan`` and ``plan validate --plan`` re-read it anywhere."""
    return json.dumps({**t.plan.to_json(), **model_keys(t.model)}, indent=2) + "\n"


def _setup_words(t: Target) -> list[str]:
    s = t.setup
    gbatch = s.micro_batch * s.grad_accum * s.data_parallel(t.world_size)
    lines = [
        f"- **Method**: {METHODS[s.method]}"
        + (f" (rank {s.lora_rank}, alpha {s.lora_alpha}, targets {s.lora_targets}{', DoRA' if s.dora else ''})"
           if s.trains_adapters else "")
        + (f" (last {s.freeze_layers} blocks)" if s.method == "freeze" else ""),
        f"- **Precision recipe** `{s.recipe}`: {RECIPES[s.recipe]}",
        f"- **Sharding**: {s.sharding_label}; offload: {s.offload}",
        f"- **Optimizer** `{s.optimizer}`: {OPTIMIZERS[s.optimizer]}"
        + ("; stepped inside backward" if s.optimizer_in_backward else ""),
        f"- **Activation checkpointing** `{s.checkpointing}`: {CHECKPOINTING[s.checkpointing]}"
        + (f", every {s.checkpoint_every} blocks" if s.checkpoint_every > 1 else "")
        + ("; checkpointed inputs offloaded to CPU RAM" if s.activation_offload else ""),
        f"- **Batch**: micro-batch {s.micro_batch} x accumulation {s.grad_accum} x "
        f"{s.data_parallel(t.world_size)} data-parallel rank(s) = "
        f"{gbatch} sequences of {s.seq_len} tokens per optimizer step"
        + (" (packed)" if s.packing else " (not packed: padding costs extra)"),
        f"- **Kernels**: attention `{s.attention}` ({ATTENTION[s.attention]}); loss `{s.loss}` ({LOSSES[s.loss]})"
        + ("; torch.compile" if s.compile else ""),
    ]
    if s.method == "qlora":
        lines.append(f"- **Quantisation**: NF4 base, double quantisation {'on' if s.double_quant else 'off'}")
    if s.galore_rank is not None:
        lines.append(f"- **GaLore**: rank {s.galore_rank}, projection refreshed every {s.galore_update_interval} steps"
                     + (", layer-wise (each parameter stepped in backward)" if s.galore_layerwise else ""))
    if s.badam:
        lines.append("- **BAdam**: one decoder block trains at a time (layer mode); embeddings and LM head frozen")
    if s.lisa_layers:
        lines.append(f"- **LISA**: {s.lisa_layers} sampled blocks per interval, embeddings and LM head always")
    if s.fp8 != "none":
        lines.append(f"- **FP8** `{s.fp8}`: {FP8[s.fp8]}")
    if s.tp > 1 or s.cp > 1:
        lines.append(f"- **Model parallelism**: tensor parallel {s.tp}{' (async)' if s.async_tp else ''} x context "
                     f"parallel {s.cp} within the FSDP2 mesh; {s.data_parallel(t.world_size)} data-parallel ranks")
    return lines


def _hparam_lines(t: Target) -> list[str]:
    """Every hyper-parameter the configs carry, with its reason and source (planner.engine.hparams)."""
    from planner.engine.hparams import OVERRIDE_FLAGS

    hp = t.hp
    out = ["| hyper-parameter | value | why (source) |", "|---|---|---|"]
    for name, item in hp.items():
        value = "off" if item.value is None else f"`{item.value}`"
        out.append(f"| {name.replace('_', ' ')} | {value} | {item.comment} |")
    flags = ", ".join(f"`{f}`" for f in OVERRIDE_FLAGS.values())
    out += ["", f"Override any of them on `plan configs` ({flags}; rank, alpha and dropout with `--lora-rank`, "
            "`--lora-alpha`, `--lora-dropout`, which change the memory estimate)."]
    if hp.total_steps:
        out.append(f"The run: {hp.total_steps:,} optimizer steps ({hp.epochs.value:g} epochs of the measured dataset).")
    return out


def _memory_table(t: Target) -> list[str]:
    m = t.plan.memory
    out = ["| per GPU at the peak | GiB | what it holds |", "|---|---:|---|"]
    for k, what in CATEGORIES.items():
        v = m.categories[k]
        if v:
            out.append(f"| {k.replace('_', ' ')} | {gib_num(v)} | {what} |")
    out.append(f"| **peak ({m.peak_phase.replace('_', ' ')})** | **{gib_num(m.peak_bytes)}** | "
               f"of {gib(m.capacity_bytes)} on {m.gpu}; headroom {gib(t.plan.headroom_bytes)} |")
    out += ["", "| phase | GiB |", "|---|---:|"]
    out += [f"| {ph.replace('_', ' ')} | {gib_num(m.phases[ph])} |" for ph in PHASES]
    out += ["", f"Host RAM per node: {gib(m.host_bytes)}"
            + "".join(f"; {k.replace('_', ' ')} {gib(v)}" for k, v in m.host_categories.items() if v) + "."]
    return out


def _speed_lines(t: Target) -> list[str]:
    sp = t.plan.speed
    parts = ", ".join(f"{k} {v:.3f} s" for k, v in sp.breakdown_s.items())
    return [
        f"- {sp.tokens_per_s:,.0f} tokens/s on {sp.world_size} GPU(s) ({sp.tokens_per_s_per_gpu:,.0f} per GPU), "
        f"MFU {sp.mfu:.1%} ({sp.calibration})",
        f"- one optimizer step: {sp.step_s:.3f} s ({parts}), {sp.tokens_per_step:,} tokens",
    ]


def plan_markdown(t: Target, emitted: list[Emitted], refused: list[NotExpressible], files: list[str]) -> str:
    """The plan in words. ``files`` is every file written, ``refused`` the trainers that cannot run the plan."""
    p = t.plan
    head = header_lines(t, "PLAN.md: the plan in words", "bash launch.sh")
    out = ["<!--", *head, "-->", "", f"# Plan {p.rank}: {t.model.name} on {t.cluster.label()}", ""]
    out += [f"`{t.setup.short()}`", ""]
    out += ["## Setup", "", *_setup_words(t), ""]
    out += ["## Memory per GPU (GiB = 2^30 bytes)", "", *_memory_table(t), ""]
    out += ["## Expected speed", "", *_speed_lines(t), ""]
    out += ["## Hyper-parameters", "", *_hparam_lines(t), ""]
    out += ["## What was traded", ""]
    out += [f"- {r}" for r in p.reasons] or ["- (no search reasons recorded: this plan was not ranked against others)"]
    out.append("")
    out += ["## Files", "", "| file | what it is |", "|---|---|"]
    out += [f"| `{f}` | {FILE_ROLES.get(f, '')} |" for f in files]
    out.append("")
    out += ["## How to run", ""]
    out += [f"- `bash launch.sh {m}`: " + "; ".join(f"`{c}`" for c in cmds) for m, cmds in _modes(emitted).items()]
    out += [
        "- `launch.sh` first runs `plan validate --plan plan.json` (skip with `SKIP_VALIDATE=1`).",
        "- HF modes run your script: `TRAIN_SCRIPT=train.py bash launch.sh hf`. It should load the model with "
        "`hf_model.yaml` (`AutoModelForCausalLM.from_pretrained(model_name_or_path, **from_pretrained)`, "
        "`BitsAndBytesConfig(**quantization_config)`, `peft.LoraConfig(**lora)`) and parse "
        "`training_args.yaml` with `HfArgumentParser(TrainingArguments).parse_yaml_file`.",
    ]
    if t.multi_node:
        out.append(f"- Multi-node ({t.cluster.nodes} nodes): on every node set `NODE_RANK` (0..{t.cluster.nodes - 1}) "
                   "and `MASTER_ADDR` (the rank-0 node), optionally `MASTER_PORT` (29500), then run the same command.")
    out.append("")
    notes = [(e.trainer, n) for e in emitted for n in e.notes]
    if notes or refused:
        out += ["## Where a trainer differs from the plan", ""]
        out += [f"- **{tr}**: {n}" for tr, n in notes]
        out += [f"- **{r.trainer}**: not expressible: {r.reason}" for r in refused]
        out.append("")
    if any(ds.HF_FILENAME in e.files for e in emitted):
        out += ["## DeepSpeed values written explicitly", "", *[f"- {c}" for c in DEEPSPEED_CHOICES], ""]
    assumptions = list(dict.fromkeys([*p.memory.assumptions, *p.speed.assumptions]))
    if assumptions:
        out += ["## Assumptions of the estimate", "", *[f"- {a}" for a in assumptions], ""]
    out += ["## Trainers", "", *[f"- `{k}`: {v}" for k, v in TRAINERS.items()], ""]
    if t.command:
        out += ["## Regenerate", "", f"    {t.command}", ""]
    return "\n".join(out)


def _modes(emitted: list[Emitted]) -> dict[str, list[str]]:
    return {m: cmds for e in emitted for m, cmds in e.launch.items()}
