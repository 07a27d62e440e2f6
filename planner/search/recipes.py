"""The recipe book the search tries (issue 12; docs/planner.md "Search space"): candidate families grouped by the
trainer that can run them, so every plan the search ranks can be written as a config.

* **HF Trainer / LLaMA-Factory** (the classic space): full, LoRA, QLoRA under DDP, ZeRO-1/2/3, FSDP; AMP or pure
  bf16; AdamW or 8-bit AdamW; checkpointing, activation offload (``use_unsloth_gc``); plain or Liger loss; CPU
  offload. For full fine-tuning also bitsandbytes' paged AdamW (32-bit and 8-bit) on one GPU or DDP, GaLore
  (layer-wise on one GPU) and BAdam (one GPU, or ZeRO-3), which only LLaMA-Factory runs.
* **torchtune** (full fine-tuning): the optimizer stepped in backward, pure bf16, AdamW / 8-bit / paged AdamW (one
  GPU) or AdamW under FSDP2, plain or chunked cross-entropy, checkpointing with activation offload.
* **torchtitan** (full fine-tuning under FSDP2): float8 (torchao tensorwise) on GPUs with FP8 units, tensor
  parallelism within a node (sync or async, compiled), context parallelism for long sequences; the optimizer
  stepped in backward (``early_step_in_backward``) or FSDP2's CPU offload where memory needs it.

What is searched only when asked for (the flag fixes it): LISA (no trainer tuneplan writes runs it), float8
rowwise and TransformerEngine (the speed model ranks tensorwise ahead of both on the same shapes), GaLore ranks
other than LLaMA-Factory's example 128.

Pruning (docs/planner.md "Pruning"): a *memory saver* (checkpointing, activation offload, CPU offload, paged
states, chunked loss, TP, CP) never makes a step faster at the same micro-batch; a family that uses one is skipped
when its sibling without it already fits the largest micro-batch the global batch allows. CPU offload is skipped
as soon as its in-memory sibling fits at any micro-batch: the host step alone costs seconds per step, more than a
larger micro-batch can win back. Every skip is counted and said in the search notes.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

from planner.engine.setup import FP8_ARCHS, candidate_recipes
from profiles.cluster import Cluster
from profiles.schema import ModelProfile

GALORE_SEARCH_RANK = 128
"""GaLore rank the search tries: LLaMA-Factory 0.9.5's example ``examples/extras/galore/llama3_full_sft.yaml``
(``galore_rank: 128``, ``galore_layerwise: true``, ``pure_bf16: true``); its argument default is 16."""
SAVERS = ("checkpointing", "activation_offload", "offload", "paged", "chunked", "tp", "cp", "optimizer_in_backward")
"""The dimensions that trade speed for memory (see the module docstring)."""
CONTEXT_PARALLEL_MIN_SEQ = 16384
"""CP is tried from this sequence length on: below it a sequence fits one GPU's activations with checkpointing for
every model tuneplan ships, and CP only adds communication (torchtitan's CP benchmark starts at 32768)."""


@dataclass(frozen=True)
class Family:
    """One candidate family: every Setup field but micro-batch and accumulation, and what it is made of."""

    fields: dict[str, Any]
    bundle: str
    """``hf``, ``torchtune`` or ``torchtitan``: the trainer whose recipe this is"""
    siblings: tuple[tuple[str, frozenset], ...] = field(default=())
    """(saver, key of the same family without it) for each memory saver it uses"""

    @functools.cached_property  # read for every family and sibling check of the search
    def key(self) -> frozenset:
        return family_key(self.fields)


def family_key(fields: dict[str, Any]) -> frozenset:
    f = dict(fields)
    f.pop("micro_batch", None)
    f.pop("grad_accum", None)
    return frozenset(f.items())


def _without(fields: dict[str, Any], saver: str) -> dict[str, Any] | None:
    """The same family with one memory saver turned off (None when it does not use it)."""
    f = dict(fields)
    if saver == "checkpointing" and f.get("checkpointing", "none") != "none":
        f["checkpointing"], f["activation_offload"] = "none", False
    elif saver == "activation_offload" and f.get("activation_offload"):
        f["activation_offload"] = False
    elif saver == "offload" and f.get("offload", "none") != "none":
        f["offload"] = "none"
    elif saver == "paged" and str(f.get("optimizer", "")).startswith("paged"):
        f["optimizer"] = "adamw" if f["optimizer"] == "paged-adamw" else "adamw-8bit"
    elif saver == "chunked" and f.get("loss") == "chunked":
        f["loss"] = "plain"
    elif saver == "tp" and f.get("tp", 1) > 1:
        f["tp"], f["async_tp"] = 1, False
    elif saver == "cp" and f.get("cp", 1) > 1:
        f["cp"] = 1
    elif saver == "optimizer_in_backward" and f.get("optimizer_in_backward") and f.get("framework") == "torchtitan":
        f["optimizer_in_backward"] = False
        f.pop("grad_accum", None)
    else:
        return None
    return f


def _family(fields: dict[str, Any], bundle: str) -> Family:
    sib = []
    for s in SAVERS:
        w = _without(fields, s)
        if w is not None:
            sib.append((s, family_key(w)))
    return Family(fields, bundle, tuple(sib))


def _shardings(cluster: Cluster, fixed: dict) -> list[tuple[int, str | None]]:
    if "fsdp" in fixed and fixed["fsdp"]:
        return [(0, fixed["fsdp"])]
    if "zero" in fixed:
        return [(fixed["zero"], None)]
    if cluster.world_size == 1:
        return [(0, None), (2, None), (3, None)]  # ZeRO on one GPU only pays off with offload
    return [(0, None), (1, None), (2, None), (3, None), (0, "full-shard")]


def _offloads(sharding: tuple[int, str | None], world: int, fixed: dict) -> list[str]:
    if "offload" in fixed:
        return [fixed["offload"]]
    zero, fsdp = sharding
    if zero == 0 and fsdp is None:
        return ["none"]
    if world == 1 and zero:
        return ["optimizer", "optimizer+params"] if zero == 3 else ["optimizer"]
    if zero == 3:
        return ["none", "optimizer", "optimizer+params"]
    return ["none", "optimizer"] if zero >= 2 else ["none"]


def _pick(fixed: dict, name: str, default: list) -> list:
    return [fixed[name]] if name in fixed else default


def _allowed(fixed: dict, **values: Any) -> bool:
    """A family may set these values only where the user did not fix them to something else."""
    return all(fixed.get(k, v) == v for k, v in values.items())


def hf_families(model: ModelProfile, cluster: Cluster, fixed: dict) -> list[Family]:
    """The HF Trainer / LLaMA-Factory space (the planner's classic search plus paged states, activation offload,
    GaLore and BAdam for full fine-tuning)."""
    f = fixed
    world = cluster.world_size
    out: list[Family] = []
    methods = _pick(f, "method", ["full", "lora", "qlora"])
    losses = _pick(f, "loss", ["plain", "liger"])
    ckpts = _pick(f, "checkpointing", ["none", "full"])
    for method, shard in itertools.product(methods, _shardings(cluster, f)):
        zero, fsdp = shard
        recipes = [f["recipe"]] if "recipe" in f else list(candidate_recipes(cluster.gpu.supports_bf16, zero, fsdp))
        optimizers = _pick(f, "optimizer", ["adamw", "adamw-8bit"] + (
            ["paged-adamw", "paged-adamw-8bit"] if method == "full" and zero == 0 and fsdp is None else []))
        for opt, ck, loss, recipe, off in itertools.product(optimizers, ckpts, losses, recipes,
                                                            _offloads(shard, world, f)):
            if str(opt).startswith("paged") and off != "none":
                continue
            act_offs = [f["activation_offload"]] if "activation_offload" in f else [False, True]
            for act in act_offs:
                if act and ck != "full":
                    continue
                fam = dict(f)
                fam.update(method=method, zero=zero, fsdp=fsdp, optimizer=opt, checkpointing=ck, loss=loss,
                           recipe=recipe, offload=off, activation_offload=act,
                           # Liger's loss comes with its fused kernels (LLaMA-Factory enable_liger_kernel patches both)
                           fused_kernels=f.get("fused_kernels", loss == "liger"))
                if f.get("optimizer_in_backward") or f.get("tp", 1) > 1 or f.get("cp", 1) > 1:
                    continue  # only torchtune / torchtitan run those (their bundles below)
                if f.get("fp8", "none") not in ("none", "rowwise", "te"):
                    continue
                out.append(_family(fam, "hf"))
    # LLaMA-Factory's full-parameter optimizers for small cards: GaLore and BAdam (pure bf16, as its examples)
    if _allowed(f, method="full", optimizer_in_backward=False, tp=1, cp=1, fp8="none", offload="none"):
        if "badam" not in f and "lisa_layers" not in f and _allowed(f, zero=0, fsdp=None):
            ranks = [f["galore_rank"]] if f.get("galore_rank") else [GALORE_SEARCH_RANK]
            layerwise = _pick(f, "galore_layerwise", [True, False] if world == 1 else [False])
            for r, lw, opt, ck, loss in itertools.product(ranks, layerwise, _pick(f, "optimizer", ["adamw", "adamw-8bit"]),
                                                          ckpts, losses):
                fam = dict(f)
                fam.update(method="full", zero=0, fsdp=None, recipe=f.get("recipe", "bf16"), optimizer=opt,
                           checkpointing=ck, loss=loss, galore_rank=r, galore_layerwise=lw,
                           fused_kernels=f.get("fused_kernels", loss == "liger"))
                if lw:
                    fam["grad_accum"] = 1
                out.append(_family(fam, "hf"))
        if "galore_rank" not in f and "lisa_layers" not in f and f.get("badam", True):
            zero = 0 if world == 1 else 3
            if _allowed(f, zero=zero, fsdp=None):
                recipe = "bf16" if zero == 0 else "deepspeed-bf16"
                for ck, loss in itertools.product(ckpts, losses):
                    fam = dict(f)
                    fam.update(method="full", zero=zero, fsdp=None, recipe=f.get("recipe", recipe), optimizer="adamw",
                               checkpointing=ck, loss=loss, badam=True,
                               fused_kernels=f.get("fused_kernels", loss == "liger"))
                    out.append(_family(fam, "hf"))
    return [x for x in out if _consistent(x.fields)]


def torchtune_families(model: ModelProfile, cluster: Cluster, fixed: dict) -> list[Family]:
    """torchtune 0.6.1's full fine-tuning recipes with the optimizer stepped in backward (its distinctive lever;
    without it they coincide with the HF space's pure-bf16 families, which torchtune can write too)."""
    f = fixed
    world = cluster.world_size
    if not _allowed(f, method="full", recipe="bf16", zero=0, optimizer_in_backward=True, tp=1, cp=1, fp8="none",
                    framework="torchtune", fused_kernels=False):
        return []
    if f.get("loss") == "liger" or f.get("offload", "none") != "none" and world == 1:
        return []  # torchtune 0.6.1: no fused linear cross-entropy; no offload in the single-device recipe
    if any(k in f for k in ("galore_rank", "badam", "lisa_layers")) or not cluster.gpu.supports_bf16:
        return []
    fsdp = None if world == 1 else "full-shard"
    if f.get("fsdp", fsdp) != fsdp:
        return []
    # bitsandbytes optimizers only in the single-device recipe (torchtune memory_optimizations.rst)
    opts = _pick(f, "optimizer", ["adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit"] if world == 1 else ["adamw"])
    out = []
    for opt, ck, loss in itertools.product(opts, _pick(f, "checkpointing", ["none", "full"]),
                                           _pick(f, "loss", ["plain", "chunked"])):
        for act in ([f["activation_offload"]] if "activation_offload" in f else [False, True]):
            if act and ck != "full":
                continue
            fam = dict(f)
            fam.update(method="full", recipe="bf16", zero=0, fsdp=fsdp, optimizer=opt, checkpointing=ck, loss=loss,
                       activation_offload=act, optimizer_in_backward=True, grad_accum=1, framework="torchtune",
                       offload=f.get("offload", "none"))
            out.append(_family(fam, "torchtune"))
    return [x for x in out if _consistent(x.fields)]


def tp_degrees(model: ModelProfile, cluster: Cluster) -> list[int]:
    """TP degrees torchtitan can use on this cluster: powers of two within a node that divide the heads."""
    return [t for t in (2, 4, 8) if cluster.gpus_per_node % t == 0 and t <= cluster.world_size
            and model.num_heads % t == 0 and model.num_kv_heads % t == 0]


def torchtitan_families(model: ModelProfile, cluster: Cluster, fixed: dict) -> list[Family]:
    """torchtitan 0.2.2's distinctive levers under FSDP2: float8 (torchao tensorwise), tensor parallelism within a
    node (sync and async), context parallelism for long sequences; compiled, as torchtitan runs them."""
    f = fixed
    world = cluster.world_size
    if not _allowed(f, method="full", zero=0, optimizer="adamw", loss="plain", activation_offload=False,
                    framework="torchtitan", fused_kernels=False,
                    attention=f.get("attention", "sdpa") if f.get("attention") != "eager" else "sdpa"):
        return []  # torchtitan 0.2.2: AdamW, a plain cross-entropy, no activation offload, SDPA / flex attention
    if any(k in f for k in ("galore_rank", "badam", "lisa_layers")) or model.is_moe or model.mla is not None:
        return []
    if f.get("fsdp", "full-shard") != "full-shard" or not cluster.gpu.supports_bf16:
        return []
    fp8_ok = cluster.gpu.supports_fp8 and cluster.gpu.arch in FP8_ARCHS
    fp8s = _pick(f, "fp8", ["none", "tensorwise"] if fp8_ok else ["none"])
    tps = _pick(f, "tp", [1] + tp_degrees(model, cluster))
    seq = f.get("seq_len", 2048)
    cps = _pick(f, "cp", [1] + ([c for c in (2, 4, 8) if c <= world] if seq >= CONTEXT_PARALLEL_MIN_SEQ else []))
    out = []
    # checkpointing: torchtitan's default per-op SAC (llama3_8b.toml: mode "selective", selective_ac_option "op") and
    # full; the attention-only "selective" is not a torchtitan mode
    for fp8, tp, cp, recipe, ck in itertools.product(fp8s, tps, cps, _pick(f, "recipe", ["hf-amp", "bf16"]),
                                                     _pick(f, "checkpointing", ["none", "op", "full"])):
        # plain compiled FSDP2 stays in: it is the sibling TP / CP are pruned against (compile alone changes speed)
        if tp * cp > world or world % (tp * cp):
            continue
        # async TP only (never slower by the model, and what torchtitan's TP benchmarks run); the optimizer in
        # backward with pure bf16 only (with fp32 master weights it saves a gradient buffer of 16 B/param: no niche)
        for async_tp, off, obwd in itertools.product(
                [f["async_tp"]] if "async_tp" in f else [tp > 1],
                _pick(f, "offload", ["none", "optimizer+params"]), _pick(f, "optimizer_in_backward", [False, True])):
            if obwd and (off != "none" or (recipe != "bf16" and "recipe" not in f)):
                continue
            if off != "none" and world // (tp * cp) <= 1:
                continue  # torchtitan applies FSDP2 (and so its CPU offload) only with dp_shard > 1
            fam = dict(f)
            fam.update(method="full", zero=0, fsdp="full-shard", recipe=recipe, optimizer=f.get("optimizer", "adamw"),
                       checkpointing=ck, loss=f.get("loss", "plain"), fp8=fp8, tp=tp, cp=cp, async_tp=async_tp,
                       compile=True, framework="torchtitan", offload=off, optimizer_in_backward=obwd)
            if obwd:
                fam["grad_accum"] = 1  # torchtitan does not refuse accumulation with early_step_in_backward: we do
            out.append(_family(fam, "torchtitan"))
    return [x for x in out if _consistent(x.fields)]


def _consistent(fam: dict[str, Any]) -> bool:
    """Cheap checks that spare an evaluation (the engine's rules decide the rest)."""
    if fam.get("activation_offload") and fam.get("checkpointing") != "full":
        return False
    if fam.get("optimizer_in_backward") and fam.get("grad_accum", 1) != 1:
        return False
    return True


def candidate_families(model: ModelProfile, cluster: Cluster, fixed: dict) -> list[Family]:
    """Every family of the recipe book the constraints allow, simplest first (a family follows every sibling it is
    pruned against), without duplicates."""
    out: dict[tuple, Family] = {}
    for fam in (*hf_families(model, cluster, fixed), *torchtune_families(model, cluster, fixed),
                *torchtitan_families(model, cluster, fixed)):
        out.setdefault(fam.key, fam)
    return sorted(out.values(), key=lambda x: len(x.siblings))
