"""Which setups can run: :func:`validate_setup` rejects impossible combinations with one-line
:class:`~planner.engine.setup.SetupError` messages. The single place those rules live; the search, the
estimate, configs and validation all go through it (via :func:`planner.engine.evaluate.evaluate`).
"""

from __future__ import annotations

from planner.engine.lora_targets import lora_targets
from planner.engine.setup import FLASH_KERNEL_ARCH, FLASH_KERNELS, FP8_ARCHS, Setup, SetupError
from profiles.cluster import Cluster
from profiles.schema import ModelProfile


def validate_setup(setup: Setup, model: ModelProfile, cluster: Cluster) -> None:
    """Reject impossible combinations with one clear line each (raises :class:`SetupError`)."""
    gpu = cluster.gpu
    if model.derived is not None:
        from planner.engine.derived import unsupported

        why = unsupported(setup)
        if why is not None:
            raise SetupError(f"{model.name} is a derived profile (plan profiles add): its traced activation inventory "
                             f"does not cover {why} yet; drop that option")
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
    arch = FLASH_KERNEL_ARCH.get(setup.attention)
    if arch is not None and gpu.arch != arch:
        raise SetupError(
            f"{FLASH_KERNELS[setup.attention]} runs on {arch.capitalize()} GPUs only, not on {gpu.name} ({gpu.arch}); "
            "use --attention flash (FlashAttention-2) or sdpa"
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
    if setup.optimizer_in_backward and setup.zero:
        raise SetupError(
            f"--optimizer-in-backward steps each parameter in its own hook; DeepSpeed ZeRO-{setup.zero} owns the "
            "optimizer step (torchtune and torchtitan run it on one GPU or under FSDP2); use --fsdp full-shard"
        )
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
    if setup.checkpointing == "op":
        validate_op_sac(setup)
    if setup.activation_offload and setup.checkpointing == "none":
        raise SetupError("--activation-offload offloads checkpointed block inputs; it needs --checkpointing full")
    if setup.recipe == "fp16-amp" and gpu.fp16_tflops is None:
        raise SetupError(f"{gpu.name} has no fp16 tensor cores")
    validate_techniques(setup, model, cluster)
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
    if not setup.torch_adamw_on_gpu:
        has = (f"--optimizer {setup.optimizer}" if setup.optimizer != "adamw" else
               f"--offload {setup.offload}" if setup.offload != "none" else "--galore-rank (GaLore's own AdamW)")
        out["optimizer_kernel"] = ("torch's AdamW stepping on the GPU (--optimizer adamw, no --offload, no GaLore)",
                                   has)
    if setup.fsdp is None:
        out["fsdp_version"] = ("--fsdp full-shard or shard-grad-op", "no --fsdp")
    if setup.checkpointing in ("none", "op"):
        out["checkpoint_every"] = ("--checkpointing full or selective", f"--checkpointing {setup.checkpointing}")
    if not fsdp1_hf_lora_checkpointed(setup):
        out["reentrant"] = ("--fsdp-version 1 with --framework hf, --method lora or qlora and --checkpointing full "
                            "(eq. A9d)", _a9d_has(setup))
    return out


def fsdp1_hf_lora_checkpointed(setup: Setup) -> bool:
    """The setups whose memory depends on whether the HF Trainer's checkpointing re-enters (docs/memory.md eq. A9d):
    FSDP1 full-shard, HF Trainer, LoRA / QLoRA, full checkpointing."""
    return (setup.fsdp == "full-shard" and setup.fsdp_version == 1 and setup.method in ("lora", "qlora")
            and setup.checkpointing == "full" and setup.framework == "hf")


def _a9d_has(setup: Setup) -> str:
    if setup.fsdp != "full-shard" or setup.fsdp_version != 1:
        return "no --fsdp full-shard --fsdp-version 1"
    if setup.framework != "hf":
        return f"--framework {setup.framework}"
    if setup.method not in ("lora", "qlora"):
        return f"--method {setup.method}"
    return f"--checkpointing {setup.checkpointing}"


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
OP_SAC_FRAMEWORKS = ("torchtitan", "other")
"""Trainers that run torchtitan's per-op SAC policy: torchtitan (``selective_ac_option = "op"``) and a custom loop
that copies it. torchtune's ``ac_mode: selective`` takes an integer layer frequency only
(``torchtune/training/activations.py`` ``checkpoint_wrapper``: ``int(ac_style)``); the HF Trainer, LLaMA-Factory and
LitGPT checkpoint whole blocks."""


def validate_op_sac(setup: Setup) -> None:
    """``--checkpointing op``: who runs it and what the model of it covers (docs/memory.md eq. A12)."""
    if setup.framework not in OP_SAC_FRAMEWORKS:
        raise SetupError(f"--checkpointing op is torchtitan's per-op selective checkpointing; --framework "
                         f"{setup.framework} cannot run it (torchtune's selective mode is per layer); "
                         "use --framework torchtitan or --checkpointing full / selective")
    if setup.activation_offload:
        raise SetupError("--activation-offload offloads fully checkpointed block inputs; it needs --checkpointing full")
    if setup.dora:
        raise SetupError("--checkpointing op is not modelled with DoRA (its weight-norm matmuls); drop --dora")
    if setup.fp8 == "te":
        raise SetupError("--checkpointing op counts aten.mm calls, which TransformerEngine's FP8 linears do not make; "
                         "use --fp8 tensorwise or rowwise")


GALORE_OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "adafactor")
"""The optimizers LLaMA-Factory 0.9.5 builds a GaLore optimizer from (``train/trainer_utils.py``
``_create_galore_optimizer``: ``adamw_torch`` -> GaLoreAdamW, ``adamw_bnb_8bit`` / ``adamw_8bit`` / ``paged_adamw_8bit``
-> GaLoreAdamW8bit, ``adafactor`` -> GaLoreAdafactor; anything else raises)."""


def validate_techniques(setup: Setup, model: ModelProfile, cluster: Cluster) -> None:
    """The recipe-book techniques' own rules (issue 12): GaLore, BAdam, LISA, FP8, tensor and context
    parallelism, optimizer-step placement. One line each, naming the constraint and who imposes it."""
    gpu, world = cluster.gpu, cluster.world_size
    sub = setup.subspace_optimizer
    chosen = [n for n, on in (("GaLore", setup.galore_rank is not None), ("BAdam", setup.badam),
                              ("LISA", setup.lisa_layers is not None)) if on]
    if len(chosen) > 1:
        raise SetupError(f"choose one of GaLore, BAdam and LISA, not {' and '.join(chosen)} (LLaMA-Factory refuses combinations)")
    if setup.galore_layerwise and setup.galore_rank is None:
        raise SetupError("--galore-layerwise needs GaLore; add --galore-rank R (e.g. 128)")
    if sub != "none":
        name = {"galore": "GaLore", "badam": "BAdam", "lisa": "LISA"}[sub]
        if setup.method != "full":
            raise SetupError(f"{name} trains full weights; it applies to --method full, not {setup.method} "
                             "(LLaMA-Factory refuses it with LoRA)")
        if setup.offload != "none":
            raise SetupError(f"{name} keeps its optimizer on the GPU; drop --offload {setup.offload}")
        if setup.optimizer_in_backward:
            raise SetupError(f"{name} is not combined with --optimizer-in-backward"
                             + ("; use --galore-layerwise for GaLore's per-parameter step" if sub == "galore" else ""))
        if setup.fp8 != "none" or setup.model_parallel > 1:
            raise SetupError(f"{name} is not modelled with FP8 or tensor / context parallelism; drop --fp8 / --tp / --cp")
    if sub == "galore":
        if setup.zero or setup.fsdp:
            raise SetupError(f"GaLore projects each matrix's whole gradient; {setup.sharding_label} shards it "
                             "(LLaMA-Factory 0.9.5: 'GaLore and APOLLO are incompatible with DeepSpeed yet'); use --zero 0")
        if setup.optimizer not in GALORE_OPTIMIZERS:
            raise SetupError(f"GaLore wraps AdamW, 8-bit AdamW or Adafactor (LLaMA-Factory), not {setup.optimizer}; "
                             f"use --optimizer {' | '.join(GALORE_OPTIMIZERS)}")
        if setup.galore_layerwise and setup.grad_accum != 1:
            raise SetupError(f"layer-wise GaLore steps each parameter in backward and cannot accumulate "
                             f"(LLaMA-Factory: 'Per-layer GaLore does not support gradient accumulation'); got "
                             f"--grad-accum {setup.grad_accum}; use --grad-accum 1")
        if setup.galore_layerwise and world > 1:
            raise SetupError(f"layer-wise GaLore runs on one GPU only (LLaMA-Factory: 'Distributed training does not "
                             f"support layer-wise GaLore'); got {world} GPUs; drop --galore-layerwise")
    if sub == "badam":
        if world > 1 and setup.zero != 3:
            raise SetupError(f"BAdam on {world} GPUs needs DeepSpeed ZeRO-3 (LLaMA-Factory: 'Layer-wise BAdam only "
                             "supports DeepSpeed ZeRO-3 training'); use --zero 3 or one GPU")
        if setup.fsdp:
            raise SetupError("BAdam does not run under FSDP (LLaMA-Factory); use --zero 3 or one GPU")
        if world == 1 and setup.zero:
            raise SetupError("BAdam on one GPU runs without DeepSpeed; use --zero 0")
        if not setup.zero and setup.recipe != "bf16":
            raise SetupError(f"BAdam keeps the model in bf16 and an fp32 copy of the active block only (LLaMA-Factory "
                             f"'BAdam detected, remaining trainable params in half precision'); use --recipe bf16, "
                             f"not {setup.recipe}")
        if setup.optimizer != "adamw":
            raise SetupError(f"BAdam is modelled with AdamW as its base optimizer, not {setup.optimizer}; use --optimizer adamw")
    if sub == "lisa":
        if setup.lisa_layers > model.num_layers:
            raise SetupError(f"--lisa-layers {setup.lisa_layers} exceeds the model's {model.num_layers} layers")
        if setup.zero or setup.fsdp:
            raise SetupError("LISA is modelled on one GPU or under DDP (LMFlow toggles whole layers' requires_grad); "
                             "use --zero 0")
    if setup.fp8 != "none":
        if not (gpu.supports_fp8 and gpu.arch in FP8_ARCHS):
            raise SetupError(f"--fp8 {setup.fp8} needs FP8 tensor cores ("
                             + ("TransformerEngine: NVIDIA Ada, Hopper or Blackwell, or MI300X with ROCm's "
                                "TransformerEngine" if setup.fp8 == "te" else
                                "torchao float8: compute capability 8.9+ (Ada, Hopper, Blackwell) or MI300X")
                             + f"); {gpu.name} ({gpu.arch}) has none; use --fp8 none")
        if setup.method != "full":
            raise SetupError(f"--fp8 is modelled for full fine-tuning only, not --method {setup.method}")
        if setup.recipe == "fp16-amp":
            raise SetupError("--fp8 keeps bf16 for everything that is not an FP8 matmul; use a bf16 recipe")
        if setup.zero:
            raise SetupError(f"--fp8 {setup.fp8} is modelled under FSDP2 (torchtitan), DDP or one GPU, not DeepSpeed "
                             f"ZeRO-{setup.zero}; use --fsdp full-shard")
        if setup.fp8 == "te" and setup.model_parallel > 1:
            raise SetupError("--fp8 te is modelled without tensor / context parallelism (torchtitan runs torchao "
                             "float8 with them); use --fp8 tensorwise or rowwise")
    if setup.tp > 1 or setup.cp > 1:
        mp = setup.model_parallel
        if setup.fsdp is None:
            raise SetupError("--tp/--cp are modelled as torchtitan composes them with FSDP2 (TP inside a node, FSDP "
                             "across); add --fsdp full-shard")
        if setup.fsdp_version == 1:
            raise SetupError("--tp/--cp are modelled with FSDP2 only (torchtitan); drop --fsdp-version 1")
        if setup.method != "full":
            raise SetupError(f"--tp/--cp are modelled for full fine-tuning (torchtitan 0.2.2 has no LoRA), not "
                             f"--method {setup.method}")
        if model.is_moe or model.mla is not None:
            raise SetupError(f"--tp/--cp are not modelled for {model.name} (MoE / MLA attention); use --tp 1 --cp 1")
        if world % mp:
            raise SetupError(f"--tp {setup.tp} x --cp {setup.cp} = {mp} does not divide the {world} GPUs "
                             "(torchtitan: dp x cp x tp == world size)")
        if setup.tp > 1 and (cluster.gpus_per_node % setup.tp):
            raise SetupError(f"--tp {setup.tp} must divide the {cluster.gpus_per_node} GPUs of a node (TP stays "
                             "within a node, on NVLink); use --tp 2, 4 or 8")
        if model.num_heads % setup.tp or model.num_kv_heads % setup.tp:
            raise SetupError(f"--tp {setup.tp} must divide {model.name}'s {model.num_heads} query and "
                             f"{model.num_kv_heads} key/value heads")
        divisor = 2 * setup.tp * setup.cp
        if setup.seq_len % divisor:
            raise SetupError(f"--seq {setup.seq_len} must be a multiple of 2 x tp x cp = {divisor} "
                             "(torchtitan parallelize_llama: seq_len % (tp * 2 * cp) == 0)")
        if setup.cp > 1 and setup.attention == "eager":
            raise SetupError("--cp needs SDPA or flash attention (torchtitan's ring attention); use --attention sdpa")
    if setup.async_tp and not (setup.tp > 1 and setup.compile):
        raise SetupError("--async-tp overlaps TP collectives inside compiled graphs: it needs --tp > 1 and --compile "
                         "(torchtitan: 'Async TP requires ... --compile.enable')")
