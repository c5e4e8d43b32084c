#!/usr/bin/env python
"""Optuna (TPE, seeded, starting at the paper's best point) over optuna_space.yaml, 40 trials, with
ASHA stopping hopeless ones. Any `dyntrain tune` option may follow, e.g. a cost-aware objective:
`python tune_scripts/optuna_search.py --metric best_val_acc_per_gpu_h --epochs 80`."""

import sys
from pathlib import Path

from dyntrain.cli import main

space = Path(__file__).with_name("optuna_space.yaml")
sys.exit(main(["tune", "--space", str(space), "--search", "optuna", "--num-samples", "40", "--scheduler", "asha", *sys.argv[1:]]))
