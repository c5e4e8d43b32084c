"""Experiment results -> pandas -> the paper's tables (PAPER.md Tables 2-5) and figures (Figs. 8-13).

`load` turns any mix of `dyntrain train` output folders and Ray Tune experiment directories (also
restored ones) into one tidy frame, one row per run x epoch; every table is a small pure function of
that frame. Only finished runs enter tables and figures; runs in progress, pending or failed are
listed apart (`unfinished`). Accuracies are fractions in the frame and percent in the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd

from dyntrain.config import POLICIES, TrainConfig, field_names

METRICS = ["train_loss", "train_acc", "val_acc", "test_acc", "best_val_acc", "test_acc_at_best_val",
           "subset_size", "images_seen", "resample", "beta_n", "epoch_time_s", "wall_time_s", "stopped"]
CONFIG = list(TrainConfig().to_dict())
# What makes two runs the same arm of a comparison; seeds are its replicates.
SETTING = [k for k in CONFIG if k not in ("seed", "data_dir", "device", "compile", "progress")]
METHOD = ("policy", "alpha", "beta", "delta", "gamma")
RELEVANT = {"full": (), "static": ("alpha",), "random": ("alpha",),
            "dynamic": ("alpha", "beta", "delta"), "variant": ("alpha", "beta", "delta", "gamma")}
# Runs that differ only in these are compared against the same full-data run (Table 4 pairs a
# 200-epoch full run with an 80-epoch variant run).
CONTEXT = [k for k in SETTING if k not in METHOD + ("epochs", "time_budget_s", "image_budget")]
GREEK = {"alpha": "α", "beta": "β", "delta": "δ", "gamma": "γ"}
# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30; beyond, a Cornish-Fisher expansion.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


class ReportError(ValueError):
    """An experiment directory is missing, empty or unreadable, or a table cannot be formed."""


# ---------------------------------------------------------------- loading

def load(paths) -> pd.DataFrame:
    """One row per run x epoch from `dyntrain train` folders and Ray Tune experiment directories.
    A directory holding neither is searched below for them. Columns: run, source, status ("finished";
    "in_progress": running or interrupted, a train folder without summary.json or a Ray trial not
    TERMINATED with epochs; "pending": a Ray trial without any; "error"), early_stopped (finished by a
    scheduler before its epochs), n_train, every TrainConfig field, epoch, the METRICS, and the labels
    `setting` (one arm: policy and parameters) and `grid` (its α x β grid)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ReportError("no experiment directory given")
    found = {d.resolve(): (kind, d) for p in paths for kind, d in _discover(Path(p))}  # each run once
    df = pd.concat([_read(kind, d) for kind, d in found.values()], ignore_index=True)
    ref = df[df.policy == "full"].groupby(_key(df, CONTEXT))["subset_size"].max()
    missing = df.n_train.isna()  # Ray metrics may omit n_train: a full-data run's subset is the pool
    df.loc[missing, "n_train"] = _key(df[missing], CONTEXT).map(ref)
    df["setting"], df["grid"] = _labels(df)
    return df


def _discover(root: Path) -> list[tuple[str, Path]]:
    if not root.is_dir():
        raise ReportError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if any(f.startswith("experiment_state-") and f.endswith(".json") for f in filenames):
            found.append(("tune", Path(dirpath)))
        elif "metrics.csv" in filenames or "config.json" in filenames:
            found.append(("train", Path(dirpath)))
        else:
            dirnames.sort()
            continue
        dirnames.clear()  # a run's own folders (Ray trials, checkpoints) are not further runs
    if found:
        return found
    if not any(root.iterdir()):
        raise ReportError(f"{root}: empty directory; expected a Ray Tune experiment directory "
                          "(experiment_state-*.json) or a `dyntrain train` output folder (metrics.csv)")
    hint = " (this looks like one Ray trial: pass its experiment directory, the parent)" \
        if (root / "params.json").exists() else ""
    raise ReportError(f"{root}: no experiment found{hint}; expected a Ray Tune experiment directory "
                      "(experiment_state-*.json) or a `dyntrain train` output folder (metrics.csv)")


def _read(kind: str, path: Path) -> pd.DataFrame:
    try:
        return _read_tune(path) if kind == "tune" else _read_train(path)
    except ReportError:
        raise
    except Exception as e:  # a truncated JSON, a malformed CSV, a Ray state it cannot parse
        raise ReportError(f"{path}: cannot read {'Ray Tune experiment' if kind == 'tune' else 'run'}: "
                          f"{type(e).__name__}: {e}") from e


def _read_train(folder: Path) -> pd.DataFrame:
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else None
    if summary is not None:
        config = summary["config"]
    elif (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
    else:
        raise ReportError(f"{folder}: metrics.csv without config.json or summary.json")
    records = pd.read_csv(folder / "metrics.csv", keep_default_na=False, na_values=[""]) \
        if (folder / "metrics.csv").exists() else pd.DataFrame()
    if len(records) and not {"epoch", "val_acc", "wall_time_s"} <= set(records.columns):
        raise ReportError(f"{folder / 'metrics.csv'}: not a dyntrain metrics file (columns: {', '.join(records.columns)})")
    status = "finished" if summary is not None else "in_progress"
    n_train = summary.get("n_train") if summary else None
    return _tidy(records, str(folder), str(folder), config, status, False, n_train)


def _read_tune(exp: Path) -> pd.DataFrame:
    from ray.tune import ExperimentAnalysis  # reads the newest experiment_state-*.json; needs no cluster
    from ray.tune.search.repeater import TRIAL_INDEX

    ray_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = ray_log.level
    ray_log.setLevel(logging.ERROR)  # it warns of trials without results: `unfinished` lists them
    try:
        analysis = ExperimentAnalysis(str(exp.resolve()))  # pyarrow reads a relative path as a URI
    finally:
        ray_log.setLevel(level)
    frames = []
    for trial in analysis.trials:
        records = _read_results(Path(trial.path))
        # Ray saves a RUNNING trial as PENDING: one with epochs is under way (or was, if interrupted).
        status = {"TERMINATED": "finished", "ERROR": "error"}.get(trial.status, "in_progress" if len(records) else "pending")
        last = records.iloc[-1] if len(records) else {}
        # A scheduler (ASHA) stop leaves no reason of the run's own on the last epoch.
        early = status == "finished" and not (isinstance(last.get("stopped"), str) and last.get("stopped"))
        n_train = records["n_train"].iloc[-1] if "n_train" in records and len(records) else None
        config = dict(trial.config)
        # A Repeater (repeated points of a search) numbers the repeats; dyntrain.tune adds it to the seed.
        config["seed"] = config.get("seed", TrainConfig.seed) + config.pop(TRIAL_INDEX, 0)
        frames.append(_tidy(records, f"{exp.name}/{trial.trial_id}", str(exp), config, status, early, n_train))
    if not frames:
        raise ReportError(f"{exp}: Ray Tune experiment without trials")
    return pd.concat(frames, ignore_index=True)


def _read_results(trial_dir: Path) -> pd.DataFrame:
    """A trial's reports from result.json (one JSON object a line), else progress.csv."""
    if (trial_dir / "result.json").exists():
        rows = []
        for line in (trial_dir / "result.json").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # skip the line being written when the trial was read
        records = pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, dict)} for r in rows])
    elif (trial_dir / "progress.csv").exists():
        records = pd.read_csv(trial_dir / "progress.csv", keep_default_na=False, na_values=[""])
    else:
        return pd.DataFrame()
    if len(records) and "epoch" not in records:
        records["epoch"] = records["training_iteration"]
    if len(records) and "wall_time_s" not in records:
        records["wall_time_s"] = records["time_total_s"]
    return records


def _tidy(records, run, source, config, status, early, n_train) -> pd.DataFrame:
    records = records.rename(columns={"beta": "beta_n"})
    if len(records):  # a trial restarted from scratch reports its epochs again: the last report counts
        records = records.drop_duplicates("epoch", keep="last").sort_values("epoch")
    else:
        records = pd.DataFrame({"epoch": [float("nan")]})  # keeps a run with no epoch yet in view
        status = "error" if status == "finished" else status  # finished without a single epoch
    out = pd.DataFrame({"run": run, "source": source, "status": status, "early_stopped": early,
                        "n_train": float("nan") if n_train is None else float(n_train)}, index=records.index)
    cfg = TrainConfig().to_dict() | {k: v for k, v in config.items() if k in field_names()}
    for k in CONFIG:
        out[k] = [cfg[k]] * len(out)
    out["epoch"] = records["epoch"]
    for k in METRICS:
        out[k] = records[k] if k in records else float("nan")
    out["stopped"] = ["" if pd.isna(v) else str(v) for v in out["stopped"]]
    return out.reset_index(drop=True)


def _key(df: pd.DataFrame, keys) -> pd.Series:
    return pd.Series(["|".join(map(str, row)) for row in df[list(keys)].itertuples(index=False)], index=df.index)


def _labels(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Short names for arms: the policy, its own parameters and whatever else varies between runs."""
    runs_ = df.drop_duplicates("run")
    masked = runs_[SETTING].astype(object).copy()
    for k in ("alpha", "beta", "delta", "gamma"):
        masked.loc[~runs_.policy.map(lambda p: k in RELEVANT[p]), k] = None
    # A Greek parameter a policy does not use is masked out; any other field varies even between set and unset.
    varying = [k for k in SETTING if k != "policy" and (masked[k].dropna() if k in GREEK else masked[k]).map(str).nunique() > 1]

    def name(row, with_axes):
        own = [k for k in RELEVANT[row.policy] if k in varying or (with_axes and k in ("alpha", "beta"))]
        if not with_axes:  # a grid's label: what is fixed across its α x β cells
            own = [k for k in own if k not in ("alpha", "beta")]
        parts = [row.policy] + [f"{GREEK[k]}={row[k]:g}" for k in own]
        for k in varying:
            if k not in GREEK and not (k != "augment" and pd.isna(row[k])):
                parts += (["+aug"] if row[k] else []) if k == "augment" else [f"{k}={row[k]}"]
        return " ".join(parts)

    setting = runs_.apply(lambda r: name(r, True), axis=1)
    grid = runs_.apply(lambda r: name(r, False) if r.policy in ("dynamic", "variant") else None, axis=1)
    return df.run.map(dict(zip(runs_.run, setting))), df.run.map(dict(zip(runs_.run, grid)))


# ---------------------------------------------------------------- tables

def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.status == "finished"]


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its configuration and labels, epochs done, best validation accuracy (max over
    epochs), test accuracy at that epoch, time and images seen at the last epoch, share of the pool
    trained on per epoch (subset_size / n_train)."""
    df = df.sort_values(["run", "epoch"])
    g = df.groupby("run", sort=False)
    last = g.tail(1).set_index("run")
    out = last[["source", "status", "early_stopped", "setting", "grid", *CONFIG, "n_train"]].copy()
    out["epochs_done"] = g["epoch"].max()
    out["best_val_acc"] = g["val_acc"].max()
    out["test_acc_at_best_val"] = last["test_acc_at_best_val"]
    out["last_val_acc"] = last["val_acc"]
    out["time_s"] = last["wall_time_s"]
    out["images_seen"] = last["images_seen"]
    out["share"] = g["subset_size"].mean() / out["n_train"]
    out["stopped"] = last["stopped"]
    return out


def unfinished(df: pd.DataFrame) -> pd.DataFrame:
    """Runs in progress, pending, interrupted or failed: kept out of every table and figure."""
    r = runs(df[df.status != "finished"])
    return r[["source", "status", "setting", "seed", "epochs_done", "epochs", "last_val_acc", "time_s"]]


def grids(df: pd.DataFrame) -> list[str]:
    """Labels of the α x β grids among the finished runs (one per dynamic/variant setting of δ, γ, …)."""
    return sorted(finished(df).grid.dropna().unique())


def grid_table(df: pd.DataFrame, value: str = "best_val_acc", grid: str | None = None) -> pd.DataFrame:
    """Table 2 (value="best_val_acc" or "test_acc_at_best_val", in %) and Table 3 (value="time_s") form:
    rows α, columns β, over finished dynamic/variant runs. Columns are (stat, β) with stat in mean, std
    (over seeds) and n, so `grid_table(df)["mean"]` is the α x β grid of means."""
    labels = grids(df)
    if grid is None and len(labels) > 1:
        raise ReportError(f"runs form several α x β grids ({'; '.join(labels)}): pick one with grid=")
    r = runs(finished(df))
    r = r[r.grid == (grid or (labels[0] if labels else None))]
    if r.empty:
        raise ReportError(f"no finished dynamic or variant runs for grid {grid!r}")
    values = r[value] * (100 if "acc" in value else 1)
    g = values.groupby([r.alpha, r.beta])
    t = pd.concat({"mean": g.mean().unstack(), "std": g.std().unstack(), "n": g.size().unstack(fill_value=0)},
                  axis=1, names=["stat"])
    return t.sort_index(ascending=False)


def time_table(df: pd.DataFrame, grid: str | None = None) -> pd.DataFrame:
    """Table 3 form: training time (s, wall time at the last epoch) on the α x β grid."""
    return grid_table(df, "time_s", grid)


def t975(df: int) -> float:
    """Two-sided 95% Student t quantile with `df` degrees of freedom."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def policy_table(df: pd.DataFrame, metric: str = "test_acc_at_best_val") -> pd.DataFrame:
    """Tables 4/5 form: one row per arm (policy, parameters, ± augmentation) over finished runs.
    acc is `metric` in % (mean, std over seeds and the 95% CI half-width, Student t); time_saved is
    1 - time/time_full and acc_lost is acc_full - acc (points), against the full-data arm with the
    same data, augmentation and optimiser and no budget (the one with most epochs)."""
    r = runs(finished(df))
    if r.empty:
        raise ReportError("no finished runs")
    r = r.assign(acc=r[metric] * 100, val_acc=r.best_val_acc * 100, context=_key(r, CONTEXT))
    g = r.groupby("setting")
    t = g[["policy", "augment", "alpha", "beta", "delta", "gamma", "epochs", "context"]].first()
    t["n"], t["seeds"] = g.size(), g["seed"].nunique()  # fewer seeds than runs: repeats, not independent
    t["share"] = g["share"].mean()
    t["acc"], t["acc_std"] = g["acc"].mean(), g["acc"].std()
    t["acc_ci95"] = [t975(n - 1) * s / math.sqrt(n) if n > 1 else math.nan for n, s in zip(t.n, t.acc_std)]
    t["val_acc"] = g["val_acc"].mean()
    t["time_s"], t["images_seen"] = g["time_s"].mean(), g["images_seen"].mean()
    t["early_stopped"] = g["early_stopped"].sum()
    ref = _references(r)
    full = t.context.map(ref)
    t["time_saved"] = 1 - t.time_s / full.map(t.time_s)
    t["acc_lost"] = full.map(t.acc) - t.acc
    for k in ("alpha", "beta", "delta", "gamma"):
        t[k] = t[k].astype(object).where(t.policy.map(lambda p: k in RELEVANT[p]), None)
    return t.loc[_arms(r)].drop(columns="context")


def _arms(r: pd.DataFrame) -> list[str]:
    """Settings in table order: without augmentation first, then by policy as PAPER.md lists them, α, β."""
    first = r.drop_duplicates("setting").set_index("setting")
    return sorted(first.index, key=lambda s: (bool(first.augment[s]), POLICIES.index(first.policy[s]),
                                              first.alpha[s] if first.policy[s] != "full" else 0,
                                              first.beta[s] if "beta" in RELEVANT[first.policy[s]] else 0, s))


def _references(r: pd.DataFrame) -> dict[str, str]:
    """context -> setting of its full-data reference: unbudgeted, most epochs."""
    full = r[(r.policy == "full") & r.time_budget_s.isna() & r.image_budget.isna()]
    full = full.sort_values("epochs", ascending=False).drop_duplicates("context")
    return dict(zip(full.context, full.setting))


def time_to_accuracy(df: pd.DataFrame, fractions=(0.95, 0.99), metric: str = "val_acc") -> pd.DataFrame:
    """For each arm with a full-data reference: wall time, images seen and epoch at which a run's
    per-epoch `metric` first reaches fraction f of the full arm's best (mean over its seeds of the max
    over epochs). Means over the runs that reach it; reached_P counts them out of n."""
    fin = finished(df)
    r = runs(fin).assign(context=lambda x: _key(x, CONTEXT))
    ref = _references(r)
    rows = []
    for setting in _arms(r):
        arm = r[r.setting == setting]
        if arm.context.iloc[0] not in ref:
            continue
        full_runs = r[r.setting == ref[arm.context.iloc[0]]].index
        best = fin[fin.run.isin(full_runs)].groupby("run")[metric].max().mean()
        row = {"setting": setting, "policy": arm.policy.iloc[0], "n": len(arm)}
        for f in fractions:
            p = f"{f * 100:g}"
            ep = fin[fin.run.isin(arm.index)]
            hit = ep[ep[metric] >= f * best].sort_values("epoch").drop_duplicates("run")
            row |= {f"target_{p}": 100 * f * best, f"reached_{p}": len(hit), f"time_s_{p}": hit.wall_time_s.mean(),
                    f"images_{p}": hit.images_seen.mean(), f"epoch_{p}": hit.epoch.mean()}
        rows.append(row)
    return pd.DataFrame(rows).set_index("setting") if rows else pd.DataFrame()


# ---------------------------------------------------------------- figures

def _figure(ncols=1):
    from matplotlib.figure import Figure  # no pyplot: no global state, and savefig picks Agg/SVG itself

    fig = Figure(figsize=(6.5 * ncols, 4.5), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _band(ax, x, runs_by_x, label):
    mean, std = runs_by_x.mean(axis=1), runs_by_x.std(axis=1).fillna(0)
    (line,) = ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(df: pd.DataFrame, elitism: bool = False):
    """Figs. 8-13: validation and training accuracy per epoch for each arm, mean ± std over seeds;
    with elitism each run's curve is its running maximum (Fig. 11)."""
    fig, (val_ax, train_ax) = _figure(2)
    fin = finished(df)
    for setting in _arms(fin.drop_duplicates("run")):
        arm = fin[fin.setting == setting]
        for ax, col in ((val_ax, "val_acc"), (train_ax, "train_acc")):
            wide = arm.pivot(index="epoch", columns="run", values=col) * 100
            _band(ax, wide.index, wide.cummax() if elitism else wide, setting)
    for ax, what in ((val_ax, "validation"), (train_ax, "training")):
        ax.set(xlabel="epoch", ylabel=f"{what} accuracy (%)", title=what + (" (elitism)" if elitism else ""))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize="small" if fin.setting.nunique() < 8 else "xx-small")
    return fig


def plot_time(df: pd.DataFrame):
    """Validation accuracy against wall time, mean ± std over seeds at each epoch."""
    fig, (ax,) = _figure()
    fin = finished(df)
    for setting in _arms(fin.drop_duplicates("run")):
        arm = fin[fin.setting == setting]
        acc = arm.pivot(index="epoch", columns="run", values="val_acc") * 100
        t = arm.pivot(index="epoch", columns="run", values="wall_time_s").mean(axis=1)
        _band(ax, t, acc, setting)
    ax.set(xlabel="wall time (s)", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_heatmap(table: pd.DataFrame, title: str = ""):
    """An α x β grid_table's means as a heat map, each cell annotated."""
    fig, (ax,) = _figure()
    mean = table["mean"]
    im = ax.imshow(mean.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(mean.shape[1]), [f"{b:g}" for b in mean.columns])
    ax.set_yticks(range(mean.shape[0]), [f"{a:g}" for a in mean.index])
    ax.set(xlabel="β", ylabel="α", title=title)
    for i, row in enumerate(mean.to_numpy(dtype=float)):
        for j, v in enumerate(row):
            if v == v:  # dark text on the light (high) end of viridis
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="small",
                        color="k" if im.norm(v) > 0.6 else "w")
    fig.colorbar(im, ax=ax)
    return fig


def figures(df: pd.DataFrame, out, elitism: bool = False, formats=("png", "svg")) -> list[Path]:
    """Write the curves (and with `elitism` also their running-maximum form), accuracy against wall
    time and one heat map per α x β grid; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = {"curves": plot_curves(df), "accuracy_vs_time": plot_time(df)}
    if elitism:
        figs["curves_elitism"] = plot_curves(df, elitism=True)
    labels = grids(df)
    for label in labels:
        title = f"best validation accuracy (%), {label}"
        figs[_slug("heatmap", label, labels)] = plot_heatmap(grid_table(df, grid=label), title)
    paths = [out / f"{name}.{fmt}" for name in figs for fmt in formats]
    for p in paths:
        figs[p.stem].savefig(p, dpi=120)
    return paths


# ---------------------------------------------------------------- writing

def _slug(stem: str, label: str, all_labels) -> str:
    if len(all_labels) <= 1:
        return stem
    for k, g in GREEK.items():
        label = label.replace(g, k)
    return stem + "_" + re.sub(r"[^A-Za-z0-9.=-]+", "_", label).strip("_")


def fmt_time(s: float) -> str:
    """Seconds as the paper writes times: 32m28s, 1h02m03s; under a minute 4.2s."""
    if s != s:
        return "—"
    if s < 60:
        return f"{s:.1f}s"
    h, m, sec = int(s // 3600), int(s % 3600 // 60), int(round(s % 60))
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _pm(mean, std, fmt) -> str:
    if mean != mean:
        return "—"
    return fmt(mean) + (f" ± {fmt(std)}" if std == std else "")


def _num(x, spec=".1f", scale=1.0, suffix=""):
    return "—" if x is None or x != x else f"{x * scale:{spec}}{suffix}"


def display(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The table as strings, times as 32m28s and mean ± std in one cell: for md and tex."""
    if kind in ("grid", "time"):
        f = fmt_time if kind == "time" else (lambda v: f"{v:.1f}")
        t = pd.DataFrame({f"{b:g}": [_pm(m, s, f) for m, s in zip(table["mean"][b], table["std"][b])]
                          for b in table["mean"].columns}, index=[f"{a:g}" for a in table.index])
        return t.rename_axis("α \\ β")
    if kind == "policies":
        seeds = [(str(n) if k == n else f"{n} runs, {k} seeds") + (f" ({e} early-stopped)" if e else "")
                 for n, k, e in zip(table.n, table.seeds, table.early_stopped)]
        return pd.DataFrame({"augment": table.augment.map({True: "yes", False: "no"}), "runs": seeds,
                             "images/epoch": [_num(x, ".0f", 100, "%") for x in table.share],
                             "accuracy (%)": [_pm(m, s, lambda v: f"{v:.2f}") for m, s in zip(table.acc, table.acc_std)],
                             "95% CI (±)": [_num(h, ".2f") for h in table.acc_ci95],
                             "time": table.time_s.map(fmt_time),
                             "time saved": [_num(x, ".0f", 100, "%") for x in table.time_saved],
                             "acc. lost (pts)": [_num(x, ".2f") for x in table.acc_lost],
                             "images seen": [_num(x, ",.0f") for x in table.images_seen]}, index=table.index)
    if kind == "time_to_accuracy":
        t = pd.DataFrame({"runs": table.n}, index=table.index)
        for p in [c[len("target_"):] for c in table.columns if c.startswith("target_")]:
            t[f"{p}% target"] = [_num(x, ".1f") for x in table[f"target_{p}"]]
            t[f"{p}% reached"] = [f"{k}/{n}" for k, n in zip(table[f"reached_{p}"], table.n)]
            t[f"{p}% time"] = table[f"time_s_{p}"].map(fmt_time)
            t[f"{p}% images"] = [_num(x, ",.0f") for x in table[f"images_{p}"]]
        return t
    if kind == "unfinished":
        return pd.DataFrame({"status": table.status, "setting": table.setting, "seed": table.seed,
                             "epochs": [f"{_num(d, '.0f')}/{e}" for d, e in zip(table.epochs_done, table.epochs)],
                             "last val acc (%)": [_num(x, ".1f", 100) for x in table.last_val_acc],
                             "time": table.time_s.map(fmt_time)}, index=table.index)
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' own needs `tabulate`)."""
    t = table.reset_index()
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    head = "| " + " | ".join(cell(c) for c in t.columns) + " |"
    rule = "|" + "|".join("---" for _ in t.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.itertuples(index=False)])


def write_table(table: pd.DataFrame, kind: str, stem: Path, formats) -> list[Path]:
    """csv: the raw numbers (seconds, fractions, percent as in the table); md and tex: display form."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "csv":
            flat = table.copy()
            if isinstance(flat.columns, pd.MultiIndex):
                flat.columns = [f"beta={b:g} {s}" for s, b in flat.columns]
            flat.to_csv(path)
        elif fmt == "md":
            path.write_text(to_markdown(display(table, kind)) + "\n")
        else:
            tex = display(table, kind).to_latex(escape=True)
            path.write_text(tex.replace("±", r"$\pm$").replace("α", r"$\alpha$").replace("β", r"$\beta$"))
        paths.append(path)
    return paths


def report(paths, out, formats=("md", "csv", "tex"), with_figures: bool = True, elitism: bool = False,
           metric: str = "test_acc_at_best_val") -> dict[str, pd.DataFrame]:
    """Load `paths`, write every table in `formats` (with md, also report.md holding all) and the figures
    under `out`; return the tables by name."""
    df = load(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, tuple[str, pd.DataFrame]] = {}
    if not finished(df).empty:
        labels = grids(df)
        for label in labels:
            for value, name in (("best_val_acc", "grid_best_val_acc"), ("test_acc_at_best_val", "grid_test_acc")):
                tables[_slug(name, label, labels)] = ("grid", grid_table(df, value, label))
            tables[_slug("grid_time", label, labels)] = ("time", time_table(df, label))
        tables["policies"] = ("policies", policy_table(df, metric))
        tta = time_to_accuracy(df)
        if not tta.empty:
            tables["time_to_accuracy"] = ("time_to_accuracy", tta)
        tables["runs"] = ("runs", runs(finished(df)))
    if (df.status != "finished").any():
        tables["unfinished"] = ("unfinished", unfinished(df))
    md = []
    for name, (kind, table) in tables.items():
        write_table(table, kind, out / name, formats)
        if kind != "runs":
            md += [f"## {name}", "", to_markdown(display(table, kind)), ""]
    if with_figures and not finished(df).empty:
        md += [f"![{p.stem}]({p.name})" for p in figures(df, out, elitism) if p.suffix == ".png"]
    if "md" in formats:
        (out / "report.md").write_text("\n".join(md) + "\n")
    return {name: table for name, (_, table) in tables.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dyntrain report", description="Tables (PAPER.md Tables 2-5, time to "
                                     "accuracy) and figures from Ray Tune experiments and `dyntrain train` folders.")
    parser.add_argument("paths", nargs="+", metavar="EXPERIMENT_DIR",
                        help="Ray Tune experiment directories, `dyntrain train` output folders, or folders holding them")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    parser.add_argument("--format", default="md,csv,tex", help="comma-separated: md, csv, tex (default: all)")
    parser.add_argument("--no-figures", action="store_true", help="write tables only")
    parser.add_argument("--elitism", action="store_true", help="also plot running-maximum curves (Fig. 11)")
    parser.add_argument("--metric", default="test_acc_at_best_val", choices=["test_acc_at_best_val", "best_val_acc"],
                        help="accuracy of the policy table: test accuracy at the best validation epoch "
                             "(default; equals best_val_acc under --protocol paper) or best validation accuracy")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    try:
        bad = sorted(set(formats) - {"md", "csv", "tex"})
        if bad or not formats:
            raise ReportError(f"--format {args.format!r}: choose from md, csv, tex")
        tables = report(args.paths, args.out, formats, not args.no_figures, args.elitism, args.metric)
    except ReportError as e:
        print(f"dyntrain report: error: {e}", file=sys.stderr)
        return 2
    n_done = len(tables["runs"]) if "runs" in tables else 0
    print(f"{n_done} finished run(s) in the tables; report written to {args.out}/")
    if "policies" in tables:
        print(to_markdown(display(tables["policies"], "policies")))
    if "unfinished" in tables:
        u = tables["unfinished"]
        print(f"{len(u)} run(s) not finished (in progress, interrupted, pending or failed), left out of the "
              f"tables (see {args.out}/unfinished.*):", file=sys.stderr)
        for run, row in u.iterrows():
            print(f"  {run}: {row.status}, {_num(row.epochs_done, '.0f')}/{row.epochs} epochs", file=sys.stderr)
    if not n_done:
        print("no finished runs yet", file=sys.stderr)
    return 0
