"""DeepSpeed ZeRO-3's host work per decoder block, measured: the one candidate found for the two ZeRO-2 / ZeRO-3
orderings of Zhang et al. 2023 (arXiv 2311.03687) that the speed model cannot give together (docs/speed.md S23).

    python benchmarks/evidence_scripts/zero3_host_overhead.py [--repeats 3] [--zhang] [--out FILE]

What it measures. A transformers Llama so small that its arithmetic is negligible (hidden 64, 4 heads, 16 tokens,
one sequence) is trained by DeepSpeed on this machine's CPU (``DS_ACCELERATOR=cpu``, one rank, gloo, one torch thread) under ZeRO-2
and ZeRO-3, at 8 and 32 decoder blocks; each configuration runs in a fresh interpreter, 3 warm-up steps, then the
median of 30 timed steps (forward, ``engine.backward``, ``engine.step``). The slope between the two depths is the
host time per block per micro-step of each stage; ZeRO-3's minus ZeRO-2's is what ZeRO-3's module hooks (fetch,
release, the per-parameter gradient hooks and their bookkeeping) add per block. It is a lower bound for a CUDA run
of the same DeepSpeed: the CPU accelerator's events and streams are no-ops, where CUDA records, queries and
synchronises them (``partitioned_param_coordinator.py``: at most 2 fetch events in flight, then
``event.synchronize()``; ``stage3.py``: ``param_reduce_events``), and DeepSpeed of 2023 (Zhang et al.'s) had not yet
had the ZeRO-3 overhead work of DeepSpeed PRs #3622 and #6649.

``--zhang`` then puts Zhang et al.'s four ZeRO-2 / ZeRO-3 rows under the fit that did not see them (the
leave-one-source-out fold; ~15 s to fit), three ways: as fitted, without the hooks, and with this machine's
per-block time. Since 2026-12-02 the model adds the hooks to every ZeRO-3 micro-step itself (eq. S26c,
``zero3_block_host_s``, fitted; this measurement is its prior), after ETH LSAIE's GPU runs pinned it.

The result (JSON, written atomically) goes to ``--out`` (default benchmarks/results/zero3_host_overhead.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from childrun import out_refusal, run_json_child  # noqa: E402
from profiles.atomic import write_atomic  # noqa: E402
DEPTHS = (8, 32)
STAGES = (2, 3)
SOURCE = "zhang2023-dissecting"
ZHANG_PAIRS = (("llama2-7b-zero2", "llama2-7b-zero3"), ("llama2-13b-zero2", "llama2-13b-zero3"))


def child(stage: int, layers: int, steps: int = 30) -> dict:
    """One configuration, timed in this interpreter (run through :func:`run_child`, never twice in one process)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29500 + 10 * stage + layers % 10)),
                 ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    import torch
    import deepspeed
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the hooks are single-threaded Python; one thread keeps the two-core VM's noise down
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=256, max_position_embeddings=64)
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": stage},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
    if stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=ds):
            model = LlamaForCausalLM(cfg)
    else:
        model = LlamaForCausalLM(cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    x = torch.randint(0, 256, (1, 16))

    def step() -> float:
        t = time.perf_counter()
        out = engine(input_ids=x, labels=x)
        engine.backward(out.loss)
        engine.step()
        return time.perf_counter() - t

    for _ in range(3):
        step()
    times = sorted(step() for _ in range(steps))
    return {"stage": stage, "layers": layers, "median_s": statistics.median(times), "min_s": times[0],
            "deepspeed": deepspeed.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def run_child(stage: int, layers: int) -> dict:
    return run_json_child(__file__, [str(stage), str(layers)], f"ZeRO-{stage} at {layers} blocks",
                          env={"DS_ACCELERATOR": "cpu"})


def per_block_s(runs: list[dict], stage: int) -> float:
    """Host seconds per block per micro-step of ``stage``: the slope of the median step time between the depths."""
    at = {d: statistics.median(r["median_s"] for r in runs if r["stage"] == stage and r["layers"] == d) for d in DEPTHS}
    return (at[DEPTHS[1]] - at[DEPTHS[0]]) / (DEPTHS[1] - DEPTHS[0])


def zhang_orderings(extra_s_per_block: float) -> list[dict]:
    """Zhang et al.'s ZeRO-2 / ZeRO-3 pairs under the fold without them, three ways: the fold as fitted (eq. S26c's
    hook time fitted with the rest), the fold without the hooks (``zero3_block_host_s`` 0, the model before
    2026-12-02) and the fold with the hooks at ``extra_s_per_block``, this machine's measurement. The model adds the
    hooks itself (``planner.engine.speed.step.zero3_hook_seconds``), so nothing is added here by hand."""
    sys.path.insert(0, str(ROOT))
    from validation.corpus import load
    from validation.corpus_fit import fit_speed, predict

    cases = load().speed
    fold = fit_speed([c for c in cases if c.source != SOURCE])
    without = fold.model_copy(update={"zero3_block_host_s": 0.0})
    measured = fold.model_copy(update={"zero3_block_host_s": extra_s_per_block})
    by_id = {c.id.split("/", 1)[1]: c for c in cases if c.source == SOURCE}
    out = []
    for z2, z3 in ZHANG_PAIRS:
        c2, c3 = by_id[z2], by_id[z3]
        out.append({"pair": f"{z2} / {z3}", "measured_ratio": c2.tokens_per_s / c3.tokens_per_s,
                    "held_out_ratio": predict(c2, fold) / predict(c3, fold),
                    "held_out_ratio_without_hooks": predict(c2, without) / predict(c3, without),
                    "held_out_ratio_with_measured_hooks": predict(c2, measured) / predict(c3, measured),
                    "fold_zero3_block_host_s": fold.zero3_block_host_s})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="fresh runs of each configuration (default 3)")
    ap.add_argument("--zhang", action="store_true", help="also apply the measured time to Zhang et al.'s rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "zero3_host_overhead.json")
    ap.add_argument("--child", nargs=2, type=int, metavar=("STAGE", "LAYERS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats} must be at least 1")
    why = out_refusal(args.out)
    if why:
        ap.error(why)
    runs = []
    try:
        for r in range(args.repeats):
            for stage in STAGES:
                for layers in DEPTHS:
                    runs.append(run_child(stage, layers))
                    print(f"run {r + 1}/{args.repeats}: ZeRO-{stage}, {layers} blocks: "
                          f"{runs[-1]['median_s'] * 1e3:.1f} ms per step", file=sys.stderr)
    except RuntimeError as e:  # a child failed (DeepSpeed missing or broken): one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 1
    slope = {s: per_block_s(runs, s) for s in STAGES}
    doc = {"measured": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
           "versions": {k: runs[0][k] for k in ("deepspeed", "torch", "transformers")},
           "host_s_per_block": {f"zero{s}": slope[s] for s in STAGES},
           "zero3_extra_s_per_block": slope[3] - slope[2], "runs": runs}
    if args.zhang:
        doc["zhang_orderings"] = zhang_orderings(doc["zero3_extra_s_per_block"])
    write_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"host time per block per micro-step: ZeRO-2 {slope[2] * 1e3:.2f} ms, ZeRO-3 {slope[3] * 1e3:.2f} ms, "
          f"ZeRO-3 adds {doc['zero3_extra_s_per_block'] * 1e3:.2f} ms; wrote {args.out}")
    for z in doc.get("zhang_orderings", []):
        print(f"{z['pair']}: measured {z['measured_ratio']:.2f}x, held out {z['held_out_ratio']:.2f}x "
              f"(hooks fitted at {z['fold_zero3_block_host_s'] * 1e3:.1f} ms per block), without the hooks "
              f"{z['held_out_ratio_without_hooks']:.2f}x, with the measured time {z['held_out_ratio_with_measured_hooks']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
