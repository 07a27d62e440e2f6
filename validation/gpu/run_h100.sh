#!/usr/bin/env bash
# Validate tuneplan's memory and speed estimates on one H100 in under 8 minutes, then calibrate.
#
#   bash validation/gpu/run_h100.sh              on the GPU machine (matrix_h100.yaml, 27 runs and one meant to go out of memory)
#   bash validation/gpu/run_h100.sh --dry-run    anywhere, on the CPU: the same flow on tiny configs
#                                                (matrix_dryrun.yaml); tests/validation/test_validate_script.py
#
# Writes to $OUT (default ./h100-out), at most 8 files, none over 16 MiB (what the device tool brings back):
#   measurements.jsonl   every run's record (raw, as plan validate appended it)
#   report.md            estimate vs measured per run, per phase and per category
#   calibration.tar.gz   profiles/calibration/<gpu>__<recipe>.json fitted from the runs, with hold-out errors
#   figures.tar.gz       the report's figures, memory timelines (HTML + JSON)
#   snapshots.tar.gz     CUDA allocator snapshots (open in https://pytorch.org/memory_viz), if under 15 MiB
#   run.log              what this script did, with the exact commands
# The full working folder stays in $TUNEPLAN_WORK (default /tmp/tuneplan-h100).
#
# Environment: PYTHON (default python3), WHEELS (a folder of wheels to install missing packages from, default
# validation/gpu/wheels when it exists: fill it with validation/gpu/fetch_wheels.sh where PyPI is reachable;
# the GPU machine has no network and lacks pydantic and bitsandbytes), TUNEPLAN_TIME_BUDGET (seconds after which no new run starts;
# default 400), TUNEPLAN_HARD_LIMIT (seconds after which the matrix is stopped; default 450).
set -uo pipefail

cd "$(dirname "$0")/../.."
REPO="$PWD"
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
OUT="${OUT:-$REPO/h100-out}"
WORK="${TUNEPLAN_WORK:-/tmp/tuneplan-h100}"
PY="${PYTHON:-python3}"
BUDGET="${TUNEPLAN_TIME_BUDGET:-400}"
HARD="${TUNEPLAN_HARD_LIMIT:-450}"
MATRIX="validation/gpu/matrix_h100.yaml"
DEVICE=()
if [[ $DRY == 1 ]]; then
  MATRIX="validation/gpu/matrix_dryrun.yaml"
  DEVICE=(--device cpu)
  WORK="${TUNEPLAN_WORK:-$(mktemp -d /tmp/tuneplan-dryrun.XXXXXX)}"
fi
mkdir -p "$OUT" "$WORK"
LOG="$OUT/run.log"
: >"$LOG"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
T0=$(date +%s)

# ---- 1. what the run needs, installed only where missing; an installed torch is never replaced ----------------
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" >/dev/null 2>&1; }
if [[ -z "${WHEELS:-}" && -d "$REPO/validation/gpu/wheels" ]]; then WHEELS="$REPO/validation/gpu/wheels"; fi
install() {  # install PACKAGE [IMPORT_NAME]: from $WHEELS first, then the index; failure is logged, not fatal
  local pkg="$1" mod="${2:-$1}"
  has "$mod" && return 0
  if [[ $DRY == 1 ]]; then log "dry run: would install $pkg"; return 0; fi
  log "installing $pkg"
  if [[ -n "${WHEELS:-}" ]] && "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$pkg" >>"$LOG" 2>&1; then
    return 0
  fi
  timeout 120 "$PY" -m pip install -q "$pkg" >>"$LOG" 2>&1 \
    || log "could not install $pkg (no network? fetch it with validation/gpu/fetch_wheels.sh and set WHEELS)"
}
if ! has planner; then
  # the project itself, without its dependencies (its validate extra pins torch, which this machine has already)
  "$PY" -m pip install -q --no-deps -e "$REPO" >>"$LOG" 2>&1 || log "pip install -e failed; using PYTHONPATH"
fi
for spec in "pydantic" "PyYAML yaml" "rich" "transformers" "accelerate" "peft" "psutil" "matplotlib" "pandas"; do
  install $spec
done
if [[ $DRY == 0 ]]; then
  install bitsandbytes || true
  has bitsandbytes || log "bitsandbytes missing: QLoRA runs will be recorded as not runnable"
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
EOF

# ---- 2. the matrix: every finished run is appended to $WORK/measurements.jsonl at once ------------------------
CMD=("$PY" -m planner validate --matrix "$MATRIX" "${DEVICE[@]}" --out "$WORK" --quiet --time-budget "$BUDGET")
log "running: ${CMD[*]}"
timeout --signal=INT --kill-after=20 "$HARD" "${CMD[@]}" >>"$LOG" 2>&1
RC=$?
log "plan validate exited with $RC (0: all ran; 1: some run OOMed, was not runnable or not started; 124/130: stopped)"
if [[ ! -s "$WORK/report.md" && -s "$WORK/measurements.jsonl" ]]; then
  "$PY" -c "from validation.report import write_report; write_report('$WORK')" >>"$LOG" 2>&1
fi

# ---- 3. calibration from what finished ----------------------------------------------------------------------
mkdir -p "$WORK/calibration"
CAL=("$PY" -m planner calibrate "$WORK" --out "$WORK/calibration" --verbose)
log "running: ${CAL[*]}"
"${CAL[@]}" 2>&1 | tee -a "$LOG" >&2
log "plan calibrate exited with ${PIPESTATUS[0]} (1: no usable CUDA runs, expected in a dry run)"

# ---- 4. bring back at most 8 files, none over 16 MiB --------------------------------------------------------
LIMIT=$((15 * 1024 * 1024))
cp "$WORK/measurements.jsonl" "$OUT/" 2>/dev/null || log "no measurements.jsonl"
cp "$WORK/report.md" "$OUT/" 2>/dev/null || log "no report.md"
tar -czf "$OUT/calibration.tar.gz" -C "$WORK" calibration
(cd "$WORK" && find figures runs -name '*.png' -o -name 'memory_timeline.*' 2>/dev/null | sort) >"$WORK/.figlist" || true
tar -czf "$OUT/figures.tar.gz" -C "$WORK" -T "$WORK/.figlist" 2>>"$LOG"
if [[ $(stat -c %s "$OUT/figures.tar.gz") -gt $LIMIT ]]; then
  log "figures.tar.gz over 15 MiB: keeping the PNG figures only"
  (cd "$WORK" && find figures -name '*.png' | sort) >"$WORK/.figlist"
  tar -czf "$OUT/figures.tar.gz" -C "$WORK" -T "$WORK/.figlist"
fi
(cd "$WORK" && find runs -name 'allocator_snapshot.pickle' | sort) >"$WORK/.snaplist" || true
if [[ -s "$WORK/.snaplist" ]]; then
  tar -czf "$OUT/snapshots.tar.gz" -C "$WORK" -T "$WORK/.snaplist"
  if [[ $(stat -c %s "$OUT/snapshots.tar.gz") -gt $LIMIT ]]; then
    log "snapshots.tar.gz over 15 MiB: dropped (they stay in $WORK)"
    rm -f "$OUT/snapshots.tar.gz"
  fi
fi
log "done in $(( $(date +%s) - T0 )) s; results in $OUT, everything in $WORK"
ls -la "$OUT" >>"$LOG"
exit 0
