"""The run-folder format, written and read: `dyntrain train` folders and Ray Tune experiments.

A `dyntrain train --out RUN` folder holds config.json (written first), metrics.csv (one row per
epoch, `METRICS` columns, rewritten after every epoch), checkpoint.pt, and summary.json, written
last: a folder without it is unfinished. A Ray Tune experiment holds one folder per trial whose
result.json carries the same per-epoch metrics, plus environment.json from `dyntrain tune`.

`read` reads any mix of both into one tidy frame, one row per run x epoch, that every table and
figure of `dyntrain.report` is computed from. Every file here is written through `atomic_write`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from dyntrain.config import FIELDS, TrainConfig
from dyntrain.engine import METRICS

METRICS_CSV, SUMMARY, CONFIG_JSON, CHECKPOINT, ENVIRONMENT = (
    "metrics.csv", "summary.json", "config.json", "checkpoint.pt", "environment.json")
# Per-run columns a Ray trial adds to the engine's metrics: its cost and where it ran (dyntrain.tune).
TRIAL_METRICS = ("n_train", "gpu_s", "best_val_acc_per_gpu_h", "node_id", "node_ip", "gpu_ids", "gpus")
STATUSES = ("finished", "in_progress", "pending", "error")


class ReportError(ValueError):
    """An experiment directory is missing, empty or unreadable, or a table cannot be formed."""


# ---------------------------------------------------------------- writing

def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash mid-write leaves the old file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_metrics_csv(history: list[dict[str, Any]], path: str | os.PathLike) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, buf.getvalue())


def read_json(path: Path) -> Any:
    """A JSON file the user handed in (through a folder): unreadable is one ConfigError naming it."""
    from dyntrain.config import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None


# ---------------------------------------------------------------- reading

def read(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run x epoch from `dyntrain train` folders and Ray Tune experiment directories
    (local paths, or URIs such as s3://bucket/exp for an experiment). A local directory holding
    neither is searched below for them. Columns: run, source, status (`STATUSES`: "in_progress" is a
    train folder without summary.json or a Ray trial not TERMINATED that has epochs, "pending" one
    without any), early_stopped (finished by a scheduler before its epochs), every TrainConfig field,
    epoch, the METRICS and the TRIAL_METRICS (NaN where a run has none). `dyntrain.report.load`
    adds the labels of the comparison."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ReportError("no experiment directory given")
    found = {}
    for p in paths:
        for kind, where in discover(p):
            found.setdefault(where if "://" in where else str(Path(where).resolve()), (kind, where))  # each run once
    return pd.concat([_read(kind, where) for kind, where in found.values()], ignore_index=True)


def discover(root: str | os.PathLike) -> list[tuple[str, str]]:
    """(kind, path) of every run below `root`: kind "tune" for a Ray experiment, "train" for a folder."""
    if "://" in str(root):
        return [("tune", str(root))]  # remote storage: an experiment directory, read through Ray
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if any(f.startswith("experiment_state-") and f.endswith(".json") for f in filenames):
            found.append(("tune", dirpath))
        elif METRICS_CSV in filenames or CONFIG_JSON in filenames:
            found.append(("train", dirpath))
        else:
            dirnames.sort()
            continue
        dirnames.clear()  # a run's own folders (Ray trials, checkpoints) are not further runs
    if found:
        return found
    expected = ("expected a Ray Tune experiment directory (experiment_state-*.json) "
                "or a `dyntrain train` output folder (metrics.csv)")
    if not any(root.iterdir()):
        raise ReportError(f"{root}: empty directory; {expected}")
    hint = " (this looks like one Ray trial: pass its experiment directory, the parent)" \
        if (root / "params.json").exists() else ""
    raise ReportError(f"{root}: no experiment found{hint}; {expected}")


def _read(kind: str, path: str) -> pd.DataFrame:
    try:
        return read_tune(path) if kind == "tune" else read_train(Path(path))
    except ReportError:
        raise
    except Exception as e:  # a truncated JSON, a malformed CSV, a Ray state it cannot parse
        what = "Ray Tune experiment" if kind == "tune" else "run"
        raise ReportError(f"{path}: cannot read {what}: {type(e).__name__}: {e}") from e


def read_train(folder: Path) -> pd.DataFrame:
    summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).exists() else None
    if summary is not None:
        config = summary["config"]
    elif (folder / CONFIG_JSON).exists():
        config = json.loads((folder / CONFIG_JSON).read_text())
    else:
        raise ReportError(f"{folder}: {METRICS_CSV} without {CONFIG_JSON} or {SUMMARY}")
    records = pd.read_csv(folder / METRICS_CSV, keep_default_na=False, na_values=[""]) \
        if (folder / METRICS_CSV).exists() else pd.DataFrame()
    if len(records) and not {"epoch", "val_acc", "wall_time_s"} <= set(records.columns):
        raise ReportError(f"{folder / METRICS_CSV}: not a dyntrain metrics file (columns: {', '.join(records.columns)})")
    status = "finished" if summary is not None else "in_progress"
    if summary and summary.get("n_train") is not None:
        records["n_train"] = summary["n_train"]
    return tidy(records, str(folder), str(folder), config, status, early=False)


def read_tune(exp: str) -> pd.DataFrame:
    """A Ray Tune experiment through Ray's own reader (`ExperimentAnalysis`, which needs no cluster
    and reads remote storage too); a trial's records are Ray's `trial_dataframes`, or, where Ray
    gives none (a result line half-written while we read, or a state saved before the trial's first
    report), its result.json read line by line on the trial's storage."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.search.repeater import TRIAL_INDEX

    path = exp if "://" in exp else str(Path(exp).resolve())  # pyarrow reads a relative path as a URI
    ray_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = ray_log.level
    ray_log.setLevel(logging.CRITICAL)  # it warns of trials without results: the report lists them apart
    try:
        analysis = ExperimentAnalysis(path)
        dataframes = analysis.trial_dataframes
    finally:
        ray_log.setLevel(level)
    frames = []
    for trial in analysis.trials:
        records = dataframes.get(trial.trial_id, pd.DataFrame())
        if records.empty:
            records = _result_lines(trial)
        records = records.drop(columns=[c for c in records if c.startswith("config/")])
        if len(records) and "epoch" not in records:
            records["epoch"] = records["training_iteration"]
        if len(records) and "wall_time_s" not in records:
            records["wall_time_s"] = records["time_total_s"]
        # Ray saves a RUNNING trial as PENDING: one with epochs is under way (or was, if interrupted).
        status = {"TERMINATED": "finished", "ERROR": "error"}.get(trial.status, "in_progress" if len(records) else "pending")
        last = records.iloc[-1] if len(records) else {}
        # A scheduler (ASHA) stop leaves no reason of the run's own on the last epoch.
        early = status == "finished" and not (isinstance(last.get("stopped"), str) and last.get("stopped"))
        config = dict(trial.config)
        # A Repeater (repeated points of a search) numbers the repeats; dyntrain.tune adds it to the seed.
        config["seed"] = config.get("seed", TrainConfig.seed) + config.pop(TRIAL_INDEX, 0)
        name = exp.rstrip("/").rsplit("/", 1)[-1]
        frames.append(tidy(records, f"{name}/{trial.trial_id}", exp, config, status, early))
    if not frames:
        raise ReportError(f"{exp}: Ray Tune experiment without trials")
    return pd.concat(frames, ignore_index=True)


def _result_lines(trial) -> pd.DataFrame:
    """A trial's result.json (one JSON object a line) on its storage, skipping a half-written line."""
    fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    try:
        with fs.open_input_stream(f"{folder}/result.json") as fh:
            lines = fh.readall().decode().splitlines()
    except (FileNotFoundError, OSError):
        return pd.DataFrame()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line being written when the trial was read
    return pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, dict)} for r in rows])


def tidy(records: pd.DataFrame, run: str, source: str, config: dict, status: str, early: bool) -> pd.DataFrame:
    """One run's records in the frame's columns: config fields, METRICS, TRIAL_METRICS."""
    if "beta" in records and "beta_n" not in records:
        records = records.rename(columns={"beta": "beta_n"})  # results written before dyntrain 0.2
    if len(records):  # a trial restarted from scratch reports its epochs again: the last report counts
        records = records.drop_duplicates("epoch", keep="last").sort_values("epoch")
    else:
        records = pd.DataFrame({"epoch": [float("nan")]})  # keeps a run with no epoch yet in view
        status = "error" if status == "finished" else status  # finished without a single epoch
    out = pd.DataFrame({"run": run, "source": source, "status": status, "early_stopped": early}, index=records.index)
    cfg = TrainConfig().to_dict() | {k: v for k, v in config.items() if k in FIELDS}
    for k in FIELDS:
        out[k] = [cfg[k]] * len(out)
    for k in ("epoch", *[m for m in METRICS if m != "epoch"], *TRIAL_METRICS):
        out[k] = records[k] if k in records else float("nan")
    out["n_train"] = out["n_train"].astype(float)
    out["stopped"] = ["" if pd.isna(v) else str(v) for v in out["stopped"]]
    return out.reset_index(drop=True)

