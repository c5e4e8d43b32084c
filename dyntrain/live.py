"""A Ray Tune callback that keeps the experiment's report.html current while the trials run.

    from dyntrain.live import LiveReport
    tune.Tuner(trainable, run_config=tune.RunConfig(name="exp", storage_path="results/ray",
               callbacks=[LiveReport("results/ray/exp", every_s=10)])).fit()

The page (`dyntrain.page`) reloads itself while the experiment runs and stops reloading once it has
ended. It is built from what the callback sees, not from Ray's files: while a trial runs, Ray writes
its result.json in a staging folder and copies it into the experiment folder only now and then (at
the latest when the trial ends), and experiment_state-*.json lags the trials' statuses. So each
trial's epochs are the results Tune hands to `on_trial_result`, after whatever result.json already
held when the trial was first seen (a restored experiment's earlier epochs), and its status is
Tune's own.

Rendering never slows the search: it happens at most every `every_s` seconds, in a background
thread, skipped while the previous one is still rendering, and a failure is logged (once) and
never raised into Tune.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from dyntrain.page import write_html
from dyntrain.runs import TUNE_STATUSES, result_rows, trial_frame
from dyntrain.tables import labels

logger = logging.getLogger(__name__)


class LiveReport(Callback):
    """Keep `out_file` (default: report.html in `experiment_path`) current while the search runs, at
    most every `every_s` seconds; the page reloads itself every `refresh_s` seconds (default:
    `every_s`) until the final page, written when the experiment ends."""

    def __init__(self, experiment_path: str | Path, every_s: float = 10.0, refresh_s: float | None = None,
                 out_file: str | Path | None = None, title: str | None = None):
        self.experiment_path = Path(experiment_path)
        self.out_file = Path(out_file) if out_file is not None else self.experiment_path / "report.html"
        self.every_s = float(every_s)
        self.refresh_s = float(refresh_s if refresh_s is not None else max(1.0, every_s))
        self.title = title
        self._reset()

    def _reset(self) -> None:
        self._results: dict[str, list[dict[str, Any]]] = {}  # trial_id -> its results, in order
        self._seeded: dict[str, pd.DataFrame] = {}  # trial_id -> its result.json when first seen
        self._ended: dict[str, str] = {}  # trial_id -> "finished"/"error" before Tune sets its status
        self._thread: threading.Thread | None = None
        self._last = -math.inf  # monotonic time of the last render's start
        self._dirty = True
        self._warned = False
        self.renders = 0  # pages written: for tests and curiosity

    # Tune pickles the RunConfig (and so its callbacks) into the experiment folder: no thread or records.
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("experiment_path", "out_file", "every_s", "refresh_s", "title")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------ Tune's hooks

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended.pop(trial.trial_id, None)  # also a trial started again after a failure
        self._dirty = True

    on_trial_recover = on_trial_restore = on_trial_start

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._results.setdefault(trial.trial_id, []).append(
            {k: v for k, v in result.items() if not isinstance(v, (dict, list, tuple))})
        self._dirty = True
        self._maybe_render(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended[trial.trial_id] = "finished"  # Tune marks it TERMINATED only after this hook
        self._dirty = True

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended[trial.trial_id] = "error"
        self._dirty = True

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._maybe_render(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        """The last page, without reloading, once every trial has concluded (or the run was interrupted)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout=120)
        self._render(self._snapshot(trials), live=False)

    # ------------------------------------------------------------ rendering

    def _maybe_render(self, trials: list) -> None:
        now = time.monotonic()
        if not self._dirty or now - self._last < self.every_s or (self._thread is not None and self._thread.is_alive()):
            return
        self._last, self._dirty = now, False
        snapshot = self._snapshot(trials)  # copied here: Tune changes its trials while the thread renders
        self._thread = threading.Thread(target=self._render, args=(snapshot, True), name="dyntrain-live-report",
                                        daemon=True)
        self._thread.start()

    def _snapshot(self, trials: list) -> list[dict[str, Any]]:
        out = []
        for t in trials:
            status = self._ended.get(t.trial_id) or TUNE_STATUSES.get(t.status, "pending")
            out.append({"trial_id": t.trial_id, "status": status, "config": dict(t.config),
                        "folders": [p for p in (_attr(t, "path"), _attr(t, "local_path")) if p],
                        "results": list(self._results.get(t.trial_id, ()))})
        return out

    def _render(self, snapshot: list[dict[str, Any]], live: bool) -> None:
        try:
            if not snapshot:
                return
            write_html(self.frame(snapshot), self.out_file, live=live, refresh_s=self.refresh_s, title=self.title)
            self.renders += 1
        except Exception as err:  # noqa: BLE001 - the page must never stop or slow a search
            if not self._warned:
                self._warned = True
                logger.warning("dyntrain: could not write the live report %s (%s: %s); the search goes on",
                               self.out_file, type(err).__name__, err, exc_info=True)
            else:
                logger.debug("dyntrain: live report failed again: %s", err)

    def frame(self, snapshot: list[dict[str, Any]]) -> pd.DataFrame:
        """The frame of `dyntrain.tables.load` for the trials of a snapshot: one row per trial x epoch."""
        frames = []
        name = self.experiment_path.name
        for t in snapshot:
            if t["trial_id"] not in self._seeded:  # a restored trial's earlier epochs
                self._seeded[t["trial_id"]] = _read_results(t["folders"])
            records = pd.concat([self._seeded[t["trial_id"]], pd.DataFrame(t["results"])], ignore_index=True)
            frames.append(trial_frame(records, f"{name}/{t['trial_id']}", str(self.experiment_path), t["config"],
                                      t["status"]))
        df = pd.concat(frames, ignore_index=True)
        df["setting"], df["grid"] = labels(df)
        return df


def _attr(trial, name: str) -> str | None:
    try:
        return getattr(trial, name)
    except Exception:  # noqa: BLE001 - a trial without storage yet
        return None


def _read_results(folders: list[str]) -> pd.DataFrame:
    """The longest result.json among a trial's folders (local: the callback runs beside them)."""
    best: list[dict[str, Any]] = []
    for folder in folders:
        path = Path(folder) / "result.json"
        try:
            rows = result_rows(path.read_text().splitlines()) if path.is_file() else []
        except OSError:
            continue
        if len(rows) > len(best):
            best = rows
    return pd.DataFrame(best)
