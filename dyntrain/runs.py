"""The run record, one owner: what a run writes, how, and how it is read back.

A `dyntrain train --out RUN` folder holds config.json (written first), metrics.csv (one row per
epoch, `METRICS` columns, rewritten after every epoch), checkpoint.pt, and summary.json, written
last: a folder without it is unfinished. A Ray Tune experiment holds one folder per trial whose
result.json carries the same per-epoch metrics plus `TRIAL_METRICS`, and environment.json from
`dyntrain tune`. Every file is written through `atomic_write`.

Checkpoints are data: tensors, lists, dicts, str/int/float/bool/None, loaded with torch.load's
weights_only unpickler, which constructs nothing else and so cannot run code planted in a file.

`read` reads any mix of folders and experiments into one tidy frame, one row per run x epoch, that
every table, figure and page is computed from; `trial_frame` turns one Ray trial's results into
the same rows, for finished experiments and for a callback watching live ones alike.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dyntrain.config import FIELDS, ConfigError, TrainConfig, resolve_point

# Per epoch, what the engine measures (`Trainer.run_epoch`): metrics.csv's columns and Tune's results.
METRICS = (
    "epoch", "train_loss", "train_acc", "val_acc", "test_acc", "best_val_acc", "test_acc_at_best_val",
    "subset_size", "images_seen", "resample", "beta_n", "epoch_time_s", "wall_time_s", "stopped",
)
# Per epoch, what a Ray trial adds (dyntrain.tune): its cost and where it ran.
COST_METRICS = ("gpu_s", "best_val_acc_per_gpu_h")
TRIAL_METRICS = ("n_train", *COST_METRICS, "node_id", "node_ip", "gpu_ids", "gpus")
# Metrics a search may optimise, and those it minimises (the rest it maximises).
OBJECTIVES = tuple(m for m in METRICS if m not in ("stopped", "resample")) + COST_METRICS
MINIMISED = ("train_loss", "epoch_time_s", "wall_time_s", "gpu_s")
METRICS_CSV, SUMMARY, CONFIG_JSON, CHECKPOINT, ENVIRONMENT = (
    "metrics.csv", "summary.json", "config.json", "checkpoint.pt", "environment.json")
STATUSES = ("finished", "in_progress", "pending", "error")
# Tune's trial statuses -> a run's (Ray saves a RUNNING trial as PENDING: one with epochs is under way).
TUNE_STATUSES = {"TERMINATED": "finished", "ERROR": "error", "RUNNING": "in_progress", "PAUSED": "in_progress"}
# 1: before format keys, with numpy arrays in the policy state (not loadable as data); 2: no scheduler state.
CHECKPOINT_FORMAT = 3
CHECKPOINT_KEYS = ("format", "config", "model", "optimizer", "scheduler", "policy", "generator", "torch_rng", "history")


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


def write_run(folder: str | os.PathLike, config: dict[str, Any], history: list[dict[str, Any]],
              summary: dict[str, Any] | None = None) -> None:
    """A whole run folder at once, in the order `dyntrain train` writes it: config.json, metrics.csv,
    then summary.json (a finished run) or nothing more (a run in progress)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CONFIG_JSON, config)
    write_metrics_csv(history, folder / METRICS_CSV)
    if summary is not None:
        write_json(folder / SUMMARY, summary)


def read_json(path: Path) -> Any:
    """A JSON file the user handed in (through a folder): unreadable is one ConfigError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None


# ---------------------------------------------------------------- checkpoints

class CheckpointError(ValueError):
    """A checkpoint file that is not data dyntrain wrote: it would run code, is truncated or corrupt,
    or lacks keys. The message is one line and names the file."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A `Trainer.state_dict()` saved by `save_checkpoint`, read as data: torch's weights_only
    unpickler builds tensors and plain containers and refuses any other object, so a planted file
    cannot run code. Anything else (code, truncated or random bytes, an empty file, another format)
    raises CheckpointError; a file that cannot be opened raises OSError as usual."""
    name = os.fspath(path)
    with open(name, "rb") as file, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's pickle-protocol warnings about a file we refuse anyway
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError, OSError, EOFError, KeyError, ... by damage
            raise CheckpointError(f"{name}: not a dyntrain checkpoint that loads as data ({_why(exc)}); "
                                  "refusing to execute it") from None  # one line, no chained traceback
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}: not a dyntrain checkpoint (holds a {type(state).__name__}, not a dict)")
    if state.get("format") == 2:  # before learning-rate schedules: its runs had none
        state = {**state, "format": CHECKPOINT_FORMAT, "scheduler": {}}
    if state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format")
        raise CheckpointError(f"{name}: not a dyntrain checkpoint of format {CHECKPOINT_FORMAT} (format {found!r})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{name}: not a complete dyntrain checkpoint (missing {', '.join(missing)})")
    return state


def _why(exc: Exception) -> str:
    """One line on why torch.load failed, without torch's advice to allowlist globals or to load
    with weights_only=False (which would run the file)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        text = re.split(r" (?:Please use|Check the documentation)", text.split("WeightsUnpickler error:", 1)[1])[0]
    elif "zip archive" in text or isinstance(exc, OSError):  # torch's zip reader on a cut-off file
        text = f"truncated or corrupt: {'not a complete zip archive' if 'zip archive' in text else text}"
    elif isinstance(exc, EOFError):
        text = "empty or truncated"
    return f"{type(exc).__name__}: {text.strip()[:200]}"


# ---------------------------------------------------------------- environment

def environment(device: torch.device) -> dict[str, Any]:
    """The machine a run ran on: summary.json's "environment", and environment.json's core."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }


def environments(sources: Iterable[str]) -> list[dict[str, Any]]:
    """The recorded environment of each source (environment.json of a Tune experiment, summary.json's
    "environment" of a train folder), sources with the same one together under "sources"."""
    found: dict[str, dict[str, Any]] = {}
    for source in sources:
        folder = Path(source)
        env = None
        try:
            if (folder / ENVIRONMENT).is_file():
                env = json.loads((folder / ENVIRONMENT).read_text())
            elif (folder / SUMMARY).is_file():
                env = json.loads((folder / SUMMARY).read_text()).get("environment")
        except (OSError, ValueError):
            env = None
        if env:
            found.setdefault(json.dumps(env, sort_keys=True, default=str), {"sources": [], **env})["sources"].append(source)
    return list(found.values())


# ---------------------------------------------------------------- reading

def read(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run x epoch from `dyntrain train` folders and Ray Tune experiment directories
    (local paths, or URIs such as s3://bucket/exp for an experiment). A local directory holding
    neither is searched below for them. Columns: run, source, status (`STATUSES`: "in_progress" is a
    train folder without summary.json or a Ray trial not TERMINATED that has epochs, "pending" one
    without any), early_stopped (finished by a scheduler before its epochs), every TrainConfig field,
    epoch, the METRICS and the TRIAL_METRICS (NaN where a run has none). `dyntrain.tables.load`
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
    from ray.tune import ExperimentAnalysis  # heavy, and only for Tune experiments

    path = exp if "://" in exp else str(Path(exp).resolve())  # pyarrow reads a relative path as a URI
    ray_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = ray_log.level
    ray_log.setLevel(logging.CRITICAL)  # it warns of trials without results: the report lists them apart
    try:
        analysis = ExperimentAnalysis(path)
        dataframes = analysis.trial_dataframes
    finally:
        ray_log.setLevel(level)
    name = exp.rstrip("/").rsplit("/", 1)[-1]
    frames = []
    for trial in analysis.trials:
        records = dataframes.get(trial.trial_id, pd.DataFrame())
        if records.empty:
            records = _result_file(trial)
        status = TUNE_STATUSES.get(trial.status, "pending")
        frames.append(trial_frame(records, f"{name}/{trial.trial_id}", exp, trial.config, status))
    if not frames:
        raise ReportError(f"{exp}: Ray Tune experiment without trials")
    return pd.concat(frames, ignore_index=True)


def trial_frame(records: pd.DataFrame, run: str, source: str, config: dict, status: str) -> pd.DataFrame:
    """One Ray trial's results (Tune's result rows, in order) as the frame's rows. `status` is Tune's,
    mapped by TUNE_STATUSES; a trial Tune holds as pending that has epochs is under way (or was, if
    interrupted), and a finished one whose last epoch names no stop reason of its own was stopped
    early by a scheduler (ASHA)."""
    records = records.drop(columns=[c for c in records if c.startswith("config/")])
    if len(records) and "epoch" not in records:
        records["epoch"] = records["training_iteration"]
    if len(records) and "wall_time_s" not in records:
        records["wall_time_s"] = records["time_total_s"]
    if len(records):
        records = records[records["epoch"].notna()]
    if status == "pending" and len(records):
        status = "in_progress"
    stopped = records["stopped"].iloc[-1] if len(records) and "stopped" in records else None
    early = status == "finished" and not (isinstance(stopped, str) and stopped)
    return tidy(records, run, source, trial_config(config), status, early)


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig values a trial trains with: its config with its arm resolved (`resolve_point`),
    without the repeat number a Repeater (repeated points of a search) adds, that number added to the
    seed instead -- for `dyntrain.tune.trainable` and for reading the trial back alike."""
    from ray.tune.search.repeater import TRIAL_INDEX  # heavy, and only for Tune trials

    values = resolve_point(config)
    values["seed"] = int(values.get("seed", TrainConfig.seed)) + int(values.pop(TRIAL_INDEX, 0))
    return values


def result_rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    """A result.json (one JSON object a line) as flat rows; a half-written line (the one being
    written while it was read) is skipped, and nested values (config, Ray's own dicts) dropped."""
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append({k: v for k, v in row.items() if not isinstance(v, (dict, list))})
    return rows


def _result_file(trial) -> pd.DataFrame:
    """A trial's result.json on its storage (local or remote)."""
    fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    try:
        with fs.open_input_stream(f"{folder}/result.json") as fh:
            return pd.DataFrame(result_rows(fh.readall().decode().splitlines()))
    except (FileNotFoundError, OSError):
        return pd.DataFrame()


def tidy(records: pd.DataFrame, run: str, source: str, config: dict, status: str, early: bool) -> pd.DataFrame:
    """One run's records in the frame's columns: config fields, METRICS, TRIAL_METRICS. Without any
    epoch the run keeps one row (epoch NaN), and a "finished" one is an error."""
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

