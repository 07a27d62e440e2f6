#!/usr/bin/env bash
# Download the wheels run_h100.sh needs but the GPU machine lacks, for a machine without network access.
# Run it where PyPI is reachable; carry the folder to the GPU machine (run_h100.sh installs from it).
#
#   bash validation/gpu/fetch_wheels.sh [DIR]     (default validation/gpu/wheels, about 45 MB)
#
# pydantic (tuneplan's core dependency) with its own dependencies, and bitsandbytes (QLoRA, 8-bit AdamW)
# without its dependencies (they include torch, which the GPU machine has). Target: CPython 3.12, x86-64 Linux,
# the GPU image's Python. Override with PY_VERSION=3.11 etc.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-validation/gpu/wheels}"
PYV="${PY_VERSION:-3.12}"
mkdir -p "$DIR"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --only-binary=:all: --python-version "$PYV" "${PLAT[@]}" -d "$DIR" "pydantic>=2.6,<3"
python3 -m pip download -q --only-binary=:all: --python-version "$PYV" "${PLAT[@]}" --no-deps -d "$DIR" bitsandbytes
ls -la "$DIR"
du -sh "$DIR"
