"""`dyntrain bench`: epoch throughput of the paper's network, plain pipeline vs dyntrain's engine.

(a) `plain`: the pipeline the paper's authors likely wrote: a torchvision-style dataset that turns
    each image into a PIL image, ToTensor + Normalize, a shuffling DataLoader, fp32, Adam.
(b) `engine`: dyntrain's Trainer (data resident on the device, bf16 + channels_last on CUDA,
    optional torch.compile / CUDA graphs), for the `full` policy and for `dynamic` at alpha = n/2.

Throughput = training images per epoch / (train + evaluation time of that epoch), the mean over
the epochs after the first; the first epoch (compile, capture, cuDNN autotuning) is reported apart.
Not a timed test: run it by hand on the machine you care about.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dyntrain.config import TrainConfig
from dyntrain.data import Dataset, load_dataset, make_split
from dyntrain.engine import Trainer, environment, resolve_device
from dyntrain.model import PaperNet


def bench_plain(data: Dataset, cfg: TrainConfig, epochs: int, workers: int, device: torch.device) -> dict[str, Any]:
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import transforms

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
    model = PaperNet(len(data.classes)).to(device)
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
    return _throughput(label, images[-1], times, extra={"alpha": trainer.alpha, "val_acc": history[-1]["val_acc"]})


def profile_epoch(data: Dataset, cfg: TrainConfig, device: torch.device, path: Path) -> dict[str, Any]:
    """torch.profiler over the second epoch (after warm-up/capture): where an epoch's time goes."""
    from torch.profiler import ProfilerActivity, profile

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dyntrain bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--train-limit", type=int, default=None, help="training images (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--protocol", default="paper", choices=["paper", "holdout"],
                   help="paper (default): one evaluation set per epoch, as in the paper; holdout adds a test pass")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first is reported apart")
    p.add_argument("--plain-epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for the plain pipeline")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--compile", default="none", help="engine compile modes to time, comma-separated: none,default,cudagraphs")
    p.add_argument("--policies", default="full,dynamic", help="engine policies to time (dynamic uses alpha = n/2)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--profile", type=Path, help="also profile one epoch of the last engine run; write the op table here")
    args = p.parse_args(argv)

    modes = args.compile.split(",")
    for mode in modes:  # a typo fails now, not after the plain pipeline's minutes
        TrainConfig(compile=mode).validate()
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    base = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, train_limit=args.train_limit, test_limit=args.test_limit,
                       val_size=args.val_size, batch_size=args.batch_size, epochs=args.epochs, device=args.device,
                       policy="full", protocol=args.protocol, progress=False)
    n_train = len(make_split(data, base.val_size, base.seed, base.protocol, base.train_limit, base.test_limit).train_idx)
    results: dict[str, Any] = {"environment": environment(device), "config": base.to_dict(), "pipelines": []}

    def save() -> None:  # after every pipeline, so a crash later loses nothing measured
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    plain = bench_plain(data, base, args.plain_epochs, args.workers, device)
    results["pipelines"].append(plain)
    save()
    print(f"{plain['pipeline']:<48} {plain['images_per_s']:>12,.0f} images/s  (first epoch {plain['first_epoch_s']:.2f} s)")
    for mode in modes:
        for policy in args.policies.split(","):
            cfg = base.replace(policy=policy, compile=mode, alpha=n_train if policy == "full" else n_train // 2)
            try:
                r = bench_engine(data, cfg, device)
            except Exception as err:  # one failing mode (say, a capture error) must not cost the others
                results["pipelines"].append({"pipeline": f"dyntrain engine, policy {policy}, compile {mode}", "error": repr(err)})
                save()
                print(f"dyntrain engine, policy {policy}, compile {mode}: FAILED: {err!r}", file=sys.stderr)
                continue
            r["speedup_vs_plain"] = r["images_per_s"] / plain["images_per_s"]
            results["pipelines"].append(r)
            save()
            print(f"{r['pipeline']:<48} {r['images_per_s']:>12,.0f} images/s  (first epoch {r['first_epoch_s']:.2f} s)"
                  f"  {r['speedup_vs_plain']:.2f}x plain")
    if args.profile:
        results["profile"] = profile_epoch(data, cfg, device, args.profile)
        print(f"wrote the profile of one {cfg.policy}/{cfg.compile} epoch to {args.profile}")
    save()
    if args.out:
        print(f"wrote {args.out}")
    return 1 if any("error" in r for r in results["pipelines"]) else 0


if __name__ == "__main__":
    sys.exit(main())
