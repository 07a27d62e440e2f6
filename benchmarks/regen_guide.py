"""Re-run every ``$ plan ...`` command in the console blocks of docs/guide.md and paste the fresh output, and
rewrite the prose that states facts about that output from the same run.

    python benchmarks/regen_guide.py            # rewrites docs/guide.md in place (atomically)

Keeps the guide's example output and what the text says about it true to the code. Commands run with a
120-column terminal. Prose between ``<!-- gen:NAME -->`` and ``<!-- /gen -->`` is written by the function
``NAME`` of :data:`GENERATORS` from ``plan --model llama3-8b --gpus 8xA800 --json`` (the run shown in section
1): edit the generator, not the span.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
GENERATED = re.compile(r"(<!-- gen:(\w+)[^>]*-->)(.*?)(<!-- /gen -->)", re.S)
SECTION_1 = ["--model", "llama3-8b", "--gpus", "8xA800"]
"""The run section 1 shows and its prose describes."""


def run_block(body: str) -> str:
    if "--out" in body:  # writes files: leave as documented (regenerate the report by hand)
        return body
    out: list[str] = []
    for line in body.splitlines():
        if not line.startswith("$ plan"):
            continue
        args = shlex.split(line[2:])
        env = dict(os.environ, COLUMNS="120", TERM="dumb")
        r = subprocess.run([sys.executable, "-m", "planner", *args[1:]], capture_output=True, text=True, env=env)
        out.append(line)
        out.append((r.stdout + r.stderr).rstrip("\n"))
    return "\n".join(out) + "\n"


def search_json(argv: list[str] = SECTION_1) -> dict:
    """``plan ARGV --json``, run as the console blocks are (this checkout, uncalibrated unless a calibration
    folder says otherwise)."""
    env = dict(os.environ, COLUMNS="120", TERM="dumb")
    r = subprocess.run([sys.executable, "-m", "planner", *argv, "--json"], capture_output=True, text=True, env=env,
                       cwd=ROOT, check=True)
    return json.loads(r.stdout)


def _setup(p: dict):  # noqa: ANN202
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from planner.engine.setup import Setup

    return Setup(**p["setup"])


SHARDING_WORDS = {"DDP": "plain data parallel", "ZeRO-1": "DeepSpeed ZeRO-1", "ZeRO-2": "DeepSpeed ZeRO-2",
                  "ZeRO-3": "DeepSpeed ZeRO-3", "FSDP full-shard": "FSDP full-shard",
                  "FSDP shard-grad-op": "FSDP shard-grad-op"}


def label_example(d: dict) -> str:
    """How to read the plan column, on the first plan of the run."""
    s = _setup(d["plans"][0])
    method = {"lora": f"LoRA rank {s.lora_rank}", "qlora": f"QLoRA rank {s.lora_rank}", "full": "full fine-tuning",
              "freeze": f"freeze tuning of the last {s.freeze_layers} blocks"}[s.method]
    steps = f"{s.grad_accum} accumulation step{'s' if s.grad_accum != 1 else ''}"
    return (f"`{s.compact()}` is {method}, {SHARDING_WORDS[s.sharding_label]}, micro-batch {s.micro_batch} with "
            f"{steps}, optimizer {s.optimizer}")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def frozen_example(d: dict) -> str:
    """Where the breakdown table shows what sharding buys: a replicated plan's frozen base against a sharded
    one's, of the same method, from the run."""
    plans = d["plans"]
    for p in plans:
        s = _setup(p)
        if s.sharding_label != "DDP" or not p["memory"]["per_gpu"]["categories"]["weights_frozen"]:
            continue
        for q in plans:
            t = _setup(q)
            if t.method == s.method and (t.zero == 3 or t.fsdp == "full-shard"):
                a = p["memory"]["per_gpu"]["categories"]["weights_frozen"]
                b = q["memory"]["per_gpu"]["categories"]["weights_frozen"]
                g = q["memory"]["per_gpu"]["categories"]["comm_buffers"]
                return (f"DDP keeps the whole frozen base on every GPU ({gib(a)}, plan {p['rank']}) while "
                        f"{t.sharding_label} shards it to {gib(b)} (plan {q['rank']}) and pays in gather buffers "
                        f"({gib(g)})")
    return "replicated plans keep every weight on every GPU while sharded ones split them and pay in gather buffers"


def takeaways(d: dict) -> str:
    """What to take from the run, every figure and claim read off it."""
    plans = d["plans"]
    by_method: dict[str, dict] = {}
    for p in plans:
        by_method.setdefault(p["setup"]["method"], p)
    fits = ", ".join(sorted(by_method))
    out = [f"What to take from this run: on {d['cluster']['gpus_per_node']}x{d['cluster']['gpu']}, of the methods "
           f"the search tries, these fit {d['model']} at {plans[0]['setup']['seq_len']} tokens: {fits}."]
    if "lora" in by_method and "full" in by_method:
        a, b = by_method["lora"]["speed"]["tokens_per_s"], by_method["full"]["speed"]["tokens_per_s"]
        out.append(f"LoRA is estimated {a / b:.2f}x {'faster' if a >= b else 'slower'} than full fine-tuning "
                   f"({a:,.0f} vs {b:,.0f} tokens/s): frozen weights skip their weight gradients.")
    top = plans[0]
    same = [p for p in plans if p["setup"]["method"] == top["setup"]["method"]]
    spread = max(p["speed"]["tokens_per_s"] for p in same) / min(p["speed"]["tokens_per_s"] for p in same) - 1
    if len(same) > 1 and spread < 0.01:
        out.append(f"The sharding barely changes {top['setup']['method']}'s speed here (its {len(same)} plans lie "
                   f"within 1 %), so the simplest, {_setup(top).sharding_label}, wins the tie.")
    mbs = sorted({p["setup"]["micro_batch"] for p in plans})
    mb_text = (f"every plan above runs micro-batch {mbs[0]}" if len(mbs) == 1 else
               "the plans above run micro-batch " + ", ".join(str(m) for m in mbs[:-1]) + f" or {mbs[-1]}")
    out.append("Two caveats: the speed model has no small-batch inefficiency term, so a larger micro-batch is "
               "not faster by itself (among equally fast variants the search keeps the larger micro-batch, for "
               f"fewer accumulation steps; {mb_text}); and until calibration data exists the efficiency is the "
               "GPU profile's default (shown by `plan estimate`).")
    return " ".join(out)


GENERATORS = {"label_example": label_example, "frozen_example": frozen_example, "takeaways": takeaways}


def fill_generated(text: str, data: dict) -> str:
    """Every ``<!-- gen:NAME -->...<!-- /gen -->`` span rewritten by ``GENERATORS[NAME](data)``."""
    return GENERATED.sub(lambda m: m.group(1) + GENERATORS[m.group(2)](data) + m.group(4), text)


def main() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    new = BLOCK.sub(lambda m: "```console\n" + run_block(m.group(1)) + "```", text)
    new = fill_generated(new, search_json())
    fd, tmp = tempfile.mkstemp(dir=GUIDE.parent, suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, GUIDE)


if __name__ == "__main__":
    main()
