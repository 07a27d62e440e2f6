"""``plan select``: rank the catalogue's base models for a language, a licence, the GPUs and a method."""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from pathlib import Path
from typing import Any, get_args

from planner.app.commands.common import positive_int, print_json
from planner.app.errors import CliError
from planner.engine.setup import Method

NAME = "select"
HELP = "rank the catalogue's base models for your language, licence, GPUs and method"
DESCRIPTION = """Choose a base model as a practitioner does: from each catalogue model's card facts (licence and
commercial terms, supported languages, context length, parameters, training tokens, release date, whether a newer
model replaces it) and whether it fits your GPUs with your method (the plan search). Models that meet every
requirement come first; then models still maintained, larger ones, more training tokens, newer ones. Each fact
names its source (profiles/models/*.yaml, `card`); facts nobody has checked against their source yet are marked.

Tokens per character of your language are measured when a model's tokenizer is in the local Hugging Face cache
(or given with --tokenizer MODEL=PATH), on the UDHR's first article or on --sample-text FILE.

examples:
  plan select --gpus 1x4090 --language zh --method qlora
  plan select --gpus 8xA800 --language de --method full --commercial --params 7b-15b
  plan select --gpus 2x4090 --language ja --method lora --seq 4096 --json
"""


def params_band(text: str) -> tuple[float | None, float | None]:
    m = re.fullmatch(r"\s*([\d.]+)\s*([bm]?)\s*-\s*([\d.]*)\s*([bm]?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a parameter band such as 1b-10b or 7b- (at least 7B), got {text!r}")
    def val(num: str, unit: str) -> float | None:
        if not num:
            return None
        return float(num) * (1e6 if unit == "m" else 1e9)
    lo, hi = val(m.group(1), m.group(2)), val(m.group(3), m.group(4) or m.group(2))
    if hi is not None and lo is not None and hi < lo:
        raise argparse.ArgumentTypeError(f"--params {text!r}: the upper bound is below the lower one")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what you need")
    g.add_argument("--gpus", required=True, metavar="SPEC", help="cluster: 1x4090, 8xA800, 2x8xH100")
    g.add_argument("--method", required=True, choices=get_args(Method), help="full | lora | qlora | freeze")
    g.add_argument("--language", metavar="CODE", help="ISO 639-1 code of your data's language: en, zh, de, ja, ...")
    g.add_argument("--commercial", action="store_true", help="the licence must allow commercial use")
    g.add_argument("--allow-on-request", action="store_true",
                   help="with --commercial, accept licences that need a registration or application first")
    g.add_argument("--params", type=params_band, metavar="BAND", help="parameter band, e.g. 1b-10b, 7b-, 500m-3b")
    g.add_argument("--seq", type=positive_int, default=2048, metavar="N",
                   help="sequence length to fit and the context the model must have (default: 2048)")
    g.add_argument("--host-ram-gib", type=float, metavar="GIB", help="host RAM per node (default: the GPU profile's)")
    t = parser.add_argument_group("tokens per character")
    t.add_argument("--sample-text", metavar="FILE", help="UTF-8 text in your language (default: UDHR article 1)")
    t.add_argument("--tokenizer", action="append", default=[], metavar="MODEL=PATH",
                   help="a local tokenizer folder for one catalogue model (repeatable)")
    o = parser.add_argument_group("output")
    o.add_argument("--top", type=positive_int, metavar="N", help="show only the first N models")
    o.add_argument("--json", action="store_true", help="print JSON")


def _hf_cache_has_tokenizer(hf_id: str) -> bool:
    """Whether the local HF cache holds tokenizer files for ``hf_id`` (checked on disk, no transformers import)."""
    home = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    snap = Path(home) / f"models--{hf_id.replace('/', '--')}" / "snapshots"
    return any(snap.glob("*/tokenizer.json")) or any(snap.glob("*/tokenizer_config.json"))


def measure_tokens_per_char(models: list[Any], language: str | None, sample_file: str | None,
                            explicit: dict[str, str]) -> tuple[dict[str, float], str | None]:
    """Tokens per character of the sample for every model whose tokenizer is at hand; (values, sample name)."""
    from profiles.languages import SAMPLES

    if sample_file:
        p = Path(sample_file).expanduser()
        if not p.is_file():
            raise CliError(f"--sample-text {sample_file!r}: no such file")
        text, name = p.read_text(encoding="utf-8"), p.name
    elif language in SAMPLES:
        text, name = SAMPLES[language], f"UDHR article 1 ({language})"
    else:
        return {}, None
    if not text.strip():
        raise CliError(f"--sample-text {sample_file!r} is empty")
    wanted = {m.name: explicit.get(m.name) or (m.hf_id if m.hf_id and _hf_cache_has_tokenizer(m.hf_id) else None)
              for m in models}
    wanted = {k: v for k, v in wanted.items() if v}
    if not wanted:
        return {}, name
    from planner.app.data_io import load_tokenizer

    out: dict[str, float] = {}
    for model_name, src in wanted.items():
        try:
            tok = load_tokenizer(src, model_name)
        except CliError:
            if model_name in explicit:
                raise
            continue
        out[model_name] = len(tok(text, add_special_tokens=False)["input_ids"]) / len(text)
    return out, name


def parse_tokenizers(items: list[str]) -> dict[str, str]:
    from profiles.registry import get_model

    out = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--tokenizer {item!r}: expected MODEL=PATH, e.g. qwen2.5-7b=~/models/Qwen2.5-7B")
        name, path = item.split("=", 1)
        out[get_model(name).name] = path
    return out


USE = {"open": "open", "conditional": "cond", "on-request": "ask", "non-commercial": "nc"}
"""Short labels of ``card.commercial`` for the table (the legend says what they mean)."""


def run(args: argparse.Namespace) -> int:
    from planner.app.calibration_io import load_calibration_book
    from planner.search.select import SelectRequest, select
    from profiles.cluster import parse_cluster
    from profiles.languages import check_language
    from profiles.registry import all_models

    lang = check_language(args.language) if args.language else None
    if args.allow_on_request and not args.commercial:
        raise CliError("--allow-on-request only matters with --commercial")
    cluster = parse_cluster(args.gpus, args.host_ram_gib)
    lo, hi = args.params or (None, None)
    req = SelectRequest(method=args.method, seq=args.seq, language=lang, commercial=args.commercial,
                        allow_on_request=args.allow_on_request, min_params=lo, max_params=hi)
    models = list(all_models())
    tpc, sample = measure_tokens_per_char([m for m in models if m.card], lang, args.sample_text,
                                          parse_tokenizers(args.tokenizer))

    result = select(models, cluster, req, load_calibration_book(), tpc)
    ranked = result.ranked[: args.top] if args.top else result.ranked
    if args.json:
        print_json({
            "schema_version": 1,
            "request": {"gpus": cluster.label(), "method": req.method, "seq": req.seq, "language": lang,
                        "commercial": req.commercial, "params": [lo, hi]},
            "tokens_per_char_sample": sample,
            "ranked": [_json(i + 1, c) for i, c in enumerate(ranked)],
            "skipped_no_card": result.skipped,
        })
        return 0
    sys.stdout.write(render(result, ranked, cluster, sample))
    return 0


def _json(rank: int, c: Any) -> dict:
    card = c.model.card
    return {
        "rank": rank, "model": c.model.name, "eligible": c.eligible, "failed": c.failed, "reasons": c.reasons,
        "params": c.params, "fits": c.fits, "plan": c.plan or None, "peak_bytes": c.peak_bytes,
        "tokens_per_s": c.tokens_per_s, "tokens_per_char": c.tokens_per_char,
        "context": c.model.max_positions, "vocab_size": c.model.vocab_size,
        "card": card.model_dump(mode="json"), "profile_source": c.model.source,
    }


def render(result: Any, ranked: list[Any], cluster: Any, sample: str | None) -> str:
    from rich.console import Console
    from rich.table import Table

    from profiles.params import param_counts

    req = result.request
    buf = io.StringIO()
    con = Console(file=buf, width=max(100, min(160, _width())), color_system=None)
    want = [f"{req.method} on {cluster.label()} at --seq {req.seq:,}"]
    if req.language:
        from profiles.languages import LANGUAGES

        want.append(f"language {req.language} ({LANGUAGES[req.language]})")
    if req.commercial:
        want.append("commercial use")
    con.print("base models for " + ", ".join(want))
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col, just in (("#", "right"), ("model", "left"), ("params", "right"), ("GiB", "right"), ("tok/s", "right"),
                      ("lang", "left"), ("tok/chr", "right"), ("licence", "left"), ("ctx", "right"),
                      ("data", "right"), ("date", "left"), ("verdict", "left")):
        wrap = col == "verdict"
        t.add_column(col, justify=just, no_wrap=not wrap, overflow="fold" if wrap else "ignore")
    for i, c in enumerate(ranked, 1):
        card = c.model.card
        lang = "-" if not req.language else ("yes" if req.language in card.languages else "no")
        verdict = "ok" if c.eligible else "no: " + ", ".join(c.tags)
        if c.eligible and card.superseded_by:
            verdict = "ok*"
        active = param_counts(c.model).active
        size = f"{c.params / 1e9:.1f}B" + (f" ({active / 1e9:.1f}B act.)" if c.model.is_moe else "")
        t.add_row(str(i), c.model.name, size,
                  f"{c.peak_bytes / 2**30:.1f}" if c.fits else "no", f"{c.tokens_per_s:,.0f}" if c.tokens_per_s else "-",
                  lang, f"{c.tokens_per_char:.2f}" if c.tokens_per_char else "-",
                  f"{card.license} ({USE[card.commercial]})", f"{c.model.max_positions // 1024}K",
                  f"{card.training_tokens / 1e12:g}T" if card.training_tokens else "?", card.release_date[:7], verdict)
    con.print(t)
    con.print("ranked: requirements met first (fits, context, language, licence, --params), then larger (whole "
              "billions), not superseded, more training tokens, newer. GiB: peak per GPU of the best plan; tok/s: its "
              "throughput; data: pre-training tokens; date: release")
    con.print("licence use: open = open-source licence; cond = commercial use under the licence's conditions; ask = "
              "commercial use after registration; nc = non-commercial. verdict no: the requirements it misses "
              "(fit, ctx, lang, licence, params); ok*: meets them, but a newer catalogue model replaces it (card.superseded_by)")
    if sample:
        con.print(f"tok/char: tokens per character of {sample} with the model's own tokenizer (lower is cheaper); "
                  "'-' where no tokenizer is in the local Hugging Face cache")
    else:
        con.print("tok/char: '-' (no sample text for this language; --sample-text FILE measures on yours)")
    top = [c for c in ranked if c.eligible][:3]
    for c in top:
        con.print(f"\n{c.model.name}:")
        for r in c.reasons:
            con.print(f"  - {r}")
        unv = c.model.card.unverified
        if unv:
            con.print(f"  - not yet checked against their source: {', '.join(unv)}")
    if result.skipped:
        con.print(f"\nskipped (no card facts in their profile): {', '.join(result.skipped)}")
    con.print("\nsources: each fact's URL is in profiles/models/<model>.yaml under card.sources (--json prints them)")
    return buf.getvalue()


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns
