"""Derive the profiles of a folder of config.json files and write them as profile YAML files, with timings.

    python benchmarks/derive_configs.py tests/profiles/data/arch_configs tests/profiles/data/derived
    python benchmarks/derive_configs.py benchmarks/arch_configs /tmp/derived --only gpt_oss

Each ``<name>.json`` becomes ``<out>/<name>.yaml`` (``validation.derive.derive_profile``, the same derivation as
``plan profiles add``). The small configs' profiles under ``tests/profiles/data/derived`` are test data: the tests
compare them with transformers on the meta device and with the trace, and re-derive some to check they are
current. Prints the wall time of each derivation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", default=None, help="comma list of config names")
    args = ap.parse_args(argv)
    from profiles.cache import profile_yaml, write_atomic
    from validation.derive import derive_profile

    names = sorted(p.stem for p in args.configs.glob("*.json"))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    for name in names:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        prof = derive_profile(str(args.configs / f"{name}.json"), name=name)
        prof = prof.model_copy(update={"source": f"{args.configs.relative_to(ROOT) if args.configs.is_relative_to(ROOT) else args.configs}/{name}.json"})
        header = (f"# {name}: derived by benchmarks/derive_configs.py from {prof.source} "
                  f"(transformers {prof.derived.transformers_version}); regenerate, do not edit\n")
        write_atomic(args.out / f"{name}.yaml", profile_yaml(prof, header))
        worst = max((i.check_error for i in prof.derived.inventories), default=0.0)
        print(f"{name}: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - cpu0:.1f} s CPU, "
              f"{len(prof.derived.blocks)} block kinds, check error {worst:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
