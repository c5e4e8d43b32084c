"""`dyntrain train | tune | report | bench`."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from dyntrain.config import ConfigError, TrainConfig, config_diff, load_yaml

HELP = {
    "policy": "subset policy: full | static | dynamic (base design) | variant (Fig. 4-b) | random",
    "alpha": "images per epoch, |A|",
    "beta": "share of A replaced at a resample (beta_0 for the variant)",
    "delta": "validation-accuracy threshold that triggers a resample",
    "gamma": "variant: beta_n = gamma**n * beta_0",
    "dataset": "cifar10 | cifar100 | folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*)",
    "data_dir": "where datasets are downloaded and decoded images cached",
    "val_size": "validation images held out of the training set (protocol holdout)",
    "protocol": "holdout: a held-out split drives resampling; paper: the test set does, as in the paper",
    "train_limit": "use only N training images (stratified): for scaled-down runs",
    "test_limit": "use only N test images (stratified)",
    "time_budget_s": "stop after the epoch in which this much training time was spent",
    "image_budget": "stop after the epoch in which this many images were trained on",
    "compile": "none | default (torch.compile) | cudagraphs (CUDA only)",
    "augment": "random flip and translation (pad 4, crop 32) on the device",
    "batchnorm": "add BatchNorm after every convolution (not in the paper)",
    "progress": "show a progress bar",
}


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults are suppressed so only given options appear."""
    defaults = TrainConfig()
    group = parser.add_argument_group("training options (defaults in brackets)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{HELP.get(f.name, f.name.replace('_', ' '))} [{default}]"
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        kind = {"train_limit": int, "test_limit": int, "image_budget": int, "time_budget_s": float}.get(f.name, type(default))
        group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


# --- dyntrain train -------------------------------------------------------------------------------
CHECKPOINT = "checkpoint.pt"


def train(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="dyntrain train", description="Train the paper's network with a subset policy.")
    parser.add_argument("--out", required=True, type=Path, help="output folder: metrics.csv, summary.json, checkpoint.pt")
    parser.add_argument("--config", type=Path, help="YAML file of options (command-line options win)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (only --epochs may be raised)")
    add_train_options(parser)
    args = parser.parse_args(argv)

    from dyntrain.data import load_dataset
    from dyntrain.engine import Trainer, load_checkpoint, save_checkpoint

    out: Path = args.out
    ckpt_path = out / CHECKPOINT
    given = {**(load_yaml(args.config) if args.config else {}), **train_overrides(args)}
    state = None
    if args.resume:
        if not ckpt_path.exists():
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        cfg = TrainConfig.from_dict({**saved.to_dict(), **given})
        changed = config_diff(saved, cfg)
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"--resume: the checkpoint in {out} belongs to another configuration ({detail}); only epochs may change")
    else:
        cfg = TrainConfig.from_dict(given)
        if ckpt_path.exists() or (out / "metrics.csv").exists():
            raise ConfigError(f"--out {out} already holds a run: pass --resume to continue it, or choose another folder")
    cfg.validate()

    data = load_dataset(cfg.dataset, cfg.data_dir, progress=cfg.progress)
    trainer = Trainer(cfg, data)
    if state is not None:
        trainer.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # not finished until written again, last
    _write_json(out / "config.json", cfg.to_dict())

    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, initial=trainer.epoch, unit="epoch", disable=not cfg.progress, dynamic_ncols=True)
    bar.set_description(f"{cfg.policy} a={trainer.alpha}")
    for m in trainer:
        save_checkpoint(trainer.state_dict(), ckpt_path)
        write_metrics_csv(trainer.history, out / "metrics.csv")
        bar.update(1)
        bar.set_postfix(val=f"{m['val_acc']:.4f}", best=f"{m['best_val_acc']:.4f}", test=f"{m['test_acc']:.4f}",
                        resample=m["resample"], beta=f"{m['beta']:.3f}", s=f"{m['epoch_time_s']:.1f}")
    bar.close()
    summary = trainer.summary()
    _write_json(out / "summary.json", summary)
    best = summary["best"]
    print(f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']} (test {best['test_acc']:.4f}); "
          f"{summary['epochs_run']} epochs, {summary['total_time_s']:.1f} s; wrote {out}")
    return 0


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    from dyntrain.engine import METRICS

    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# --- dispatch -------------------------------------------------------------------------------------
COMMANDS = {
    "train": "train the network once (dyntrain train --help)",
    "tune": "Ray Tune search over alpha/beta/delta/gamma (dyntrain tune --help)",
    "report": "tables and figures from runs and experiments (dyntrain report --help)",
    "bench": "throughput: plain DataLoader pipeline vs dyntrain's engine (dyntrain bench --help)",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items())
        print(f"usage: dyntrain COMMAND [options]\n\ncommands:\n{lines}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    from dyntrain.data import DataError

    try:
        if command == "train":
            return train(rest)
        if command == "tune":
            from dyntrain import tune

            return tune.main(rest)
        if command == "report":
            from dyntrain import report

            return report.main(rest)
        from dyntrain import bench

        return bench.main(rest)
    except (ConfigError, DataError) as err:
        print(f"dyntrain {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
