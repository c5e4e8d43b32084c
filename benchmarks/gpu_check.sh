#!/usr/bin/env bash
# Issue #13: the whole GPU check in ONE call of at most ~9 minutes on an H100/H200, from the source tree.
#
#   bash benchmarks/gpu_check.sh OUTDIR [--smoke] [more options of benchmarks/gpu_check.py]
#
# Steps, in priority order, under one deadline (GPU_CHECK_BUDGET_S, default 500 s from this script's start):
#   env  nvidia-smi, torch/CUDA/cuDNN versions, device name, pip list, hashes of the source files (first)
#   1    fast paths correct: compile none/default/cudagraphs vs an fp32 eager reference (50 steps), short
#        dynamic runs (accuracy rises, subset sizes, resample decisions, checkpoint resume)
#   2    throughput: `dyntrain bench` (plain DataLoader vs engine x 3 modes x full/dynamic, batch 512) -> results/bench/<device>.json
#   3    Table 4 baselines, held-out protocol, 200 epochs, seeds 0-1 -> results/gpu-<device>/baselines/
#   4    the paper's grid (Tables 2/3, 21 cells, protocol paper)   -> results/gpu-<device>/paper-grid/
#   3b   Table 4 baselines, seed 2;   5  fractional GPUs (4 x 0.25 against 1 x 1.0; Ray if importable)
# Whatever does not fit is left for the next call, which continues where this one stopped.
#
# THE DEVICE CALL (a session lent an H200; about 15 minutes of device time in all, start included):
#   once, here:  mkdir -p .devdata && cp ../shared/data/cifar10-jpeg.tar.gz .devdata/     (.devdata/ is git-ignored)
#   to continue a previous call: cp <files_at>/gpu-check.tar.gz .devdata/gpu-check-prev.tar.gz  (else remove that file)
#   run(command="PYTHONPATH=. bash benchmarks/gpu_check.sh $OUT", carry=[".devdata"], timeout_s=560)
# What comes back (4 files in files_at, well under the tool's 8 files / 64 MiB):
#   log.txt           everything printed, with seconds since the start
#   env.json          the environment (written first)
#   progress.json     every step's status (done / partial / failed / error / not_run), seconds, error and headline numbers
#   gpu-check.tar.gz  all results, repacked after every step and every finished run (checkpoints left out):
#                       gpu-check/results/bench/<device>.json          -> commit as results/bench/<device>.json
#                       gpu-check/results/gpu-<device>/{baselines,paper-grid}/ -> commit under results/
#                       gpu-check/step1/correctness.json, step2/{bench.json,anatomy.json,profile*.txt}, runs/*/<run>/
#                       (metrics.csv, summary.json, config.json), logs/, gpu-util.csv, progress.json, envs/
# Unpack with `tar -xzf gpu-check.tar.gz`. A step that failed records its error and traceback in progress.json.
#
# Smoke test on the CPU (tiny: 800 images, batch 64, 2 epochs; a few minutes on 2 cores; cudagraphs is
# recorded as an expected error there):
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh /tmp/gpu-check-smoke --smoke
# Environment: PYTHON (python3), GPU_CHECK_BUDGET_S (500; smoke 1500), GPU_CHECK_HARD_S (the hard stop:
# budget + 40 s), GPU_CHECK_WORK (/tmp/dyntrain-gpu-check), DATA_DIR (/tmp/dyntrain-data).
set -uo pipefail
T0=$(date +%s.%N)
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--smoke] [gpu_check.py options]" >&2
  exit 2
fi
OUT=$1
shift
mkdir -p "$OUT"
SMOKE=0
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1; done
if [ "$SMOKE" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET_S:-1500}; else BUDGET=${GPU_CHECK_BUDGET_S:-500}; fi
HARD=${GPU_CHECK_HARD_S:-$(( ${BUDGET%.*} + 40 ))}
EXTRA=()
if [ -f .devdata/gpu-check-prev.tar.gz ] && [[ " $* " != *" --continue-from "* ]]; then
  EXTRA+=(--continue-from .devdata/gpu-check-prev.tar.gz)
fi
[ -n "${GPU_CHECK_WORK:-}" ] && EXTRA+=(--work "$GPU_CHECK_WORK")
[ -n "${DATA_DIR:-}" ] && EXTRA+=(--data-dir "$DATA_DIR")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
echo "gpu_check.sh: $(date -u +%FT%TZ), budget ${BUDGET} s, hard stop ${HARD} s, python $PY" | tee -a "$OUT/log.txt"
# The driver stops itself at the budget; `timeout` is the backstop (SIGTERM: it records and packs, then SIGKILL).
timeout --signal=TERM --kill-after=15 "$HARD" "$PY" benchmarks/gpu_check.py --out "$OUT" --budget-s "$BUDGET" \
  --t0 "$T0" "${EXTRA[@]}" "$@" 2>&1 | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "gpu_check.sh: exit $rc after $(awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $T0}") s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$OUT/log.txt"
exit "$rc"
