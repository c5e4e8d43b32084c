#!/usr/bin/env python
"""The paper's 21 runs (Table 2): alpha in {15000, 20000, 25000} x beta in {0.1 ... 0.7}, delta 0.01,
gamma 0.97, 200 epochs. Any `dyntrain tune` option may follow, e.g.

    python tune_scripts/paper_grid.py --protocol paper --gpus-per-trial 0.5   # the paper's own protocol
    python tune_scripts/paper_grid.py --seeds 3 --address auto --storage s3://BUCKET/dyntrain
"""

import sys

from dyntrain.cli import main

sys.exit(main(["tune", "--space", "paper-grid", *sys.argv[1:]]))
