#!/usr/bin/env python
"""Tables 4-5 and the equal-budget baselines: full, static, dynamic, variant and random at the same
alpha, and full data at equal images (stopped at alpha x epochs images), with and without
augmentation, 3 seeds each (36 trials). Any `dyntrain tune` option may follow, e.g.
`python tune_scripts/baselines.py --epochs 80 --seeds 20 --gpus-per-trial 0.25`."""

import sys

from dyntrain.cli import main

sys.exit(main(["tune", "--space", "baselines", *sys.argv[1:]]))
