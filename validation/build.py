"""Build the model, optimizer and loss exactly as a plan trains them, on the real device.

* The model comes from its config (``profiles.hf_config.to_hf_config``) with random weights, created directly
  on the device in the dtype the recipe stores it in (no download, no CPU copy); ``--weights DIR`` loads a
  local checkpoint instead.
* Dtypes follow :func:`planner.engine.dtypes.recipe_bytes`, the engine's own recipe table, so the run and the
  estimate count the same bytes: HF AMP keeps trainable weights fp32 under ``torch.autocast``, the frozen base
  of LoRA / QLoRA / freeze in the compute dtype; ``bf16`` is pure bf16; ``deepspeed-bf16`` runs the real
  DeepSpeed engine (fp32 master and gradient partition inside DeepSpeed's optimizer).
* LoRA / DoRA through peft (adapters fp32 under AMP, ``autocast_adapter_dtype``); QLoRA through
  bitsandbytes NF4 (CUDA only); freeze trains the last ``freeze_layers`` blocks.
* Activation checkpointing through transformers (``activation_checkpointing_enable``, non-reentrant, every
  k-th block, optional CPU offload of the saved inputs); ``selective`` checkpoints the attention kernel only;
  ``op`` wraps every block with torchtitan's per-op SAC policy (:mod:`validation.sac`).
* Attention: ``sdpa`` / ``eager`` / ``flash`` (FlashAttention-2, CUDA and the flash-attn package). Loss:
  ``plain`` (transformers' fp32-upcast cross-entropy), ``chunked`` (torchtune's 8-chunk CE), ``liger``
  (Liger's fused linear CE, CUDA and liger-kernel).
* Optimizers as the HF Trainer builds them (``adamw_torch_fused``), bitsandbytes' 8-bit AdamW, SGD,
  Adafactor; optimizer-in-backward as torchtune does it (one optimizer per parameter, stepped in a
  post-accumulate-grad hook).

:func:`not_runnable_reason` says, before anything is built, why a setup cannot run here.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from planner.engine.dtypes import recipe_bytes
from planner.engine.facts import model_facts
from planner.engine.memory import LOSS_CHUNKS, zero_bucket_elements
from planner.emit.common import MAX_GRAD_NORM
from planner.engine.setup import FLASH_KERNELS, HF_ATTN_IMPLEMENTATION, Setup
from validation.spec import RunSpec

SELECTIVE = "tuneplan_selective"
LR = 1e-5


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a submodule's parent package is missing
        return False


def uses_deepspeed(setup: Setup) -> bool:
    """DeepSpeed runs the step (:attr:`planner.engine.setup.Setup.uses_deepspeed`)."""
    return setup.uses_deepspeed


def not_runnable_reason(spec: RunSpec) -> str | None:
    """Why ``spec`` cannot run on its device with the installed packages, or None."""
    s, dev = spec.setup, spec.device
    unbuilt = [name for name, on in (("GaLore", s.galore_rank is not None), ("BAdam", s.badam),
                                     ("LISA", s.lisa_layers is not None), (f"FP8 {s.fp8}", s.fp8 != "none"),
                                     ("tensor parallelism", s.tp > 1), ("context parallelism", s.cp > 1),
                                     ("Unsloth's kernels", s.fused_library == "unsloth")) if on]
    if unbuilt:
        return (f"plan validate does not build {', '.join(unbuilt)} runs yet (the engine models them; measure with "
                "the trainer the configs target)")
    needs_cuda = []
    if s.method == "qlora":
        needs_cuda.append("QLoRA (bitsandbytes NF4 kernels)")
    if s.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit"):
        needs_cuda.append(f"--optimizer {s.optimizer} (bitsandbytes)")
    if s.attention in FLASH_KERNELS:
        needs_cuda.append(FLASH_KERNELS[s.attention])
    if s.loss == "liger":
        needs_cuda.append("Liger fused cross-entropy (Triton)")
    if s.fused_kernels:
        needs_cuda.append("Liger's fused RMSNorm / SwiGLU / RoPE (Triton)")
    if s.offload != "none":
        needs_cuda.append(f"--offload {s.offload} (DeepSpeed CPU offload of GPU memory)")
    if s.activation_offload:
        needs_cuda.append("--activation-offload")
    if dev == "cpu" and needs_cuda:
        return f"{', '.join(needs_cuda)} needs a CUDA device; on the CPU it cannot run (use --device cuda)"
    missing = []
    if (s.method == "qlora" or s.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit")) and not _has("bitsandbytes"):
        missing.append("bitsandbytes")
    if s.attention == "flash" and not _has("flash_attn"):
        missing.append("flash-attn")
    if s.attention == "fa3" and not _has("flash_attn_interface"):
        missing.append("flash-attn 3 (flash_attn_interface, built from flash-attention's hopper/)")
    if s.attention == "fa4" and not _has("flash_attn.cute"):
        missing.append("flash-attn 4 (flash_attn.cute)")
    if (s.loss == "liger" or s.fused_kernels) and not _has("liger_kernel"):
        missing.append("liger-kernel")
    if uses_deepspeed(s) and not _has("deepspeed"):
        missing.append("deepspeed")
    if s.method in ("lora", "qlora") and not _has("peft"):
        missing.append("peft")
    if missing:
        return f"needs {', '.join(missing)}, which is not installed (pip install {' '.join(missing)})"
    if dev == "cuda" and not torch.cuda.is_available():
        return "--device cuda but torch sees no CUDA device"
    return None


def dtypes(setup: Setup) -> dict[str, Any]:
    """torch dtypes of the recipe: base (frozen) weights, trainable weights, adapters, autocast (or None)."""
    rb = recipe_bytes(setup)
    half = torch.float16 if setup.recipe == "fp16-amp" else torch.bfloat16

    def dt(nbytes: int) -> torch.dtype:
        return torch.float32 if nbytes == 4 else half

    return {
        "frozen": dt(rb.frozen_weight),
        "trainable": dt(rb.trainable_weight),
        "adapter": dt(rb.adapter),
        "autocast": half if rb.autocast else None,
        "half": half,
    }


@dataclass
class Built:
    """A model ready to train, with the objects one step needs."""

    model: nn.Module
    optimizer: Any
    autocast_dtype: torch.dtype | None
    loss_kind: str
    engine: Any = None
    scaler: Any = None
    implementation: dict[str, str] = field(default_factory=dict)
    in_backward: dict[Any, Any] = field(default_factory=dict)

    def autocast(self, device: str) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None or self.engine is not None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=self.autocast_dtype)

    def loss(self, batch: dict[str, torch.Tensor], device: str) -> torch.Tensor:
        net = self.engine if self.engine is not None else self.model
        with self.autocast(device):
            if self.loss_kind == "chunked":
                return chunked_loss(self.engine.module if self.engine is not None else self.model, batch)
            out = net(**batch)
            return out.loss

    def backward(self, loss: torch.Tensor, grad_accum: int) -> None:
        if self.engine is not None:
            self.engine.backward(loss)
            return
        loss = loss / grad_accum
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def after_micro_batch(self) -> None:
        """DeepSpeed's engine.step() is called after every micro-batch and updates at the boundary."""
        if self.engine is not None:
            self.engine.step()

    def step(self) -> None:
        """The optimizer step (non-DeepSpeed; DeepSpeed already stepped in :meth:`after_micro_batch`)."""
        if self.engine is not None:
            return
        if self.optimizer is None:  # optimizer in backward: already stepped per parameter
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def hf_config(spec: RunSpec) -> Any:
    """The transformers config of the spec's model (``use_cache`` off: training does not keep a KV cache)."""
    from transformers import AutoConfig

    from profiles.hf_config import to_hf_config

    if spec.model.derived is not None:  # the text decoder of the config it was derived from
        from validation.derive.config import profile_config

        return profile_config(spec.model)
    cfg = dict(to_hf_config(spec.model))
    cfg["use_cache"] = False
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def attn_implementation(setup: Setup) -> str:
    base = HF_ATTN_IMPLEMENTATION[setup.attention]
    if setup.checkpointing == "selective":
        _register_selective(setup.checkpoint_every)
        if base == "flash_attention_2":
            return base  # selective recompute of the flash kernel: not registered (documented)
        return f"{SELECTIVE}_{base}"
    return base


def _register_selective(every: int) -> None:
    """Register attention implementations that checkpoint only the attention kernel (q, k, v -> output) of
    every ``every``-th block: Korthikanti et al. 2022, sec. 4.2 (selective activation recomputation)."""
    from torch.utils.checkpoint import checkpoint
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def make(base: str) -> Callable[..., Any]:
        def fn(module, query, key, value, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
            import sys

            # eager: the model file's own function (Gemma-2's soft-caps the scores)
            inner = ALL_ATTENTION_FUNCTIONS[base] if base != "eager" else (
                sys.modules[type(module).__module__].eager_attention_forward)
            if (getattr(module, "layer_idx", 0) or 0) % every:
                return inner(module, query, key, value, attention_mask, **kwargs)
            return checkpoint(inner, module, query, key, value, attention_mask, use_reentrant=False, **kwargs)

        return fn

    for base in ("sdpa", "eager"):
        AttentionInterface.register(f"{SELECTIVE}_{base}", make(base))
        AttentionMaskInterface.register(f"{SELECTIVE}_{base}", ALL_MASK_ATTENTION_FUNCTIONS[base])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    for name, mod in model.named_modules():
        if name.endswith("layers") and isinstance(mod, nn.ModuleList):
            return list(mod)
    raise RuntimeError("no decoder layer list found in the model")


def _recast_trainable(model: nn.Module, dtype: torch.dtype) -> None:
    """Re-create trainable floating-point parameters in ``dtype`` (LLaMA-Factory upcasts them under AMP)."""
    for owner in model.modules():
        for name, p in list(owner.named_parameters(recurse=False)):
            if p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                setattr(owner, name, nn.Parameter(p.detach().to(dtype), requires_grad=True))


def build_base(spec: RunSpec, device: str, weight_dtype: torch.dtype) -> nn.Module:
    """The causal LM on ``device`` in ``weight_dtype``: random weights from the config, or ``spec.weights``."""
    from transformers import AutoModelForCausalLM

    attn = attn_implementation(spec.setup)
    if spec.weights:
        kw: dict[str, Any] = {"dtype": weight_dtype, "attn_implementation": attn}
        if spec.setup.method == "qlora":
            kw["quantization_config"] = bnb_config(spec.setup, weight_dtype)
            kw["device_map"] = {"": torch.cuda.current_device()}
        net = AutoModelForCausalLM.from_pretrained(spec.weights, **kw)
        if spec.setup.method != "qlora":
            net = net.to(device)
        net.config.use_cache = False
    else:
        torch.manual_seed(spec.seed)
        with torch.device(device):
            net = AutoModelForCausalLM.from_config(hf_config(spec), dtype=weight_dtype, attn_implementation=attn)
        if spec.setup.method == "qlora":
            quantize_nf4(net, spec.setup, weight_dtype)
    net.train()
    return net


def bnb_config(setup: Setup, compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=setup.double_quant, bnb_4bit_compute_dtype=compute_dtype)


def quantize_nf4(net: nn.Module, setup: Setup, compute_dtype: torch.dtype) -> None:
    """Replace every ``nn.Linear`` but the LM head with a bitsandbytes NF4 ``Linear4bit`` holding the same
    (random) weights, quantised on the GPU as ``from_pretrained(quantization_config=...)`` would."""
    import bitsandbytes as bnb

    head = net.get_output_embeddings()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is head:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=setup.double_quant,
                                  quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                         compress_statistics=setup.double_quant, module=q).to(child.weight.device)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q)
            del child
    # what transformers' bitsandbytes quantizer marks: peft then wraps Linear4bit with its bnb LoRA layer
    # (peft/tuners/lora/model.py reads is_loaded_in_4bit), which DoRA needs to dequantise the base weight
    net.is_loaded_in_4bit = True
    torch.cuda.empty_cache()


def apply_method(net: nn.Module, spec: RunSpec, dt: dict[str, Any]) -> nn.Module:
    """Freeze, LoRA / DoRA / QLoRA adapters, or nothing (full)."""
    s = spec.setup
    if s.method == "freeze":
        layers = decoder_layers(net)
        keep = {id(p) for layer in layers[-s.freeze_layers:] for p in layer.parameters()}
        for p in net.parameters():
            p.requires_grad_(id(p) in keep)
        _recast_trainable(net, dt["trainable"])
        return net
    if s.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        targets = list(model_facts(spec.model, s).lora_targets)
        linear_names = {n.split(".")[-1] for n, m in net.named_modules() if isinstance(m, nn.Linear)}
        if s.method == "qlora":
            import bitsandbytes as bnb

            linear_names |= {n.split(".")[-1] for n, m in net.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
        targets = [t for t in targets if t in linear_names]
        extra = [m for m, on in (("embed_tokens", s.lora_train_embeddings), ("lm_head", s.lora_train_lm_head)) if on]
        cfg = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=targets,
                         use_dora=s.dora, modules_to_save=extra or None, task_type="CAUSAL_LM")
        net = get_peft_model(net, cfg, autocast_adapter_dtype=dt["adapter"] == torch.float32)
        return net
    return net


def apply_checkpointing(net: nn.Module, setup: Setup) -> str:
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    if setup.checkpointing == "op":  # torchtitan's per-op SAC around every block (validation.sac)
        from validation.sac import TORCHTITAN_COMMIT, op_sac_checkpoint_kwargs

        base.activation_checkpointing_enable(op_sac_checkpoint_kwargs())
        return f"op (torchtitan {TORCHTITAN_COMMIT[:8]} per-op SAC policy, every block)"
    if setup.checkpointing != "full":
        return setup.checkpointing
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(every_n_layers=setup.checkpoint_every, offload=setup.activation_offload)
        return f"full (transformers activation_checkpointing_enable, every {setup.checkpoint_every})"
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return "full (gradient_checkpointing_enable, non-reentrant)"


def make_optimizer(params: list[nn.Parameter], setup: Setup, device: str) -> tuple[Any, str]:
    """The optimizer the HF Trainer would build for ``setup.optimizer``, and a name of its implementation."""
    o = setup.optimizer
    if setup.foreach_adamw:
        return torch.optim.AdamW(params, lr=LR, foreach=True), "torch AdamW foreach (adamw_torch)"
    if o == "adamw":
        try:
            return torch.optim.AdamW(params, lr=LR, fused=True), "torch AdamW fused (adamw_torch_fused)"
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(params, lr=LR, foreach=False), "torch AdamW for-loop (fused unsupported)"
    if o in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit"):
        import bitsandbytes as bnb

        cls = {"paged-adamw": bnb.optim.PagedAdamW, "paged-adamw-8bit": bnb.optim.PagedAdamW8bit,
               "adamw-8bit": bnb.optim.AdamW8bit}[o]
        return cls(params, lr=LR), f"bitsandbytes {cls.__name__}"
    if o == "sgd":
        return torch.optim.SGD(params, lr=LR), "torch SGD"
    if o == "sgd-momentum":
        return torch.optim.SGD(params, lr=LR, momentum=0.9), "torch SGD momentum 0.9"
    if o == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=LR, scale_parameter=False, relative_step=False), "transformers Adafactor"
    raise ValueError(f"unknown optimizer {o!r}")


def optimizer_in_backward(params: list[nn.Parameter], setup: Setup, device: str) -> tuple[dict[Any, Any], str]:
    """torchtune's optimizer-in-backward: one optimizer per parameter, stepped as its gradient is ready."""
    opts: dict[Any, Any] = {}
    name = ""
    for p in params:
        opts[p], name = make_optimizer([p], setup, device)

        def hook(param: nn.Parameter) -> None:
            opts[param].step()
            opts[param].zero_grad(set_to_none=True)

        p.register_post_accumulate_grad_hook(hook)
    return opts, f"{name}, one per parameter in backward"


def build(spec: RunSpec, device: str, ds_config: dict[str, Any] | None = None) -> Built:
    """Everything one training step needs, built on ``device`` as ``spec.setup`` says."""
    s = spec.setup
    dt = dtypes(s)
    deepspeed = uses_deepspeed(s)
    impl: dict[str, str] = {"recipe": s.recipe, "attention": attn_implementation(s), "loss": s.loss}
    if deepspeed:
        weight_dtype = dt["half"]
    else:
        weight_dtype = dt["frozen"] if s.method != "full" else dt["trainable"]
    net = build_base(spec, device, weight_dtype)
    impl["weights"] = f"{'random (from config)' if not spec.weights else spec.weights}, {str(weight_dtype)[6:]}"
    impl["checkpointing"] = apply_checkpointing(net, s)
    net = apply_method(net, spec, dt)
    if s.loss == "liger" or s.fused_kernels:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        base = net.get_base_model() if hasattr(net, "get_base_model") else net
        # exactly the kernels the setup names: the fused norms / SwiGLU / RoPE with --fused-kernels (eq. A10b), the
        # fused linear cross-entropy with --loss liger (eq. L3); each model type's patch function takes these names
        fk = s.fused_kernels
        _apply_liger_kernel_to_instance(model=base, rope=fk, rms_norm=fk, swiglu=fk, cross_entropy=False,
                                        fused_linear_cross_entropy=s.loss == "liger")
    if s.compile:
        net = torch.compile(net)  # type: ignore[assignment]
        impl["compile"] = "torch.compile (default mode)"
    if not deepspeed and _world_size() > 1:
        net, how = wrap_distributed(net, s, device)
        impl["sharding"] = how
    params = [p for p in net.parameters() if p.requires_grad]
    if deepspeed:
        import deepspeed as ds

        cfg = ds_config or fallback_deepspeed_config(spec)
        engine, opt, _, _ = ds.initialize(model=net, model_parameters=params, config=cfg)
        impl["optimizer"] = f"DeepSpeed {type(opt).__name__} (ZeRO-{s.zero})"
        return Built(engine.module, opt, None, s.loss, engine=engine, implementation=impl)
    scaler = None
    if s.recipe == "fp16-amp":
        scaler = torch.amp.GradScaler(device)
        impl["loss_scaling"] = "torch.amp.GradScaler (dynamic)"
    if s.optimizer_in_backward:
        opts, name = optimizer_in_backward(params, s, device)
        impl["optimizer"] = name
        return Built(net, None, dt["autocast"], s.loss, scaler=None, implementation=impl, in_backward=opts)
    opt, name = make_optimizer(params, s, device)
    impl["optimizer"] = name
    return Built(net, opt, dt["autocast"], s.loss, scaler=scaler, implementation=impl)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def wrap_distributed(net: nn.Module, setup: Setup, device: str) -> tuple[nn.Module, str]:
    """DDP, or FSDP2 wrapped as accelerate 1.15 wraps it for the HF Trainer or as torchtune does (validation/trace/fsdp.py:
    ``full-shard`` reshards after forward, ``shard-grad-op`` keeps parameters gathered until backward; the AMP
    recipes get accelerate's bf16 ``MixedPrecisionPolicy``)."""
    if setup.fsdp is None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.cuda.current_device()] if device == "cuda" else None
        return DDP(net, device_ids=ids), "DDP (torch DistributedDataParallel)"
    from torch.distributed.device_mesh import init_device_mesh

    from validation.trace.fsdp import MESH_DIM, lm_head_tied, mixed_precision_name, shard_fsdp2

    # the same wrapping the trace runs: accelerate's fsdp2_prepare_model with the HF Trainer's plugin, or torchtune's
    # shard_model for --framework torchtune
    mesh = init_device_mesh(device, (_world_size(),), mesh_dim_names=(MESH_DIM,))
    tied = lm_head_tied(net)
    net = shard_fsdp2(net, setup, mesh)
    reshard = setup.fsdp == "full-shard"
    mp = mixed_precision_name(setup)
    how = ("accelerate's fsdp2_prepare_model wraps it" if setup.framework != "torchtune" else
           "torchtune's shard_model wraps it (" + ("the tied embedding in the root" if tied else
                                                   "custom_sharded_layers tok_embeddings, output") + ")")
    return net, (f"FSDP2 as {how}, reshard_after_forward={reshard} ({setup.fsdp})"
                 + (f", MixedPrecisionPolicy param/reduce/output {mp}" if mp != "no" else ""))


def fallback_deepspeed_config(spec: RunSpec) -> dict[str, Any]:
    """A DeepSpeed config for ``spec`` when :mod:`planner.emit` gives none (explicit values, no "auto")."""
    s = spec.setup
    b = zero_bucket_elements(spec.model)  # as the HF integration fills "auto"
    zero: dict[str, Any] = {"stage": s.zero, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": b["reduce_bucket_size"]}
    if s.zero == 3:
        zero.update(stage3_prefetch_bucket_size=b["stage3_prefetch_bucket_size"],
                    stage3_param_persistence_threshold=b["stage3_param_persistence_threshold"])
    if s.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if s.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    half = "fp16" if s.recipe == "fp16-amp" else "bf16"
    return {
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        "train_batch_size": s.micro_batch * s.grad_accum * spec.world_size,
        half: {"enabled": True},
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "torch_adam": True}},
        "gradient_clipping": MAX_GRAD_NORM,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def chunked_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """torchtune ``CEWithChunkedOutputLoss``: the LM head and the fp32 upcast run per chunk of the sequence
    (8 chunks), so only one chunk's fp32 logits exist at a time."""
    model = getattr(model, "module", model)  # DDP
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    kw = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = decoder(**kw).last_hidden_state
    labels = batch["labels"][:, 1:]
    hidden = hidden[:, :-1]
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden.chunk(LOSS_CHUNKS, dim=1), labels.chunk(LOSS_CHUNKS, dim=1)):
        logits = head(h).float()
        total = total + nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def inventory(built: Built) -> dict[str, int]:
    """Exact storage bytes of parameters (trainable / frozen), gradients, optimizer states and buffers; each
    storage counted once (tied weights, views)."""
    seen: set[tuple[int, int]] = set()

    def nbytes(t: Any) -> int:
        if hasattr(t, "to_local"):  # FSDP2 DTensor: this rank's shard
            t = t.to_local()
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return 0
        st = t.untyped_storage()
        key = (st.data_ptr(), st.nbytes())
        if key in seen or st.nbytes() == 0:
            return 0
        seen.add(key)
        return st.nbytes()

    def qstate(p: Any) -> int:  # bitsandbytes NF4 block constants
        qs = getattr(p, "quant_state", None)
        if qs is None:
            return 0
        total = nbytes(getattr(qs, "absmax", None))
        nested = getattr(qs, "state2", None)
        if nested is not None:
            total += nbytes(getattr(nested, "absmax", None)) + nbytes(getattr(nested, "code", None))
        return total

    model = built.model
    out = {"weights_trainable": 0, "weights_frozen": 0, "gradients": 0, "optimizer_states": 0,
           "master_weights": 0, "buffers": 0}
    for p in model.parameters():
        key = "weights_trainable" if p.requires_grad else "weights_frozen"
        out[key] += nbytes(getattr(p, "ds_tensor", p)) + qstate(p)  # ZeRO-3: this rank's partition
    for b in model.buffers():
        out["buffers"] += nbytes(b)
    for p in model.parameters():
        out["gradients"] += nbytes(p.grad)
    opts = [built.optimizer] if built.optimizer is not None else list(built.in_backward.values())
    for opt in opts:
        inner = getattr(opt, "optimizer", opt)  # DeepSpeed wraps the torch optimizer
        for state in getattr(inner, "state", {}).values():
            for v in state.values():
                out["optimizer_states"] += nbytes(v)
    if built.engine is not None:
        opt = built.optimizer
        for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition", "fp32_partitioned_groups_flat",
                     "fp32_groups_flat", "fp32_groups"):
            groups = getattr(opt, attr, None)
            if groups:
                for g in groups:
                    for t in (g if isinstance(g, (list, tuple)) else [g]):
                        out["master_weights"] += nbytes(t)
                        out["gradients"] += nbytes(getattr(t, "grad", None))
                break
    return out
