#!/usr/bin/env bash
# The GPU verification's launcher: unpack the data, then run benchmarks/gpu_check.py under one deadline.
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh OUT [--smoke] [--parallel N] [--continue-from PREV.tar.gz]
#
# Steps (env, bench, baselines, paper grid, fractional GPUs) and outputs (OUT/log.txt: everything printed,
# env.json, progress.json, gpu-check.tar.gz): benchmarks/gpu_check.py's header.
# Before the first call: mkdir -p .devdata && cp ../shared/data/cifar10-jpeg.tar.gz .devdata/ (.devdata/ is
# git-ignored; the tar's top folder is cifar10-jpeg/). It is unpacked into DATA_DIR once.
# To continue an earlier call: cp OUT/gpu-check.tar.gz .devdata/gpu-check-prev.tar.gz (then passed as --continue-from).
# Smoke test on the CPU: PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh /tmp/smoke --smoke
# Environment: PYTHON (python3); GPU_CHECK_BUDGET_S (500 s from this script's start; `timeout` stops all
# 40 s later); CIFAR_TAR (.devdata/cifar10-jpeg.tar.gz); DATA_DIR (/tmp/dyntrain-data); GPU_CHECK_WORK
# (/tmp/dyntrain-gpu-check: the folder packed); GPU_CHECK_PREV (.devdata/gpu-check-prev.tar.gz; empty: none).
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then echo "usage: bash benchmarks/gpu_check.sh OUT [--smoke] [options]" >&2; exit 2; fi
OUT=$1
shift
mkdir -p "$OUT"
log() { echo "gpu_check.sh: $*" | tee -a "$OUT/log.txt"; }
BUDGET=${GPU_CHECK_BUDGET_S:-500}
TAR=${CIFAR_TAR:-.devdata/cifar10-jpeg.tar.gz}
DATA=${DATA_DIR:-/tmp/dyntrain-data}
mkdir -p "$DATA" && DATA=$(cd "$DATA" && pwd)
if [ ! -f "$DATA/.cifar10-jpeg.unpacked" ]; then  # the marker: an unpacking cut short is done again
  log "unpacking $TAR into $DATA"
  rm -rf "$DATA/cifar10-jpeg" && tar -xzf "$TAR" -C "$DATA" && touch "$DATA/.cifar10-jpeg.unpacked" || { log "cannot unpack $TAR"; exit 2; }
fi
PREV=${GPU_CHECK_PREV-.devdata/gpu-check-prev.tar.gz}
EXTRA=()
if [ -f "$PREV" ] && [[ " $* " != *" --continue-from "* ]]; then
  EXTRA+=(--continue-from "$PREV")
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log "$(date -u +%FT%TZ), budget $BUDGET s (hard stop $((BUDGET + 40)) s), python $PY"
# The script stops itself at the deadline; `timeout` is the backstop: SIGINT to it and its runs, then SIGKILL.
timeout --signal=INT --kill-after=20 $((BUDGET + 40)) "$PY" benchmarks/gpu_check.py --out "$OUT" --data "$DATA" \
  --deadline $((T0 + BUDGET)) --work "${GPU_CHECK_WORK:-/tmp/dyntrain-gpu-check}" "${EXTRA[@]}" "$@" 2>&1 | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
log "exit $rc after $(($(date +%s) - T0)) s; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
