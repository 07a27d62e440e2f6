"""``plan calibrate``: fit per-GPU, per-recipe correction terms from ``plan validate`` measurements, or
(``--corpus``) the speed model's physical parameters from the evidence corpus of published runs."""

from __future__ import annotations

import argparse

from planner.app.errors import CliError

NAME = "calibrate"
HELP = "fit fixed overhead, allocator factor and efficiency per GPU and recipe from validation runs"
DESCRIPTION = """Fit, per GPU kind and precision recipe, the terms an analytic model cannot know, from the
measurements.jsonl that plan validate wrote:
  fixed overhead    CUDA context and library workspaces: driver-used minus max_memory_reserved
  allocator factor  max_memory_reserved / max_memory_allocated
  efficiency (mfu)  the speed model's efficiency that reproduces the measured step times
Each value is the median over the runs; each run is then predicted from a fit on all the others
(leave-one-out) and the hold-out error is printed and stored. Writes <gpu>__<recipe>.json into --out with the
runs it came from; plan and plan estimate then say "calibrated from N runs on <GPU>". CPU runs, runs that
did not finish and runs on devices that match no GPU profile are skipped (listed with --verbose).

With --corpus (no DIR): fit the speed model's parameters (docs/speed.md, "Parameters") to every
mappable throughput record of the evidence corpus (profiles/evidence/), refit without each source in turn to
report the leave-one-source-out error (about 6-7 min for the 24 sources on 2 cores), and write
profiles/calibration/speed.json (or --out/speed.json), which plan then uses.

examples:
  plan calibrate --corpus
  plan calibrate runs/h100
  plan calibrate runs/h100 runs/h100-more --out profiles/calibration
  plan calibrate runs/h100/measurements.jsonl --recipe hf-amp --dry-run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="validation output folders (or their measurements.jsonl files)")
    parser.add_argument("--corpus", action="store_true",
                        help="fit the speed model to the evidence corpus instead (no DIR); writes speed.json")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where calibration files go (default: profiles/calibration, or $TUNEPLAN_CALIBRATION_DIR; "
                             "the folder plan reads)")
    parser.add_argument("--gpu", metavar="NAME",
                        help="GPU profile the runs were measured on, when the device name does not resolve to one")
    parser.add_argument("--recipe", metavar="RECIPE", help="fit only this precision recipe")
    parser.add_argument("--dry-run", action="store_true", help="fit and print, write nothing")
    parser.add_argument("--verbose", action="store_true", help="list the skipped records and per-run values")
    parser.add_argument("--json", action="store_true", help="print the calibrations as JSON")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f} %"


def run_corpus(args: argparse.Namespace) -> int:
    """Fit the speed parameters to the corpus, with the leave-one-source-out error, and write speed.json."""
    import json
    from pathlib import Path

    from planner.app.calibration_io import SPEED_FILE, calibration_dir
    from planner.app.commands.common import print_json
    from planner.fileio import atomic_write_text
    from validation.corpus import load
    from validation.corpus_fit import fit_document, leave_one_source_out

    cases = load().speed
    sources = sorted({c.source for c in cases})
    done: list[str] = []

    def progress(src: str) -> None:
        done.append(src)
        if not args.json:
            print(f"  held out {len(done)}/{len(sources)}: {src}", flush=True)

    fit = leave_one_source_out(cases, progress)
    doc = fit_document(fit, cases)
    doc["summary"] = fit.summary()
    path = Path(args.out) / SPEED_FILE if args.out else calibration_dir() / SPEED_FILE
    if not args.dry_run:
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    s = doc["summary"]
    if args.json:
        print_json(doc)
    else:
        print(f"{s['records']} records from {s['sources']} sources ({s['anomalies']} more flagged as anomalies by the "
              "corpus: predicted, not counted): held-out (leave one source out) median |error| "
              f"{s['loso_median_abs_error'] * 100:.1f} %, in-sample {s['in_sample_median_abs_error'] * 100:.1f} %")
        for fam, med in s["family_median_error"].items():
            print(f"  {fam:16s} {s['family_records'][fam]:4d} records, held-out median {med * 100:+.1f} %")
        print(("would write " if args.dry_run else "wrote ") + str(path))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.corpus:
        if args.dirs or args.gpu or args.recipe:
            raise CliError("--corpus fits the speed model to the published runs; drop DIR, --gpu and --recipe")
        return run_corpus(args)
    if not args.dirs:
        raise CliError("give the validation output folders (DIR ...), or --corpus")
    from pathlib import Path

    from planner.app.calibration_io import calibration_dir
    from planner.engine.calibration import calibration_filename
    from planner.app.commands.common import print_json

    gpu = None
    if args.gpu:
        from profiles.registry import get_gpu

        gpu = get_gpu(args.gpu).name
    if args.recipe:
        from planner.engine.setup import RECIPES

        if args.recipe not in RECIPES:
            raise CliError(f"unknown recipe {args.recipe!r}; valid: {', '.join(RECIPES)}")
    for d in args.dirs:
        p = Path(d)
        if not p.exists():
            raise CliError(f"{d} does not exist; pass the --out folder of plan validate")
    from planner.fileio import check_writable
    from validation.calibrate import fit, missing_sources, write

    missing = missing_sources(args.dirs)
    if len(missing) == len(args.dirs):
        raise CliError(f"no measurements.jsonl in {', '.join(missing)}; pass the --out folder of plan validate")
    out_dir = Path(args.out if args.out is not None else calibration_dir())
    if not args.dry_run:
        check_writable(args.out if args.out is not None else out_dir)  # before fitting: nothing half-written
    results, skipped = fit(args.dirs, gpu=gpu, recipe=args.recipe)
    if not args.dry_run:
        for r in results:
            write(r, out_dir)
    if args.json:
        print_json({"calibrations": [r.calibration.model_dump(mode="json") for r in results],
                    "files": [str(r.path) for r in results if r.path], "skipped": skipped,
                    "no_measurements": missing})
        return 0 if results else 1
    from rich.console import Console
    from rich.table import Table

    from planner.app.render.fit import print_table

    console = Console(soft_wrap=True)
    for m in missing:
        console.print(f"no measurements.jsonl in {m}; skipped", highlight=False)
    if not results:
        held = (f"{len(skipped)} record{'s' if len(skipped) != 1 else ''} skipped" if skipped
                else "they hold no measurement records")
        console.print(f"no usable runs in {', '.join(args.dirs)} ({held}); calibration needs finished CUDA runs"
                      + (" (see --verbose)" if skipped and not args.verbose else ""), highlight=False)
        if args.verbose:
            for s in skipped:
                console.print(f"  skipped {s}", highlight=False)
        return 1
    t = Table(title="calibration (hold-out: leave-one-out mean / max relative error)")
    for col in ("GPU", "recipe", "runs", "fixed overhead", "allocator factor", "efficiency", "hold-out reserved",
                "hold-out device used", "hold-out tokens/s", "hold-out peak (engine)"):
        # figures never shrink; the table splits into parts that repeat GPU and recipe (planner.app.render.fit)
        t.add_column(col, justify="right" if col not in ("GPU", "recipe") else "left", no_wrap=True)
    for r in results:
        c = r.calibration
        def he(k: str, h: dict = c.holdout_error) -> str:
            x = h.get(k)
            return "n/a" if x is None or x.n == 0 else f"{_pct(x.mean_abs_rel)} / {_pct(x.max_abs_rel)}"

        t.add_row(c.gpu, c.recipe, str(c.n_runs), f"{c.fixed_overhead_bytes / 2**20:,.0f} MiB",
                  f"{c.allocator_factor:.3f}", "n/a" if c.mfu is None else f"{c.mfu:.3f}", he("allocator_factor"),
                  he("fixed_overhead"), he("mfu"), he("peak_total"))
    print_table(console, t, keep=2)
    for r in results:
        path = r.path or out_dir / calibration_filename(r.gpu, r.recipe)
        console.print(f"{'would write' if args.dry_run else 'wrote'} {path}: {r.calibration.label}", highlight=False)
        for n in r.calibration.notes:
            console.print(f"  note: {n}", highlight=False)
        if args.verbose:
            for pr in r.per_run:
                console.print(f"  {pr}", highlight=False)
    if skipped:
        console.print(f"{len(skipped)} record{'s' if len(skipped) != 1 else ''} skipped"
                      + (":" if args.verbose else " (--verbose lists them)"))
        if args.verbose:
            for s in skipped:
                console.print(f"  {s}", highlight=False)
    return 0
