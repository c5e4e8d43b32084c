#!/usr/bin/env bash
# The main job: the paper's alpha x beta grid (Table 2/3) on CIFAR-10 through Ray Tune, then the report.
#   GPU: the paper's search: 21 trials, 200 epochs, alpha in {15k, 20k, 25k}, 4 trials per GPU.
#   CPU only: the same grid SCALED DOWN so that it finishes in minutes (2,500 training images, alpha in
#   {750, 1000, 1250}, batch 32, 6 epochs, and --batchnorm: without it the paper's network stays at
#   chance for the first few hundred steps): it shows the machinery, not the paper's accuracies.
# Dataset: CIFAR-10 downloaded by torchvision into data/; without a network, the JPEG copy in
# ../shared/data/cifar10-jpeg.tar.gz (if present) is unpacked and used instead, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tune_scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}
PY=.venv/bin/python

DATASET=${DATASET:-cifar10}
if [ "$DATASET" = cifar10 ] && ! $PY -c "from dyntrain.data import load_dataset; load_dataset('cifar10', 'data')" 2>/dev/null; then
  TAR=${CIFAR_TAR:-../shared/data/cifar10-jpeg.tar.gz}
  if [ -f "$TAR" ]; then
    echo "main.sh: cannot download CIFAR-10; using the JPEG copy $TAR (pixels differ slightly from the original)"
    [ -d data/cifar10-jpeg ] || { mkdir -p data && tar -xzf "$TAR" -C data; }
    DATASET=folder:data/cifar10-jpeg
  else
    echo "main.sh: cannot download CIFAR-10 and no local copy found (set CIFAR_TAR or DATASET=folder:PATH)" >&2
    exit 1
  fi
fi

NAME=${NAME:-paper-grid}
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "main.sh: GPU found: running the paper's grid (21 trials x 200 epochs, protocol paper)"
  .venv/bin/dyntrain tune --space paper-grid --protocol paper --dataset "$DATASET" --epochs "${EPOCHS:-200}" \
    --gpus-per-trial "${GPUS_PER_TRIAL:-0.25}" --cpus-per-trial 2 --name "$NAME" "$@"
else
  echo "main.sh: no GPU: running the paper's grid SCALED DOWN (2,500 images, alpha 750/1000/1250, batch 32, ${EPOCHS:-6} epochs, BatchNorm added) on the CPU"
  .venv/bin/dyntrain tune --space tune_scripts/spaces/paper-grid-cpu.yaml --protocol paper --dataset "$DATASET" \
    --train-limit 2500 --test-limit 1000 --batch-size 32 --epochs "${EPOCHS:-6}" --batchnorm --gpus-per-trial 0 --cpus-per-trial 1 \
    --name "$NAME-cpu" "$@"
  NAME="$NAME-cpu"
fi
.venv/bin/dyntrain report "results/ray/$NAME" --out "results/ray/$NAME-report" --format md,csv,html
echo "main.sh: tables and figures in results/ray/$NAME-report"
