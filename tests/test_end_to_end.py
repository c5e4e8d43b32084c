"""The whole path with nothing stood in: `dyntrain tune --space baselines` (real trainable: every
policy and full data at equal images) and `dyntrain train` on tiny data, then `dyntrain report` over
both, its numbers checked against the raw per-epoch records."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest

from dyntrain import cli, spaces

DATA = ["--val-size", "40", "--test-limit", "50", "--batch-size", "64", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def experiment(tiny_folder, tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("e2e")
    args = ["--dataset", f"folder:{tiny_folder}", "--data-dir", str(root / "data"), *DATA]
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = cli.main(["tune", "--space", "baselines", "--no-augment", "--alpha", "130", "--beta", "0.5", "--delta", "0.05",
                         "--seeds", "2", "--gpus-per-trial", "0", "--live-report-s", "0", "--storage", str(root),
                         "--name", "exp", *args])
    finally:
        if started:
            ray.shutdown()
    assert code == 0
    assert cli.main(["train", "--policy", "static", "--alpha", "130", "--augment", "--out", str(root / "static"), *args]) == 0
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
    arms = [json.dumps(config["arm"], sort_keys=True) for config, _ in trials]
    assert len(trials) == 12 and sorted(arms) == sorted(json.dumps(a, sort_keys=True) for a in 2 * spaces.BASELINES["arm"])
    n_train = 300 - 40
    for config, rows in trials:  # full at equal images: 130 x 2 = 260 images, one epoch of the 260-image pool
        stops = config["arm"].get("image_budget") == "equal"
        assert [r["epoch"] for r in rows] == ([1] if stops else [1, 2])
        assert rows[-1]["images_seen"] == (260 if stops else 2 * n_train if config["arm"]["policy"] == "full" else 260)
        assert rows[-1]["stopped"] == ("image_budget" if stops else "epochs")

    out = experiment / "report"
    assert cli.main(["report", str(exp), str(experiment / "static"), "--out", str(out), "--format", "md,csv"]) == 0
    table = pd.read_csv(out / "policies.csv", index_col=0)
    equal, dyn_label = "full (equal images)", "dynamic α=130 β=0.5"
    assert list(table.index) == ["full", equal, "static α=130", dyn_label, "variant α=130 β=0.5", "random α=130",
                                 "static α=130 +aug"]

    for arm, label in (({"policy": "full"}, "full"), ({"policy": "dynamic"}, dyn_label),
                       ({"policy": "full", "image_budget": "equal"}, equal)):
        last = [rows[-1] for config, rows in trials if config["arm"] == arm]
        assert len(last) == 2 and table.loc[label, "n"] == 2
        assert table.loc[label, "acc"] == pytest.approx(100 * statistics.mean(r["test_acc_at_best_val"] for r in last))
        assert table.loc[label, "acc_std"] == pytest.approx(100 * statistics.stdev(r["test_acc_at_best_val"] for r in last))
        assert table.loc[label, "time_s"] == pytest.approx(statistics.mean(r["wall_time_s"] for r in last))
        assert table.loc[label, "images_seen"] == pytest.approx(statistics.mean(r["images_seen"] for r in last))
    assert table.loc[dyn_label, "share"] == pytest.approx(130 / n_train)
    assert table.loc["full", "images_seen"] == 2 * n_train and table.loc[equal, "images_seen"] == 260
    dyn, full = table.loc[dyn_label], table.loc["full"]
    assert dyn.time_saved == pytest.approx(1 - dyn.time_s / full.time_s)
    assert dyn.acc_lost == pytest.approx(full.acc - dyn.acc)
    # every subset arm is matched to full at equal images by alpha and epochs, and tested against both references
    for label in ("static α=130", dyn_label, "variant α=130 β=0.5", "random α=130"):
        assert (table.loc[label, "ref_full"], table.loc[label, "ref_equal"]) == ("full", equal)
        assert table.loc[label, "verdict_full"] in ("better", "worse", "no detectable difference", "no spread to test")
    accs = {lab: [100 * rows[-1]["test_acc_at_best_val"] for config, rows in trials if config["arm"] == arm]
            for arm, lab in (({"policy": "dynamic"}, dyn_label), ({"policy": "full", "image_budget": "equal"}, equal))}
    assert dyn.diff_equal == pytest.approx(statistics.mean(accs[dyn_label]) - statistics.mean(accs[equal]))
    assert pd.isna(table.loc["static α=130 +aug", "ref_full"])  # no full-data run with augmentation
    headline = (out / "headline.md").read_text()
    assert f"- {dyn_label} against full data at equal images (α × epochs) (2 vs 2 runs):" in headline
    assert "- static" not in headline and "- variant α=130 β=0.5 against full data for the same epochs" in headline
    assert equal in pd.read_csv(out / "time_to_accuracy.csv", index_col=0).index

    static = pd.read_csv(experiment / "static" / "metrics.csv")
    assert table.loc["static α=130 +aug", "acc"] == pytest.approx(100 * static.test_acc_at_best_val.iloc[-1])
    assert table.loc["static α=130 +aug", "time_s"] == pytest.approx(static.wall_time_s.iloc[-1])
    for figure in ("curves.png", "accuracy_vs_time.png", "curves.svg"):
        assert (out / figure).stat().st_size > 1000
    assert "dynamic α=130 β=0.5" in capsys.readouterr().out
