"""`dyntrain bench`: epoch throughput of the paper's network, plain pipeline vs dyntrain's engine.

(a) `plain`: the pipeline the paper's authors likely wrote: a torchvision-style dataset that turns
    each image into a PIL image, ToTensor + Normalize, a shuffling DataLoader, fp32, Adam.
(b) `engine`: dyntrain's Trainer (data resident on the device, bf16 + channels_last on CUDA,
    optional torch.compile / CUDA graphs), for the `full` policy and for `dynamic` at alpha = n/2.

Throughput = training images per epoch / (train + evaluation time of that epoch), the mean over
the epochs after the first; the first epoch (compile, capture, cuDNN autotuning) is reported apart,
and so is the time to write one checkpoint (`dyntrain train` writes one a minute by default).
Not a timed test: run it by hand on the machine you care about.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile
from torchvision import transforms

from dyntrain.config import TrainConfig
from dyntrain.data import Dataset, load_dataset, make_split
from dyntrain.engine import Trainer, resolve_device
from dyntrain.model import build_model
from dyntrain.runs import environment, save_checkpoint, write_json

# The plain pipeline and the paper ran one evaluation set per epoch: by default so does the bench.
DEFAULTS = {"protocol": "paper"}
MEASURED = ("Measured on a 2-core x86_64 CPU (torch 2.14.1, float32, shared with other jobs): plain DataLoader "
            "60 images/s, engine 83 (1.4x); no GPU measured yet (results/bench/, README).")


def bench_plain(data: Dataset, cfg: TrainConfig, epochs: int, workers: int, device: torch.device) -> dict[str, Any]:
    split = make_split(data, cfg.val_size, cfg.seed, cfg.protocol, cfg.train_limit, cfg.test_limit)
    hwc_train = data.train_x[split.train_idx].transpose(0, 2, 3, 1)
    hwc_val = (data.test_x if split.val_from_test else data.train_x)[split.val_idx].transpose(0, 2, 3, 1)
    mean = tuple(hwc_train.mean(axis=(0, 1, 2)) / 255.0)
    std = tuple(hwc_train.std(axis=(0, 1, 2)) / 255.0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    class Images(torch.utils.data.Dataset):  # what torchvision.datasets.CIFAR10 does per item
        def __init__(self, x: np.ndarray, y: np.ndarray):
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(self.x[i])), int(self.y[i])

    val_y = (data.test_y if split.val_from_test else data.train_y)[split.val_idx]
    loader_args = dict(batch_size=cfg.batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                       persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(Images(hwc_train, data.train_y[split.train_idx]), shuffle=True, **loader_args)
    val_loader = torch.utils.data.DataLoader(Images(hwc_val, val_y), shuffle=False, **loader_args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(data.classes), data.train_x.shape[1:]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return _throughput("plain DataLoader, PIL, fp32", len(hwc_train), times, extra={"workers": workers, "val_acc": correct / len(val_y)})


def bench_engine(data: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    trainer = Trainer(cfg, data, device=device)
    history = list(trainer)
    times = [m["epoch_time_s"] for m in history]
    images = [m["subset_size"] for m in history]
    label = f"dyntrain engine, policy {cfg.policy}, compile {cfg.compile}"
    extra = {"alpha": trainer.alpha, "val_acc": history[-1]["val_acc"], **checkpoint_cost(trainer)}
    return _throughput(label, images[-1], times, extra=extra)


@contextlib.contextmanager
def fp32_math():
    """True fp32 for the reference: no TF32 in cuDNN convolutions or cuBLAS matrix products."""
    try:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    except RuntimeError:  # newer torch refuses the legacy flags once its fp32_precision API was used
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def step_losses(trainer: Trainer, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial parameters and the loss of each of `steps` optimiser steps through the engine's
    own epoch code, one batch per call, on batches fixed by a CPU seed (the same for every trainer)."""
    bs = trainer.cfg.batch_size
    steps = min(steps, trainer.n_train // bs)
    order = torch.randperm(trainer.n_train, generator=torch.Generator().manual_seed(1234))[: steps * bs]
    init = torch.cat([p.detach().float().reshape(-1) for p in trainer.model.parameters()]).cpu()
    totals = [trainer._train_epoch(order[k * bs:(k + 1) * bs].to(trainer.device)) for k in range(steps)]
    return init, torch.stack(totals)[:, 0].float().cpu() / bs


def check_modes(data: Dataset, cfg: TrainConfig, modes: list[str], steps: int, tol: float, device: torch.device) -> dict:
    """Every compile mode against an fp32 eager reference (autocast off, TF32 off) from the same
    initialisation on the same batches: ok when every loss is finite and within `tol` (relative) of
    the reference over the first 10 steps and within 2 tol over all (bf16 trajectories drift apart)."""
    with fp32_math():
        ref = Trainer(cfg.replace(compile="none"), data, device=device)
        ref.autocast = torch.autocast(device.type, enabled=False)
        ref_init, ref_loss = step_losses(ref, steps)
    out: dict[str, Any] = {"steps": len(ref_loss), "tolerance": tol, "reference_losses": ref_loss.tolist(), "modes": {}}
    for mode in modes:
        try:
            init, loss = step_losses(Trainer(cfg.replace(compile=mode), data, device=device), steps)
        except Exception as err:  # reported, and the other modes still run
            out["modes"][mode] = {"ok": False, "error": repr(err)}
            continue
        rel = (loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-8)
        ok = bool(torch.isfinite(loss).all() and torch.equal(init, ref_init) and rel[:10].max() <= tol and rel.max() <= 2 * tol)
        out["modes"][mode] = {"ok": ok, "same_init": torch.equal(init, ref_init), "rel_diff_max": rel.max().item(),
                              "rel_diff_max_first10": rel[:10].max().item(), "losses": loss.tolist()}
    return out


def profile_epoch(data: Dataset, cfg: TrainConfig, device: torch.device, path: Path) -> dict[str, Any]:
    """torch.profiler over the second epoch (after warm-up/capture): where an epoch's time goes."""
    trainer = Trainer(cfg.replace(epochs=2), data, device=device)
    trainer.run_epoch()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.run_epoch()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    return {"epoch_time_s": trainer.history[-1]["epoch_time_s"], "table": str(path)}


def _throughput(label: str, images_per_epoch: int, times: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    steady = times[1:] or times
    mean = sum(steady) / len(steady)
    return {
        "pipeline": label,
        "images_per_epoch": images_per_epoch,
        "epochs": len(times),
        "first_epoch_s": times[0],
        "steady_epoch_s": mean,
        "images_per_s": images_per_epoch / mean,
        "epoch_times_s": times,
        **extra,
    }


def checkpoint_cost(trainer: Trainer, repeats: int = 3) -> dict[str, Any]:
    """Seconds to write one checkpoint of `trainer` (the median of `repeats`) and its size in bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            save_checkpoint(trainer.state_dict(), path)
            times.append(time.perf_counter() - start)
        return {"checkpoint_s": sorted(times)[len(times) // 2], "checkpoint_bytes": path.stat().st_size}


def run(base: TrainConfig, modes: list[str], policies: list[str], plain_epochs: int = 2, workers: int = 4,
        out: Path | None = None, profile: Path | None = None, check_steps: int = 0, check_tol: float = 0.05) -> int:
    """With `check_steps`, first check every compile mode against the fp32 reference (`check_modes`);
    time the plain pipeline, then the engine for every compile mode x policy on `base`'s data;
    print a line each and write JSON to `out` after every pipeline. Returns 1 if a mode failed."""
    for mode in modes:  # a typo fails now, not after the plain pipeline's minutes
        base.replace(compile=mode).validate()
    for policy in policies:
        base.replace(policy=policy).validate()
    device = resolve_device(base.device)
    data = load_dataset(base.dataset, base.data_dir)
    n_train = len(make_split(data, base.val_size, base.seed, base.protocol, base.train_limit, base.test_limit).train_idx)
    results: dict[str, Any] = {"environment": environment(device), "config": base.to_dict(), "pipelines": []}

    def save() -> None:  # after every pipeline, so a crash later loses nothing measured
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, results)

    env = results["environment"]
    print(f"dyntrain bench on {env['device_name']} ({env['device']}), torch {env['torch']}; model {base.model}, "
          f"{n_train} training images, batch {base.batch_size}")
    if check_steps:
        results["check"] = check_modes(data, base, modes, check_steps, check_tol, device)
        save()
        for mode, c in results["check"]["modes"].items():
            detail = c.get("error") or f"largest relative loss difference {c['rel_diff_max']:.2e}"
            print(f"check: compile {mode} against fp32 eager over {results['check']['steps']} steps: "
                  f"{'ok' if c['ok'] else 'FAILED'} ({detail})")
    plain = bench_plain(data, base, plain_epochs, workers, device)
    results["pipelines"].append(plain)
    save()
    print(f"{plain['pipeline']:<48} {plain['images_per_s']:>12,.0f} images/s  (first epoch {plain['first_epoch_s']:.2f} s)")
    cfg = None  # the last configuration that ran: the one profiled
    for mode in modes:
        for policy in policies:
            cfg_try = base.replace(policy=policy, compile=mode, alpha=n_train if policy == "full" else n_train // 2)
            try:
                r = bench_engine(data, cfg_try, device)
            except Exception as err:  # one failing mode (say, a capture error) must not cost the others
                results["pipelines"].append({"pipeline": f"dyntrain engine, policy {policy}, compile {mode}", "error": repr(err)})
                save()
                print(f"dyntrain engine, policy {policy}, compile {mode}: FAILED: {err!r}", file=sys.stderr)
                continue
            cfg, r["speedup_vs_plain"] = cfg_try, r["images_per_s"] / plain["images_per_s"]
            results["pipelines"].append(r)
            save()
            print(f"{r['pipeline']:<48} {r['images_per_s']:>12,.0f} images/s  (first epoch {r['first_epoch_s']:.2f} s)"
                  f"  {r['speedup_vs_plain']:.2f}x plain; checkpoint {r['checkpoint_s'] * 1e3:.0f} ms "
                  f"({r['checkpoint_bytes'] / 1e6:.1f} MB) = {r['checkpoint_s'] / r['steady_epoch_s']:.0%} of an epoch")
    if profile and cfg is not None:
        results["profile"] = profile_epoch(data, cfg, device, profile)
        print(f"wrote the profile of one {cfg.policy}/{cfg.compile} epoch to {profile}")
    save()
    if out:
        print(f"wrote {out}")
    failed_check = not all(c["ok"] for c in results.get("check", {}).get("modes", {}).values())
    return 1 if failed_check or any("error" in r for r in results["pipelines"]) else 0
