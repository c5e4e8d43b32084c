"""Issue 6: the paper's experiments as plain `dyntrain train` runs, several at a time on one GPU.

Ray is not installed on the lent GPU machine, so this sweeps with subprocesses instead of
`dyntrain tune` (same engine, same per-run outputs); `dyntrain report` reads the folders.

    PYTHONPATH=. python benchmarks/reproduce_paper.py grid      --dataset folder:D --epochs 30 --out OUT
    PYTHONPATH=. python benchmarks/reproduce_paper.py baselines --dataset folder:D --epochs 30 --seeds 3 --out OUT [--augment]

grid:      Table 2/3: alpha {15k, 20k, 25k} x beta {0.1 .. 0.7}, delta 0.01, protocol paper (test set = validation).
baselines: Table 4/5: alpha 25k; full, static, dynamic (beta 0.7), variant, random; held-out validation,
           test accuracy reported; then full data stopped at the dynamic runs' mean wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_all(jobs: list[tuple[Path, list[str]]], common: list[str], parallel: int) -> None:
    def one(job: tuple[Path, list[str]]) -> int:
        out, args = job
        if (out / "summary.json").exists():
            return 0  # finished earlier: a rerun of the script only does what is missing
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        cmd = [sys.executable, "-m", "dyntrain.cli", "train", *common, *args, "--out", str(out), "--no-progress", *resume]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        print(f"[{'ok' if proc.returncode == 0 else 'FAILED'}] {out.name}: {tail[0]}", flush=True)
        return proc.returncode

    with ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(one, jobs))
    if any(codes):
        raise SystemExit(f"{sum(c != 0 for c in codes)} run(s) failed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["grid", "baselines"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default="/tmp/dyntrain-data")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--parallel", type=int, default=4, help="runs at a time on the one GPU")
    p.add_argument("--compile", default="none")
    p.add_argument("--alphas", default="15000,20000,25000", help="grid: the alpha values")
    p.add_argument("--alpha", type=int, default=25000, help="baselines: alpha of the subset policies")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--extra", default="", help="more train options, e.g. '--train-limit 2000' for a CPU smoke run")
    args = p.parse_args()
    common = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--epochs", str(args.epochs),
              "--compile", args.compile, *args.extra.split()]

    if args.part == "grid":
        alphas = [int(a) for a in args.alphas.split(",")]
        jobs = [(args.out / "grid" / f"dynamic-a{a}-b{b}", ["--protocol", "paper", "--policy", "dynamic", "--alpha", str(a),
                                                           "--beta", str(b), "--delta", "0.01", "--gamma", "0.97"])
                for a in alphas for b in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
        run_all(jobs, common, args.parallel)
        return

    aug = ["--augment"] if args.augment else ["--no-augment"]
    tag = "aug" if args.augment else "noaug"
    arms = {"full": [], "static": [], "dynamic": ["--beta", "0.7"], "variant": ["--beta", "0.7", "--gamma", "0.97"], "random": []}
    jobs = [(args.out / f"baselines-{tag}" / f"{policy}-s{seed}",
             ["--policy", policy, "--alpha", str(args.alpha), "--delta", "0.01", "--seed", str(seed), *aug, *extra])
            for policy, extra in arms.items() for seed in range(args.seeds)]
    run_all(jobs, common, args.parallel)
    # Equal wall time: full data stopped when the dynamic runs' mean training time is spent.
    times = [json.loads((args.out / f"baselines-{tag}" / f"dynamic-s{s}" / "summary.json").read_text())["total_time_s"]
             for s in range(args.seeds)]
    budget = statistics.mean(times)
    jobs = [(args.out / f"baselines-{tag}" / f"full-equal-time-s{seed}",
             ["--policy", "full", "--seed", str(seed), "--time-budget-s", f"{budget:.3f}", *aug])
            for seed in range(args.seeds)]
    run_all(jobs, common, args.parallel)


if __name__ == "__main__":
    main()
