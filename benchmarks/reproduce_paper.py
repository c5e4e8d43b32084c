"""Issue 6/13: the paper's experiments as plain `dyntrain train` runs, several at a time on one GPU.

Ray is not installed on the lent GPU machine, so this sweeps with subprocesses instead of
`dyntrain tune` (same engine, same per-run outputs); `dyntrain report` reads the folders.

    PYTHONPATH=. python benchmarks/reproduce_paper.py grid      --dataset folder:D --epochs 200 --out OUT
    PYTHONPATH=. python benchmarks/reproduce_paper.py baselines --dataset folder:D --epochs 200 --seeds 3 --out OUT [--augment]
    ... --budget-s 300     # start only the runs that are expected to end within 300 s; stop the rest then

grid:      Table 2/3: alpha {15k, 20k, 25k} x beta {0.1 .. 0.7}, delta 0.01, gamma 0.97, protocol paper
           (test set = validation), one run per cell (seed 0).
baselines: Table 4/5: alpha 25k; full, static, dynamic (beta 0.7), variant (gamma 0.97), random; held-out
           validation, test accuracy reported; then `full` stopped at the dynamic runs' mean wall time
           (equal cost), with the budget fixed once in equal_time_budget.json so that later seeds use it too.

A rerun only does what is missing: a folder with summary.json is finished and skipped; one with a
checkpoint is resumed. With a deadline, runs still going when it comes are stopped and their folders
removed (they are started again, from epoch 1, next time). Also importable (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Table 4's arms, besides `full` stopped at equal time. The subset policies share alpha and delta.
ARMS = {"dynamic": ["--beta", "0.7"], "full": [], "static": [], "variant": ["--beta", "0.7", "--gamma", "0.97"], "random": []}
BETAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
EQUAL_TIME = "equal_time_budget.json"


@dataclass
class Job:
    out: Path
    args: list[str]
    work: float = 0.0  # image-equivalents it trains and evaluates (for the duration estimate)
    budget_s: float | None = None  # a time-budgeted run lasts at most about this long
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.out.name

    @property
    def finished(self) -> bool:
        return (self.out / "summary.json").exists()


def epoch_work(images: int, n_eval: int) -> float:
    """Image-equivalents of one epoch: training images, plus evaluated images at about a third of the
    cost of a training image (a forward pass against forward + backward + update)."""
    return images + n_eval / 3


def grid_jobs(root: Path, alphas, epochs: int, n_eval: int, seed: int = 0) -> list[Job]:
    return [Job(root / f"dynamic-a{a}-b{b}", ["--protocol", "paper", "--policy", "dynamic", "--alpha", str(a), "--beta", str(b),
                                             "--delta", "0.01", "--gamma", "0.97", "--seed", str(seed)],
                epochs * epoch_work(a, n_eval))
            for a in alphas for b in BETAS]


def baseline_jobs(root: Path, seeds, alpha: int, epochs: int, n_train: int, n_eval: int, augment: bool = False) -> list[Job]:
    """Arm by arm, seeds side by side: runs of one arm run at the same time, so that they see the
    same sharing of the GPU and their wall times compare."""
    aug = ["--augment"] if augment else ["--no-augment"]
    return [Job(root / f"{policy}-s{seed}",
                ["--policy", policy, "--alpha", str(alpha), "--delta", "0.01", "--seed", str(seed), *aug, *extra],
                epochs * epoch_work(n_train if policy == "full" else alpha, n_eval))
            for policy, extra in ARMS.items() for seed in seeds]


def equal_time_budget(root: Path, seeds) -> float | None:
    """The mean training time of the dynamic runs of `seeds`, fixed in root/equal_time_budget.json the
    first time they are all finished (later seeds reuse it: one budget, one arm). None until then."""
    path = root / EQUAL_TIME
    if path.exists():
        return json.loads(path.read_text())["time_budget_s"]
    summaries = [root / f"dynamic-s{s}" / "summary.json" for s in seeds]
    if not all(p.exists() for p in summaries):
        return None
    times = [json.loads(p.read_text())["total_time_s"] for p in summaries]
    budget = round(statistics.mean(times), 3)
    path.write_text(json.dumps({"time_budget_s": budget, "from": [str(p.parent.name) for p in summaries],
                                "total_time_s": times}, indent=2) + "\n")
    return budget


def equal_time_jobs(root: Path, seeds, budget: float, epochs: int, n_train: int, n_eval: int, augment: bool = False) -> list[Job]:
    aug = ["--augment"] if augment else ["--no-augment"]
    return [Job(root / f"full-equal-time-s{seed}", ["--policy", "full", "--seed", str(seed), "--time-budget-s", f"{budget:.3f}", *aug],
                epochs * epoch_work(n_train, n_eval), budget_s=budget)
            for seed in seeds]


class Runner:
    """Runs jobs as `dyntrain train` subprocesses, `parallel` at a time, in order, skipping finished ones.

    With a `deadline` (time.monotonic()), a job is started only when its estimated duration ends before
    it, and jobs still running at the deadline are stopped and their folders removed. The estimate is
    startup_s + work * s_per_image until runs finish here, then what the finished runs took (their
    startup and seconds per image-equivalent, under the same sharing of the GPU)."""

    def __init__(self, common: list[str], parallel: int = 1, deadline: float | None = None,
                 s_per_image: float | None = None, startup_s: float = 10.0, env: dict | None = None,
                 log_dir: Path | None = None, log: Callable[[str], None] = print,
                 on_finish: Callable[[Job, dict], None] | None = None):
        self.common, self.parallel, self.deadline = common, max(1, parallel), deadline
        # Before any run finished: runs sharing the GPU `parallel` ways take about `parallel` times longer.
        self.prior_spi = s_per_image * self.parallel if s_per_image else None
        self.prior_startup = startup_s
        self.env, self.log_dir, self.log, self.on_finish = env, log_dir, log, on_finish
        self.observed: list[tuple[float, float]] = []  # (startup s, s per image-equivalent) of finished runs
        self.results: dict[str, dict] = {}

    def estimate(self, job: Job) -> float | None:
        if self.observed:
            startup = statistics.median(o[0] for o in self.observed)
            spi = statistics.median(o[1] for o in self.observed)
        elif self.prior_spi:
            startup, spi = self.prior_startup, self.prior_spi
        else:
            return None
        train = job.work * spi
        if job.budget_s is not None:
            train = min(train, job.budget_s * 1.15 + 2)  # stops after the epoch that passes the budget
        return startup + train

    def fits(self, job: Job) -> bool:
        if self.deadline is None:
            return True
        est = self.estimate(job)
        left = self.deadline - time.monotonic()
        return left > 0 and (est is None or est <= left)

    def _start(self, job: Job) -> tuple[subprocess.Popen, float, object]:
        resume = ["--resume"] if (job.out / "checkpoint.pt").exists() else []
        if not resume and job.out.exists() and not job.finished:
            shutil.rmtree(job.out)  # a folder left without a checkpoint: start it again
        cmd = [sys.executable, "-m", "dyntrain.cli", "train", *self.common, *job.args, "--out", str(job.out),
               "--no-progress", *resume]
        log_path = (self.log_dir or job.out.parent / "logs") / f"{job.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "a")
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        # A session of its own: stopped by its process group id at the deadline, children and all.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        est = self.estimate(job)
        self.log(f"[start] {job.name}" + (f" (about {est:.0f} s)" if est else ""))
        return proc, time.monotonic(), fh

    def _finish(self, job: Job, proc: subprocess.Popen, started: float) -> None:
        took = time.monotonic() - started
        result = {"rc": proc.returncode, "process_s": round(took, 2)}
        if proc.returncode == 0 and job.finished:
            summary = json.loads((job.out / "summary.json").read_text())
            train_s = summary.get("total_time_s", 0.0)
            result.update(train_s=round(train_s, 2), epochs=summary.get("epochs_run"),
                          best_val_acc=summary.get("best", {}).get("val_acc"),
                          test_acc_at_best_val=summary.get("best", {}).get("test_acc"))
            epochs = summary.get("epochs_run") or 0
            cfg_epochs = summary.get("config", {}).get("epochs") or epochs or 1
            if job.work and epochs and job.budget_s is None:
                self.observed.append((max(0.0, took - train_s), train_s / (job.work * epochs / cfg_epochs)))
            self.log(f"[ok] {job.name}: {epochs} epochs, train {train_s:.1f} s, process {took:.1f} s, "
                     f"best val {result['best_val_acc']:.4f}")
        else:
            self.log(f"[FAILED rc={proc.returncode}] {job.name} after {took:.1f} s (log: {self.log_dir or job.out.parent / 'logs'}/{job.name}.log)")
        self.results[job.name] = result
        if self.on_finish:
            self.on_finish(job, result)

    def _stop(self, job: Job, proc: subprocess.Popen, why: str = "deadline") -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group of the one process this runner started
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        except ProcessLookupError:
            pass
        shutil.rmtree(job.out, ignore_errors=True)  # unfinished: started again next time
        self.results[job.name] = {"rc": None, "stopped": why}
        self.log(f"[stopped: {why}] {job.name}: folder removed, it runs again next time")

    def run(self, jobs: list[Job]) -> dict[str, int]:
        """Returns counts: finished (now or before), failed, stopped, not_started."""
        todo = [j for j in jobs if not j.finished]
        counts = {"finished": len(jobs) - len(todo), "failed": 0, "stopped": 0, "not_started": 0}
        running: dict[str, tuple[Job, subprocess.Popen, float, object]] = {}
        try:
            while todo or running:
                for name, (job, proc, started, fh) in list(running.items()):
                    if proc.poll() is not None:
                        fh.close()
                        del running[name]
                        self._finish(job, proc, started)
                        counts["finished" if proc.returncode == 0 and job.finished else "failed"] += 1
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    for name, (job, proc, _, fh) in list(running.items()):
                        self._stop(job, proc)
                        fh.close()
                        del running[name]
                        counts["stopped"] += 1
                    break
                while todo and len(running) < self.parallel:
                    pick = next((j for j in todo if self.fits(j)), None)
                    if pick is None:
                        break
                    todo.remove(pick)
                    proc, started, fh = self._start(pick)
                    running[pick.name] = (pick, proc, started, fh)
                if not running and todo:
                    break  # nothing fits before the deadline
                time.sleep(0.2)
        finally:
            for job, proc, _, fh in running.values():  # an exception or a signal: leave no run behind
                self._stop(job, proc, "interrupted")
                fh.close()
                counts["stopped"] += 1
        counts["not_started"] = len(todo)
        if todo:
            self.log(f"not started (would not end before the deadline): {', '.join(j.name for j in todo)}")
        return counts


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
    p.add_argument("--n-train", type=int, default=45000, help="baselines: images in the training pool (estimates only)")
    p.add_argument("--n-eval", type=int, help="images evaluated per epoch (estimates only) [15000 baselines, 10000 grid]")
    p.add_argument("--budget-s", type=float, help="start only runs expected to end within this many seconds; stop the rest then")
    p.add_argument("--s-per-image", type=float, default=1 / 100_000, help="estimate before a run has finished [1e-5]")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--extra", default="", help="more train options, e.g. '--train-limit 2000' for a CPU smoke run")
    args = p.parse_args()
    common = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--epochs", str(args.epochs),
              "--compile", args.compile, *args.extra.split()]
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    runner = Runner(common, args.parallel, deadline, args.s_per_image)

    if args.part == "grid":
        jobs = grid_jobs(args.out / "grid", [int(a) for a in args.alphas.split(",")], args.epochs, args.n_eval or 10_000)
        counts = runner.run(jobs)
    else:
        root = args.out / f"baselines-{'aug' if args.augment else 'noaug'}"
        n_eval = args.n_eval or 15_000
        seeds = range(args.seeds)
        counts = runner.run(baseline_jobs(root, seeds, args.alpha, args.epochs, args.n_train, n_eval, args.augment))
        budget = equal_time_budget(root, seeds)
        if budget is not None:
            more = runner.run(equal_time_jobs(root, seeds, budget, args.epochs, args.n_train, n_eval, args.augment))
            counts = {k: counts[k] + more[k] for k in counts}
    print(json.dumps(counts))
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} run(s) failed")


if __name__ == "__main__":
    main()
