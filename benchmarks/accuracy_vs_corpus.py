"""Accuracy against published real-GPU runs (the evidence corpus, profiles/evidence/): the speed section of
docs/accuracy.md, and the shipped speed fit.

Speed: the speed model's free parameters are fitted to every mappable throughput record
(:mod:`validation.corpus_fit`); each source is then predicted by a fit that did not see it (leave one source
out), and that held-out error is what the report leads with. The in-sample error of the shipped fit stands
beside it. Every record is listed with its estimate, its measurement and its signed error; records that
cannot be mapped are listed with why. Orderings: for every source that measured several setups of one model
on one cluster, the share of pairs our held-out estimates put in the measured order, and the named orderings
of issue 10.

    python benchmarks/accuracy_vs_corpus.py            # fit, write profiles/calibration/speed.json and the section
    python benchmarks/accuracy_vs_corpus.py --reuse    # re-render from benchmarks/results/speed_loso.json
    python benchmarks/accuracy_vs_corpus.py --weigh-nothing zhang2023-dissecting --out /tmp/without.md
                                                       # what if a source drove no fit (nothing shipped is written)

Memory against published runs is rendered by the same module once the memory records are evaluated
(:func:`memory_section`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import itertools
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
LOSO_FILE = RESULTS / "speed_loso.json"

NAMED_ORDERINGS: list[tuple[str, str, str, float, float]] = [
    ("ZeRO-2 faster than ZeRO-3, Llama-2-7B, 8xA800, batch 1 x 1024 (Zhang et al. 2023)",
     "zhang2023-dissecting/llama2-7b-zero2", "zhang2023-dissecting/llama2-7b-zero3", 1.0, float("inf")),
    ("ZeRO-2 10-20x faster than ZeRO-2 + CPU offload there",
     "zhang2023-dissecting/llama2-7b-zero2", "zhang2023-dissecting/llama2-7b-zero2-offload", 10.0, 20.0),
    ("ZeRO-2 faster than ZeRO-3, Llama-3-8B shape, 4x GH200, batch 1 x 2048 (ETH LSAIE, DeepSpeed 0.18)",
     "lsaie-deepspeed-gh200-2025-12/zero2", "lsaie-deepspeed-gh200-2025-12/zero3", 1.0, float("inf")),
    ("ZeRO-3 under 3x faster than ZeRO-3 + CPU offload there (1.75x measured: Grace CPUs over NVLink-C2C)",
     "lsaie-deepspeed-gh200-2025-12/zero3", "lsaie-deepspeed-gh200-2025-12/zero3-offload", 1.0, 3.0),
    ("torch.compile faster than eager, Llama 3.2 3B, A100 (torchtune ladder)",
     "torchtune-readme-2024-11/llama3.2-3b-full-compile", "torchtune-readme-2024-11/llama3.2-3b-full-packed",
     1.0, float("inf")),
    ("packing faster than padding, Llama 3.2 3B, A100 (torchtune ladder)",
     "torchtune-readme-2024-11/llama3.2-3b-full-packed", "torchtune-readme-2024-11/llama3.2-3b-full-baseline",
     1.0, float("inf")),
    ("padding-free faster than padded rows, Mistral-7B full, A100 (fms-acceleration)",
     "fms-acceleration-orca-padding-free-2024-09/mistral-7b-full-aadp-padding-free-1gpu-bs4",
     "fms-acceleration-orca-padding-free-2024-09/mistral-7b-full-padded-1gpu-bs4", 1.0, float("inf")),
    ("no checkpointing faster at equal batch, Llama-2-7B ZeRO-2, 8xA800, seq 4096 (chenyaofo gist)",
     "chenyaofo-gist-deepspeed-llama7b/zero2-nockpt-nooff-bs1x64",
     "chenyaofo-gist-deepspeed-llama7b/zero2-ckpt-nooff-bs1x64", 1.0, float("inf")),
]
"""(claim, the record that should be faster, the record that should be slower, and the band the estimated
speed ratio must fall in for the claim to hold)."""


def weigh_nothing(cases: list, sources: frozenset[str]) -> list:
    """``cases`` with every record of ``sources`` kept for the error but weighing nothing in any fit (``fit``
    False): the question "what would the shipped fit be had these sources not driven it?"."""
    return [dataclasses.replace(c, fit=False) if c.source in sources else c for c in cases]


def run_fit(evals: int, jobs: int, unweighted: frozenset[str] = frozenset()) -> dict:
    """Fit on everything and leave each source out; return the JSON the report renders. ``unweighted``: sources
    whose records are predicted and counted but drive no fit (:func:`weigh_nothing`)."""
    from multiprocessing import Pool

    from validation.corpus import load
    from validation.corpus_fit import fit_document, predict

    corpus = load()
    cases = weigh_nothing(corpus.speed, unweighted)
    sources = sorted({c.source for c in cases})
    t0 = time.time()
    with Pool(max(1, jobs)) as pool:
        fits = pool.starmap(_fit_job, [(None, evals, unweighted)] + [(s, evals, unweighted) for s in sources])
    full, held = fits[0], dict(zip(sources, fits[1:]))
    rows = []
    for c in cases:
        rows.append({
            "id": c.id, "source": c.source, "model": c.model.name, "cluster": c.cluster.label(),
            "gpu_family": _family(c), "setup": c.setup.short(), "seq_len": c.setup.seq_len,
            "framework": c.framework, "parallelism": c.setup.parallelism_class(c.cluster.world_size),
            "confidence": c.confidence, "fit": c.fit, "notes": list(c.notes),
            "measured": c.tokens_per_s, "in_sample": predict(c, full), "held_out": predict(c, held[c.source]),
        })
    from validation.corpus_fit import SpeedFit

    doc = fit_document(SpeedFit(full, [], held), cases)
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.time() - t0, "evals": evals, "params": doc["params"], "fit": doc,
        "rows": rows, "skipped": [{"id": s.id, "reason": s.reason} for s in corpus.skipped],
    }


def _fit_job(source: str | None, evals: int, unweighted: frozenset[str] = frozenset()):  # noqa: ANN202
    from validation.corpus import load
    from validation.corpus_fit import fit_speed

    cases = weigh_nothing(load().speed, unweighted)
    return fit_speed([c for c in cases if c.source != source] if source else cases, max_evals=evals)


def _family(case) -> str:  # noqa: ANN001
    from validation.corpus import gpu_family

    return gpu_family(case)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}"


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def anomalies() -> dict[str, str]:
    """Record id -> why its published numbers fail a physics check (the corpus's ``anomaly``, where it puts the
    throughput in doubt: more FLOPs per second than the GPU's dense peak, or a stated setup the published memory
    cannot hold). Such records are listed with their errors but left out of the
    summary, the GPU-family table and the per-source table, as in the memory section."""
    from profiles.evidence import corpus_records

    return {rec.id: rec.record.anomaly for rec in corpus_records()
            if rec.record.doubts("speed")}


def parallelism(data: dict) -> dict[str, str]:
    """Each row's ``Setup.parallelism_class``: stored in the rows of fits since 2026-12-02, else read from the corpus
    (an older speed_loso.json)."""
    out = {r["id"]: r["parallelism"] for r in data["rows"] if "parallelism" in r}
    if len(out) < len(data["rows"]):
        from validation.corpus import load

        out.update({c.id: c.setup.parallelism_class(c.cluster.world_size) for c in load().speed if c.id not in out})
    return out


def _breakdown(rows: list[dict], errors: list[float], key) -> dict[str, tuple[int, float, float]]:  # noqa: ANN001
    """key(row) -> (records, median signed error, median |error|), over the counted rows."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r, e in zip(rows, errors):
        groups[key(r)].append(e)
    return {k: (len(v), _med(v), _med([abs(x) for x in v])) for k, v in sorted(groups.items())}


def speed_summary(data: dict, flagged: dict[str, str] | None = None) -> dict:
    """The summary, family and count figures of the speed section, without the records of ``flagged``
    (:func:`anomalies`, read from the corpus when not given)."""
    flagged = anomalies() if flagged is None else flagged
    rows = [r for r in data["rows"] if r["id"] not in flagged]
    par = parallelism(data)
    held = [r["held_out"] / r["measured"] - 1 for r in rows]
    ins = [r["in_sample"] / r["measured"] - 1 for r in rows]
    fam: dict[str, list[float]] = defaultdict(list)
    fam_gpu: dict[str, list[float]] = defaultdict(list)
    for r, e in zip(rows, held):
        fam[r["gpu_family"]].append(e)
        if not host_optimizer_row(r):
            fam_gpu[r["gpu_family"]].append(e)
    return {
        "n": len(rows), "sources": len({r["source"] for r in rows}),
        "anomalies": sum(1 for r in data["rows"] if r["id"] in flagged),
        "held_median_abs": _med([abs(e) for e in held]), "held_max_abs": max((abs(e) for e in held), default=0),
        "in_median_abs": _med([abs(e) for e in ins]),
        "families": {k: (len(v), _med(v)) for k, v in sorted(fam.items())},
        "families_without_host_optimizer": {k: (len(fam_gpu.get(k, [])), _med(fam_gpu[k]) if fam_gpu.get(k) else None)
                                            for k in sorted(fam)},
        "parallelism": _breakdown(rows, held, lambda r: par[r["id"]]),
        "frameworks": _breakdown(rows, held, lambda r: r["framework"]),
    }


def track_record_block(s: dict) -> dict:
    """The speed figures ``plan`` and ``plan estimate`` print beside an estimate (planner/app/track_record.py), from
    :func:`speed_summary`: held out, overall and per GPU family (``GpuProfile.family``)."""
    return {"records": s["n"], "sources": s["sources"], "held_out_median_abs": round(s["held_median_abs"], 6),
            "held_out_max_abs": round(s["held_max_abs"], 6), "in_sample_median_abs": round(s["in_median_abs"], 6),
            "families": {k: {"records": n, "held_out_median_signed": round(m, 6)} for k, (n, m) in s["families"].items()},
            "families_without_host_optimizer": {
                k: {"records": n, "held_out_median_signed": None if m is None else round(m, 6)}
                for k, (n, m) in s["families_without_host_optimizer"].items()},
            "parallelism": {k: {"records": n, "held_out_median_signed": round(m, 6), "held_out_median_abs": round(a, 6)}
                            for k, (n, m, a) in s["parallelism"].items()}}


def host_optimizer_row(row: dict) -> bool:
    """Whether the record's optimizer steps on the CPU (ZeRO-Offload / FSDP CPU offload): its step is then mostly the
    host's (eq. S15), whose throughput is the host's property, not the GPU family's (docs/speed.md S15)."""
    return "offload optimizer" in row["setup"]


def orderings(data: dict) -> tuple[list[str], float, int]:
    """Per source, for each (model, cluster) with several setups: pairs our held-out estimates order as
    measured. Returns table rows, the overall share and the pair count."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in data["rows"]:
        groups[(r["source"], r["model"], r["cluster"])].append(r)
    out, agree, total = [], 0, 0
    for (src, model, cluster), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        a = n = 0
        for x, y in itertools.combinations(rs, 2):
            if abs(x["measured"] / y["measured"] - 1) < 0.02:
                continue  # measured as ties: no order to get right
            n += 1
            a += (x["measured"] > y["measured"]) == (x["held_out"] > y["held_out"])
        if n:
            out.append(f"| {src} | {model} | {cluster} | {len(rs)} | {a}/{n} |")
            agree, total = agree + a, total + n
    return out, (agree / total if total else float("nan")), total


def speed_section(data: dict) -> str:
    flagged = anomalies()
    s = speed_summary(data, flagged)
    p = data["params"]
    lines = [
        "## Speed against published runs" + (" (what-if)" if data.get("weigh_nothing") else ""),
        "",
        *([f"**What-if run, not the shipped fit: the records of {', '.join(data['weigh_nothing'])} are predicted and "
           "counted but drive no fit** (`--weigh-nothing`); the in-sample column is this run's own fit, not "
           "profiles/calibration/speed.json.", ""] if data.get("weigh_nothing") else []),
        f"_{s['n']} throughput records from {s['sources']} sources of the evidence corpus (profiles/evidence/, "
        f"docs/evidence.md); fitted {data['generated'][:10]} by `python benchmarks/accuracy_vs_corpus.py` "
        f"({data['seconds'] / 60:.0f} min)._",
        "",
        "Each record's estimate comes from a fit of the speed model's free parameters (docs/speed.md, "
        "\"Parameters\") to every *other* source (leave one source out): the error below is the error on runs the "
        "fit did not see. The shipped fit (`profiles/calibration/speed.json`, all sources) is the in-sample "
        "column, reported beside it only. Errors are `(estimated - measured) / measured`: positive means the "
        "model is too fast.",
        "",
        f"**Summary: {s['n']} records ({s['anomalies']} more flagged as anomalies by the corpus, listed but not "
        f"counted), held-out median |error| {s['held_median_abs'] * 100:.1f} %, max {s['held_max_abs'] * 100:.0f} % "
        f"(in-sample median {s['in_median_abs'] * 100:.1f} %). Target (issue 10): median <= 15 % and no GPU "
        f"family biased by more than 15 % in median.**",
        "",
        "| GPU family | records | held-out median signed error % | without CPU-optimizer records | their median signed % |",
        "|---|---:|---:|---:|---:|",
    ]
    for fam, (n, m) in s["families"].items():
        ng, mg = s["families_without_host_optimizer"][fam]
        lines.append(f"| {fam} | {n} | {_pct(m)} | {ng} | {_pct(mg) if mg is not None else '-'} |")
    lines += ["", "The target is on the third column. The last two leave out the records whose optimizer steps on the CPU "
              "(ZeRO-Offload): their step is mostly the host's optimizer (eq. S15), whose throughput is a property of the "
              "host and its launcher, not of the GPU family (docs/speed.md S15)."]
    lines += ["", "By how the model is spread over the GPUs (`Setup.parallelism_class`) and by trainer, held out: what "
              "to expect of a plan of each kind. `plan estimate` prints its setup's line.", "",
              "| parallelism | records | median signed % | median abs error % | sources |", "|---|---:|---:|---:|---|"]
    par = parallelism(data)
    for k, (n, m, a) in s["parallelism"].items():
        srcs = sorted({r["source"] for r in data["rows"] if r["id"] not in flagged and par[r["id"]] == k})
        lines.append(f"| {k} | {n} | {_pct(m)} | {a * 100:.1f} | {len(srcs)}: {', '.join(srcs)} |")
    lines += ["", "| trainer (`--framework`) | records | median signed % | median abs error % |", "|---|---:|---:|---:|"]
    for k, (n, m, a) in s["frameworks"].items():
        lines.append(f"| {k} | {n} | {_pct(m)} | {a * 100:.1f} |")
    lines += ["", "### The fitted parameters", "", "| parameter | value | fitted |", "|---|---|---|"]
    fitted = set(p.get("fitted", ()))
    for k, v in p.items():
        if k in ("fitted", "source"):
            continue
        if isinstance(v, dict):
            for kk, vv in v.items():
                lines.append(f"| {k}[{kk}] | {vv:.4g} | {'yes' if f'{k}[{kk}]' in fitted else 'no (sourced / prior)'} |")
        else:
            lines.append(f"| {k} | {v:.4g} | {'yes' if k in fitted else 'no (sourced / prior)'} |")
    ord_rows, share, pairs = orderings(data)
    by_id = {r["id"]: r for r in data["rows"]}
    lines += ["", "### Orderings", "",
              f"Within each source, pairs of setups of one model on one cluster, ordered by the held-out estimates "
              f"as measured: **{share * 100:.0f} % of {pairs} pairs** (ties within 2 % skipped).", "",
              "| claim | measured | estimated (held out) | holds |", "|---|---|---|---|"]
    for claim, fast, slow, lo, hi in NAMED_ORDERINGS:
        if fast in by_id and slow in by_id:
            f, sl = by_id[fast], by_id[slow]
            mr, er = f["measured"] / sl["measured"], f["held_out"] / sl["held_out"]
            lines.append(f"| {claim} | {mr:.2f}x | {er:.2f}x | {'yes' if lo < er <= hi else '**no**'} |")
        else:
            lines.append(f"| {claim} | record missing | - | - |")
    lines += ["", "| source | model | cluster | setups | pairs in the measured order |", "|---|---|---|---:|---:|",
              *ord_rows]
    lines += ["", "### Per source", "", "| source | records | held-out median signed % | min % | max % |",
              "|---|---:|---:|---:|---:|"]
    by_src: dict[str, list[float]] = defaultdict(list)
    for r in data["rows"]:
        if r["id"] in flagged:
            continue
        by_src[r["source"]].append(r["held_out"] / r["measured"] - 1)
    for src, es in sorted(by_src.items()):
        lines.append(f"| {src} | {len(es)} | {_pct(_med(es))} | {_pct(min(es))} | {_pct(max(es))} |")
    lines += ["", "### Every record", "",
              "| record | setup | cluster | measured tokens/s | held-out estimate | error % | in-sample error % | fit |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(data["rows"], key=lambda r: r["held_out"] / r["measured"]):
        lines.append(
            f"| {r['id']} | {r['setup']}, seq {r['seq_len']}, {r['framework']} | {r['cluster']} | {r['measured']:,.0f} | "
            f"{r['held_out']:,.0f} | {_pct(r['held_out'] / r['measured'] - 1)} | {_pct(r['in_sample'] / r['measured'] - 1)} | "
            + (f"no: anomaly, not counted: {flagged[r['id']]} |" if r["id"] in flagged else
               f"{'yes' if r['fit'] else 'no: ' + '; '.join(r['notes'])} |"))
    skipped = [x for x in data["skipped"]]
    lines += ["", f"### Records not evaluated ({len(skipped)})", "",
              "Kept in the corpus; each says why it cannot be expressed yet.", "", "| record | why |", "|---|---|"]
    for x in sorted(skipped, key=lambda x: x["id"]):
        lines.append(f"| {x['id']} | {x['reason'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reuse", action="store_true", help="re-render from benchmarks/results/speed_loso.json")
    ap.add_argument("--evals", type=int, default=1200, help="objective evaluations per fit (default 1200)")
    ap.add_argument("--jobs", type=int, default=2, help="fits in parallel (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed.md", help="the rendered section")
    ap.add_argument("--weigh-nothing", metavar="SOURCE", action="append", default=[],
                    help="a source id whose records are predicted and counted but drive no fit (repeatable): a "
                    "what-if run that writes only --out (a path other than the shipped section) and its .json "
                    "beside it, never the shipped fit")
    args = ap.parse_args(argv)
    from planner.fileio import atomic_write_text

    unweighted = frozenset(args.weigh_nothing)
    if unweighted:
        from validation.corpus import load

        from profiles.errors import unknown_choice_message

        known = sorted({c.source for c in load().speed})
        bad = sorted(unweighted - set(known))
        if bad:
            ap.error(f"--weigh-nothing: {unknown_choice_message('source with speed records', bad[0], known)}")
        shipped = {(RESULTS / "speed.md").resolve(), LOSO_FILE.resolve()}
        written = {args.out.resolve(), args.out.with_suffix(".json").resolve()}
        if args.reuse or args.out.suffix == ".json" or written & shipped:
            ap.error("--weigh-nothing is a what-if run: give --out a .md path other than the shipped section "
                     "(its .json lands beside it, never on benchmarks/results/speed_loso.json), and no --reuse")
    if args.reuse:
        data = json.loads(LOSO_FILE.read_text(encoding="utf-8"))
    elif unweighted:
        data = run_fit(args.evals, args.jobs, unweighted)
        data["weigh_nothing"] = sorted(unweighted)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    else:
        data = run_fit(args.evals, args.jobs)
        atomic_write_text(LOSO_FILE, json.dumps(data, indent=1) + "\n")
        from planner.app.calibration_io import CALIBRATION_DIR, SPEED_FILE

        atomic_write_text(CALIBRATION_DIR / SPEED_FILE, json.dumps(data["fit"], indent=1) + "\n")
    atomic_write_text(args.out, speed_section(data))
    s = speed_summary(data)
    if not unweighted and args.out.resolve() == (RESULTS / "speed.md").resolve():  # the shipped fit and section
        from planner.app.track_record import write_track_record_block

        write_track_record_block("speed", track_record_block(s))
    print(f"speed: {s['n']} records, held-out median |error| {s['held_median_abs'] * 100:.1f} %, in-sample "
          f"{s['in_median_abs'] * 100:.1f} %; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
