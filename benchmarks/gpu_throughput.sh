#!/usr/bin/env bash
# Issue 5's measurement alone (benchmarks/gpu_check.sh runs it as its step 2, with more around it):
# the plain DataLoader pipeline vs dyntrain's engine (eager bf16, torch.compile, CUDA graphs; policies
# full and dynamic alpha=n/2) on CIFAR-10's 50,000 training images, batch 512, the checkpoint write
# time, and a profiler table of one epoch of the fastest full-data mode. A few minutes on an H100/H200.
#
# On the device machine (no Ray needed; run from source):
#   tar lies in .devdata/cifar10-jpeg.tar.gz (copy it there; .gitignore ignores .devdata/, name it in carry)
#   PYTHONPATH=. bash benchmarks/gpu_throughput.sh "$OUT"      -> OUT/{throughput.json,profile.txt,log.txt}
# On the CPU, a tiny smoke run: DEVICE=cpu TRAIN_LIMIT=256 COMPILE=none EPOCHS=2 WORKERS=0 bash benchmarks/gpu_throughput.sh /tmp/b
#
# It calls dyntrain.bench.run through benchmarks/gpu_check.py's bench worker rather than `dyntrain bench`,
# whose option parsing passes `epochs` twice to TrainConfig at the time of writing (a TypeError).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/bench}
mkdir -p "$OUT"
TAR=${CIFAR_TAR:-.devdata/cifar10-jpeg.tar.gz}
DATA=${DATA_DIR:-/tmp/dyntrain-data}
if [ ! -d "$DATA/cifar10-jpeg" ]; then mkdir -p "$DATA" && tar -xzf "$TAR" -C "$DATA"; fi
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
$PY benchmarks/gpu_check.py --worker bench --out "$OUT" --spec "folder:$DATA/cifar10-jpeg" --data-dir "$DATA" \
  --batch "${BATCH:-512}" --epochs-timed "${EPOCHS:-5}" --plain-epochs "${PLAIN_EPOCHS:-2}" --workers "${WORKERS:-8}" \
  --device "${DEVICE:-auto}" --mode "${COMPILE:-none,default,cudagraphs}" --policies full,dynamic \
  ${TRAIN_LIMIT:+--train-limit $TRAIN_LIMIT} --profile-path "$OUT/profile.txt" --result "$OUT/throughput.json" 2>&1 | tee "$OUT/log.txt"
