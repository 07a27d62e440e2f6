"""torchtitan job config (TOML) for a plan: FSDP2, float8, tensor and context parallelism, as torchtitan 0.2.2
runs them (``torchrun -m torchtitan.train --job.config_file torchtitan.toml``).

0.2.2 is pinned because it is the last release that reads TOML: 0.3.0 builds its config from Python functions
(``--module`` / ``--config``, ``torchtitan/config/manager.py``). Every key is a field of 0.2.2's ``JobConfig``
(``torchtitan/config/job_config.py`` at tag v0.2.2 = 73a0e6979dd10b6b1904098eb3c8f62c18ab87ce; the list with types
and defaults is ``tests/planner/emit/data/torchtitan_jobconfig_0.2.2.json``), and every ``Literal`` value one of its
choices: the TOML loader itself does not check those (``ConfigManager._dict_to_dataclass`` refuses unknown keys,
tyro only warns on a bad Literal). What 0.2.2 checks only when training starts, this module checks now:
``dp x cp x tp == world`` (``ParallelDims._validate``), ``seq_len % (tp x 2 x cp) == 0``
(``parallelize_llama``), float8 all-gather with tensorwise scaling only (``Float8LinearConverter``), async TP
needs ``compile`` (``maybe_enable_async_tp``), and accumulation off with ``early_step_in_backward``, which 0.2.2
does not refuse although its hooks would step on every micro-batch (``train.py`` loops over
``gradient_accumulation_steps``; ``components/optimizer.py`` ``OptimizersInBackwardContainer``).

Fine-tuning: weights load from the Hugging Face folder (``checkpoint.initial_load_in_hf``, docs/checkpoint.md) and
the last checkpoint is written back as HF safetensors (``last_save_in_hf``). torchtitan 0.2.2's data loaders are
C4-style text (``hf_datasets/text_datasets.py``): no chat template and no prompt masking, so instruction data
trains as continued pre-training unless you register a dataset; PLAN.md says so.

Not expressible (a reason instead of a file): LoRA / QLoRA / freeze (0.2.2 has no adapters), GaLore / BAdam /
LISA, DeepSpeed plans, optimizers other than AdamW, fp16, TransformerEngine FP8, chunked or Liger losses (0.2.2's
loss is a plain fp32 cross-entropy, ``components/loss.py``), activation offloading, optimizer-only CPU offload
(``enable_cpu_offload`` moves parameters, gradients and states together), eager attention, models without a
torchtitan flavor.
"""

from __future__ import annotations

from typing import Any

from planner.emit.common import ADAM_BETAS, ADAM_EPS, Emitted, Job, NotExpressible, Target, header_lines
from planner.emit.tomltext import dump
from planner.engine.setup import FLASH_KERNELS

TORCHTITAN_VERSION = "0.2.2"
FILENAME = "torchtitan.toml"
TORCHTITAN_MODELS: dict[str, tuple[str, str]] = {
    "Llama-3-8B": ("llama3", "8B"),
    "Llama-3.1-8B": ("llama3", "8B"),
    "Llama-3-70B": ("llama3", "70B"),
    "Llama-3.1-70B": ("llama3", "70B"),
    "Llama-3.3-70B": ("llama3", "70B"),
    "Llama-3.1-405B": ("llama3", "405B"),
    "Qwen3-0.6B": ("qwen3", "0.6B"),
    "Qwen3-1.7B": ("qwen3", "1.7B"),
    "Qwen3-4B": ("qwen3", "4B"),
    "Qwen3-8B": ("qwen3", "8B"),
    "Qwen3-14B": ("qwen3", "14B"),
    "Qwen3-32B": ("qwen3", "32B"),
}
"""Profile name -> (``model.name``, ``model.flavor``) of torchtitan 0.2.2 (``models/llama3/__init__.py``
``llama3_args``, ``models/qwen3/__init__.py`` ``qwen3_args``; dimensions checked against the profiles in the tests).
Llama 3.2 1B / 3B (tied embeddings) and Qwen2.5 have no flavor there."""
SCHEDULES: dict[str, str] = {"cosine": "cosine", "linear": "linear"}
"""tuneplan schedule -> ``lr_scheduler.decay_type`` (0.2.2: linear, sqrt, cosine after the warm-up)."""
DEFAULT_STEPS = 1000
"""``training.steps`` when the run's length is unknown (no ``--dataset``); torchtitan counts optimizer steps."""
WARMUP_STEPS = 100
"""``lr_scheduler.warmup_steps`` without a dataset (torchtitan's shipped llama3 configs warm up over 200 of 1000
steps; 100 keeps the 10 % of tuneplan's recommendation)."""


def check(t: Job) -> tuple[str, str]:
    """The model's (name, flavor), or :class:`NotExpressible` with the reason."""
    s, trainer = t.setup, "torchtitan"
    if s.method != "full" or s.subspace_optimizer != "none":
        raise NotExpressible(trainer, f"torchtitan {TORCHTITAN_VERSION} trains every parameter with AdamW (no LoRA, "
                             f"QLoRA, freeze, GaLore, BAdam or LISA); this plan is {s.method_label}")
    if s.zero:
        raise NotExpressible(trainer, f"the plan uses DeepSpeed ZeRO-{s.zero}; torchtitan shards with FSDP2 (re-plan "
                             "with --fsdp full-shard)")
    if s.recipe not in ("hf-amp", "bf16"):
        raise NotExpressible(trainer, f"torchtitan trains with fp32 weights and bf16 compute, or pure bf16, not recipe "
                             f"{s.recipe!r} (re-plan with --recipe hf-amp or bf16)")
    if s.optimizer != "adamw":
        raise NotExpressible(trainer, f"torchtitan {TORCHTITAN_VERSION} builds Adam or AdamW only, not {s.optimizer}")
    if s.fp8 == "te":
        raise NotExpressible(trainer, "torchtitan runs torchao float8, not TransformerEngine (re-plan with --fp8 "
                             "tensorwise or rowwise)")
    if s.loss != "plain":
        raise NotExpressible(trainer, f"torchtitan {TORCHTITAN_VERSION}'s loss is a plain fp32 cross-entropy "
                             f"(components/loss.py), not {s.loss} (re-plan with --loss plain)")
    if s.activation_offload:
        raise NotExpressible(trainer, f"torchtitan {TORCHTITAN_VERSION} has no activation offloading")
    if s.checkpointing == "selective":
        raise NotExpressible(trainer, "torchtitan has no attention-only recompute: its selective modes are per-op "
                             "(re-plan with --checkpointing op) or every k-th block (--checkpointing full "
                             "--checkpoint-every k)")
    if s.offload == "optimizer":
        raise NotExpressible(trainer, "torchtitan's enable_cpu_offload moves parameters, gradients and optimizer states "
                             "together (re-plan with --offload optimizer+params)")
    if s.attention == "eager":
        raise NotExpressible(trainer, "torchtitan's attention is SDPA or flex, not eager")
    if s.optimizer_in_backward and s.grad_accum != 1:
        raise NotExpressible(trainer, "early_step_in_backward steps on every micro-batch: the plan must not accumulate")
    entry = TORCHTITAN_MODELS.get(t.model.name)
    if entry is None:
        raise NotExpressible(trainer, f"torchtitan {TORCHTITAN_VERSION} has no flavor for {t.model.name} (mapped: "
                             f"{', '.join(TORCHTITAN_MODELS)})")
    world, mp = t.world_size, s.model_parallel
    if world % mp or (s.tp > 1 and t.cluster.gpus_per_node % s.tp):
        raise NotExpressible(trainer, f"tp {s.tp} x cp {s.cp} does not divide {world} GPUs within a node")
    if s.seq_len % (2 * s.tp * s.cp):
        raise NotExpressible(trainer, f"seq_len {s.seq_len} is not a multiple of tp x 2 x cp = {2 * s.tp * s.cp}")
    if s.async_tp and not s.compile:
        raise NotExpressible(trainer, "async TP needs torch.compile (re-plan with --compile)")
    return entry


def torchtitan_config(t: Target) -> dict[str, dict[str, Any]]:
    """The TOML as ``{section: {key: value}}`` in torchtitan's section order."""
    name, flavor = check(t)
    s, hp = t.setup, t.hp
    dp = s.data_parallel(t.world_size)
    assets = t.local_dir or f"./assets/hf/{t.model_path.split('/')[-1]}"
    steps = hp.total_steps or DEFAULT_STEPS
    warmup = max(1, round(hp.warmup_ratio.value * hp.total_steps)) if hp.total_steps else WARMUP_STEPS
    cfg: dict[str, dict[str, Any]] = {
        "job": {"dump_folder": f"./outputs/{t.slug}", "description": f"tuneplan: {t.model.name} {s.short()}"},
        "model": {"name": name, "flavor": flavor, "hf_assets_path": assets},
        "optimizer": {"name": "AdamW", "lr": float(hp.learning_rate.value), "beta1": ADAM_BETAS[0],
                      "beta2": ADAM_BETAS[1], "eps": ADAM_EPS, "weight_decay": float(hp.weight_decay.value),
                      "implementation": "foreach" if s.foreach_adamw else "fused",
                      "early_step_in_backward": s.optimizer_in_backward},
        "lr_scheduler": {"warmup_steps": warmup,
                         "decay_type": SCHEDULES.get(hp.scheduler.value, "linear")},
        "training": {
            "local_batch_size": s.micro_batch,
            "global_batch_size": s.micro_batch * s.grad_accum * dp,
            "seq_len": s.seq_len,
            "max_norm": float(hp.max_grad_norm.value),
            "steps": int(steps),
            "dataset": "c4",
            "dtype": "bfloat16" if s.recipe == "bf16" else "float32",
            "mixed_precision_param": "bfloat16",
            "mixed_precision_reduce": "float32",
            "enable_cpu_offload": s.offload == "optimizer+params",
        },
        "parallelism": {
            "data_parallel_replicate_degree": dp if s.fsdp is None else 1,
            "data_parallel_shard_degree": 1 if s.fsdp is None else -1,
            "fsdp_reshard_after_forward": "never" if s.fsdp == "shard-grad-op" else "default",
            "tensor_parallel_degree": s.tp,
            "enable_async_tensor_parallel": s.async_tp,
            "disable_loss_parallel": False,
            "context_parallel_degree": s.cp,
            "pipeline_parallel_degree": 1,
        },
        "checkpoint": {
            "enable": True,
            "folder": "checkpoint",
            "interval": 500,
            "initial_load_path": assets,
            "initial_load_in_hf": True,
            "initial_load_model_only": True,
            "last_save_model_only": True,
            "last_save_in_hf": True,
            "export_dtype": "bfloat16",
        },
        "activation_checkpoint": _activation_checkpoint(s),
        "compile": {"enable": s.compile, "components": ["model", "loss"] if s.compile_loss else ["model"]},
    }
    if s.fp8 != "none":
        cfg["model"]["converters"] = ["quantize.linear.float8"]
        tensorwise = s.fp8 == "tensorwise"
        cfg["quantize.linear.float8"] = {
            "recipe_name": None if tensorwise else "rowwise",
            "enable_fsdp_float8_all_gather": tensorwise and s.fsdp is not None,
            "precompute_float8_dynamic_scale_for_fsdp": tensorwise and s.fsdp is not None,
            "filter_fqns": ["output"],
        }
    return cfg


def _activation_checkpoint(s: Any) -> dict[str, Any]:
    if s.checkpointing == "none":
        return {"mode": "none"}
    if s.checkpointing == "full" and s.checkpoint_every == 1:
        return {"mode": "full"}
    if s.checkpointing == "full":
        return {"mode": "selective", "selective_ac_option": str(s.checkpoint_every)}
    # per-op SAC (docs/memory.md eq. A12); check() refuses the attention-only "selective" torchtitan does not have
    return {"mode": "selective", "selective_ac_option": "op"}


COMMENTS = {
    "model": "the model and, with converters, float8 linear layers",
    "model.hf_assets_path": "python scripts/download_hf_assets.py --repo_id <hf id> --assets tokenizer (and the weights)",
    "model.converters": "torchao float8 for the blocks' nn.Linear layers (the LM head is filtered below)",
    "optimizer.early_step_in_backward": "step each parameter in its post-accumulate hook: no gradient buffer",
    "training.local_batch_size": "the plan's micro-batch per data-parallel rank",
    "training.global_batch_size": "micro-batch x accumulation x data-parallel ranks (dp = GPUs / (tp x cp))",
    "training.seq_len": "multiple of tp x 2 x cp (parallelize_llama)",
    "training.dataset": "built-in C4 text: replace with your dataset (dataset_path or a registered dataset)",
    "training.dtype": "float32 = fp32 sharded weights and Adam with bf16 compute; bfloat16 = pure bf16",
    "training.enable_cpu_offload": "FSDP2 CPUOffloadPolicy: parameters, gradients and optimizer states in host RAM",
    "parallelism.data_parallel_shard_degree": "-1: every GPU not used by TP / CP (FSDP2)",
    "parallelism.tensor_parallel_degree": "TP within a node; FSDP across",
    "parallelism.enable_async_tensor_parallel": "overlaps TP collectives with matmuls (needs compile)",
    "parallelism.disable_loss_parallel": "false: logits stay sharded by vocabulary under TP",
    "parallelism.context_parallel_degree": "ring attention over sequence shards",
    "checkpoint.initial_load_in_hf": "load the Hugging Face safetensors in hf_assets_path / initial_load_path",
    "checkpoint.last_save_in_hf": "write the final model back as HF safetensors",
    "activation_checkpoint.mode": "the plan's activation checkpointing",
    "activation_checkpoint.selective_ac_option": "op: per-op SAC (matmul and attention outputs saved, every second "
    "matmul recomputed); an integer k: every k-th block fully checkpointed",
    "compile.enable": "torch.compile: needed for float8 to pay off and for async TP",
    "quantize.linear.float8.enable_fsdp_float8_all_gather": "gather weights in float8 (tensorwise only)",
    "quantize.linear.float8.filter_fqns": "keep the LM head (output) in bf16",
}


def notes(t: Target) -> list[str]:
    s = t.setup
    out = [
        f"torchtitan {TORCHTITAN_VERSION} (the last release with TOML job configs): its data loaders read C4-style "
        "text, so instruction data trains without a chat template or prompt masking unless you register a dataset",
        "weights load from the Hugging Face folder (checkpoint.initial_load_in_hf); download them and the tokenizer "
        "into model.hf_assets_path first",
    ]
    if not s.packing:
        out.append("torchtitan packs its text into full sequences: no padding, as if --packing were on")
    if s.optimizer_in_backward:
        out.append("early_step_in_backward: the hooks step and free every gradient in backward, so the gradient "
                   "clipping torchtitan still calls (training.max_norm) sees no gradients: no clipping in effect")
    if s.fp8 == "tensorwise" and s.tp > 1:
        out.append("torchtitan 0.2.2 keeps TP collectives in bf16 under float8 (its float8 TP styles look for the old "
                   "converter name 'float8'); the plan counted them in bf16 too")
    if s.attention in FLASH_KERNELS:
        out.append(f"torchtitan uses PyTorch SDPA (its flash backend); the plan assumed {FLASH_KERNELS[s.attention]}")
    return out


def launch_lines(t: Target) -> list[str]:
    node = (' --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"'
            if t.multi_node else "")
    return [f"torchrun{node} --nproc_per_node {t.cluster.gpus_per_node} -m torchtitan.train "
            f"--job.config_file {FILENAME}"]


def emit(t: Target) -> Emitted:
    cfg = torchtitan_config(t)
    header = header_lines(t, f"torchtitan {TORCHTITAN_VERSION} job config (torchrun -m torchtitan.train)",
                          "bash launch.sh torchtitan")
    text = dump(cfg, comments=COMMENTS, header=header)
    return Emitted("torchtitan", {FILENAME: text}, {"torchtitan": launch_lines(t)}, tuple(notes(t)))
