"""`dyntrain train | tune | report | bench`: every command-line parser, over the library's functions.

Training options are generated from `TrainConfig`'s fields (name, type, default, help, choices), so
an option exists, and reads the same, wherever a field does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyntrain.config import FIELDS, ConfigError, TrainConfig, config_diff, load_yaml


def add_config_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None,
                       defaults: dict[str, Any] | None = None) -> None:
    """One option per TrainConfig field (or per field in `only`). Without `defaults`, defaults are
    suppressed so that only the options given appear (and win over a YAML file); with them, every
    option has its default, `defaults` first."""
    title = "training options (defaults in brackets)" if only is None else "options (defaults in brackets)"
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, f.default)
        choices = f.metadata["choices"]
        help_text = f"{f.metadata['help']} [{default}]"
        value = default if defaults is not None else argparse.SUPPRESS
        if FIELDS[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=help_text)
            continue
        metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
        group.add_argument(flag, type=FIELDS[f.name], default=value, help=help_text, metavar=metavar)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in FIELDS}


# --- dyntrain train -------------------------------------------------------------------------------
def train(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="dyntrain train", description="Train a network (the paper's by default) with a subset policy.")
    parser.add_argument("--out", required=True, type=Path, help="output folder: metrics.csv, summary.json, checkpoint.pt")
    parser.add_argument("--config", type=Path, help="YAML file of options (command-line options win)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (only --epochs may be raised)")
    add_config_options(parser)
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from dyntrain.data import load_dataset  # heavy (torch): each command imports its own modules
    from dyntrain.engine import CheckpointSchedule, Trainer  # heavy (torch)
    from dyntrain.model import factory  # heavy (torch)
    from dyntrain.runs import (  # heavy (torch)
        CHECKPOINT,
        CONFIG_JSON,
        METRICS_CSV,
        SUMMARY,
        load_checkpoint,
        read_json,
        save_checkpoint,
        write_json,
        write_metrics_csv,
    )

    out: Path = args.out
    ckpt_path = out / CHECKPOINT
    given = {**(load_yaml(args.config) if args.config else {}), **config_values(args)}
    state = None
    if args.resume:
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path)
            saved_config = state["config"]
        elif (out / CONFIG_JSON).exists():  # stopped before its first checkpoint: start it again
            print(f"dyntrain train: no checkpoint yet in {out}: training again from epoch 1", file=sys.stderr)
            saved_config = read_json(out / CONFIG_JSON)
        else:
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}")
        saved = TrainConfig.from_dict(saved_config)
        cfg = TrainConfig.from_dict({**saved.to_dict(), **given})
        changed = config_diff(saved, cfg)
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"--resume: the checkpoint in {out} belongs to another configuration ({detail}); only epochs may change")
    else:
        cfg = TrainConfig.from_dict(given)
        if ckpt_path.exists() or (out / METRICS_CSV).exists():
            raise ConfigError(f"--out {out} already holds a run: pass --resume to continue it, or choose another folder")
    cfg.validate()
    factory(cfg.model, cfg.batchnorm)  # the model's module imports, before the data is loaded

    data = load_dataset(cfg.dataset, cfg.data_dir, progress=cfg.progress)
    trainer = Trainer(cfg, data)
    if state is not None:
        trainer.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)  # not finished until written again, last
    write_json(out / CONFIG_JSON, cfg.to_dict())

    bar = tqdm(total=cfg.epochs, initial=trainer.epoch, unit="epoch", disable=not cfg.progress, dynamic_ncols=True)
    bar.set_description(f"{cfg.policy} a={trainer.alpha}")
    for m, state in trainer.epochs(CheckpointSchedule.of(cfg)):
        if state is not None:
            save_checkpoint(state, ckpt_path)
        write_metrics_csv(trainer.history, out / METRICS_CSV)
        bar.update(1)
        bar.set_postfix(val=f"{m['val_acc']:.4f}", best=f"{m['best_val_acc']:.4f}", test=f"{m['test_acc']:.4f}",
                        resample=m["resample"], beta=f"{m['beta_n']:.3f}", s=f"{m['epoch_time_s']:.1f}")
    bar.close()
    summary = trainer.summary()
    write_json(out / SUMMARY, summary)
    best = summary["best"]
    print(f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']} (test {best['test_acc']:.4f}); "
          f"{summary['epochs_run']} epochs, {summary['total_time_s']:.1f} s; wrote {out}")
    return 0


# --- dyntrain tune --------------------------------------------------------------------------------
def tune(argv: Sequence[str]) -> int:
    from dyntrain import spaces
    from dyntrain import tune as dtune  # heavy (torch, and Ray when it runs)

    p = argparse.ArgumentParser(prog="dyntrain tune", allow_abbrev=False, description=(
        "Ray Tune search over dyntrain's parameters. Training options given here fix that value for every trial."))
    p.add_argument("--space", default="paper-grid", help=f"{' | '.join(spaces.SPACES)} | FILE.yaml [paper-grid]")
    p.add_argument("--seeds", type=int, help="repeat every point with N seeds (seed, seed+1, ...) "
                   f"[{', '.join(f'{n} for {s}' for s, n in spaces.DEFAULT_SEEDS.items())}, else 1]")
    p.add_argument("--search", choices=("grid", "optuna"), default="grid", help="[grid]")
    p.add_argument("--num-samples", type=int, help="grid: repeats of the grid (fresh draws of sampled values) [1]; optuna: trials [20]")
    p.add_argument("--metric", default="best_val_acc", help="metric to optimise, e.g. val_acc, best_val_acc_per_gpu_h [best_val_acc]")
    p.add_argument("--mode", choices=("max", "min"), help="[min for losses and times, else max]")
    p.add_argument("--max-concurrent", type=int, default=4, help="optuna: trials in flight at once [4]")
    p.add_argument("--search-seed", type=int, default=0, help="optuna: sampler seed [0]")
    p.add_argument("--scheduler", choices=("none", "asha"), default="none", help="asha: stop hopeless trials early [none]")
    p.add_argument("--grace-period", type=int, default=10, help="asha: epochs every trial runs before it may be stopped [10]")
    p.add_argument("--gpus-per-trial", type=float, help="fractions allowed; 0 trains on the CPU [1 if the cluster has GPUs, else 0]")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="[1]")
    p.add_argument("--storage", default="results/ray", help="a folder, a shared mount or a URI such as s3://bucket/path [results/ray]")
    p.add_argument("--name", help="experiment name (a folder under --storage) [the space's name]")
    p.add_argument("--resume", action="store_true", help="continue the experiment --storage/--name, errored trials too")
    p.add_argument("--max-failures", type=int, default=0, help="restarts of a failed trial from its last checkpoint [0]")
    p.add_argument("--address", help="join a running Ray cluster: auto, or HOST:PORT")
    p.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction, default=True,
                   help="start a trial in a finished trial's warm process; --no-reuse-actors: a fresh process "
                   "where Ray placed the trial's resources [reuse]")
    p.add_argument("--dashboard", action="store_true", help="start the local Ray with its dashboard on 127.0.0.1:8265")
    p.add_argument("--tracker", choices=dtune.TRACKERS, help="also log every trial to this tracker (pip install 'dyntrain[mlflow]')")
    p.add_argument("--tracking-uri", help="mlflow: tracking store or server [sqlite mlflow.db in the experiment folder]")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2, 3), default=0, help="Ray Tune's own console: 0 none (one "
                   "progress line over the search, off with --no-progress), 1 its status table, 2 also each trial's "
                   "config and result boxes [0]")
    p.add_argument("--live-report-s", type=float, default=10.0, help="rewrite report.html in the experiment folder at most "
                   "this often while trials run; 0: no page [10]")
    add_config_options(p)
    args = p.parse_args(argv)

    overrides = config_values(args)
    progress = overrides.pop("progress", True)  # --no-progress: no line over the search (trials never draw bars)
    kwargs = {k: v for k, v in vars(args).items() if k not in overrides and k not in ("space", "progress")}
    kwargs["live_report_s"] = kwargs["live_report_s"] or None
    results = dtune.search(args.space, overrides=overrides, progress=progress, **kwargs)
    if dtune.unfinished_trials(results.experiment_path):
        print("dyntrain tune: interrupted with trials unfinished; run the same command with --resume to continue",
              file=sys.stderr)
        return 130
    for r in results.errors:
        print(f"dyntrain tune: a trial failed: {r}", file=sys.stderr)
    line = dtune.best_summary(results, *dtune.objective(args.metric, args.mode))
    if line:
        print(line)
    print(f"results: {results.experiment_path}\nTensorBoard: tensorboard --logdir {results.experiment_path}")
    return 1 if results.errors else 0


# --- dyntrain report ------------------------------------------------------------------------------
FORMATS = ("md", "csv", "tex", "html")


def report(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="dyntrain report", description="Tables (PAPER.md Tables 2-5, time to "
                                     "accuracy), figures and an interactive page from Ray Tune experiments and "
                                     "`dyntrain train` folders.")
    parser.add_argument("paths", nargs="+", metavar="EXPERIMENT_DIR",
                        help="Ray Tune experiment directories (or URIs), `dyntrain train` output folders, or folders holding them")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    parser.add_argument("--format", default="md,csv,tex,html", help=f"comma-separated: {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--no-figures", action="store_true", help="write tables only")
    parser.add_argument("--elitism", action="store_true", help="also plot running-maximum curves (Fig. 11)")
    parser.add_argument("--metric", default="test_acc_at_best_val", choices=["test_acc_at_best_val", "best_val_acc"],
                        help="accuracy of the policy table: test accuracy at the best validation epoch "
                             "(default; equals best_val_acc under --protocol paper) or best validation accuracy")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    found = write_report(args.paths, args.out, formats, not args.no_figures, args.elitism, args.metric)
    from dyntrain import tables as tb  # heavy (pandas)

    n_done = len(found["runs"]) if "runs" in found else 0
    print(f"{n_done} finished run(s) in the tables; report written to {args.out}/")
    if "policies" in found:
        print(tb.to_markdown(tb.show_policies(found["policies"])))
    if "unfinished" in found:
        u = found["unfinished"]
        print(f"{len(u)} run(s) not finished (in progress, interrupted, pending or failed), left out of the "
              f"tables (see {args.out}/unfinished.*):", file=sys.stderr)
        for run, row in u.iterrows():
            epochs = "—" if tb.missing(row.epochs_done) else f"{row.epochs_done:.0f}"
            print(f"  {run}: {row.status}, {epochs}/{row.epochs} epochs", file=sys.stderr)
    if not n_done:
        print("no finished runs yet", file=sys.stderr)
    return 0


def write_report(paths, out, formats=("md", "csv", "tex"), with_figures: bool = True, elitism: bool = False,
                 metric: str = "test_acc_at_best_val") -> dict:
    """Load `paths`, write every table in `formats` (with md, also report.md holding all; with html,
    the interactive report.html) and the figures under `out`; return the tables by name."""
    from dyntrain import claims, figures, page  # heavy (matplotlib, plotly)
    from dyntrain import tables as tb  # heavy (pandas)

    bad = sorted(set(formats) - set(FORMATS))
    if bad or not formats:
        raise tb.ReportError(f"format {','.join(formats)!r}: choose from {', '.join(FORMATS)}")
    df = tb.load(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = tb.tables(df, metric)
    md = []
    for name, (table, shown) in found.items():
        if shown is None:
            shown = table
        else:
            md += [f"## {name}", "", tb.to_markdown(shown), ""]
        tb.write_table(table, shown, out / name, [f for f in formats if f in ("md", "csv", "tex")])
    if not tb.finished(df).empty:
        paper = claims.paper_table(df, metric)
        if not paper.empty:
            found["paper"] = (paper, claims.show_paper(paper))
            tb.write_table(paper, found["paper"][1], out / "paper", [f for f in formats if f in ("md", "csv", "tex")])
            md += ["## paper", "", tb.to_markdown(found["paper"][1]), ""]
        said = [f"- {line}" for line in claims.headline(found["policies"][0])]
        md[:0] = ["## headline", "", *said, ""]
        if "md" in formats:
            (out / "headline.md").write_text("\n".join(said) + "\n")
    if with_figures and not tb.finished(df).empty:
        md += [f"![{p.stem}]({p.name})" for p in figures.write(df, out, elitism) if p.suffix == ".png"]
    if "md" in formats:
        (out / "report.md").write_text("\n".join(md) + "\n")
    if "html" in formats:
        page.write_html(df, out / "report.html")
    return {name: table for name, (table, _) in found.items()}


# --- dyntrain bench -------------------------------------------------------------------------------
def bench(argv: Sequence[str]) -> int:
    from dyntrain import bench as bn  # heavy (torch)

    p = argparse.ArgumentParser(prog="dyntrain bench", description=bn.__doc__.split("\n\n")[0] + " " + bn.MEASURED)
    shared = ("model", "dataset", "data_dir", "train_limit", "test_limit", "val_size", "protocol", "batch_size", "device")
    add_config_options(p, only=shared, defaults=bn.DEFAULTS)
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first is reported apart [3]")
    p.add_argument("--plain-epochs", type=int, default=2, help="epochs of the plain pipeline [2]")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for the plain pipeline [4]")
    p.add_argument("--compile", default="none", help="engine compile modes to time, comma-separated: none,default,cudagraphs [none]")
    p.add_argument("--policies", default="full,dynamic", help="engine policies to time (dynamic uses alpha = n/2) [full,dynamic]")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--profile", type=Path, help="also profile one epoch of the last engine run; write the op table here")
    p.add_argument("--check-steps", type=int, default=0, help="first check every --compile mode against an fp32 eager "
                   "reference over this many optimiser steps; 0: no check [0]")
    p.add_argument("--check-tol", type=float, default=0.05, help="relative loss tolerance of the check over its first "
                   "10 steps (twice it over all) [0.05]")
    args = p.parse_args(argv)
    # --epochs and --compile are the bench's own (epochs per pipeline, a list of modes), not the fields.
    base = TrainConfig(**{k: getattr(args, k) for k in shared}, epochs=args.epochs, policy="full", progress=False)
    return bn.run(base, modes=args.compile.split(","), policies=args.policies.split(","), plain_epochs=args.plain_epochs,
                  workers=args.workers, out=args.out, profile=args.profile, check_steps=args.check_steps,
                  check_tol=args.check_tol)


# --- dispatch -------------------------------------------------------------------------------------
COMMANDS = {
    "train": (train, "train the network once (dyntrain train --help)"),
    "tune": (tune, "Ray Tune search over alpha/beta/delta/gamma (dyntrain tune --help)"),
    "report": (report, "tables, figures and an HTML page from runs and experiments (dyntrain report --help)"),
    "bench": (bench, "throughput: plain DataLoader pipeline vs dyntrain's engine (dyntrain bench --help)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {k:<8}{help}" for k, (_, help) in COMMANDS.items())
        print(f"usage: dyntrain COMMAND [options]\n\ncommands:\n{lines}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    from dyntrain.data import DataError  # heavy (numpy, PIL): not for `dyntrain --help`
    from dyntrain.runs import CheckpointError, ReportError  # heavy (torch, pandas)

    try:
        return COMMANDS[command][0](rest)
    except (ConfigError, DataError, ReportError, CheckpointError) as err:
        print(f"dyntrain {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
