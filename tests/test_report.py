"""dyntrain.report against real Ray Tune experiments (a stand-in trainable reporting the engine's
per-epoch metrics, 2 epochs each) and `dyntrain train` folders written in the contract format: every
table number is recomputed here from the raw per-epoch records."""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
import statistics
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from dyntrain import claims, cli, figures, runs, tables
from dyntrain.config import TrainConfig

N_TRAIN = 400


def mean(xs):
    return statistics.mean(float(x) for x in xs)


def stdev(xs):
    return statistics.stdev(float(x) for x in xs)


def epochs_of(config: dict) -> list[dict]:
    """Deterministic per-epoch metrics of a run with `config`, shaped like the engine's records.
    Seed 1 loses accuracy in epoch 2, so best epoch != last epoch for it."""
    cfg = TrainConfig().to_dict() | {k: v for k, v in config.items() if k in TrainConfig().to_dict()}
    size = N_TRAIN if cfg["policy"] == "full" else cfg["alpha"]
    rows, best, test_at_best, seen, wall = [], -1.0, None, 0, 0.0
    for e in range(1, cfg["epochs"] + 1):
        val = 0.2 + 0.15 * e + size / 4000 + cfg["beta"] / 20 + 0.01 * cfg["seed"] + 0.03 * cfg["augment"]
        val -= 0.2 if (cfg["seed"] == 1 and e == 2) else 0.0
        test = val - 0.02
        if val > best:
            best, test_at_best = val, test
        seen += size
        wall += size / 100 + 0.5 * cfg["seed"]
        rows.append({"epoch": e, "train_loss": 2.0 / e, "train_acc": min(1.0, val + 0.05), "val_acc": val,
                     "test_acc": test, "best_val_acc": best, "test_acc_at_best_val": test_at_best,
                     "subset_size": size, "images_seen": seen, "resample": "I" if e > 1 else "none",
                     "beta_n": cfg["beta"], "epoch_time_s": size / 100, "wall_time_s": wall,
                     "stopped": "epochs" if e == cfg["epochs"] else ""})
    return rows


def standin_trainable(config):
    from ray import tune

    for row in epochs_of(config):
        failing = config.get("policy") == "random" and config.get("seed") == 1 and Path(config["fail_flag"]).exists()
        if failing and row["epoch"] == 2:
            raise RuntimeError("injected failure")
        tune.report(row)


def stop_static_seed1(trial_id, result):  # what an ASHA stop looks like: TERMINATED, fewer epochs
    return result["config"]["policy"] == "static" and result["config"]["seed"] == 1


def write_train_run(out: Path, finished: bool = True, epochs_done: int | None = None, **config) -> Path:
    cfg = TrainConfig().replace(epochs=2, **config).to_dict()
    rows = epochs_of(cfg)[:epochs_done]
    summary = {"config": cfg, "environment": {}, "n_train": N_TRAIN, "best": {}, "final": {},
               "total_time_s": rows[-1]["wall_time_s"]} if finished else None
    runs.write_run(out, cfg, rows, summary)
    return out


def raw_trials(exp: Path) -> list[tuple[dict, pd.DataFrame]]:
    """(params.json, result.json records) of every trial in the newest experiment state, read without
    dyntrain. A restarted trial leaves its old folder behind: listing folders would count it twice."""
    state = json.loads(max(exp.glob("experiment_state-*.json")).read_text())
    out = []
    for trial_json, _ in state["trial_data"]:
        d = exp / json.loads(trial_json)["relative_logdir"]
        records = pd.read_json(d / "result.json", lines=True, dtype={"trial_id": str})  # "84533_00000" is no int
        out.append((json.loads((d / "params.json").read_text()), records.drop_duplicates("epoch", keep="last")))
    return out


@pytest.fixture(scope="module")
def ray_exps(tmp_path_factory):
    """grid: dynamic, α in {100, 200} x β in {0.1, 0.5} x seeds {0, 1}. policies: full / static / random
    x seeds {0, 1}; static seed 1 stopped by the stopper after 1 epoch; random seed 1 fails in epoch 2
    (copied as policies_error), then the experiment is restored with restart_errored and finishes."""
    import ray
    import ray.cloudpickle
    from ray import tune

    # Ray workers cannot import this test module: ship the stand-in trainable and stopper by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = tmp_path_factory.mktemp("ray")
    flag = root / "fail"
    flag.write_text("")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        grid_space = {"policy": "dynamic", "epochs": 2, "alpha": tune.grid_search([100, 200]),
                      "beta": tune.grid_search([0.1, 0.5]), "seed": tune.grid_search([0, 1])}
        fast = tune.TuneConfig(reuse_actors=True)  # one worker process for many trials: 5x faster here
        tune.Tuner(standin_trainable, param_space=grid_space, tune_config=fast,
                   run_config=tune.RunConfig(name="grid", storage_path=str(root), verbose=0)).fit()
        pol_space = {"policy": tune.grid_search(["full", "static", "random"]), "alpha": 200, "epochs": 2,
                     "seed": tune.grid_search([0, 1]), "fail_flag": str(flag)}
        tune.Tuner(standin_trainable, param_space=pol_space, tune_config=fast,
                   run_config=tune.RunConfig(name="policies", storage_path=str(root), verbose=0,
                                             stop=stop_static_seed1)).fit()
        shutil.copytree(root / "policies", root / "policies_error")
        flag.unlink()
        tune.Tuner.restore(str(root / "policies"), standin_trainable, restart_errored=True).fit()
    finally:
        if started:
            ray.shutdown()
    return root


@pytest.mark.slow
def test_ray_records_match_raw_per_epoch_results(ray_exps):
    df = tables.load(ray_exps / "grid")
    raw = raw_trials(ray_exps / "grid")
    assert len(df) == sum(len(r) for _, r in raw) == 16
    assert set(df.status) == {"finished"} and not df.early_stopped.any()
    for params, records in raw:
        run = df[df.run.str.endswith(records.trial_id.iloc[0])].sort_values("epoch")
        assert (run.alpha.iloc[0], run.beta.iloc[0], run.seed.iloc[0]) == (params["alpha"], params["beta"], params["seed"])
        assert run.delta.iloc[0] == TrainConfig().delta  # not set in the trial: TrainConfig's default
        assert run.val_acc.tolist() == pytest.approx(records.val_acc.tolist())
        assert run.beta_n.tolist() == pytest.approx(records.beta_n.tolist())


@pytest.mark.slow
def test_grid_tables_match_raw(ray_exps):
    df = tables.load(ray_exps / "grid")
    cells: dict = {}
    for params, r in raw_trials(ray_exps / "grid"):
        cells.setdefault((params["alpha"], params["beta"]), []).append(
            (100 * r.val_acc.max(), 100 * r.test_acc_at_best_val.iloc[-1], r.wall_time_s.iloc[-1]))
    val, test, time = (tables.grid_table(df), tables.grid_table(df, "test_acc_at_best_val"), tables.time_table(df))
    assert list(val["mean"].index) == [200, 100] and list(val["mean"].columns) == [0.1, 0.5]
    for (alpha, beta), vals in cells.items():
        for table, i in ((val, 0), (test, 1), (time, 2)):
            xs = [v[i] for v in vals]
            assert table["mean"].loc[alpha, beta] == pytest.approx(mean(xs))
            assert table["std"].loc[alpha, beta] == pytest.approx(stdev(xs))
            assert table["n"].loc[alpha, beta] == 2
    # seed 1's best epoch is epoch 1, not its last
    assert val["mean"].loc[100, 0.1] == pytest.approx(100 * mean([0.2 + 0.3 + 0.025 + 0.005, 0.2 + 0.15 + 0.025 + 0.005 + 0.01]))


@pytest.mark.slow
def test_policy_table_after_restore(ray_exps):
    df = tables.load(ray_exps / "policies")
    assert set(df.status) == {"finished"}  # the errored trial was restarted and finished
    assert df.run.nunique() == 6 < len(list((ray_exps / "policies").glob("*/params.json")))
    t = tables.policy_table(df)
    assert list(t.policy) == ["full", "static", "random"] and list(t.n) == [2, 2, 2]
    per_run = {}
    for params, r in raw_trials(ray_exps / "policies"):
        per_run.setdefault(params["policy"], []).append(r)
    full_time = mean(r.wall_time_s.iloc[-1] for r in per_run["full"])
    full_acc = mean(100 * r.test_acc_at_best_val.iloc[-1] for r in per_run["full"])
    for policy, rs in per_run.items():
        row = t[t.policy == policy].iloc[0]
        accs = [100 * r.test_acc_at_best_val.iloc[-1] for r in rs]
        assert row.acc == pytest.approx(mean(accs))
        assert row.acc_std == pytest.approx(stdev(accs))
        assert row.acc_ci95 == pytest.approx(12.7062047 * stdev(accs) / math.sqrt(2))  # t(0.975, 1)
        assert row.time_s == pytest.approx(mean(r.wall_time_s.iloc[-1] for r in rs))
        assert row.time_saved == pytest.approx(1 - row.time_s / full_time)
        assert row.acc_lost == pytest.approx(full_acc - row.acc)
        assert row.images_seen == pytest.approx(mean(r.images_seen.iloc[-1] for r in rs))
        # Ray reports carry no n_train: the pool size comes from the full-data run's subset
        assert row.share == pytest.approx(1.0 if policy == "full" else 200 / N_TRAIN)
    assert list(t.seeds) == [2, 2, 2]
    static = t[t.policy == "static"].iloc[0]
    assert static.early_stopped == 1 and pd.isna(t[t.policy == "full"].iloc[0].alpha)
    assert tables.runs(df).query("policy == 'static' and seed == 1").epochs_done.item() == 1


@pytest.mark.slow
def test_errored_trial_is_listed_apart(ray_exps):
    df = tables.load(ray_exps / "policies_error")
    u = tables.unfinished(df)
    assert list(u.status) == ["error"] and u.setting.item() == "random α=200" and u.epochs_done.item() == 1
    t = tables.policy_table(df)
    assert t[t.policy == "random"].n.item() == 1


@pytest.mark.slow
def test_running_and_pending_trials_are_listed_apart(ray_exps, tmp_path):
    """Ray saves a RUNNING trial as PENDING: an experiment interrupted mid-trial reads like this."""
    exp = shutil.copytree(ray_exps / "grid", tmp_path / "grid")
    state_path = max(exp.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    trials = [json.loads(t) for t, _ in state["trial_data"][:2]]
    for i, trial in enumerate(trials):
        trial["status"] = "PENDING"
        state["trial_data"][i][0] = json.dumps(trial)
    state_path.write_text(json.dumps(state))
    running, pending = (exp / t["relative_logdir"] for t in trials)
    lines = (running / "result.json").read_text().splitlines()
    (running / "result.json").write_text(lines[0] + "\n" + lines[1][:40])  # a line being written
    (pending / "result.json").unlink()
    (pending / "progress.csv").unlink()

    df = tables.load(exp)
    u = tables.unfinished(df).sort_values("status")
    assert list(u.status) == ["in_progress", "pending"] and list(u.epochs_done.fillna(0)) == [1, 0]
    assert tables.grid_table(df)["n"].to_numpy().sum() == 6


@pytest.mark.slow
def test_repeated_trials_take_their_seed_from_the_trial_index(ray_exps, tmp_path):
    """ray.tune.search.Repeater marks repeats with __trial_index__; dyntrain.tune adds it to the seed."""
    exp = shutil.copytree(ray_exps / "grid", tmp_path / "grid")
    state_path = max(exp.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial["config"]["__trial_index__"] = 3
    state["trial_data"][0][0] = json.dumps(trial)
    state_path.write_text(json.dumps(state))
    seeds = tables.runs(tables.load(exp)).seed
    assert seeds[f"grid/{trial['trial_id']}"] == trial["config"]["seed"] + 3
    assert "__trial_index__" not in tables.load(exp).columns


def test_train_folders_tables_and_time_to_accuracy(tmp_path):
    for aug in (False, True):
        for seed in (0, 1):
            write_train_run(tmp_path / f"full{aug}{seed}", policy="full", augment=aug, seed=seed)
            write_train_run(tmp_path / f"dyn{aug}{seed}", policy="dynamic", alpha=200, beta=0.5, augment=aug, seed=seed)
    write_train_run(tmp_path / "running", policy="dynamic", alpha=200, beta=0.5, finished=False, epochs_done=1)
    df = tables.load(tmp_path)
    assert tables.unfinished(df).index.tolist() == [str(tmp_path / "running")]
    t = tables.policy_table(df)
    assert list(zip(t.policy, t.augment)) == [("full", False), ("dynamic", False), ("full", True), ("dynamic", True)]
    assert list(t.index) == ["full", "dynamic α=200 β=0.5", "full +aug", "dynamic α=200 β=0.5 +aug"]
    dyn_aug = t.loc["dynamic α=200 β=0.5 +aug"]
    full_aug = t.loc["full +aug"]
    assert dyn_aug.share == pytest.approx(0.5) and dyn_aug.n == 2  # the in-progress run is not counted
    assert dyn_aug.time_saved == pytest.approx(1 - dyn_aug.time_s / full_aug.time_s)

    tta = tables.time_to_accuracy(df)
    assert list(tta.index) == list(t.index)
    for label, policy, aug in (("dynamic α=200 β=0.5", "dynamic", False), ("full +aug", "full", True)):
        arm = [epochs_of({"policy": policy, "alpha": 200, "beta": 0.5, "augment": aug, "epochs": 2, "seed": s}) for s in (0, 1)]
        full = [epochs_of({"policy": "full", "augment": aug, "epochs": 2, "seed": s}) for s in (0, 1)]
        full_best = mean(max(r["val_acc"] for r in rows) for rows in full)
        for f, p in ((0.95, "95"), (0.99, "99")):
            hits = [next(r for r in rows if r["val_acc"] >= f * full_best) for rows in arm
                    if any(r["val_acc"] >= f * full_best for r in rows)]
            row = tta.loc[label]
            assert row[f"target_{p}"] == pytest.approx(100 * f * full_best)
            assert row[f"reached_{p}"] == len(hits) > 0
            assert row[f"time_s_{p}"] == pytest.approx(mean(h["wall_time_s"] for h in hits))
            assert row[f"images_{p}"] == pytest.approx(mean(h["images_seen"] for h in hits))
            assert row[f"epoch_{p}"] == pytest.approx(mean(h["epoch"] for h in hits))


def test_several_grids_must_be_chosen(tmp_path):
    for delta in (0.01, 0.02):
        for beta in (0.1, 0.5):
            write_train_run(tmp_path / f"d{delta}b{beta}", policy="dynamic", alpha=100, beta=beta, delta=delta)
    df = tables.load(tmp_path)
    assert tables.grids(df) == ["dynamic δ=0.01", "dynamic δ=0.02"]
    with pytest.raises(tables.ReportError, match="several"):
        tables.grid_table(df)
    assert tables.grid_table(df, grid="dynamic δ=0.02")["n"].to_numpy().sum() == 2


@pytest.mark.slow
def test_elitism_curves_are_running_maximum_mean(ray_exps):
    df = tables.load(ray_exps / "grid")
    arm = df[(df.alpha == 100) & (df.beta == 0.1)]
    fig = figures.plot_curves(arm, elitism=True)
    y = fig.axes[0].lines[0].get_ydata()
    per_seed = [100 * arm[arm.seed == s].sort_values("epoch").val_acc.cummax() for s in (0, 1)]
    assert list(y) == pytest.approx([mean(v) for v in zip(*[p.tolist() for p in per_seed])])


@pytest.mark.slow
def test_main_writes_tables_and_figures(ray_exps, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["report", str(ray_exps / "grid"), str(ray_exps / "policies_error"), "--out", str(out), "--elitism"]) == 0
    captured = capsys.readouterr()
    assert "random" in captured.out and "1 run(s) not finished" in captured.err and "error" in captured.err
    for name in ("grid_best_val_acc", "grid_test_acc", "grid_time", "policies", "time_to_accuracy", "unfinished"):
        for fmt in ("md", "csv", "tex"):
            assert (out / f"{name}.{fmt}").stat().st_size > 0, name + fmt
    for name in ("curves", "curves_elitism", "accuracy_vs_time", "heatmap"):
        for fmt in ("png", "svg"):
            assert (out / f"{name}.{fmt}").stat().st_size > 1000
    grid_csv = pd.read_csv(out / "grid_best_val_acc.csv", index_col=0)
    assert grid_csv.loc[200, "beta=0.5 mean"] == pytest.approx(tables.grid_table(tables.load(ray_exps / "grid"))["mean"].loc[200, 0.5])
    md = (out / "grid_time.md").read_text().splitlines()
    assert md[0] == "| α \\ β | 0.1 | 0.5 |" and " ± " in md[2]
    assert r"$\pm$" in (out / "policies.tex").read_text()
    assert "![curves](curves.png)" in (out / "report.md").read_text()


def test_format_option(tmp_path):
    write_train_run(tmp_path / "runs" / "a", policy="full")
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--format", "csv", "--no-figures"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["policies.csv", "runs.csv", "time_to_accuracy.csv"]
    assert cli.main(["report", str(tmp_path / "runs"), "--format", "pdf"]) == 2


def test_only_runs_in_progress(tmp_path, capsys):
    write_train_run(tmp_path / "a", policy="full", finished=False, epochs_done=1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps(TrainConfig().to_dict()))  # started, no epoch yet
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "no finished runs yet" in err and "in_progress, 1/2 epochs" in err and "in_progress, —/200 epochs" in err
    with pytest.raises(tables.ReportError, match="no finished runs"):
        tables.policy_table(tables.load(tmp_path))


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("empty", "empty directory"),
    ("unrelated", "no experiment found"),
    ("trial_dir", "pass its experiment directory"),
    ("bad_csv", "not a dyntrain metrics file"),
    ("bad_summary", "cannot read run: JSONDecodeError"),
    ("bad_state", "cannot read Ray Tune experiment"),
])
def test_unreadable_directories(case, message, tmp_path, capsys):
    d = tmp_path / "exp"
    if case != "missing":
        d.mkdir()
    if case == "unrelated":
        (d / "notes.txt").write_text("hello")
    elif case == "trial_dir":
        (d / "params.json").write_text("{}")
    elif case == "bad_csv":
        (d / "config.json").write_text("{}")
        (d / "metrics.csv").write_text("a,b\n1,2\n")
    elif case == "bad_summary":
        write_train_run(d / "run", policy="full")
        (d / "run" / "summary.json").write_text('{"config": ')
    elif case == "bad_state":
        (d / "experiment_state-2026-01-01_00-00-00.json").write_text("{not json")
    with pytest.raises(tables.ReportError, match=message):
        tables.load(d)
    assert cli.main(["report", str(d), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_welch_comparison_matches_scipy_and_a_hand_computed_case():
    a, b = [80.0, 82.0, 84.0], [78.0, 79.0, 80.0]
    c = tables.compare(a, b)
    direct = stats.ttest_ind(a, b, equal_var=False)
    assert c["diff"] == pytest.approx(3.0) and c["p"] == pytest.approx(direct.pvalue)
    assert (c["lo"], c["hi"]) == pytest.approx(tuple(direct.confidence_interval(0.95)))
    # By hand: s_a^2 = 4, s_b^2 = 1, n = 3: se^2 = 5/3, t = 3 / sqrt(5/3) = 2.3238; Welch-Satterthwaite
    # df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 2.9412; the CI is 3 ± t(0.975, 2.9412) * sqrt(5/3).
    se, df = math.sqrt(5 / 3), (5 / 3) ** 2 / ((4 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)
    assert df == pytest.approx(2.941176, rel=1e-6) and direct.statistic == pytest.approx(3 / se)
    assert c["hi"] - 3 == pytest.approx(stats.t.ppf(0.975, df) * se)
    assert c["p"] == pytest.approx(2 * stats.t.sf(3 / se, df)) and c["verdict"] == "no detectable difference"
    assert tables.compare([90.0, 91.0, 90.5], [80.0, 81.0, 80.5])["verdict"] == "better"  # a clear win
    loss = tables.compare([70.0, 71.0, 70.5], [80.0, 81.0, 80.5])
    assert loss["verdict"] == "worse" and loss["hi"] < 0 and loss["p"] < 0.05  # a clear loss
    assert tables.compare([80.0, 81.0], [80.0, 81.0])["verdict"] == "no detectable difference"  # a tie: p = 1
    assert tables.compare([80.0, 81.0], [80.0, 81.0])["p"] == pytest.approx(1.0)
    assert tables.compare([80.0], [79.0, 81.0])["verdict"] == "too few runs"


def test_every_arm_against_full_data_and_full_data_at_equal_images(tmp_path):
    """Synthetic runs: full (4 epochs), full stopped at alpha x epochs images, and dynamic at alpha;
    every difference, CI and p-value recomputed here from the records."""
    base = dict(epochs=4, alpha=200, beta=0.7)
    arms = {"full": dict(policy="full"), "equal": dict(policy="full", image_budget=200 * 4),
            "dyn": dict(policy="dynamic"), "static": dict(policy="static")}
    for name, config in arms.items():
        for seed in (0, 1, 2):
            cfg = TrainConfig(seed=seed, **base, **config).to_dict()
            rows = epochs_of(cfg)
            if name == "equal":  # full data for 800 images: two of its 400-image epochs
                rows = [{**r, "stopped": "image_budget" if r["epoch"] == 2 else ""} for r in rows[:2]]
            runs.write_run(tmp_path / f"{name}{seed}", cfg, rows, {"config": cfg, "n_train": N_TRAIN,
                                                                 "total_time_s": rows[-1]["wall_time_s"]})
    df = tables.load(tmp_path)
    t = tables.policy_table(df)
    assert list(t.index) == ["full", f"full ({tables.EQUAL})", "static α=200", "dynamic α=200 β=0.7"]
    acc = {n: [100 * r[-1]["test_acc_at_best_val"] for r in
               ([epochs_of(TrainConfig(seed=s, **base, **c).to_dict())[:2 if n == "equal" else None] for s in (0, 1, 2)])]
           for n, c in arms.items()}
    dyn = t.loc["dynamic α=200 β=0.7"]
    assert dyn.ref_full == "full" and dyn.ref_equal == f"full ({tables.EQUAL})"
    for name, ref in (("full", "full"), ("equal", "equal")):
        direct = stats.ttest_ind(acc["dyn"], acc[ref], equal_var=False)
        assert dyn[f"diff_{name}"] == pytest.approx(mean(acc["dyn"]) - mean(acc[ref]))
        assert dyn[f"p_{name}"] == pytest.approx(direct.pvalue)
        assert (dyn[f"lo_{name}"], dyn[f"hi_{name}"]) == pytest.approx(tuple(direct.confidence_interval(0.95)))
    # the equal-images arm trains 2 of the 4 epochs: dynamic at alpha = 200 for 4 epochs beats it
    assert dyn.verdict_equal == "better" and dyn.diff_equal > 0
    assert dyn.time_saved_equal == pytest.approx(1 - dyn.time_s / t.loc[f"full ({tables.EQUAL})"].time_s)
    eq = t.loc[f"full ({tables.EQUAL})"]
    assert eq.ref_full == "full" and pd.isna(eq.ref_equal) and eq.images_seen == 800
    assert pd.isna(t.loc["full"].diff_full)  # the reference is not compared with itself
    shown = tables.show_policies(t)
    assert shown.loc["dynamic α=200 β=0.7", f"verdict vs full, {tables.EQUAL}"] == "better"
    assert shown.loc["dynamic α=200 β=0.7", f"p vs full, {tables.EQUAL}"] == f"{direct.pvalue:.3f}"
    # time to accuracy includes the equal-images arm
    assert f"full ({tables.EQUAL})" in tables.time_to_accuracy(df).index
    said = claims.headline(t)
    assert len(said) == 2 and said[1].startswith(
        "dynamic α=200 β=0.7 against full data at equal images (α × epochs) (3 vs 3 runs): 11% more training time, "
        f"accuracy {dyn.diff_equal:+.2f} points, 95% CI [{dyn.lo_equal:+.2f}, {dyn.hi_equal:+.2f}]")
    assert f"p = {direct.pvalue:.3f}: better." in said[1]
    cli.write_report([tmp_path], tmp_path / "report", formats=("md", "html"), with_figures=False)
    assert (tmp_path / "report" / "headline.md").read_text() == "".join(f"- {s}\n" for s in said)
    page = (tmp_path / "report" / "report.html").read_text()
    assert all(html.escape(s) in page for s in said)


def test_headline_says_not_measured_without_a_reference():
    t = pd.DataFrame({"policy": ["dynamic"], "n": [2], "ref_full": [None], "ref_equal": [None]}, index=["dynamic"])
    assert claims.headline(t) == [
        "dynamic against full data for the same epochs: not measured (no such reference run).",
        "dynamic against full data at equal images (α × epochs): not measured (no such reference run)."]
    assert claims.headline(t.assign(policy="full")) == ["The method (dynamic or variant training): not measured in these runs."]


def test_time_format():
    assert [tables.fmt_time(s) for s in (4.21, 1948, 3723)] == ["4.2s", "32m28s", "1h02m03s"]


def test_budgeted_full_run_is_its_own_arm(tmp_path):
    """Full data stopped at an equal wall time is a different arm from unbudgeted full data."""
    for seed in (0, 1):
        write_train_run(tmp_path / f"full{seed}", policy="full", seed=seed)
        write_train_run(tmp_path / f"budget{seed}", policy="full", seed=seed, time_budget_s=3.5)
    t = tables.policy_table(tables.load(tmp_path))
    assert list(t.index) == ["full", "full time_budget_s=3.5"]
    assert list(t.n) == [2, 2]


@pytest.mark.slow
def test_relative_experiment_path(ray_exps, monkeypatch):
    """`dyntrain report results/ray/NAME` from the repository root: a relative path, not a URI."""
    monkeypatch.chdir(ray_exps)
    relative = tables.load("grid")
    assert len(relative) == len(tables.load(ray_exps / "grid")) > 0


def test_paper_numbers_sit_beside_the_measured_arms(tmp_path):
    paper = list(csv.DictReader(resources.files("dyntrain").joinpath("assets/paper.csv").open()))
    assert len(paper) == 28 and {r["table"] for r in paper} == {"2-3", "4", "fig-11", "5"}
    arms = {"dyn": dict(policy="dynamic", alpha=25_000, beta=0.7), "full": dict(policy="full"),
            "fullaug": dict(policy="full", augment=True), "static": dict(policy="static", alpha=200)}
    for name, config in arms.items():
        for seed in (0, 1):
            cfg = TrainConfig(epochs=200, protocol="paper", seed=seed, **config).to_dict()
            rows = epochs_of(cfg)
            runs.write_run(tmp_path / f"{name}{seed}", cfg, rows, {"config": cfg, "n_train": N_TRAIN,
                                                                   "total_time_s": rows[-1]["wall_time_s"]})
    df = tables.load(tmp_path)
    t = claims.paper_table(df, "best_val_acc")
    assert sorted(zip(t.index, t.paper_table)) == [("dynamic α=25000 β=0.7", "2-3"), ("dynamic α=25000 β=0.7", "4"),
                                                   ("full", "4"), ("full +aug", "5")]  # no static arm at α=200
    dyn = [max(r["val_acc"] for r in epochs_of({**arms["dyn"], "epochs": 200, "seed": s})) * 100 for s in (0, 1)]
    rows = t.loc["dynamic α=25000 β=0.7"].set_index("paper_table")
    assert rows.loc["4", "paper_acc"] == 84.55 and rows.loc["2-3", "paper_acc"] == 84.4
    assert rows.loc["4", "acc"] == pytest.approx(mean(dyn))
    assert rows.loc["4", "acc_minus_paper"] == pytest.approx(mean(dyn) - 84.55)
    assert rows.loc["4", "paper_time_s"] == 33 * 60 + 14
    assert t.loc["full +aug", "paper_acc"] == 90.65 and t.loc["full", "paper_time_s"] == 50 * 60 + 25
    found = cli.write_report([tmp_path], tmp_path / "report", formats=("md", "csv"), with_figures=False)
    assert "paper" in found
    assert "| full +aug | 5 | paper | 2 |" in (tmp_path / "report" / "paper.md").read_text()


def test_the_readmes_results_paragraph_is_generated_from_the_committed_runs():
    """README.md states, for the CPU-scale baselines in results/cpu-demo/, exactly what `dyntrain report`
    generated from those runs (headline.md), and headline.md is what `claims.headline` says of the
    committed policy table: no claim without a run behind it."""
    root = Path(__file__).resolve().parents[1]
    demo = root / "results" / "cpu-demo" / "baselines"
    policies = pd.read_csv(demo / "policies.csv", index_col=0)
    said = claims.headline(policies)
    assert (demo / "headline.md").read_text() == "".join(f"- {line}\n" for line in said)
    readme = (root / "README.md").read_text()
    assert all(f"- {line}\n" in readme for line in said)
    seeds = set(pd.read_csv(demo / "runs.csv").seed)
    assert len(seeds) >= 3 and {"full", f"full ({tables.EQUAL})"} <= set(policies.index)
