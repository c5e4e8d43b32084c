#!/usr/bin/env bash
# Issue 5's whole measurement in one run (< 8 min on an H100): the plain DataLoader pipeline vs
# dyntrain's engine (eager bf16, torch.compile, CUDA graphs; policies full and dynamic alpha=n/2) on
# CIFAR-10's 50,000 training images, batch 512, plus a profiler table of one CUDA-graph epoch.
#
# On the device machine (no Ray needed; run from source):
#   tar lies in .devdata/cifar10-jpeg.tar.gz (copy it there; .gitignore ignores .devdata/, name it in carry)
#   PYTHONPATH=. bash benchmarks/gpu_throughput.sh "$OUT"
# On the CPU, a tiny smoke run: DEVICE=cpu TRAIN_LIMIT=256 COMPILE=none EPOCHS=2 bash benchmarks/gpu_throughput.sh /tmp/b
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/bench}
mkdir -p "$OUT"
TAR=${CIFAR_TAR:-.devdata/cifar10-jpeg.tar.gz}
DATA=${DATA_DIR:-/tmp/dyntrain-data}
if [ ! -d "$DATA/cifar10-jpeg" ]; then mkdir -p "$DATA" && tar -xzf "$TAR" -C "$DATA"; fi
PY=${PYTHON:-python3}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
set -o pipefail
PYTHONUNBUFFERED=1 $PY -m dyntrain.cli bench --dataset "folder:$DATA/cifar10-jpeg" --data-dir "$DATA" \
  --protocol paper --batch-size 512 --epochs "${EPOCHS:-5}" --plain-epochs "${PLAIN_EPOCHS:-2}" --workers "${WORKERS:-8}" \
  --device "${DEVICE:-auto}" --compile "${COMPILE:-none,default,cudagraphs}" --policies full,dynamic \
  ${TRAIN_LIMIT:+--train-limit $TRAIN_LIMIT} --profile "$OUT/profile.txt" --out "$OUT/throughput.json" 2>&1 | tee "$OUT/log.txt"
