"""Which setups can run: :func:`validate_setup` rejects impossible combinations with one-line
:class:`~planner.engine.setup.SetupError` messages. The single place those rules live; the search, the
estimate, configs and validation all go through it (via :func:`planner.engine.evaluate.evaluate`).
"""

from __future__ import annotations

from planner.engine.lora_targets import lora_targets
from planner.engine.setup import Setup, SetupError
from profiles.cluster import Cluster
from profiles.schema import ModelProfile


def validate_setup(setup: Setup, model: ModelProfile, cluster: Cluster) -> None:
    """Reject impossible combinations with one clear line each (raises :class:`SetupError`)."""
    gpu = cluster.gpu
    if setup.fsdp is not None and setup.zero != 0:
        raise SetupError(f"choose ZeRO or FSDP, not both (got --zero {setup.zero} and --fsdp {setup.fsdp})")
    if setup.recipe in ("deepspeed-bf16", "bf16", "hf-amp") and not gpu.supports_bf16:
        raise SetupError(
            f"recipe {setup.recipe!r} needs bf16, which {gpu.name} lacks; use --recipe fp16-amp"
        )
    if setup.recipe == "deepspeed-bf16" and setup.fsdp is not None:
        raise SetupError("recipe 'deepspeed-bf16' is DeepSpeed's; with --fsdp use --recipe hf-amp or bf16")
    if setup.zero > 0 and setup.recipe in ("hf-amp", "bf16"):
        raise SetupError(
            f"recipe {setup.recipe!r} is not what DeepSpeed runs under ZeRO-{setup.zero} (it keeps an fp32 master); "
            "use --recipe deepspeed-bf16 (or fp16-amp on GPUs without bf16)"
        )
    if setup.attention == "flash" and not gpu.supports_flash_attention:
        raise SetupError(
            f"FlashAttention-2 does not run on {gpu.name} ({gpu.arch}; it needs Ampere or newer); "
            "use --attention sdpa"
        )
    if setup.offload == "optimizer+params" and not (setup.zero == 3 or setup.fsdp == "full-shard"):
        raise SetupError(
            "parameter offload needs ZeRO-3 (or FSDP full-shard); got "
            f"{setup.sharding_label}; use --zero 3 or --offload optimizer"
        )
    if setup.offload == "optimizer" and setup.zero == 0 and setup.fsdp is None:
        raise SetupError("optimizer offload needs ZeRO-1/2/3 or FSDP; got DDP; use --zero 2")
    if setup.optimizer_in_backward and setup.grad_accum != 1:
        raise SetupError(
            f"--optimizer-in-backward frees each gradient as it is made, so it cannot accumulate; "
            f"got --grad-accum {setup.grad_accum}; use --grad-accum 1"
        )
    if setup.optimizer_in_backward and (setup.zero or setup.fsdp):
        raise SetupError("--optimizer-in-backward is single-device or DDP only (torchtune); drop --zero/--fsdp")
    if setup.method == "qlora" and setup.zero == 3 and setup.offload != "none":
        raise SetupError("QLoRA with ZeRO-3 offload is not supported by bitsandbytes/DeepSpeed; use --offload none")
    if setup.method in ("full", "freeze") and setup.dora:
        raise SetupError(f"--dora applies to LoRA/QLoRA, not --method {setup.method}; use --method lora")
    if setup.method in ("full", "freeze") and setup.optimizer in ("paged-adamw", "paged-adamw-8bit") and setup.zero:
        raise SetupError(f"{setup.optimizer} is a bitsandbytes paged optimizer; DeepSpeed ZeRO cannot shard it; "
                         "use --zero 0")
    if setup.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit") and setup.offload != "none":
        raise SetupError(f"--optimizer {setup.optimizer} cannot be offloaded by DeepSpeed; use --optimizer adamw")
    if setup.method == "freeze" and setup.freeze_layers > model.num_layers:
        raise SetupError(f"--freeze-layers {setup.freeze_layers} exceeds the model's {model.num_layers} layers")
    if setup.seq_len > model.max_positions and not setup.allow_long_seq:
        raise SetupError(
            f"--seq {setup.seq_len} exceeds {model.name}'s max positions {model.max_positions}; "
            "pass --allow-long-seq if you extend RoPE yourself"
        )
    if setup.activation_offload and setup.checkpointing == "none":
        raise SetupError("--activation-offload offloads checkpointed block inputs; it needs --checkpointing full")
    if setup.recipe == "fp16-amp" and gpu.fp16_tflops is None:
        raise SetupError(f"{gpu.name} has no fp16 tensor cores")
    if setup.trains_adapters:
        lora_targets(model, setup.lora_targets)  # names the model lacks, and what peft itself refuses
    elif setup.lora_train_embeddings or setup.lora_train_lm_head:
        raise SetupError("--lora-train-embeddings/--lora-train-lm-head apply to LoRA/QLoRA only")


ADAPTER_FIELDS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout")
"""Adapter settings a non-adapter setup ignores (``--dora`` and ``--lora-train-*`` with full fine-tuning are
refused by :func:`validate_setup` instead, as impossible)."""


def ignored_fields(setup: Setup) -> dict[str, tuple[str, str]]:
    """The Setup fields ``setup`` does not use: field -> (what would use it, what the setup has instead). The
    one list behind the one rule for flags (:func:`check_used`: an explicitly given flag that the setup
    ignores is refused). Fields that make a setup impossible rather than unused (``--dora`` with full
    fine-tuning, ``--activation-offload`` without checkpointing) are :func:`validate_setup`'s."""
    out: dict[str, tuple[str, str]] = {}
    method = f"--method {setup.method}"
    if not setup.trains_adapters:
        for f in ADAPTER_FIELDS:
            out[f] = ("--method lora or qlora", method)
    if setup.method != "freeze":
        out["freeze_layers"] = ("--method freeze", method)
    if setup.method != "qlora":
        out["double_quant"] = ("--method qlora (its NF4 block constants)", method)
    if setup.checkpointing == "none":
        out["checkpoint_every"] = ("--checkpointing full or selective", "--checkpointing none")
    return out


def flag_of(field: str) -> str:
    """The command-line flag of a Setup field (``seq_len`` is ``--seq``)."""
    return "--seq" if field == "seq_len" else "--" + field.replace("_", "-")


def check_used(setups: list[Setup], explicit: set[str] | frozenset[str], searched: bool = False) -> None:
    """The one rule for flags: a Setup field given explicitly that every one of ``setups`` ignores (one setup
    for ``plan estimate`` / ``trace`` / ``validate`` and a plan file's overrides; every searched family for
    ``plan`` and ``plan configs``) is refused with one line naming it. Raises :class:`SetupError`."""
    for field in sorted(explicit):
        why = [ignored_fields(s).get(field) for s in setups]
        if not setups or not all(why):
            continue
        flag, (needs, has) = flag_of(field), why[0]  # type: ignore[misc]
        if searched:
            raise SetupError(f"{flag} is not used by any plan the search tries: it applies to {needs}; "
                             f"drop {flag} or ask for {needs}")
        raise SetupError(f"{flag} is not used: it applies to {needs}, and the setup has {has}; drop {flag}")
