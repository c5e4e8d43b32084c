"""The GPU verification: dyntrain's own commands, in priority order, under one deadline.

    PYTHONPATH=. bash benchmarks/gpu_check.sh OUT [--smoke] [--parallel N] [--continue-from PREV.tar.gz]

The launcher (benchmarks/gpu_check.sh) unpacks the data and starts this script with the deadline; run
alone: `python benchmarks/gpu_check.py --out OUT --data DIR` (DIR holds cifar10-jpeg/). It only calls
the package: `dyntrain bench`, `dyntrain train` (N runs at once, as subprocesses of `python -m
dyntrain.cli`, so no Ray is needed) and `dyntrain report`. Steps (<device>: e.g. h200; cpu-smoke):

  env         OUT/env.json first, every call: dyntrain's environment record, CUDA and cuDNN versions,
              nvidia-smi's output, pip freeze.
  bench       `dyntrain bench`, CIFAR-10 (50,000 images), batch 512, --compile none,default,cudagraphs,
              --policies full,dynamic, each mode first checked against an fp32 eager reference over 50
              optimiser steps -> results/bench/<device>.json and <device>.profile.txt. The fastest
              correct mode (dynamic images/s) is the compile mode of every run after this step.
  parity      3-epoch dynamic runs (10,000 images, batch 128) on the CPU and in every compile mode here,
              same seed: whether subset sizes, resample decisions and beta_n match the CPU's, epoch by epoch.
  bench_resnet18  the same for --model resnet18 -> results/bench/<device>-resnet18.json (not with --smoke).
  fractional  N concurrent runs (full data, a few epochs), each capped to 1/N of the GPU's memory as a
              trial with gpus=1/N is, against one alone: images/s of each and in all, every capped run's
              peak reserved memory against its cap, peak GPU memory (nvidia-smi)
              -> results/gpu-<device>/fractional.json.
  baselines   `dyntrain train`, held-out protocol, 200 epochs, seeds 0 and 1: full, static, dynamic,
              variant and random at alpha 25,000, and full at equal images (--image-budget alpha x
              epochs); `dyntrain report` -> results/gpu-<device>/baselines/.
  grid        the paper's grid: alpha {15,000, 20,000, 25,000} x beta {0.1, ..., 0.7}, dynamic,
              --protocol paper, seed 0, 200 epochs -> results/gpu-<device>/paper-grid/ (the report puts
              the paper's numbers beside the measured ones).

--smoke: the same steps, tiny, on the CPU (120 training images, batch 64, 2 epochs, alpha 40, seed 0;
compile none and cudagraphs, whose failure on the CPU is recorded as expected; 2 grid cells; 2 runs
against 1): a few minutes on 2 cores.

Outputs under OUT: log.txt (the launcher's), env.json, progress.json (every step's status: done, partial,
failed or error, its seconds and headline numbers; every call with the commands it started) and
gpu-check.tar.gz: the work folder (results/, runs/ without checkpoints, logs/, envs/, progress.json),
repacked after every step and every finished run. Unpack it with `tar -xzf gpu-check.tar.gz`.

To continue: pass the previous call's tarball as --continue-from (the launcher passes
.devdata/gpu-check-prev.tar.gz when it exists). It is unpacked into an empty work folder; steps marked
done are skipped, finished runs (summary.json) are kept, and the others start again (their checkpoints
are not packed; runs continued in the same work folder resume from theirs).
At the deadline the running commands get SIGINT, then are killed, and the reports are written.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

import torch

from dyntrain.data import load_dataset
from dyntrain.engine import resolve_device
from dyntrain.runs import CHECKPOINT, METRICS_CSV, SUMMARY, atomic_write, environment, write_json

STEPS = ("bench", "parity", "bench_resnet18", "fractional", "baselines", "grid")
POLICIES = ("full", "static", "dynamic", "variant", "random")
BUNDLE = "gpu-check.tar.gz"
FULL = dict(limits=[], device=[], batch=512, epochs=200, alpha=25_000, seeds=(0, 1), grid_alphas=(15_000, 20_000, 25_000),
            betas=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), modes="none,default,cudagraphs", check_steps=50,
            parity=["--epochs", "3", "--alpha", "5000", "--delta", "0.05", "--train-limit", "11000", "--val-size", "1000",
                    "--test-limit", "1000", "--batch-size", "128"],
            bench=["--epochs", "5", "--plain-epochs", "2", "--workers", "8"], parallel=4, frac_epochs=10, reserve_s=30)
SMOKE = dict(limits=["--train-limit", "120", "--test-limit", "20", "--val-size", "20"], device=["--device", "cpu"],
             batch=64, epochs=2, alpha=40, seeds=(0,), grid_alphas=(40,), betas=(0.1, 0.7), modes="none,cudagraphs",
             check_steps=3, parity=["--epochs", "3", "--alpha", "40", "--delta", "0.05"],
             bench=["--epochs", "2", "--plain-epochs", "1", "--workers", "0"], parallel=2,
             frac_epochs=2, reserve_s=15)


# `dyntrain` under a CUDA memory cap (argv[1]: the share), printing the peak it reserved at exit.
CAPPED = ("import atexit, sys, torch; from dyntrain.cli import main; share = float(sys.argv.pop(1)); "
          "torch.cuda.set_per_process_memory_fraction(share); "
          "atexit.register(lambda: print('peak_reserved_bytes', torch.cuda.max_memory_reserved(), flush=True)); "
          "sys.exit(main(sys.argv[1:]))")


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.s, self.out, self.root = args, dict(SMOKE if args.smoke else FULL), args.out, args.work / "gpu-check"
        self.s["parallel"] = args.parallel or self.s["parallel"]
        self.t0, self.deadline = time.time(), args.deadline or time.time() + 500
        self.device = resolve_device("cpu" if args.smoke else "auto")
        name = "cpu" if self.device.type == "cpu" else environment(self.device)["device_name"].lower().removeprefix("nvidia ")
        self.slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-") + ("-smoke" if args.smoke else "")
        self.spec = f"folder:{args.data.resolve() / 'cifar10-jpeg'}"
        self.common = ["--dataset", self.spec, "--data-dir", str(args.data.resolve()), "--batch-size", str(self.s["batch"]),
                       *self.s["limits"], *self.s["device"]]
        self.progress: dict = {"device": self.slug, "steps": {}, "calls": []}

    # ---------------------------------------------------------------- bookkeeping
    @property
    def mode(self) -> str:
        """The compile mode of every run after the bench step: the fastest correct one it measured."""
        return self.progress["steps"].get("bench", {}).get("best_mode") or "none"

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.1f} s] {msg}", flush=True)

    def save(self) -> None:
        for folder in (self.root, self.out):
            write_json(folder / "progress.json", self.progress)

    def pack(self) -> None:
        """OUT/gpu-check.tar.gz: the work folder without checkpoints and half-written files."""
        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            return None if info.name.endswith((CHECKPOINT, ".tmp")) else info

        for _ in range(3):  # again if a file was replaced while it was read
            buf = io.BytesIO()
            try:
                with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                    tar.add(self.root, arcname="gpu-check", filter=keep)
            except OSError as err:
                self.log(f"packing {BUNDLE}: {err!r}")
                continue
            atomic_write(self.out / BUNDLE, buf.getvalue())
            return

    # ---------------------------------------------------------------- commands
    def spawn(self, argv: list[str], log: Path, env: dict | None = None, cap: float | None = None) -> subprocess.Popen:
        """`dyntrain ARGV` in the work folder; with `cap`, under a CUDA memory cap of that share of the GPU
        (as a trial with a fraction of a GPU runs: dyntrain.tune.cap_gpu_memory), printing its peak at exit."""
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "dyntrain.cli", *argv] if cap is None else [sys.executable, "-c", CAPPED, str(cap), *argv]
        self.progress["calls"][-1]["commands"] += 1
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root, env=env)

    def stop(self, *procs: subprocess.Popen) -> None:
        """SIGINT (a run keeps its last checkpoint), then, after 10 s, kill."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        end = time.time() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def call(self, argv: list[str], log: Path) -> int | None:
        """One command until it ends (its exit code) or the deadline less the reserve (None)."""
        proc = self.spawn(argv, log)
        while proc.poll() is None:
            if self.left() < self.s["reserve_s"]:
                self.stop(proc)
                return None
            time.sleep(0.5)
        return proc.returncode

    def pool(self, jobs: list[tuple[Path, list[str]]], parallel: int, cap: float | None = None) -> dict:
        """`dyntrain train` jobs (folder, options), `parallel` at a time, until all have ended or the
        deadline: a folder with summary.json is finished and skipped, one with a checkpoint resumed."""
        todo, running, failed = [(f, o) for f, o in jobs if not (f / SUMMARY).exists()], {}, []
        # On the CPU, runs side by side share the cores instead of fighting over them.
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))} if self.device.type == "cpu" else None
        try:
            while todo or running:
                if self.left() < self.s["reserve_s"]:
                    self.log(f"deadline: stopping {len(running)} run(s); {len(todo)} not started")
                    break
                while todo and len(running) < parallel:
                    folder, opts = todo.pop(0)
                    resume = ["--resume"] if (folder / CHECKPOINT).exists() else []
                    if not resume and folder.exists():  # started, but its checkpoint was not packed: again
                        shutil.rmtree(folder)
                    argv = ["train", "--out", str(folder), *resume, "--no-progress", "--checkpoint-interval-s", "30",
                            "--epochs", str(self.s["epochs"]), "--compile", self.mode, *self.common, *opts]
                    running[folder] = self.spawn(argv, self.log_of(folder), env, cap)
                    self.log(f"run {folder.relative_to(self.root)}: {'resumed' if resume else 'started'}")
                time.sleep(0.5)
                for folder, proc in list(running.items()):
                    if proc.poll() is not None:
                        del running[folder]
                        ok = proc.returncode == 0 and (folder / SUMMARY).exists()
                        failed += [] if ok else [folder.name]
                        self.log(f"run {folder.relative_to(self.root)}: {'finished' if ok else f'FAILED (exit {proc.returncode})'}")
                        self.pack()
        finally:
            self.stop(*running.values())
        done = sum((f / SUMMARY).exists() for f, _ in jobs)
        return {"runs_finished": done, "runs": len(jobs), "runs_failed": failed}

    def log_of(self, folder: Path) -> Path:
        return self.root / "logs" / f"{folder.parent.name}-{folder.name}.log"

    def report(self, runs: Path, out: Path) -> int | None:
        if not any(runs.glob(f"*/{METRICS_CSV}")):
            return None
        formats = "md,csv,html" + (",tex" if importlib.util.find_spec("jinja2") else "")
        argv = ["report", str(runs.relative_to(self.root)), "--out", str(out.relative_to(self.root)), "--format", formats]
        proc = self.spawn(argv, self.root / "logs" / f"report-{out.name}.log")
        try:  # the reports come after the runs' deadline: they may use the reserve, and no more
            rc = proc.wait(max(10.0, self.left()))
        except subprocess.TimeoutExpired:
            self.stop(proc)
            rc = None
        self.log(f"report {out.relative_to(self.root)}: {'written' if rc == 0 else f'FAILED (exit {rc})'}")
        return rc

    def runs_step(self, name: str, jobs: list[tuple[Path, list[str]]], report: str) -> dict:
        r = self.pool(jobs, self.s["parallel"])
        rc = self.report(self.root / "runs" / name, self.root / "results" / f"gpu-{self.slug}" / report)
        complete = r["runs_finished"] == r["runs"]
        status = "done" if complete and rc == 0 else "failed" if r["runs_failed"] or complete else "partial"
        return {**r, "status": status, "report": f"results/gpu-{self.slug}/{report}", "report_exit": rc}

    # ---------------------------------------------------------------- steps
    def env(self) -> dict:
        def output(cmd: list[str]) -> str | None:
            try:
                return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired) as err:
                return f"{cmd[0]}: {err!r}"

        smi = shutil.which("nvidia-smi")
        env = {"environment": environment(self.device), "device_slug": self.slug, "smoke": self.args.smoke,
               "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
               "nvidia_smi": output([smi]) if smi else "no nvidia-smi",
               "pip_freeze": (output([sys.executable, "-m", "pip", "freeze"]) or "").splitlines()}
        write_json(self.out / "env.json", env)
        return env

    def bench_resnet18(self, st: dict) -> dict:  # tiny CPU smoke runs time the paper's network only
        return {"status": "done", "skipped": "smoke"} if self.args.smoke else self.bench(st, "resnet18")

    def bench(self, st: dict, model: str = "paper") -> dict:
        path = self.root / "results" / "bench" / f"{self.slug}{'' if model == 'paper' else '-' + model}.json"
        argv = ["bench", "--model", model, *self.common, *self.s["bench"], "--compile", self.s["modes"], "--policies", "full,dynamic",
                "--check-steps", str(self.s["check_steps"]), "--out", str(path),
                "--profile", str(path.with_suffix(".profile.txt"))]
        rc = self.call(argv, self.root / "logs" / "bench.log")
        if not path.exists():
            return {"status": "partial" if rc is None else "failed", "exit": rc}
        res = json.loads(path.read_text())

        def expected(what: str, error: str) -> bool:  # CUDA graphs on the CPU: refused by design
            return self.device.type == "cpu" and "cudagraphs" in what and "CPU" in error

        check = {m: "ok" if c["ok"] is True else "expected failure" if expected(m, c.get("error", "")) else "FAILED"
                 for m, c in res.get("check", {}).get("modes", {}).items()}
        ips = {p["pipeline"]: round(p["images_per_s"]) if "error" not in p else
               "expected failure" if expected(p["pipeline"], p["error"]) else "FAILED" for p in res["pipelines"]}
        unexpected = [k for k, v in {**check, **ips}.items() if v == "FAILED"]
        for k in unexpected:
            self.log(f"bench: {k}: FAILED (see {path.relative_to(self.root)})")
        status = "partial" if rc is None else "failed" if rc not in (0, 1) or unexpected else "done"
        dynamic = {m: ips.get(f"dyntrain engine, policy dynamic, compile {m}") for m, ok in check.items() if ok == "ok"}
        dynamic = {m: v for m, v in dynamic.items() if isinstance(v, int)}
        best = {"best_mode": max(dynamic, key=dynamic.get)} if model == "paper" and dynamic else {}
        return {"status": status, "exit": rc, "json": str(path.relative_to(self.root)), "check": check,
                "images_per_s": ips, "unexpected_failures": unexpected, **best}

    def parity(self, st: dict) -> dict:
        """Short dynamic runs on the CPU and in every compile mode on this device, same seed: the same
        subset sizes, resample decisions and beta_n each epoch (the subsets follow from them and the seed)."""
        runs, modes = self.root / "runs" / "parity", [m for m in self.s["modes"].split(",") if self.device.type == "cuda" or m == "none"]
        jobs = [(runs / "cpu", ["--device", "cpu", "--compile", "none"])] + [(runs / m, ["--compile", m]) for m in modes]
        r = self.pool([(f, [*o, "--policy", "dynamic", *self.s["parity"]]) for f, o in jobs], len(jobs))
        if r["runs_finished"] < r["runs"]:
            return {**r, "status": "failed" if r["runs_failed"] else "partial"}
        keys = ("subset_size", "resample", "beta_n")
        per_epoch = {f.name: read_metrics(f) for f, _ in jobs}
        cpu = per_epoch["cpu"]
        res = {m: {"same_decisions": [{k: row[k] for k in keys} for row in rows] == [{k: row[k] for k in keys} for row in cpu],
                   "resamples": [row["resample"] for row in rows],
                   "val_acc": [float(row["val_acc"]) for row in rows]} for m, rows in per_epoch.items()}
        different = [m for m, v in res.items() if not v["same_decisions"]]
        return {**r, "status": "done", "modes": res, "different_from_cpu": different}

    def baselines(self, st: dict) -> dict:
        a, runs = self.s["alpha"], self.root / "runs" / "baselines"
        arms = {p: ["--policy", p, "--alpha", str(a)] for p in POLICIES}
        arms["full-equal-images"] = ["--policy", "full", "--alpha", str(a), "--image-budget", str(a * self.s["epochs"])]
        jobs = [(runs / f"{arm}-s{seed}", [*opts, "--seed", str(seed)]) for seed in self.s["seeds"] for arm, opts in arms.items()]
        return self.runs_step("baselines", jobs, "baselines")

    def grid(self, st: dict) -> dict:
        runs = self.root / "runs" / "grid"
        jobs = [(runs / f"a{a}-b{b}", ["--policy", "dynamic", "--protocol", "paper", "--alpha", str(a), "--beta", str(b),
                                        "--seed", "0"]) for a in self.s["grid_alphas"] for b in self.s["betas"]]
        return self.runs_step("grid", jobs, "paper-grid")

    def fractional(self, st: dict) -> dict:
        n, runs, cuda = self.s["parallel"], self.root / "runs" / "fractional", self.device.type == "cuda"
        opts = ["--policy", "full", "--protocol", "paper", "--epochs", str(self.s["frac_epochs"])]
        phases = {"alone": [runs / "alone"], "concurrent": [runs / f"concurrent-{i}" for i in range(n)]}
        peak = st.setdefault("peak_gpu_memory_mib", {})
        res: dict = {"concurrent_runs": n}
        for phase, folders in phases.items():
            smi = shutil.which("nvidia-smi") if self.device.type == "cuda" else None
            mon = subprocess.Popen([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
                                   stdout=subprocess.PIPE, text=True) if smi else None
            cap = 1 / len(folders) if cuda and len(folders) > 1 else None
            r = self.pool([(f, [*opts, "--seed", str(i)]) for i, f in enumerate(folders)], len(folders), cap)
            if mon:
                mon.terminate()
                used = [float(x) for x in mon.communicate()[0].split() if x.replace(".", "").isdigit()]
                peak[phase] = max([peak.get(phase, 0.0), *used])
            if r["runs_finished"] < r["runs"]:
                return {**r, "status": "failed" if r["runs_failed"] else "partial"}
            res[phase] = {f.name: images_per_s(f) for f in folders}
            if cap:  # the cap holds when no capped run reserved more than its share
                total = torch.cuda.get_device_properties(0).total_memory
                peaks = {f.name: peak_reserved(self.log_of(f)) for f in folders}
                res[f"{phase}_memory_cap"] = {"share": cap, "cap_bytes": cap * total, "peak_reserved_bytes": peaks,
                                              "held": all(p is not None and p <= cap * total for p in peaks.values())}
            res[f"{phase}_images_per_s"] = sum(res[phase].values())
        res["peak_gpu_memory_mib"] = peak or "no nvidia-smi"
        path = self.root / "results" / f"gpu-{self.slug}" / "fractional.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, res)
        return {"status": "done", **{k: round(v) for k, v in res.items() if k.endswith("_images_per_s")}}


def read_metrics(folder: Path) -> list[dict]:
    with open(folder / METRICS_CSV) as fh:
        return list(csv.DictReader(fh))


def peak_reserved(log: Path) -> int | None:
    found = re.findall(r"^peak_reserved_bytes (\d+)$", log.read_text(), re.M)
    return int(found[-1]) if found else None


def images_per_s(folder: Path) -> float:
    """Training images per second of epoch time, over the epochs after the first (as `dyntrain bench`)."""
    rows = read_metrics(folder)
    rows = rows[1:] or rows
    return sum(float(r["subset_size"]) for r in rows) / sum(float(r["epoch_time_s"]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="env.json, progress.json, gpu-check.tar.gz")
    p.add_argument("--data", type=Path, required=True, help="the folder holding cifar10-jpeg/ (and the decoded cache)")
    p.add_argument("--work", type=Path, default=Path("/tmp/dyntrain-gpu-check"), help="[/tmp/dyntrain-gpu-check]")
    p.add_argument("--deadline", type=float, help="Unix time at which to stop [500 s from now]")
    p.add_argument("--smoke", action="store_true", help="the same steps, tiny, on the CPU")
    p.add_argument("--parallel", type=int, help="runs at once [4; smoke 2]")
    p.add_argument("--continue-from", type=Path, help="the gpu-check.tar.gz of an earlier call")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chk = Check(args)
    env = chk.env()  # before anything else
    chk.log(f"env.json: {env['environment']['device_name']} ({chk.device}), torch {env['environment']['torch']}")
    if args.continue_from and not (chk.root / "progress.json").exists():  # a work folder already there is newer
        with tarfile.open(args.continue_from) as tar:
            tar.extractall(args.work, filter="data")
        chk.log(f"unpacked {args.continue_from}")
    if (chk.root / "progress.json").exists():
        chk.progress = json.loads((chk.root / "progress.json").read_text())
    calls = chk.progress["calls"]
    calls.append({"call": len(calls) + 1, "started_unix": chk.t0, "device": chk.slug, "commands": 0})
    (chk.root / "envs").mkdir(parents=True, exist_ok=True)
    write_json(chk.root / "envs" / f"call-{len(calls)}.json", env)
    chk.progress["steps"]["env"] = {"status": "done", "call": len(calls)}
    chk.save()
    try:
        if any(chk.progress["steps"].get(s, {}).get("status") != "done" for s in STEPS):
            load_dataset(chk.spec, str(args.data.resolve()), progress=False)  # decoded once, before runs start side by side
            chk.log(f"data {chk.spec}: ready")
        for name in STEPS:
            st = chk.progress["steps"].setdefault(name, {"status": "not_run"})
            if st["status"] == "done":
                chk.log(f"step {name}: done in an earlier call; skipped")
                continue
            if chk.left() < chk.s["reserve_s"]:
                chk.log(f"step {name}: no time left; the next call runs it")
                continue
            chk.log(f"step {name}: start")
            start, st["status"] = time.time(), "partial"
            try:
                st.update(getattr(chk, name)(st))
            except Exception as err:  # recorded; the next step still runs
                st.update(status="error", error=repr(err))
                chk.log(f"step {name}: error\n{traceback.format_exc()}")
            finally:
                st["seconds"] = round(st.get("seconds", 0) + time.time() - start, 1)
                chk.save()
                chk.pack()
            chk.log(f"step {name}: {st['status']} ({st['seconds']} s in all)")
    except KeyboardInterrupt:
        chk.log("interrupted: recording what there is")
    finally:
        chk.progress["calls"][-1]["seconds"] = round(time.time() - chk.t0, 1)
        chk.save()
        chk.pack()
    for name in ("env", *STEPS):
        chk.log(f"{name}: {json.dumps(chk.progress['steps'].get(name, {'status': 'not_run'}))}")
    chk.log(f"{chk.progress['calls'][-1]['commands']} command(s) run in this call; results in {args.out / BUNDLE}")
    return 0 if all(chk.progress["steps"].get(s, {}).get("status") == "done" for s in STEPS) else 1


if __name__ == "__main__":
    sys.exit(main())
