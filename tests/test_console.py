"""The search's console: the progress line's arithmetic, and what a real `dyntrain tune` prints."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import pytest
import yaml

from dyntrain.console import SearchProgress


class Trial:
    def __init__(self, trial_id: str, **config):
        self.trial_id, self.config = trial_id, {"epochs": 4, **config}

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def last_line(out: io.StringIO) -> str:
    return out.getvalue().replace("\r", "\n").strip().splitlines()[-1]


def test_the_line_counts_epochs_trials_and_the_best_and_gives_back_what_ends_early():
    out = io.StringIO()
    bar = SearchProgress(trials=3, epochs=12, metric="best_val_acc", mode="max", file=out)
    bar.setup()
    a, b, c = Trial("a"), Trial("b", alpha=100), Trial("c")
    for epoch, acc in ((1, 0.3), (2, 0.5)):
        bar.on_trial_result(0, [], a, {"epoch": epoch, "best_val_acc": acc})
    bar.on_trial_result(0, [], b, {"epoch": 1, "best_val_acc": 0.6})
    assert "3/12" in last_line(out) and "trials 0/3" in last_line(out)
    assert "best best_val_acc 0.6 (trial_b)" in last_line(out)
    bar.on_trial_result(0, [], b, {"epoch": 1, "best_val_acc": 0.6})  # restarted from its checkpoint: counted once
    assert bar.bar.n == 3
    bar.on_trial_complete(0, [], b)  # stopped early (ASHA, a budget) after 1 of 4 epochs: 3 given back
    assert bar.bar.total == 9 and "trials 1/3" in last_line(out)
    for epoch in (3, 4):
        bar.on_trial_result(0, [], a, {"epoch": epoch, "best_val_acc": 0.5})
    bar.on_trial_complete(0, [], a)
    bar.on_trial_error(0, [], c)  # failed before its first epoch: all 4 given back
    bar.on_experiment_end([])
    assert bar.bar.total == bar.bar.n == 5
    assert "5/5" in last_line(out) and "trials 3/3" in last_line(out) and "(trial_b)" in last_line(out)


def test_min_mode_keeps_the_lowest_and_the_bar_survives_pickling():
    bar = SearchProgress(trials=1, epochs=2, metric="train_loss", mode="min", file=io.StringIO())
    bar.setup()
    for epoch, loss in ((1, 2.0), (2, 1.5)):
        bar.on_trial_result(0, [], Trial("a"), {"epoch": epoch, "train_loss": loss})
    assert bar.best == (1.5, "trial_a")  # and Tune pickles its callbacks into the experiment folder:
    again = pickle.loads(pickle.dumps(bar))
    assert (again.trials, again.epochs, again.best, again.bar) == (1, 2, None, None)


def test_planned_from_the_space():
    grid = {"alpha": [50, 60], "epochs": 3}  # the YAML form: a list is a grid
    bar = SearchProgress.of(grid, "grid", 2, "best_val_acc", "max")
    assert (bar.trials, bar.epochs) == (4, 12)


@pytest.mark.slow
def test_a_real_search_prints_one_line_not_tunes_boxes(tiny_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"alpha": [100, 120], "beta": 0.5}))
    cmd = [sys.executable, "-m", "dyntrain.cli", "tune", "--space", str(space), "--storage", str(tmp_path), "--name", "exp",
           "--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "data"), "--val-size", "20",
           "--test-limit", "20", "--batch-size", "64", "--epochs", "2", "--gpus-per-trial", "0", "--live-report-s", "0"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = proc.stderr.replace("\r", "\n").splitlines()
    final = [line for line in final if line.startswith("search:")][-1]
    assert "4/4" in final and "trials 2/2" in final and "best best_val_acc" in final, final
    console = proc.stdout + proc.stderr
    # No table of trials, no box per trial: Tune's one header box for the experiment is all that is left.
    assert "Trial status" not in console and "started with configuration" not in console and console.count("╭") <= 1
    loud = subprocess.run([*cmd, "--name", "loud", "--verbose", "2", "--no-progress"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "started with configuration" in loud.stdout + loud.stderr and "search:" not in loud.stderr
