"""The whole path with nothing stood in: `dyntrain tune` (real trainable) and `dyntrain train` on tiny
data, then `dyntrain report` over both, its numbers checked against the raw per-epoch records."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest
import yaml

from dyntrain import cli

DATA = ["--val-size", "40", "--test-limit", "50", "--batch-size", "64", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def experiment(tiny_folder, tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("e2e")
    args = ["--dataset", f"folder:{tiny_folder}", "--data-dir", str(root / "data"), *DATA]
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({"policy": ["full", "dynamic"], "alpha": 130, "beta": 0.5, "delta": 0.05}))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = cli.main(["tune", "--space", str(space), "--seeds", "2", "--gpus-per-trial", "0",
                         "--storage", str(root), "--name", "exp", *args])
    finally:
        if started:
            ray.shutdown()
    assert code == 0
    assert cli.main(["train", "--policy", "static", "--alpha", "130", "--out", str(root / "static"), *args]) == 0
    return root


def raw_trials(exp):
    """(config, per-epoch records) of every trial, straight from Ray's files."""
    out = []
    for params in sorted(exp.glob("*/params.json")):
        config = json.loads(params.read_text())
        rows = [json.loads(line) for line in (params.parent / "result.json").read_text().splitlines()]
        out.append((config, rows))
    return out


@pytest.mark.slow
def test_report_of_a_real_search_and_a_real_train_run(experiment, capsys):
    exp = experiment / "exp"
    trials = raw_trials(exp)
    assert len(trials) == 4 and all([r["epoch"] for r in rows] == [1, 2] for _, rows in trials)

    out = experiment / "report"
    assert cli.main(["report", str(exp), str(experiment / "static"), "--out", str(out), "--format", "md,csv"]) == 0
    table = pd.read_csv(out / "policies.csv", index_col=0)
    assert list(table.index) == ["full", "static α=130", "dynamic α=130 β=0.5"]

    for policy, label in (("full", "full"), ("dynamic", "dynamic α=130 β=0.5")):
        last = [rows[-1] for config, rows in trials if config["policy"] == policy]
        assert len(last) == 2 and table.loc[label, "n"] == 2
        assert table.loc[label, "acc"] == pytest.approx(100 * statistics.mean(r["test_acc_at_best_val"] for r in last))
        assert table.loc[label, "acc_std"] == pytest.approx(100 * statistics.stdev(r["test_acc_at_best_val"] for r in last))
        assert table.loc[label, "time_s"] == pytest.approx(statistics.mean(r["wall_time_s"] for r in last))
        assert table.loc[label, "images_seen"] == pytest.approx(statistics.mean(r["images_seen"] for r in last))
    n_train = 300 - 40
    assert table.loc["dynamic α=130 β=0.5", "share"] == pytest.approx(130 / n_train)
    assert table.loc["full", "images_seen"] == 2 * n_train
    dyn, full = table.loc["dynamic α=130 β=0.5"], table.loc["full"]
    assert dyn.time_saved == pytest.approx(1 - dyn.time_s / full.time_s)
    assert dyn.acc_lost == pytest.approx(full.acc - dyn.acc)

    static = pd.read_csv(experiment / "static" / "metrics.csv")
    assert table.loc["static α=130", "acc"] == pytest.approx(100 * static.test_acc_at_best_val.iloc[-1])
    assert table.loc["static α=130", "time_s"] == pytest.approx(static.wall_time_s.iloc[-1])
    for figure in ("curves.png", "accuracy_vs_time.png", "curves.svg"):
        assert (out / figure).stat().st_size > 1000
    assert "dynamic α=130 β=0.5" in capsys.readouterr().out
