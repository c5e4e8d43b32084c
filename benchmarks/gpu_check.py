"""Issue #13's driver: the whole GPU check in one call, step by step, under one deadline.

    PYTHONPATH=. python benchmarks/gpu_check.py --out OUTDIR [--smoke] [--budget-s 500] [--steps 1,2,3,4,3b,5]

Normally started by benchmarks/gpu_check.sh (which says how to call it on the lent GPU machine).
Steps, in priority order; each writes its results as soon as it has them, and a step that fails records
its error and the next one runs:

  env  the environment, first: nvidia-smi, torch/CUDA/cuDNN versions, device, pip list, source hashes.
  1    fast paths are correct: per compile mode (none, default, cudagraphs), the first steps' losses
       against an fp32 eager reference (bf16 tolerance), for the paper's network and with --batchnorm;
       a short dynamic run per mode (accuracy rises, subset sizes, resample decisions replayed on the
       CPU policy, a checkpoint resume that reproduces the last epoch).
  2    throughput: `dyntrain bench` (plain DataLoader vs the engine in each mode, full and dynamic
       alpha = n/2, batch 512, 50,000 images, checkpoint write time, a profile), then where an epoch's
       time goes (train / eval / pure graph replay, cudnn.benchmark on and off, an eager profile).
  3    the paper's claim on the held-out protocol, seeds 0 and 1: full, full stopped at the dynamic runs'
       mean time, static, dynamic, variant, random; `dyntrain report` + a comparison with Table 4.
  4    the paper's grid (Table 2/3, 21 cells, protocol paper) + report + comparison with Tables 2 and 3.
  3b   the third seed of step 3 (after the grid: "3 seeds if time allows").
  5    fractional GPUs: 4 processes capped at 0.25 of the GPU's memory against 1 process; aggregate
       images/s, memory per process, whether the cap holds; then through Ray Tune if `import ray` works.

Outputs (at most 8 files, as the device tool brings back): OUTDIR/env.json, OUTDIR/progress.json (every
step's status, timing, error and headline numbers) and OUTDIR/gpu-check.tar.gz (everything, repacked
after each step and each finished run; checkpoints left out), plus OUTDIR/log.txt from the shell.
The working tree is --work (default /tmp/dyntrain-gpu-check). A later call continues where this one
stopped: steps whose status is "done" are skipped and finished runs are kept (--continue-from the
previous gpu-check.tar.gz; gpu_check.sh passes .devdata/gpu-check-prev.tar.gz when it exists).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import reproduce_paper as rp  # noqa: E402

STEPS = ("1", "2", "3", "4", "3b", "5")
TITLES = {"1": "correctness of the fast paths", "2": "throughput", "3": "baselines (Table 4), seeds 0-1",
          "4": "paper grid (Tables 2/3)", "3b": "baselines, seed 2", "5": "fractional GPUs"}
MODES = ("none", "default", "cudagraphs")
BUNDLE = "gpu-check.tar.gz"

# PAPER.md: Table 4 (200 epochs, the paper's protocol) and Tables 2/3 (best validation accuracy, time).
PAPER_T4 = {"full": (85.17, "50m25s"), "static": (81.17, "27m40s"), "dynamic": (84.55, "33m14s")}
PAPER_VARIANT = "variant (80 epochs): 84.85 % in 45.8 % of the full-data time; 20 repetitions: mean of the maxima 85.20 %"
PAPER_T2 = {25000: (82.1, 82.5, 83.8, 83.4, 83.3, 82.6, 84.4), 20000: (80.9, 81.5, 82.5, 83.1, 82.6, 82.3, 81.6),
            15000: (79.4, 79.3, 80.0, 80.7, 80.1, 82.1, 82.2)}
PAPER_T3 = {25000: ("32m28s", "32m14s", "33m14s", "36m44s", "32m25s", "32m44s", "32m38s"),
            20000: ("27m14s", "27m15s", "27m14s", "27m15s", "27m19s", "27m20s", "27m21s"),
            15000: ("21m22s", "21m21s", "21m26s", "21m30s", "21m24s", "21m25s", "21m32s")}
TARGET_IPS, TARGET_SPEEDUP = 250_000, 4.5


@dataclass(frozen=True)
class Scale:
    batch: int = 512
    steps: int = 50  # step 1: optimiser steps compared with the fp32 reference
    tol: float = 0.05  # max |loss - loss_ref| / loss_ref over those steps (bf16)
    run_epochs: int = 3  # step 1: the short dynamic run
    val_size: int = 5000
    alpha: int = 25_000  # steps 1 and 3
    bench_epochs: int = 5
    plain_epochs: int = 2
    workers: int = 8
    epochs: int = 200  # steps 3 and 4
    grid_alphas: tuple = (15_000, 20_000, 25_000)
    parallel: int = 2  # runs sharing the GPU in steps 3 and 4
    frac_epochs: int = 4
    startup_s: float = 10.0  # a `dyntrain train` process before its first epoch (first guess)
    min_step_s: float = 45.0  # do not start a step with less time left
    reserve_s: float = 25.0  # kept at the end for the reports and the last pack
    smoke_subset: tuple | None = None  # (train, test) images per class in the smoke copy of the data


FULL = Scale()
SMOKE = Scale(batch=64, steps=8, tol=0.05, run_epochs=2, val_size=100, alpha=250, bench_epochs=2, plain_epochs=1,
              workers=0, epochs=2, grid_alphas=(300,), parallel=2, frac_epochs=1, startup_s=6.0,
              min_step_s=5.0, reserve_s=15.0, smoke_subset=(60, 20))


class Interrupted(Exception):
    """SIGTERM/SIGINT (the shell's hard time limit): stop, record, pack."""


def _raise_interrupted(signum, frame):  # noqa: ARG001
    raise Interrupted(f"signal {signum}")


# ------------------------------------------------------------------------------------------ context
class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.scale = SMOKE if args.smoke else FULL
        if args.parallel:
            self.scale = Scale(**{**asdict(self.scale), "parallel": args.parallel})
        self.out: Path = args.out
        self.work: Path = args.work
        self.t0 = args.t0 or time.time()
        self.deadline_wall = self.t0 + args.budget_s
        self.py = sys.executable
        self.progress: dict[str, Any] = {"steps": {}, "calls": []}
        self.device_name = ""
        self.slug = ""
        self.cuda = False
        self.spec = ""
        self.data_dir = str(args.data_dir)
        self.sizes: dict[str, int] = {}
        self._data = None
        self._last_pack = 0.0

    # time
    def left(self) -> float:
        return self.deadline_wall - time.time()

    def deadline_mono(self, reserve: float = 0.0) -> float:
        return time.monotonic() + self.left() - reserve

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", flush=True)

    # files
    def write_json(self, rel: str, obj: Any, also_out: bool = False) -> Path:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(obj, indent=2, default=str) + "\n"
        _atomic(path, text)
        if also_out:
            _atomic(self.out / path.name, text)
        return path

    def save_progress(self) -> None:
        self.progress["updated_s"] = round(time.time() - self.t0, 1)
        self.write_json("progress.json", self.progress, also_out=True)

    def pack(self, force: bool = True) -> None:
        """OUTDIR/gpu-check.tar.gz: the working tree without checkpoints, written atomically."""
        if not force and time.time() - self._last_pack < 5:
            return
        tmp = self.out / (BUNDLE + ".tmp")
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                tar.add(self.work, arcname="gpu-check", filter=_bundle_filter)
            os.replace(tmp, self.out / BUNDLE)
            self._last_pack = time.time()
        except Exception as err:  # a full disk must not cost the results already in OUTDIR
            self.log(f"could not pack {BUNDLE}: {err!r}")
            with contextlib.suppress(OSError):
                tmp.unlink()

    # data
    def data(self):
        if self._data is None:
            from dyntrain.data import load_dataset

            self._data = load_dataset(self.spec, self.data_dir, progress=False)
        return self._data

    def drop_data(self) -> None:
        self._data = None


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _bundle_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = info.name
    if name.endswith((".pt", ".tmp", ".npz")) or "/ray/" in name or "/compile-cache" in name:
        return None
    return info


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def run_cmd(cmd: list[str], log_path: Path, timeout: float, cwd: Path | None = None, env: dict | None = None) -> int:
    """A subprocess in a session of its own, output to log_path; on timeout or interruption its whole
    process group (it and its DataLoader workers) is stopped. Returns the exit code (124 on timeout)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        fh.write(f"$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            fh.write(f"\n[gpu_check] stopped after {timeout:.0f} s\n")
            _killpg(proc)
            return 124
        except BaseException:
            _killpg(proc)
            raise


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ env
def record_env(ctx: Ctx) -> None:
    env: dict[str, Any] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv, "smoke": ctx.args.smoke, "budget_s": ctx.args.budget_s,
        "hostname": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
        "python": sys.version, "executable": sys.executable, "cpu_count": os.cpu_count(),
    }
    for key, cmd in (("nvidia_smi", ["nvidia-smi"]),
                     ("nvidia_smi_query", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                           "clocks.max.mem,power.limit,pstate,compute_mode,mig.mode.current",
                                           "--format=csv"])):
        try:
            env[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except Exception as err:
            env[key] = f"unavailable: {err!r}"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env["device_name"] = torch.cuda.get_device_name(0)
            env["device_capability"] = list(torch.cuda.get_device_capability(0))
            env["device_memory_bytes"] = p.total_memory
            env["multiprocessors"] = p.multi_processor_count
            env["device_count"] = torch.cuda.device_count()
        else:
            env["device_name"] = f"cpu {platform.processor() or platform.machine()}"
        with contextlib.suppress(Exception):
            import triton

            env["triton"] = triton.__version__
        with contextlib.suppress(Exception):
            import torchvision

            env["torchvision"] = torchvision.__version__
    except Exception as err:
        env["torch_error"] = repr(err)
        env["device_name"] = "unknown"
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                           capture_output=True, text=True, timeout=60)
        env["pip_list"] = r.stdout.splitlines() if r.returncode == 0 else None
    except Exception:
        env["pip_list"] = None
    if not env["pip_list"]:
        from importlib import metadata

        env["pip_list"] = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
        env["pip_list_source"] = "importlib.metadata (pip unavailable)"
    for mod in ("ray", "plotly", "optuna", "jsonschema", "tensorboardX", "matplotlib", "pandas", "jinja2"):
        env.setdefault("importable", {})[mod] = _importable(mod)
    env["source"] = source_info()
    ctx.cuda = bool(env.get("cuda_available"))
    ctx.device_name = env.get("device_name", "unknown")
    ctx.slug = _slug(ctx.device_name) + ("-smoke" if ctx.args.smoke else "")
    env["device_slug"] = ctx.slug
    ctx.write_json("env.json", env, also_out=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    ctx.write_json(f"envs/env-{stamp}.json", env)  # one per call, kept across continued calls
    ctx.progress["calls"].append({"started_utc": env["time_utc"], "device_name": ctx.device_name,
                                  "torch": env.get("torch"), "budget_s": ctx.args.budget_s, "smoke": ctx.args.smoke,
                                  "source_sha256": env["source"].get("tree_sha256")})
    ctx.log(f"environment: {ctx.device_name}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN "
            f"{env.get('cudnn')}), Python {platform.python_version()}, {len(env['pip_list'])} packages")


def _importable(mod: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(mod) is not None
    except Exception:
        return False


def source_info() -> dict[str, Any]:
    """Which code ran: git state when .git travelled, and a hash of every source file either way."""
    info: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            info["git_head"] = r.stdout.strip()
            info["git_status"] = subprocess.run(["git", "-C", str(REPO), "status", "--short"], capture_output=True,
                                                text=True, timeout=10).stdout.splitlines()
    files = sorted([*(REPO / "dyntrain").glob("*.py"), *(REPO / "benchmarks").glob("*")])
    hashes = {str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files if f.is_file()}
    info["files_sha256"] = hashes
    info["tree_sha256"] = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
    return info


# ------------------------------------------------------------------------------------------ data
def prepare_data(ctx: Ctx) -> None:
    data_dir = Path(ctx.data_dir)
    root = data_dir / "cifar10-jpeg"
    if not (root / "train").is_dir():
        tar = Path(ctx.args.tar)
        if not tar.is_file():
            raise FileNotFoundError(f"no data: neither {root}/train nor the tar {tar} (copy shared/data/cifar10-jpeg.tar.gz "
                                    "to .devdata/ and carry .devdata)")
        data_dir.mkdir(parents=True, exist_ok=True)
        ctx.log(f"extracting {tar} into {data_dir}")
        subprocess.run(["tar", "-xzf", str(tar), "-C", str(data_dir)], check=True)
    if ctx.scale.smoke_subset:  # a small copy: the CPU decodes 800 images, not 60,000
        n_train, n_test = ctx.scale.smoke_subset
        small = data_dir / "cifar10-smoke"
        if not (small / "test").is_dir():
            for split, k in (("train", n_train), ("test", n_test)):
                for cls in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
                    dst = small / split / cls
                    dst.mkdir(parents=True, exist_ok=True)
                    for f in sorted((root / split / cls).iterdir())[:k]:
                        shutil.copy2(f, dst / f.name)
        root = small
    ctx.spec = f"folder:{root}"
    start = time.time()
    data = ctx.data()  # decodes once and writes data_dir/cache, which every later process reads
    n_train, n_test = len(data.train_y), len(data.test_y)
    s = ctx.scale
    ctx.sizes = {"train": n_train, "test": n_test, "holdout_train": n_train - s.val_size,
                 "holdout_eval": s.val_size + n_test, "paper_train": n_train, "paper_eval": n_test}
    ctx.log(f"data {ctx.spec}: {n_train} training and {n_test} test images ({time.time() - start:.1f} s to load)")


# ------------------------------------------------------------------------------------------ step 1
@contextlib.contextmanager
def fp32_math():
    """True fp32 for the reference: no TF32 in cuDNN convolutions or cuBLAS matrix products."""
    import torch

    try:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except RuntimeError:  # newer torch refuses the legacy flags once its fp32_precision API was used
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _flat_params(model):
    import torch

    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).cpu()


def step_losses(trainer, n_steps: int, batch: int) -> dict[str, Any]:
    """`n_steps` optimiser steps through the engine's own epoch code (`Trainer._train_epoch` on a subset
    of exactly one batch), on batches fixed by a CPU seed, so every trainer sees the same ones. Returns
    the per-step losses (before each update) and batch accuracies, and the parameters before and after."""
    import torch

    n_steps = min(n_steps, trainer.n_train // batch)
    order = torch.randperm(trainer.n_train, generator=torch.Generator().manual_seed(1234))[: n_steps * batch]
    before = _flat_params(trainer.model)
    totals = [trainer._train_epoch(order[k * batch:(k + 1) * batch].to(trainer.device)) for k in range(n_steps)]
    t = torch.stack(totals).float().cpu()
    return {"losses": (t[:, 0] / batch).tolist(), "acc": (t[:, 1] / batch).tolist(), "before": before,
            "after": _flat_params(trainer.model)}


def _compare(ref: dict, got: dict, tol: float) -> dict[str, Any]:
    import torch

    lr, lg = torch.tensor(ref["losses"]), torch.tensor(got["losses"])
    rel = (lg - lr).abs() / lr.abs().clamp_min(1e-8)
    update_ref = (ref["after"] - ref["before"]).norm().item()
    out = {
        "losses": [round(x, 6) for x in got["losses"]],
        "finite": bool(torch.isfinite(lg).all()),
        "rel_diff_first": rel[0].item(), "rel_diff_max": rel.max().item(), "rel_diff_mean": rel.mean().item(),
        "rel_diff_max_first10": rel[:10].max().item(),
        "rel_diff_last": rel[-1].item(),
        "same_init": bool(torch.equal(ref["before"], got["before"])),
        # How far the parameters drifted apart, relative to how far the reference moved.
        "param_diff_over_update": (got["after"] - ref["after"]).norm().item() / max(update_ref, 1e-12),
        "loss_moved": abs(ref["losses"][-1] - ref["losses"][0]),
    }
    # bf16 against fp32: within tol over the first 10 steps, within 2 tol over all (trajectories drift apart
    # slowly; a mode that does not learn, or learns something else, leaves both far behind).
    out["ok"] = out["finite"] and out["same_init"] and out["rel_diff_max_first10"] <= tol and out["rel_diff_max"] <= 2 * tol
    return out


def short_run(ctx: Ctx, cfg, data, label: str, fp32: bool = False) -> dict[str, Any]:
    """The dynamic run of step 1: sanity of its metrics, the resample decisions replayed on a fresh CPU
    policy, and a checkpoint after the second-to-last epoch that, resumed, reproduces the last one."""
    import numpy as np
    import torch

    from dyntrain import sampling
    from dyntrain.engine import Trainer, load_checkpoint, save_checkpoint

    ck = ctx.work / "step1" / f"checkpoint-{label}.pt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    tr = Trainer(cfg, data)
    if fp32:
        tr.autocast = torch.autocast(tr.device.type, enabled=False)
    hist, save_s = [], None
    if tr.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for m in tr:
        hist.append(dict(m))
        if m["epoch"] == cfg.epochs - 1:
            start = time.perf_counter()
            save_checkpoint(tr.state_dict(), ck)
            save_s = time.perf_counter() - start
    r: dict[str, Any] = {"epochs": [{k: h[k] for k in ("epoch", "train_loss", "train_acc", "val_acc", "test_acc",
                                                       "subset_size", "images_seen", "resample", "beta_n", "epoch_time_s")}
                                    for h in hist]}
    r["alpha"], r["n_train"], r["n_val"] = tr.alpha, tr.n_train, tr.n_val
    r["finite"] = all(math.isfinite(h["train_loss"]) for h in hist)
    r["subset_sizes_ok"] = all(h["subset_size"] == tr.alpha for h in hist)
    r["images_seen_ok"] = all(h["images_seen"] == tr.alpha * h["epoch"] for h in hist)
    r["val_acc_rises"] = hist[-1]["val_acc"] > hist[0]["val_acc"]
    r["train_loss_falls"] = hist[-1]["train_loss"] < hist[0]["train_loss"]
    r["resamples"] = sum(h["resample"] != sampling.NONE for h in hist)
    pol = sampling.make_policy(cfg.policy, tr.n_train, tr.alpha, cfg.beta, cfg.delta, cfg.gamma, cfg.seed)
    decisions = [pol.update(h["epoch"], round(h["val_acc"] * tr.n_val), tr.n_val) for h in hist]
    r["replay_ok"] = ([d.resample for d in decisions] == [h["resample"] for h in hist]
                      and all(abs(d.beta - h["beta_n"]) < 1e-12 for d, h in zip(decisions, hist))
                      and bool(np.array_equal(pol.subset, tr.policy.subset)))
    if tr.device.type == "cuda":
        r["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    r["checkpoint_s"] = save_s
    del tr
    if save_s is not None:  # resume from epoch E-1, run epoch E again
        tr2 = Trainer(cfg, data)
        if fp32:
            tr2.autocast = torch.autocast(tr2.device.type, enabled=False)
        tr2.load_state_dict(load_checkpoint(ck))
        again = tr2.run_epoch()
        last = hist[-1]
        d_loss = abs(again["train_loss"] - last["train_loss"]) / max(abs(last["train_loss"]), 1e-12)
        d_val = abs(again["val_acc"] - last["val_acc"])
        r["resume"] = {"epoch": again["epoch"], "train_loss": again["train_loss"], "val_acc": again["val_acc"],
                       "resample": again["resample"], "rel_diff_train_loss": d_loss, "abs_diff_val_acc": d_val,
                       "exact": again["train_loss"] == last["train_loss"] and again["val_acc"] == last["val_acc"]}
        # cuDNN's backward kernels may add in any order: close, not necessarily bitwise equal.
        r["resume_ok"] = again["epoch"] == last["epoch"] and d_loss < 1e-2 and d_val <= 0.01 and again["resample"] == last["resample"]
        del tr2
        ck.unlink(missing_ok=True)
    return r


def step1(ctx: Ctx) -> dict[str, Any]:
    import torch

    from dyntrain.config import TrainConfig
    from dyntrain.engine import Trainer

    s, data = ctx.scale, ctx.data()
    dev = "cuda" if ctx.cuda else "cpu"
    res: dict[str, Any] = {"device": dev, "batch_size": s.batch, "steps": s.steps, "tolerance_rel": {"first_10_steps": s.tol, "all_steps": 2 * s.tol},
                           "run_epochs": s.run_epochs, "reference": {}, "modes": {m: {} for m in MODES}}
    save = lambda: ctx.write_json("step1/correctness.json", res)  # noqa: E731
    base = TrainConfig(dataset=ctx.spec, data_dir=ctx.data_dir, protocol="paper", policy="full", batch_size=s.batch,
                       epochs=1, seed=0, device=dev, progress=False)
    run_cfg = TrainConfig(dataset=ctx.spec, data_dir=ctx.data_dir, protocol="holdout", val_size=s.val_size,
                          policy="dynamic", alpha=s.alpha, beta=0.7, delta=0.01, gamma=0.97, epochs=s.run_epochs,
                          batch_size=s.batch, seed=0, device=dev, progress=False)
    variants = {"paper_net": False, "batchnorm": True}  # the paper's net may sit at chance for 50 steps; BN moves
    refs: dict[str, dict] = {}

    # The fp32 eager reference: the engine with its autocast switched off, TF32 off.
    for name, bn in variants.items():
        try:
            with fp32_math():
                tr = Trainer(base.replace(batchnorm=bn), data)
                tr.autocast = torch.autocast(tr.device.type, enabled=False)
                refs[name] = step_losses(tr, s.steps, s.batch)
                del tr
            res["reference"][name] = {"losses": [round(x, 6) for x in refs[name]["losses"]],
                                      "loss_moved": abs(refs[name]["losses"][-1] - refs[name]["losses"][0])}
        except Exception as err:
            res["reference"][name] = {"error": repr(err), "traceback": traceback.format_exc(limit=6)}
    try:
        with fp32_math():
            res["reference"]["short_run"] = short_run(ctx, run_cfg.replace(compile="none"), data, "fp32", fp32=True)
    except Exception as err:
        res["reference"]["short_run"] = {"error": repr(err), "traceback": traceback.format_exc(limit=6)}
    save()
    ctx.log(f"step 1: fp32 reference: loss {res['reference'].get('paper_net', {}).get('losses', ['?'])[-1]} "
            f"after {s.steps} steps (BN: {res['reference'].get('batchnorm', {}).get('losses', ['?'])[-1]})")

    for mode in MODES:
        r = res["modes"][mode]
        if ctx.left() < 30:
            r["error"] = "not run: no time left"
            continue
        expected_error = mode == "cudagraphs" and not ctx.cuda
        start = time.time()
        r["compare"] = {}
        # torch.compile of the BN variant costs another compilation (~a minute): only where time is plenty.
        for name, bn in variants.items():
            if name not in refs:
                r["compare"][name] = {"ok": False, "error": "no fp32 reference (see reference)"}
                continue
            if mode == "default" and bn and (ctx.args.smoke or ctx.left() < 300):
                r["compare"][name] = {"skipped": "a second torch.compile costs too much time here"}
                continue
            try:
                tr = Trainer(base.replace(batchnorm=bn, compile=mode), data)
                r["compare"][name] = _compare(refs[name], step_losses(tr, s.steps, s.batch), s.tol)
                del tr
            except Exception as err:
                r["compare"][name] = {"error": repr(err), "traceback": traceback.format_exc(limit=6), "ok": False}
        try:
            r["short_run"] = short_run(ctx, run_cfg.replace(compile=mode), data, mode)
        except Exception as err:
            r["short_run"] = {"error": repr(err), "traceback": traceback.format_exc(limit=6)}
        sr = r["short_run"]
        checks = {f"compare_{k}": v.get("ok", False) for k, v in r["compare"].items() if "skipped" not in v}
        ref_run = res["reference"].get("short_run", {})
        if "epochs" in sr and "epochs" in ref_run:  # informational: bf16 against fp32 over the short run
            sr["val_acc_minus_fp32"] = [round(a["val_acc"] - b["val_acc"], 4) for a, b in zip(sr["epochs"], ref_run["epochs"])]
        for k in ("finite", "subset_sizes_ok", "images_seen_ok", "replay_ok", "resume_ok"):
            checks[k] = bool(sr.get(k, False))
        if not ctx.args.smoke:  # a few epochs of 250 images need not lift accuracy; on the GPU run they must,
            # unless the fp32 reference stays flat too (the paper's network, without normalisation, can sit at
            # chance for a few hundred steps).
            checks["val_acc_rises"] = bool(sr.get("val_acc_rises", False)) or ref_run.get("val_acc_rises") is False
        r["checks"] = checks
        r["ok"] = all(checks.values()) and bool(checks)
        r["seconds"] = round(time.time() - start, 1)
        if expected_error:
            errs = [e for e in [v.get("error", "") for v in r["compare"].values()] + [sr.get("error", "")] if e]
            r["expected_error"] = bool(errs) and all("cudagraphs" in e and "CPU" in e for e in errs)
        if ctx.cuda:
            torch.cuda.empty_cache()
        save()
        ctx.pack(force=False)
        pn = r["compare"].get("paper_net", {})
        ctx.log(f"step 1: mode {mode}: {'ok' if r['ok'] else ('expected error on the CPU' if r.get('expected_error') else 'FAILED')}"
                f" ({r['seconds']} s); max rel loss diff {pn.get('rel_diff_max', float('nan')):.2e}; "
                f"val_acc {[round(e['val_acc'], 4) for e in sr.get('epochs', [])]}; "
                f"{'' if r.get('expected_error') else '; '.join(f'{k}={v}' for k, v in checks.items() if not v)}")
    failed = [m for m, r in res["modes"].items() if not r.get("ok") and not r.get("expected_error")]
    res["failed_modes"] = failed
    ref_errors = {k: v["error"] for k, v in res["reference"].items() if "error" in v}
    res["ok_modes"] = [m for m, r in res["modes"].items() if r.get("ok")]
    save()
    return {"status": "failed" if failed or ref_errors else "done", "ok_modes": res["ok_modes"], "failed_modes": failed,
            "reference_errors": ref_errors,
            "max_rel_loss_diff": {m: r.get("compare", {}).get("paper_net", {}).get("rel_diff_max") for m, r in res["modes"].items()},
            "max_rel_loss_diff_bn": {m: r.get("compare", {}).get("batchnorm", {}).get("rel_diff_max") for m, r in res["modes"].items()},
            "val_acc": {m: [round(e["val_acc"], 4) for e in r.get("short_run", {}).get("epochs", [])] for m, r in res["modes"].items()},
            "errors": {m: r["short_run"]["error"] for m, r in res["modes"].items() if "error" in r.get("short_run", {})}}


# ------------------------------------------------------------------------------------------ step 2
def step2(ctx: Ctx) -> dict[str, Any]:
    s = ctx.scale
    folder = ctx.work / "step2"
    folder.mkdir(parents=True, exist_ok=True)
    bench_json = folder / "bench.json"
    # On the CPU: no second torch.compile; cudagraphs must fail cleanly, and first, because bench.run profiles
    # the last mode it timed (a failed one too).
    modes = list(MODES) if ctx.cuda else ["cudagraphs", "none"]
    cmd = [ctx.py, str(Path(__file__).resolve()), "--worker", "bench", "--out", str(ctx.out), "--spec", ctx.spec,
           "--data-dir", ctx.data_dir, "--batch", str(s.batch), "--epochs-timed", str(s.bench_epochs),
           "--plain-epochs", str(s.plain_epochs), "--workers", str(s.workers), "--mode", ",".join(modes),
           "--policies", "full,dynamic", "--profile-path", str(folder / "profile.txt"), "--result", str(bench_json)]
    # Leave room for the anatomy measurement and the rest, but let the bench finish if it can.
    rc = run_cmd(cmd, folder / "bench-log.txt", timeout=ctx.left() - s.reserve_s, cwd=REPO, env=_env(ctx))
    ctx.log(f"step 2: the bench exited {rc}")
    if not bench_json.exists():
        raise RuntimeError(f"the bench wrote no results (exit {rc}):\n{_tail(folder / 'bench-log.txt')}")
    bench = json.loads(bench_json.read_text())
    summary = summarize_bench(bench)
    summary["rc"] = rc
    ctx.progress["steps"]["2"] = {**ctx.progress["steps"].get("2", {}), "result": summary}
    ctx.save_progress()
    ctx.log(f"step 2: plain {summary.get('plain_ips', 0):,.0f} images/s; best {summary.get('best', {}).get('pipeline')}: "
            f"{summary.get('best', {}).get('images_per_s', 0):,.0f} images/s = {summary.get('best', {}).get('speedup_vs_plain', 0):.2f}x")
    # Where an epoch's time goes (a subprocess: a crash or hang here costs nothing else).
    anatomy_json = folder / "anatomy.json"
    if ctx.left() > s.reserve_s + 20:
        mode = "cudagraphs" if ctx.cuda else "none"
        cmd = [ctx.py, str(Path(__file__).resolve()), "--worker", "anatomy", "--spec", ctx.spec, "--data-dir", ctx.data_dir,
               "--batch", str(s.batch), "--mode", mode, "--result", str(anatomy_json), "--out", str(ctx.out),
               "--profile-path", str(folder / "profile-eager.txt")]
        arc = run_cmd(cmd, folder / "anatomy-log.txt", timeout=min(120, ctx.left() - s.reserve_s), cwd=REPO, env=_env(ctx))
        summary["anatomy_rc"] = arc
        if anatomy_json.exists():
            summary["anatomy"] = json.loads(anatomy_json.read_text())
    bench.update(device=ctx.device_name, gpu_check=summary)
    ctx.write_json(f"results/bench/{ctx.slug}.json", bench)
    errors = [p for p in bench["pipelines"] if "error" in p]
    expected = all("cudagraphs" in p["pipeline"] and not ctx.cuda for p in errors)
    summary["status"] = "done" if (rc in (0, 1) and (not errors or expected) and len(bench["pipelines"]) > 1) else "failed"
    summary["errors"] = {p["pipeline"]: p["error"] for p in errors}
    return summary


def summarize_bench(bench: dict) -> dict[str, Any]:
    pipes = bench.get("pipelines", [])
    plain = next((p for p in pipes if p["pipeline"].startswith("plain")), None)
    out: dict[str, Any] = {"device_name": bench.get("environment", {}).get("device_name"), "pipelines": {}}
    if plain:
        out["plain_ips"] = plain["images_per_s"]
    for p in pipes:
        if "images_per_s" not in p or p is plain:
            continue
        entry = {k: p.get(k) for k in ("images_per_s", "speedup_vs_plain", "first_epoch_s", "steady_epoch_s",
                                       "checkpoint_s", "checkpoint_bytes", "val_acc")}
        if p.get("checkpoint_s") and p.get("steady_epoch_s"):
            entry["checkpoint_fraction_of_epoch"] = p["checkpoint_s"] / p["steady_epoch_s"]
            entry["checkpoint_fraction_at_60s_interval"] = p["checkpoint_s"] / 60.0
        out["pipelines"][p["pipeline"]] = entry
    full = {k: v for k, v in out["pipelines"].items() if "policy full" in k}
    if full:
        label, best = max(full.items(), key=lambda kv: kv[1]["images_per_s"])
        mode = label.rsplit("compile ", 1)[-1]
        out["best"] = {"pipeline": label, "mode": mode, **best}
        out["target_ips_met"] = best["images_per_s"] >= TARGET_IPS
        out["target_speedup_met"] = (best.get("speedup_vs_plain") or 0) >= TARGET_SPEEDUP
        out["targets"] = {"images_per_s": TARGET_IPS, "speedup_vs_plain": TARGET_SPEEDUP}
    return out


def _env(ctx: Ctx) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    if ctx.args.smoke:
        env.setdefault("OMP_NUM_THREADS", "1")  # two runs at a time on a shared 2-core machine
    return env


def worker_bench(args: argparse.Namespace) -> int:
    """Step 2's `dyntrain bench`, through its Python API: `dyntrain.bench.run` (plain pipeline, then the
    engine per mode x policy, JSON after each), then a profile of one epoch of the fastest full-data mode.
    Not the CLI: at the time of writing `dyntrain bench` passes `epochs` twice to TrainConfig (TypeError).
    Also used by gpu_throughput.sh."""
    from dyntrain import bench as bn
    from dyntrain.config import TrainConfig
    from dyntrain.data import load_dataset
    from dyntrain.engine import resolve_device

    out = Path(args.result)
    base = TrainConfig(dataset=args.spec, data_dir=args.data_dir, protocol="paper", batch_size=args.batch,
                       epochs=args.epochs_timed, policy="full", device=args.device, train_limit=args.train_limit,
                       progress=False)
    # No profile here: bench.run profiles the last mode it timed, even one that failed.
    rc = bn.run(base, modes=args.mode.split(","), policies=args.policies.split(","), plain_epochs=args.plain_epochs,
                workers=args.workers, out=out, profile=None)
    results = json.loads(out.read_text())
    timed = [p for p in results["pipelines"] if p.get("images_per_s") and "policy full, compile" in p["pipeline"]]
    if args.profile_path and timed:
        mode = max(timed, key=lambda p: p["images_per_s"])["pipeline"].rsplit("compile ", 1)[-1]
        try:
            data = load_dataset(args.spec, args.data_dir, progress=False)
            prof = bn.profile_epoch(data, base.replace(compile=mode), resolve_device(base.device), Path(args.profile_path))
            results["profile"] = {"policy": "full", "compile": mode, **prof}
            print(f"wrote the profile of one full/{mode} epoch to {args.profile_path}")
        except Exception as err:
            results["profile"] = {"compile": mode, "error": repr(err)}
        _atomic(out, json.dumps(results, indent=2) + "\n")
    return rc


def worker_anatomy(args: argparse.Namespace) -> None:
    """Subprocess of step 2: epoch = train + eval + host gaps; and for CUDA graphs the pure replay
    time of one step, with cudnn.benchmark off (the engine's default) and on; an eager-mode profile."""
    import torch

    from dyntrain.config import TrainConfig
    from dyntrain.data import load_dataset
    from dyntrain.engine import Trainer

    data = load_dataset(args.spec, args.data_dir, progress=False)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict[str, Any] = {"mode": args.mode, "batch_size": args.batch, "variants": {}}
    cfg = TrainConfig(dataset=args.spec, data_dir=args.data_dir, protocol="paper", policy="full", batch_size=args.batch,
                      epochs=100, compile=args.mode, progress=False)
    for bench_flag in ((False, True) if cuda else (False,)):
        torch.backends.cudnn.benchmark = bench_flag
        r: dict[str, Any] = {}
        try:
            tr = Trainer(cfg, data)
            for _ in range(2):
                tr.run_epoch()
            epochs = [tr.run_epoch()["epoch_time_s"] for _ in range(3)]
            r["epoch_s"] = statistics.median(epochs)
            r["images_per_s"] = tr.n_train / r["epoch_s"]
            subset = torch.from_numpy(tr.policy.subset).to(tr.device)
            sync()
            t = time.perf_counter()
            tr._train_epoch(subset)
            sync()
            r["train_s"] = time.perf_counter() - t
            t = time.perf_counter()
            tr._correct(tr.val_x, tr.val_y)
            sync()
            r["eval_s"] = time.perf_counter() - t
            r["train_images_per_s"] = tr.n_train / r["train_s"]
            r["host_and_other_s"] = r["epoch_s"] - r["train_s"] - r["eval_s"]
            graph = getattr(getattr(tr, "_graph", None), "graph", None)
            if cuda and graph is not None:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(50):
                    graph.replay()
                end.record()
                sync()
                step_s = start.elapsed_time(end) / 1e3 / 50
                r["replay_step_ms"] = step_s * 1e3
                r["replay_images_per_s"] = args.batch / step_s
                r["gap_per_step_ms"] = (r["train_s"] / math.ceil(tr.n_train / args.batch) - step_s) * 1e3
            if cuda:
                r["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            del tr
        except Exception as err:
            r["error"] = repr(err)
        out["variants"][f"cudnn_benchmark={bench_flag}"] = r
        _atomic(Path(args.result), json.dumps(out, indent=2) + "\n")
    torch.backends.cudnn.benchmark = False
    try:  # eager profile of 20 steps: the kernels that CUDA graphs replay, by GPU time
        from torch.profiler import ProfilerActivity, profile

        tr = Trainer(cfg.replace(compile="none"), data)
        tr.run_epoch()
        subset = torch.from_numpy(tr.policy.subset[: 20 * args.batch]).to(tr.device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            tr._train_epoch(subset)
            sync()
        key = "cuda_time_total" if cuda else "cpu_time_total"
        Path(args.profile_path).write_text(prof.key_averages().table(sort_by=key, row_limit=25) + "\n")
        out["eager_profile"] = args.profile_path
    except Exception as err:
        out["eager_profile_error"] = repr(err)
    _atomic(Path(args.result), json.dumps(out, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ steps 3, 4
def run_mode(ctx: Ctx) -> str:
    """The compile mode of the long runs: --run-compile, else the fastest of step 2 that step 1 passed."""
    if ctx.args.run_compile:
        return ctx.args.run_compile
    steps = ctx.progress["steps"]
    ok = steps.get("1", {}).get("result", {}).get("ok_modes")
    best = steps.get("2", {}).get("result", {})
    ranked = sorted(((v["images_per_s"], k.rsplit("compile ", 1)[-1]) for k, v in best.get("pipelines", {}).items()
                     if "policy full" in k and v.get("images_per_s")), reverse=True)
    for _, mode in ranked:
        if ok is None or mode in ok:
            return mode
    if ok:
        return "cudagraphs" if "cudagraphs" in ok else ok[0]
    return "cudagraphs" if ctx.cuda else "none"


def s_per_image(ctx: Ctx, mode: str) -> float | None:
    """Seconds per image-equivalent (epoch_work) for a run of `mode` alone on the device."""
    best = ctx.progress["steps"].get("2", {}).get("result", {}).get("pipelines", {})
    p = best.get(f"dyntrain engine, policy full, compile {mode}")
    if p and p.get("steady_epoch_s"):
        return p["steady_epoch_s"] / rp.epoch_work(ctx.sizes["paper_train"], ctx.sizes["paper_eval"])
    return None


def _runner(ctx: Ctx, part: str, mode: str) -> rp.Runner:
    s = ctx.scale
    common = ["--dataset", ctx.spec, "--data-dir", ctx.data_dir, "--epochs", str(s.epochs), "--compile", mode,
              "--batch-size", str(s.batch), "--val-size", str(s.val_size)]

    def finished(job: rp.Job, result: dict) -> None:
        ctx.progress.setdefault("runs", {})[f"{part}/{job.name}"] = result
        ctx.save_progress()
        ctx.pack(force=False)

    # Keep time for the report and the last pack after the runs.
    return rp.Runner(common, s.parallel, ctx.deadline_mono(reserve=s.reserve_s), s_per_image(ctx, mode), s.startup_s,
                     env=_env(ctx), log_dir=ctx.work / "logs" / part, log=lambda m: ctx.log(f"{part}: {m}"),
                     on_finish=finished)


def step3(ctx: Ctx, seeds: tuple[int, ...], budget_seeds: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    s, z = ctx.scale, ctx.sizes
    root = ctx.work / "runs" / "baselines"
    mode = run_mode(ctx)
    ctx.log(f"baselines: seeds {list(seeds)}, {s.epochs} epochs, compile {mode}, {s.parallel} at a time")
    runner = _runner(ctx, "baselines", mode)
    jobs = rp.baseline_jobs(root, seeds, s.alpha, s.epochs, z["holdout_train"], z["holdout_eval"])
    counts = runner.run(jobs)
    budget = rp.equal_time_budget(root, budget_seeds)
    eq = []
    if budget is not None:
        eq = rp.equal_time_jobs(root, seeds, budget, s.epochs, z["holdout_train"], z["holdout_eval"])
        more = runner.run(eq)
        counts = {k: counts[k] + more[k] for k in counts}
    else:
        counts["not_started"] += len(seeds)
        ctx.log("baselines: the equal-time runs wait for dynamic-s0 and -s1")
    report = make_report(ctx, "runs/baselines", f"results/gpu-{ctx.slug}/baselines", baselines_comparison)
    total = len(jobs) + len(seeds)
    return {"status": "done" if counts["finished"] == total else "partial", "compile": mode, "parallel": s.parallel,
            "runs": counts, "of": total, "equal_time_budget_s": budget, "report": report}


def step4(ctx: Ctx) -> dict[str, Any]:
    s, z = ctx.scale, ctx.sizes
    root = ctx.work / "runs" / "paper-grid"
    mode = run_mode(ctx)
    ctx.log(f"paper grid: {len(s.grid_alphas) * 7} cells, {s.epochs} epochs, compile {mode}, {s.parallel} at a time")
    jobs = rp.grid_jobs(root, sorted(s.grid_alphas, reverse=True), s.epochs, z["paper_eval"])
    counts = _runner(ctx, "paper-grid", mode).run(jobs)
    report = make_report(ctx, "runs/paper-grid", f"results/gpu-{ctx.slug}/paper-grid", grid_comparison)
    return {"status": "done" if counts["finished"] == len(jobs) else "partial", "compile": mode, "parallel": s.parallel,
            "runs": counts, "of": len(jobs), "report": report}


def make_report(ctx: Ctx, runs_rel: str, out_rel: str, comparison: Callable[[Ctx, Path, Path], str]) -> dict[str, Any]:
    """`dyntrain report` over the finished runs (relative paths, so that run names read runs/...), then
    the comparison with the paper's numbers beside it."""
    runs, out = ctx.work / runs_rel, ctx.work / out_rel
    if not any(runs.glob("*/summary.json")):
        return {"status": "no finished runs"}
    formats = ["md", "csv"] + (["tex"] if _importable("jinja2") else []) + (["html"] if _importable("plotly") else [])
    cmd = [ctx.py, "-m", "dyntrain.cli", "report", runs_rel, "--out", out_rel, "--format", ",".join(formats)]
    rc = run_cmd(cmd, ctx.work / "logs" / f"report-{Path(out_rel).name}.log", timeout=max(30, ctx.left() + 20),
                 cwd=ctx.work, env=_env(ctx))
    r: dict[str, Any] = {"rc": rc, "formats": formats, "folder": out_rel}
    try:
        out.mkdir(parents=True, exist_ok=True)
        r["comparison"] = str(Path(out_rel) / "paper_comparison.md")
        (out / "paper_comparison.md").write_text(comparison(ctx, runs, out))
    except Exception as err:
        r["comparison_error"] = repr(err)
    ctx.log(f"report {out_rel}: exit {rc}")
    return r


def _summaries(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))}


def _fmt_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s"


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def baselines_comparison(ctx: Ctx, runs: Path, out: Path) -> str:
    sums = _summaries(runs)
    arms = {a: [v for k, v in sums.items() if re.fullmatch(rf"{re.escape(a)}-s\d+", k)]
            for a in ("full", "full-equal-time", "static", "dynamic", "variant", "random")}
    acc = {a: [100 * v["best"]["test_acc"] for v in vs] for a, vs in arms.items()}
    val = {a: [100 * v["best"]["val_acc"] for v in vs] for a, vs in arms.items()}
    secs = {a: [v["total_time_s"] for v in vs] for a, vs in arms.items()}
    paper = {"full": PAPER_T4["full"], "static": PAPER_T4["static"], "dynamic": PAPER_T4["dynamic"]}
    lines = ["# Baselines on the GPU beside the paper's Table 4", "",
             f"Device: {ctx.device_name}. Held-out protocol: {ctx.sizes.get('holdout_train')} training images, "
             f"{ctx.scale.val_size} held out for validation (they drive resampling), the {ctx.sizes.get('test')} test images "
             f"only reported (test accuracy at the epoch of best validation accuracy). {ctx.scale.epochs} epochs, batch "
             f"{ctx.scale.batch}, α = {ctx.scale.alpha}, δ = 0.01; {'bf16' if ctx.cuda else 'fp32'}; the JPEG copy of CIFAR-10. "
             f"Runs shared the device {ctx.scale.parallel} at a time (arm by arm), so their times are comparable with "
             "each other, not with one run alone.", "",
             "| arm | paper accuracy (%) | paper time | test acc. at best val. (%) | best val. acc. (%) | training time | time / full | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    full_t = statistics.mean(secs["full"]) if secs["full"] else None
    for a in arms:
        pa, pt = paper.get(a, ("—", "—"))
        t = statistics.mean(secs[a]) if secs[a] else None
        lines.append(f"| {a} | {pa} | {pt} | {_mean_sd(acc[a])} | {_mean_sd(val[a])} | {_fmt_time(t) if t else '—'} | "
                     f"{f'{t / full_t:.0%}' if t and full_t else '—'} | {len(arms[a])} |")
    lines += ["", f"Paper, {PAPER_VARIANT}.", ""]

    def gap(a: str, b: str) -> str | None:
        if not acc[a] or not acc[b]:
            return None
        return f"{statistics.mean(acc[a]) - statistics.mean(acc[b]):+.2f}"

    parts = []
    if acc["dynamic"] and acc["full"]:
        parts.append(f"dynamic training (α = {ctx.scale.alpha}, β = 0.7) reached {_mean_sd(acc['dynamic'])} % test accuracy "
                     f"against {_mean_sd(acc['full'])} % for full data ({gap('dynamic', 'full')} points; the paper: "
                     f"{PAPER_T4['dynamic'][0] - PAPER_T4['full'][0]:+.2f})")
        if full_t and secs["dynamic"]:
            parts.append(f"in {statistics.mean(secs['dynamic']) / full_t:.0%} of full data's time (the paper: "
                         f"{(33 * 60 + 14) / (50 * 60 + 25):.0%})")
    if acc["full-equal-time"] and acc["dynamic"]:
        parts.append(f"full data stopped at the dynamic runs' mean time reached {_mean_sd(acc['full-equal-time'])} % "
                     f"(dynamic {gap('dynamic', 'full-equal-time')} points against it: the paper has no such comparison)")
    if acc["static"] and acc["dynamic"]:
        parts.append(f"a static subset reached {_mean_sd(acc['static'])} % (dynamic {gap('dynamic', 'static')}; "
                     f"the paper: {PAPER_T4['dynamic'][0] - PAPER_T4['static'][0]:+.2f})")
    if acc["random"] and acc["dynamic"]:
        parts.append(f"a fresh random subset every epoch reached {_mean_sd(acc['random'])} % (dynamic {gap('dynamic', 'random')})")
    if acc["variant"]:
        parts.append(f"the variant (γ = 0.97, {ctx.scale.epochs} epochs) reached {_mean_sd(acc['variant'])} %")
    n = min((len(v) for v in acc.values() if v), default=0)
    if parts:
        text = "On this device, " + "; ".join(parts) + "."
        text += (f" With {n} seed(s) per arm, differences below about one standard deviation are seed noise; the "
                 "paper's accuracies are the maximum over epochs of the test accuracy that also drove resampling, "
                 "so they sit above a held-out estimate." if n else "")
    else:
        text = "Not enough finished runs yet for a comparison (see progress.json); a later call continues them."
    lines += ["## Reading", "", text, ""]
    return "\n".join(lines)


def grid_comparison(ctx: Ctx, runs: Path, out: Path) -> str:
    sums = _summaries(runs)
    cell = {}
    for name, v in sums.items():
        m = re.fullmatch(r"dynamic-a(\d+)-b([0-9.]+)", name)
        if m:
            cell[(int(m.group(1)), float(m.group(2)))] = v
    betas = rp.BETAS
    lines = ["# The paper's grid on the GPU beside Tables 2 and 3", "",
             f"Device: {ctx.device_name}. Protocol paper (the test set drives resampling and is the reported accuracy, "
             f"as in the paper): best validation accuracy over {ctx.scale.epochs} epochs, δ = 0.01, one seed. "
             f"Each cell: ours / paper. Runs shared the device {ctx.scale.parallel} at a time.", "",
             "## Best validation accuracy (%), ours / paper (Table 2)", "",
             "| α \\ β | " + " | ".join(f"{b:g}" for b in betas) + " |", "|---" * (len(betas) + 1) + "|"]
    alphas = sorted({a for a, _ in cell} | set(ctx.scale.grid_alphas), reverse=True)
    for a in alphas:
        row = []
        for i, b in enumerate(betas):
            v = cell.get((a, b))
            ours = f"{100 * v['best']['val_acc']:.1f}" if v else "—"
            row.append(f"{ours} / {PAPER_T2[a][i] if a in PAPER_T2 else '—'}")
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    lines += ["", "## Training time, ours / paper (Table 3, a GTX 1070)", "",
              "| α \\ β | " + " | ".join(f"{b:g}" for b in betas) + " |", "|---" * (len(betas) + 1) + "|"]
    for a in alphas:
        row = []
        for i, b in enumerate(betas):
            v = cell.get((a, b))
            row.append(f"{_fmt_time(v['total_time_s']) if v else '—'} / {PAPER_T3[a][i] if a in PAPER_T3 else '—'}")
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    done = len(cell)
    lines += ["", f"{done} of {len(alphas) * len(betas)} cells finished."]
    if done:
        ours = [100 * v["best"]["val_acc"] for (a, b), v in cell.items() if a in PAPER_T2]
        theirs = [PAPER_T2[a][betas.index(b)] for (a, b), v in cell.items() if a in PAPER_T2 and b in betas]
        if ours and len(ours) == len(theirs):
            lines.append(f"Mean over the finished cells: ours {statistics.mean(ours):.2f} %, the paper's {statistics.mean(theirs):.2f} %.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ step 5
def step5(ctx: Ctx) -> dict[str, Any]:
    """Fractional GPUs. Without Ray: processes capped with `dyntrain.tune.cap_gpu_memory` (what a Ray
    trial with 0.25 GPU does), 1 x 1.0 then 4 x 0.25, timed together after all have warmed up. With Ray
    importable: the same through `dyntrain tune --gpus-per-trial 0.25`.

    Ray does not come with the GPU machine. To carry it: pip download the cp312 manylinux wheel of the
    pinned Ray (79 MB) here, unpack it, drop ray/jars ray/rllib ray/serve ray/llm (about 31 MB packed with
    xz), plus the wheels it needs that the machine lacks (jsonschema, referencing, rpds-py,
    jsonschema-specifications, attrs if missing, tensorboardX); put them in .devdata/, carry .devdata,
    and unpack them into /tmp/site with PYTHONPATH=/tmp/site before calling gpu_check.sh."""
    if not ctx.cuda:
        return {"status": "skipped", "reason": "no CUDA device: fractional GPUs need one"}
    s = ctx.scale
    folder = ctx.work / "step5"
    folder.mkdir(parents=True, exist_ok=True)
    mode = run_mode(ctx)
    res: dict[str, Any] = {"compile": mode, "epochs_timed": s.frac_epochs}
    for label, n, frac in (("1x1.0", 1, 1.0), ("4x0.25", 4, 0.25)):
        if ctx.left() < s.reserve_s + 40:
            res[label] = {"error": "not run: no time left"}
            break
        res[label] = fractional(ctx, folder / label, n, frac, mode)
        ctx.write_json("step5/fractional.json", res)
        ctx.log(f"fractional {label}: {res[label].get('aggregate_images_per_s', 0):,.0f} images/s together; "
                f"cap holds: {res[label].get('cap_works')}")
    one, four = res.get("1x1.0", {}), res.get("4x0.25", {})
    if one.get("aggregate_images_per_s") and four.get("aggregate_images_per_s"):
        res["ratio_4x0.25_over_1x1.0"] = four["aggregate_images_per_s"] / one["aggregate_images_per_s"]
    res["ray_importable"] = _importable("ray")
    if res["ray_importable"] and ctx.left() > s.reserve_s + 90:
        res["ray"] = ray_fractional(ctx, folder / "ray", mode)
    elif not res["ray_importable"]:
        res["ray"] = {"skipped": "import ray fails on this machine (see step5's docstring for carrying it)"}
    ctx.write_json("step5/fractional.json", res)
    ok = all("error" not in res.get(k, {"error": 1}) for k in ("1x1.0", "4x0.25"))
    return {"status": "done" if ok else "failed", **{k: v for k, v in res.items() if k != "ray"},
            "ray": {k: v for k, v in res.get("ray", {}).items() if k != "trials"}}


def fractional(ctx: Ctx, folder: Path, n: int, frac: float, mode: str) -> dict[str, Any]:
    s = ctx.scale
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    go = folder / "go"
    procs = []
    for i in range(n):
        cmd = [ctx.py, str(Path(__file__).resolve()), "--worker", "frac", "--spec", ctx.spec, "--data-dir", ctx.data_dir,
               "--batch", str(s.batch), "--mode", mode, "--frac", str(frac), "--epochs-timed", str(s.frac_epochs),
               "--go", str(go), "--result", str(folder / f"worker{i}.json"), "--out", str(ctx.out), "--seed", str(i)]
        log = open(folder / f"worker{i}.log", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(ctx), start_new_session=True), log))
    try:
        limit = time.monotonic() + min(120, ctx.left() - s.reserve_s)
        while time.monotonic() < limit and not all((folder / f"worker{i}.ready").exists() for i in range(n)):
            if any(p.poll() is not None for p, _ in procs):
                break
            time.sleep(0.2)
        go.touch()
        for p, _ in procs:
            p.wait(timeout=max(5, ctx.left() - s.reserve_s))
    except BaseException:
        for p, _ in procs:
            _killpg(p)
        raise
    finally:
        for _, log in procs:
            log.close()
    workers = []
    for i in range(n):
        f = folder / f"worker{i}.json"
        workers.append(json.loads(f.read_text()) if f.exists() else {"error": _tail(folder / f"worker{i}.log", 8)})
    out: dict[str, Any] = {"processes": n, "fraction": frac, "workers": workers}
    timed = [w for w in workers if "t_start" in w]
    if timed:
        span = max(w["t_end"] for w in timed) - min(w["t_start"] for w in timed)
        out["aggregate_images_per_s"] = sum(w["images"] for w in timed) / span
        out["per_process_images_per_s"] = [w["images_per_s"] for w in timed]
        out["max_memory_reserved_mb"] = [w.get("max_memory_reserved_mb") for w in timed]
        capped = frac < 1 and all(w.get("capped") for w in timed)
        out["cap_works"] = all(w.get("cap_works") for w in timed) if capped else None
    if any("error" in w for w in workers):
        out["error"] = "; ".join(str(w.get("error"))[:300] for w in workers if "error" in w)
    return out


def worker_frac(args: argparse.Namespace) -> None:
    import torch

    from dyntrain.config import TrainConfig
    from dyntrain.data import load_dataset
    from dyntrain.engine import Trainer
    from dyntrain.tune import cap_gpu_memory

    result = Path(args.result)
    capped = cap_gpu_memory(args.frac) if args.frac < 1 else False
    data = load_dataset(args.spec, args.data_dir, progress=False)
    cfg = TrainConfig(dataset=args.spec, data_dir=args.data_dir, protocol="paper", policy="full", batch_size=args.batch,
                      epochs=args.epochs_timed + 1, compile=args.mode, seed=args.seed, progress=False)
    tr = Trainer(cfg, data)
    tr.run_epoch()  # warm-up, compile, capture
    result.with_suffix(".ready").touch()
    go, waited = Path(args.go), time.monotonic()
    while not go.exists() and time.monotonic() - waited < 180:
        time.sleep(0.05)
    torch.cuda.synchronize()
    t_start = time.time()
    for _ in range(args.epochs_timed):
        tr.run_epoch()
    torch.cuda.synchronize()
    t_end = time.time()
    total = torch.cuda.get_device_properties(0).total_memory
    out = {"fraction": args.frac, "capped": capped, "images": tr.n_train * args.epochs_timed, "t_start": t_start,
           "t_end": t_end, "images_per_s": tr.n_train * args.epochs_timed / (t_end - t_start),
           "max_memory_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
           "max_memory_reserved_mb": torch.cuda.max_memory_reserved() / 2**20, "device_memory_mb": total / 2**20}
    if capped:  # more than the share must fail with an out-of-memory error, not take the memory
        import fcntl

        # One process at a time: four shares of 0.25 fill the card, so concurrent over-asks could fail
        # for want of memory rather than by the cap.
        with open(result.parent / "cap.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            out["free_before_cap_test_mb"] = torch.cuda.mem_get_info()[0] / 2**20
            try:
                torch.empty(int(total * args.frac) + 2**30, dtype=torch.uint8, device="cuda")  # past the cap: must fail
                out["cap_works"] = False
            except torch.OutOfMemoryError as err:
                out["cap_works"] = True
                out["cap_error"] = " ".join(str(err).split())[:400]
            torch.cuda.empty_cache()
    _atomic(result, json.dumps(out, indent=2) + "\n")


def ray_fractional(ctx: Ctx, folder: Path, mode: str) -> dict[str, Any]:
    """4 trials x 0.25 GPU through `dyntrain tune` (policy full, seeds 0-3); images/s from the trials' records."""
    s = ctx.scale
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "space.yaml"
    space.write_text("policy: full\nseed: [0, 1, 2, 3]\n")
    cmd = [ctx.py, "-m", "dyntrain.cli", "tune", "--space", str(space), "--gpus-per-trial", "0.25", "--storage",
           str(folder), "--name", "frac4", "--live-report-s", "0", "--dataset", ctx.spec, "--data-dir", ctx.data_dir,
           "--protocol", "paper", "--epochs", str(s.frac_epochs + 1), "--batch-size", str(s.batch), "--compile", mode]
    rc = run_cmd(cmd, folder / "tune-log.txt", timeout=ctx.left() - s.reserve_s, cwd=REPO, env=_env(ctx))
    out: dict[str, Any] = {"rc": rc}
    try:
        from dyntrain.results import read

        df = read([str(folder / "frac4")])
        steady = df[df.epoch > 1]
        per_trial = steady.groupby("run").apply(lambda g: g.subset_size.sum() / g.epoch_time_s.sum())
        out["per_trial_images_per_s"] = per_trial.round(0).tolist()
        out["sum_images_per_s"] = float(per_trial.sum())
    except Exception as err:
        out["read_error"] = repr(err)
    return out


# ------------------------------------------------------------------------------------------ main
def gpu_monitor(ctx: Ctx) -> subprocess.Popen | None:
    """nvidia-smi once a second into gpu-util.csv: whether one process fills the GPU."""
    if not ctx.cuda or not shutil.which("nvidia-smi"):
        return None
    fh = open(ctx.work / "gpu-util.csv", "a")
    fh.write(f"# from {time.time() - ctx.t0:.1f} s after the start\n")
    fh.flush()
    return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,"
                             "clocks.sm", "--format=csv", "-l", "1"], stdout=fh, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def continue_from(ctx: Ctx, source: Path) -> None:
    """Unpack a previous call's gpu-check.tar.gz (or copy its unpacked folder) into --work."""
    if (ctx.work / "progress.json").exists():
        ctx.log(f"--continue-from {source}: {ctx.work} already holds a run; keeping that")
        return
    ctx.work.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, ctx.work, dirs_exist_ok=True)
    else:
        with tarfile.open(source) as tar:
            members = []
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if not parts or parts[0] != "gpu-check" or ".." in parts or m.issym() or m.islnk():
                    continue
                m.name = str(Path(*parts[1:])) if len(parts) > 1 else "."
                members.append(m)
            try:
                tar.extractall(ctx.work, members=members, filter="data")
            except TypeError:  # Python without extraction filters
                tar.extractall(ctx.work, members=members)
    ctx.log(f"continuing from {source}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--out", type=Path, required=True, help="OUTDIR: env.json, progress.json, gpu-check.tar.gz")
    p.add_argument("--smoke", action="store_true", help="tiny scale on the CPU: 800 images, batch 64, 2 epochs")
    p.add_argument("--budget-s", type=float, help="stop everything this long after --t0 [500; smoke 1500]")
    p.add_argument("--t0", type=float, help="start time (epoch seconds) the budget counts from [now]")
    p.add_argument("--steps", default=",".join(STEPS), help=f"steps to run (always in the order {','.join(STEPS)}) [all]")
    p.add_argument("--redo", default="", help="steps to run again although progress.json says done, e.g. 1,2")
    p.add_argument("--work", type=Path, help="working tree [/tmp/dyntrain-gpu-check, smoke: ...-smoke]")
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/dyntrain-data"), help="unpacked data and decode cache")
    p.add_argument("--tar", type=Path, default=REPO / ".devdata" / "cifar10-jpeg.tar.gz")
    p.add_argument("--continue-from", type=Path, help="a previous call's gpu-check.tar.gz (or its unpacked gpu-check/)")
    p.add_argument("--parallel", type=int, help="runs sharing the GPU in steps 3-4 [2]")
    p.add_argument("--run-compile", choices=MODES, help="compile mode of steps 3-5 [fastest correct one of steps 1-2]")
    # Subprocess workers of steps 2 and 5.
    p.add_argument("--worker", choices=("bench", "anatomy", "frac"), help=argparse.SUPPRESS)
    for flag in ("--spec", "--mode", "--result", "--go", "--profile-path"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.add_argument("--policies", default="full,dynamic", help=argparse.SUPPRESS)
    p.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--plain-epochs", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--train-limit", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--frac", type=float, help=argparse.SUPPRESS)
    p.add_argument("--epochs-timed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data_dir = str(args.data_dir)  # TrainConfig.data_dir is a str (it lands in JSON)
    if args.worker == "bench":
        return worker_bench(args)
    if args.worker == "anatomy":
        worker_anatomy(args)
        return 0
    if args.worker == "frac":
        worker_frac(args)
        return 0

    args.budget_s = args.budget_s or (1500.0 if args.smoke else 500.0)
    if args.work is None:
        args.work = Path("/tmp/dyntrain-gpu-check" + ("-smoke" if args.smoke else ""))
        if args.smoke and not args.continue_from:  # a smoke test starts afresh (--work DIR to continue one)
            shutil.rmtree(args.work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    ctx.log(f"gpu_check: budget {args.budget_s:.0f} s ({ctx.left():.0f} s left), work {ctx.work}, out {ctx.out}")
    if args.continue_from:
        if args.continue_from.exists():
            continue_from(ctx, args.continue_from)
        else:
            ctx.log(f"--continue-from {args.continue_from}: not found; starting afresh")
    ctx.work.mkdir(parents=True, exist_ok=True)
    if (ctx.work / "progress.json").exists():
        prev = json.loads((ctx.work / "progress.json").read_text())
        ctx.progress.update(steps=prev.get("steps", {}), calls=prev.get("calls", []), runs=prev.get("runs", {}))
    monitor = None
    steps_wanted = [x.strip() for x in args.steps.split(",") if x.strip()]
    redo = {x.strip() for x in args.redo.split(",") if x.strip()}
    bad = [x for x in steps_wanted + sorted(redo) if x not in STEPS]
    if bad:
        p.error(f"unknown step(s) {', '.join(bad)}: choose from {', '.join(STEPS)}")
    try:
        try:
            record_env(ctx)
        except Exception as err:
            ctx.progress["env_error"] = repr(err)
            ctx.log(f"environment: FAILED {err!r}")
        ctx.save_progress()
        ctx.pack()
        try:
            prepare_data(ctx)
        except Exception as err:
            ctx.progress["data_error"] = f"{err!r}\n{traceback.format_exc(limit=4)}"
            ctx.log(f"data: FAILED {err!r}; nothing else can run")
            return 2
        ctx.progress["sizes"] = ctx.sizes
        monitor = gpu_monitor(ctx)
        fns: dict[str, Callable[[], dict]] = {"1": lambda: step1(ctx), "2": lambda: step2(ctx),
                                              "3": lambda: step3(ctx, (0, 1)), "4": lambda: step4(ctx),
                                              "3b": lambda: step3(ctx, (2,)), "5": lambda: step5(ctx)}
        for key in [k for k in STEPS if k in steps_wanted]:
            prev = ctx.progress["steps"].get(key, {})
            if prev.get("status") in ("done", "skipped") and key not in redo:
                ctx.log(f"step {key} ({TITLES[key]}): {prev['status']} in an earlier call (--redo {key} runs it again)")
                continue
            if ctx.left() < ctx.scale.min_step_s + ctx.scale.reserve_s:
                ctx.progress["steps"][key] = {**prev, "status": prev.get("status", "not_run"),
                                              "last_call": "not started: no time left"}
                ctx.log(f"step {key} ({TITLES[key]}): not started, {ctx.left():.0f} s left")
                continue
            ctx.log(f"step {key}: {TITLES[key]}")
            start = time.time()
            entry = {"title": TITLES[key], "started_s": round(start - ctx.t0, 1)}
            ctx.progress["steps"][key] = {**prev, **entry, "status": "running"}
            ctx.save_progress()
            try:
                result = fns[key]()
                entry["status"] = result.pop("status", "done")
                entry["result"] = result
            except Interrupted as err:
                entry.update(status="interrupted", error=str(err))
                raise
            except Exception as err:
                entry.update(status="error", error=repr(err), traceback=traceback.format_exc(limit=8))
                ctx.log(f"step {key}: ERROR {err!r}")
            finally:
                entry["seconds"] = round(time.time() - start, 1)
                # This call's outcome replaces the last one's (an earlier error or result would mislead).
                ctx.progress["steps"][key] = {**{k: v for k, v in prev.items() if k not in ("error", "traceback", "result")},
                                              **entry}
                ctx.save_progress()
                ctx.pack()
            ctx.log(f"step {key}: {entry['status']} in {entry['seconds']} s")
            if key == "1":
                ctx.drop_data()
                with contextlib.suppress(Exception):
                    import gc

                    import torch

                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
    except Interrupted as err:
        ctx.log(f"interrupted ({err}): recording and packing what there is")
    finally:
        if monitor is not None:
            _killpg(monitor)
        ctx.progress["finished_s"] = round(time.time() - ctx.t0, 1)
        ctx.progress["summary"] = {k: v.get("status") for k, v in ctx.progress["steps"].items()}
        ctx.save_progress()
        ctx.pack()
        ctx.log(f"step statuses: {ctx.progress['summary']}; wrote {ctx.out}/{{env.json,progress.json,{BUNDLE}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
