"""A search's console: one refreshing progress line instead of Tune's boxes for every trial.

    from dyntrain.console import SearchProgress
    tune.Tuner(trainable, run_config=tune.RunConfig(verbose=0, callbacks=[
        SearchProgress(trials=21, epochs=21 * 200, metric="best_val_acc", mode="max")])).fit()

A tqdm bar over the epochs the search plans: epochs done / planned, elapsed and ETA, then trials
finished / total and the best trial so far. A trial that ends before its last epoch (ASHA, a time or
image budget, an error) gives its remaining epochs back, so the ETA stays honest. A trial restarted
from a checkpoint counts each epoch once. Tune's own output (`verbose=1`: its status table;
`verbose=2`: each trial's config and result boxes) is there for those who want it.
"""

from __future__ import annotations

from typing import Any, TextIO

from ray.tune import Callback
from tqdm import tqdm

from dyntrain.config import TrainConfig
from dyntrain.runs import trial_config
from dyntrain.spaces import points


class SearchProgress(Callback):
    """The progress line of a search of `trials` trials and `epochs` planned epochs, with the best
    `metric` (`mode` max or min) so far; written to `file` (default: stderr, as tqdm does)."""

    def __init__(self, trials: int, epochs: int, metric: str, mode: str, file: TextIO | None = None):
        self.trials, self.epochs, self.metric, self.mode, self.file = trials, epochs, metric, mode, file
        self._reset()

    @classmethod
    def of(cls, space: dict[str, Any], search: Any, num_samples: int, metric: str, mode: str) -> SearchProgress:
        """The bar of a search over `space`: a grid runs every point `num_samples` times, a searcher
        `num_samples` trials (counted at the space's largest epochs)."""
        epochs = [TrainConfig.from_dict(pt).epochs for pt in points(space)]
        if search == "grid":
            return cls(num_samples * len(epochs), num_samples * sum(epochs), metric, mode)
        return cls(num_samples, num_samples * max(epochs), metric, mode)

    def _reset(self) -> None:
        self.done: dict[str, int] = {}  # trial_id -> the last epoch it reported
        self.given_back = 0  # planned epochs of trials that ended early
        self.finished = 0
        self.best: tuple[float, str] | None = None  # (value, trial)
        self.bar: tqdm | None = None

    # Tune pickles the RunConfig (and so its callbacks) into the experiment folder: no bar or counts.
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("trials", "epochs", "metric", "mode")} | {"file": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------ Tune's hooks

    def setup(self, **info) -> None:
        self.bar = tqdm(total=self.epochs, desc="search", unit="epoch", file=self.file, dynamic_ncols=True)
        self._show()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self.done[trial.trial_id] = max(epoch, self.done.get(trial.trial_id, 0))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and (self.best is None or (
                value > self.best[0] if self.mode == "max" else value < self.best[0])):
            self.best = (float(value), str(trial))
        self._show()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.finished += 1
        try:
            planned = TrainConfig.from_dict(trial_config(trial.config)).epochs
        except Exception:  # a user's trainable may take configs TrainConfig does not know
            planned = self.done.get(trial.trial_id, 0)
        self.given_back += max(0, planned - self.done.get(trial.trial_id, 0))
        self._show()

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.bar is not None:
            self._show()
            self.bar.close()

    def _show(self) -> None:
        if self.bar is None:
            return
        self.bar.total = max(self.epochs - self.given_back, sum(self.done.values()))
        self.bar.n = sum(self.done.values())
        best = f", best {self.metric} {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
        trials = max(self.trials, len(self.done), self.finished)  # a space of Ray domains may hold more
        self.bar.set_postfix_str(f"trials {self.finished}/{trials}{best}", refresh=False)
        self.bar.refresh()
