"""dyntrain tune: search spaces and their validation (no Ray), then searches on a 2-CPU local Ray
with the tiny image folder: grid, Optuna, ASHA, a trial restarted from its checkpoint, and an
experiment interrupted from the driver and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from dyntrain import cli, spaces
from dyntrain import tune as dtune
from dyntrain.config import ConfigError, TrainConfig

TRAIN = {"val_size": 20, "test_limit": 20, "batch_size": 64, "epochs": 2}  # 280 images in the training split


@pytest.fixture(scope="session")
def data(tiny_folder, tmp_path_factory) -> dict:
    """Training options fixed for every trial: the tiny folder, 2 epochs."""
    return {"dataset": f"folder:{tiny_folder}", "data_dir": str(tmp_path_factory.mktemp("data")), **TRAIN}


@pytest.fixture(scope="session")
def data_args(data) -> list[str]:
    """The same as command-line options."""
    return [a for k, v in data.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def write_space(tmp_path: Path, space: dict) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"space-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


# --- search spaces, no Ray ------------------------------------------------------------------------
def test_builtin_spaces_are_the_papers_grid_and_the_baselines():
    grid = list(spaces.points(spaces.parse_space(spaces.load_space("paper-grid"))))
    assert len(grid) == 21
    assert {(p["alpha"], p["beta"]) for p in grid} == {(a, b / 10) for a in (15000, 20000, 25000) for b in range(1, 8)}
    assert all(p["policy"] == "dynamic" for p in grid)
    cfg = TrainConfig.from_dict(grid[0])
    assert (cfg.delta, cfg.gamma) == (0.01, 0.97)  # the paper's, as the defaults
    base = list(spaces.points(spaces.parse_space({**spaces.load_space("baselines"), "alpha": 1250, "epochs": 6})))
    arms = {(p["policy"], p.get("image_budget"), p["augment"]) for p in base}
    # every policy, and full data stopped at the images of the subset arms with the same alpha and epochs
    assert len(base) == 12 and arms == {(q, b, a) for q, b in [(q, None) for q in ("full", "static", "dynamic", "variant", "random")]
                                        + [("full", 1250 * 6)] for a in (False, True)}
    assert spaces.DEFAULT_SEEDS["baselines"] == 3


def test_arms_set_several_fields_per_trial_and_equal_images_follows_alpha_and_epochs(tmp_path, data):
    from ray import tune

    raw = spaces.load_space(write_space(tmp_path, {"arm": [{"policy": "full"}, {"policy": "full", "image-budget": "equal"},
                                                           {"policy": "dynamic", "beta": 0.5}], "alpha": [100, 140]}))
    space = spaces.parse_space(raw)
    assert spaces.to_param_space(space, "grid")["arm"] == tune.grid_search(space["arm"])
    got = [(p["policy"], p["alpha"], p.get("image_budget"), p.get("beta")) for p in spaces.points(space)]
    assert sorted(got, key=str) == sorted([("full", 100, None, None), ("full", 140, None, None), ("full", 100, 200 * 100, None),
                                           ("full", 140, 200 * 140, None), ("dynamic", 100, None, 0.5),
                                           ("dynamic", 140, None, 0.5)], key=str)
    plan = dtune.plan(raw, storage=str(tmp_path), overrides=data, seeds=2)  # epochs 2 from the overrides
    assert plan.seeds == 2 and {p.get("image_budget") for p in spaces.points(plan.space)} == {None, 200, 280}
    with pytest.raises(ConfigError, match="arm is a grid over whole points; it needs search grid"):
        dtune.plan(raw, search="optuna", storage=str(tmp_path), overrides=data)
    with pytest.raises(ConfigError, match=r"policy set both in arm \{'policy': 'full'\} and for every trial"):
        dtune.plan("baselines", storage=str(tmp_path), overrides={**data, "policy": "dynamic"})
    assert dtune.plan("baselines", storage=str(tmp_path), overrides={**data, "alpha": 100}).seeds == 3


@pytest.mark.parametrize("arm, message", [
    ([], "arm must be a non-empty list of mappings"),
    ({"policy": "full"}, "arm must be a non-empty list of mappings"),
    ([{"policy": "full"}, {"alpah": 3}], "arm {'alpah': 3}: unknown option(s) alpah"),
    ([{"beta": [0.1, 0.2]}], "beta must be a single value in an arm"),
    ([{"policy": "greedy"}], "policy='greedy' is invalid"),
    ([{"policy": "full", "image_budget": "half"}], "image_budget='half' is invalid"),
])
def test_bad_arms_are_rejected(arm, message):
    with pytest.raises(ConfigError) as err:
        spaces.validate_space(spaces.parse_space({"arm": arm}))
    assert message in str(err.value)


def test_yaml_space_scalars_lists_and_samplers(tmp_path):
    from ray import tune

    raw = spaces.load_space(write_space(tmp_path, {
        "epochs": 3, "alpha": [100, 200], "beta": {"uniform": [0.1, 0.9]}, "lr": {"loguniform": [1e-4, 1e-2]},
        "val-size": {"randint": [40, 60]}, "policy": {"choice": ["dynamic", "variant"]},
    }))
    space = spaces.parse_space(raw)
    assert space["epochs"] == 3 and space["alpha"] == [100, 200]
    assert space["val_size"] == spaces.Sampled("randint", (40, 60))
    grid = spaces.to_param_space(space, "grid")
    assert grid["alpha"] == tune.grid_search([100, 200]) and grid["epochs"] == 3
    assert isinstance(grid["beta"], tune.search.sample.Float) and (grid["beta"].lower, grid["beta"].upper) == (0.1, 0.9)
    assert (grid["val_size"].lower, grid["val_size"].upper) == (40, 61)  # randint's high is included
    assert isinstance(spaces.to_param_space(space, "optuna")["alpha"], tune.search.sample.Categorical)
    # bounds and choices are what validation checks: 2 alphas x 2 betas x 2 lrs x 2 val sizes x 2 policies
    assert len(list(spaces.points(space))) == 32


def test_optuna_starts_at_the_papers_best_point_moved_into_the_space():
    space = spaces.parse_space({"alpha": {"randint": [100, 200]}, "beta": {"uniform": [0.1, 0.9]}, "delta": [0.05, 0.01],
                               "gamma": {"choice": [0.5, 0.9]}, "lr": {"loguniform": [1e-4, 1e-2]}, "epochs": 3})
    assert spaces.start_point(space) == {"alpha": 200, "beta": 0.7, "delta": 0.01, "gamma": 0.5, "lr": 1e-3}


def test_a_fraction_of_a_gpu_caps_the_trials_cuda_memory_to_its_share(monkeypatch):
    import torch

    caps = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, device=None: caps.append(fraction))
    assert [dtune.cap_gpu_memory(g) for g in (0.25, 0.5, 1, 2, 0)] == [True, True, False, False, False]
    assert caps == [0.25, 0.5]


@pytest.mark.parametrize("raw, message", [
    ({"alpah": 100}, "unknown option(s) alpah"),
    ({"beta": [0.5, 1.2]}, "beta=1.2 is invalid: must be [0, 1] (at beta=1.2)"),
    ({"beta": {"uniform": [0.1, 1.5]}}, "beta=1.5 is invalid: must be [0, 1]"),
    ({"beta": {"uniform": [0.9, 0.1]}}, "low must be below high"),
    ({"beta": {"normal": [0, 1]}}, "is not a sampler"),
    ({"lr": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
    ({"alpha": {"uniform": [100, 200]}}, "alpha is an integer, sample it with {randint: [100, 200]}"),
    ({"policy": ["dynamic", "greedy"]}, "policy='greedy' is invalid"),
    ({"gamma": []}, "gamma is an empty list"),
])
def test_bad_spaces_are_rejected_with_the_parameter_named(raw, message):
    with pytest.raises(ConfigError) as err:
        spaces.validate_space(spaces.parse_space(raw))
    assert message in str(err.value)


def test_alpha_is_checked_against_the_training_split_before_ray(tmp_path, data):
    # 300 training images - 20 held out for validation = 280 in the split.
    space = write_space(tmp_path, {"alpha": {"randint": [100, 281]}})
    with pytest.raises(ConfigError, match=r"alpha=281 is invalid: must be 1\.\.280 .*\(at alpha=281\)"):
        dtune.plan(space, storage=str(tmp_path), overrides=data)
    space = write_space(tmp_path, {"alpha": [100, 140]})
    plan = dtune.plan(space, storage=str(tmp_path), overrides=data)
    assert plan.path == f"{tmp_path}/{Path(space).stem}" and list(plan.datasets) == [data["dataset"]]
    assert plan.shares == {(100, 280): 100 / 280, (140, 280): 0.5}  # printed when a search starts


def test_fixed_values_and_seeds_repeat_points(tmp_path, data):
    plan = dtune.plan("paper-grid", overrides={**data, "alpha": 120}, seeds=3, storage=str(tmp_path))
    assert plan.space["alpha"] == 120 and plan.space["seed"] == [0, 1, 2] and plan.space["epochs"] == 2
    assert len(list(spaces.points(plan.space))) == 7 * 3


def test_a_dict_of_ray_domains_is_a_space(tmp_path, data):
    """The Python form: Ray's own domains, validated like the YAML form and handed to Ray unchanged."""
    from ray import tune

    beta, alpha = tune.quniform(0.2, 0.8, 0.1), tune.randint(30, 61)
    space = {"policy": tune.choice(["dynamic", "variant"]), "alpha": alpha, "beta": beta,
             "delta": tune.grid_search([0.01, 0.05])}
    plan = dtune.plan(space, storage=str(tmp_path), overrides=data)
    assert plan.space["alpha"] == spaces.Sampled("randint", (30, 60), alpha) and plan.path.endswith("/search")
    assert plan.space["delta"] == [0.01, 0.05]
    param_space = spaces.to_param_space(plan.space, "grid")
    assert param_space["beta"] is beta and param_space["delta"] == tune.grid_search([0.01, 0.05])
    with pytest.raises(ConfigError, match=r"alpha=281 is invalid: must be 1\.\.280"):
        dtune.plan({"alpha": tune.randint(100, 282)}, storage=str(tmp_path), overrides=data)
    with pytest.raises(ConfigError, match="beta=1.5 is invalid"):
        dtune.plan({"beta": tune.loguniform(0.1, 1.5)}, storage=str(tmp_path), overrides=data)


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "accuracy"}, "metric accuracy is invalid"),
    ({"search": "optuna", "space": "{space}"}, "needs a space with at least one list or sampler"),
    ({"gpus_per_trial": 0, "overrides": {"device": "cuda"}}, "device=cuda is invalid with gpus_per_trial 0"),
    ({"resume": True, "space": "{space}"}, "resume: no experiment to restore"),
    ({"scheduler": "pbt"}, "scheduler='pbt' is invalid"),
    ({"tracker": "wandb"}, "tracker='wandb' is invalid"),
])
def test_bad_search_arguments(tmp_path, data, kwargs, message):
    fixed = write_space(tmp_path, {"beta": 0.5, "alpha": 100})
    kwargs = {"space": "paper-grid", **kwargs}
    kwargs["space"] = kwargs["space"].replace("{space}", fixed)
    kwargs["overrides"] = {**data, **kwargs.get("overrides", {})}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        dtune.search(storage=str(tmp_path), **kwargs)


@pytest.mark.slow
def test_the_command_fails_before_ray_starts(tmp_path, data_args):
    assert "dyntrain.cli" not in subprocess.run([sys.executable, "-c", "import sys, dyntrain.tune; print(*sys.modules)"],
                                                capture_output=True, text=True, check=True).stdout.split()
    space = write_space(tmp_path, {"beta": [0.3, 1.5], "alpha": 100})
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dyntrain.cli", "tune", "--space", space, "--storage", str(tmp_path), *data_args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "dyntrain tune: error: search space: beta=1.5 is invalid: must be [0, 1]" in proc.stderr
    assert "Ray" not in proc.stderr + proc.stdout and time.monotonic() - start < 60
    assert not (tmp_path / Path(space).stem).exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["paper_grid.py", "baselines.py", "optuna_search.py"])
def test_tune_scripts_reach_validation(script, tmp_path, data_args):
    """The scripts' options and spaces parse; on 280 training images their alphas are rightly refused."""
    path = Path(__file__).parents[1] / "tune_scripts" / script
    proc = subprocess.run([sys.executable, str(path), "--storage", str(tmp_path), *data_args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is invalid: must be 1..280 (the size of the training split)" in proc.stderr, proc.stderr


# --- searches on a local Ray ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(tmp_path, data, space: dict, **kwargs):
    """A search over `space` on the tiny data (whose options the space may change)."""
    fixed = {k: v for k, v in data.items() if k not in space}
    return dtune.search(write_space(tmp_path, space), storage=str(tmp_path), name="exp", overrides=fixed,
                        live_report_s=None, verbose=0, **kwargs)


def epochs(result) -> list[int]:
    return result.metrics_dataframe["epoch"].tolist()


@pytest.mark.slow
def test_grid_search_with_seeds(local_ray, tmp_path, data):
    results = run(tmp_path, data, {"policy": ["dynamic", "random"], "alpha": 50}, seeds=2)
    assert not results.errors and len(results) == 4
    frame = results.get_dataframe()
    assert sorted(zip(frame["config/policy"], frame["config/seed"])) == [("dynamic", 0), ("dynamic", 1), ("random", 0), ("random", 1)]
    for r in results:
        assert epochs(r) == [1, 2]
        assert {"val_acc", "test_acc_at_best_val", "gpu_s", "best_val_acc_per_gpu_h", "n_train"} <= set(r.metrics)
        assert r.metrics["n_train"] > r.metrics["subset_size"] == 50
        assert list(Path(r.path).glob("events.out.tfevents.*"))  # TensorBoard logs
    assert results.experiment_path == f"{tmp_path}/exp"


@pytest.mark.slow
def test_optuna_search(local_ray, tmp_path, data):
    space = {"beta": {"uniform": [0.2, 0.8]}, "alpha": {"randint": [30, 60]}}
    results = run(tmp_path, data, space, search="optuna", num_samples=3, metric="val_acc")
    assert not results.errors and len(results) == 3
    frame = results.get_dataframe()
    assert 0.7 in frame["config/beta"].tolist()  # the paper's best beta is tried first
    assert frame["config/alpha"].between(30, 60).all() and frame["config/beta"].between(0.2, 0.8).all()
    assert all(epochs(r) == [1, 2] for r in results)
    import optuna  # the study is kept in the experiment folder, for optuna-dashboard

    study = optuna.load_study(study_name="exp", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "exp" / "optuna.journal"))))
    assert len(study.trials) == 3 and {t.params["beta"] for t in study.trials} == set(frame["config/beta"])


@pytest.mark.slow
def test_optuna_repeats_each_point_with_seeds(local_ray, tmp_path, data):
    results = run(tmp_path, data, {"beta": {"uniform": [0.2, 0.8]}, "alpha": 50}, search="optuna", num_samples=1, seeds=2)
    assert not results.errors
    frame = results.get_dataframe()  # the trainable adds Repeater's index to the seed
    assert sorted(frame["config/__trial_index__"]) == [0, 1] and frame["config/beta"].nunique() == 1


@pytest.mark.slow
def test_asha_stops_a_hopeless_trial(local_ray, tmp_path, data):
    # images_seen is deterministic: after epoch 1 the alpha=50 trial is behind the alpha=100 one. Two
    # CPUs per trial run them one after the other, in grid order.
    results = run(tmp_path, data, {"policy": "static", "alpha": [100, 50]}, scheduler="asha", grace_period=1,
                  metric="images_seen", cpus_per_trial=2)
    assert not results.errors
    by_alpha = {r.config["alpha"]: epochs(r) for r in results}
    assert by_alpha == {100: [1, 2], 50: [1]}


def injecting(tmp_path: Path, fail_at_epoch: int | None = None, interrupt_seed: int | None = None):
    """The real trainable, wrapped to log each start (and whether it restored a checkpoint) under
    tmp_path/starts, and once: raise after reporting epoch `fail_at_epoch`, or send the driver SIGINT
    after epoch 1 of the trial with seed `interrupt_seed`."""
    real, driver, marker = dtune.trainable, os.getpid(), tmp_path / "injected"
    (tmp_path / "starts").mkdir()

    def wrapped(config, data=None):
        import ray.tune

        seed = config.get("seed", 0)
        restored = ray.tune.get_checkpoint() is not None
        (tmp_path / "starts" / f"{seed}-{uuid.uuid4().hex}-{'restored' if restored else 'fresh'}").touch()
        report = ray.tune.report

        def report_then_inject(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if marker.exists():
                return
            if metrics["epoch"] == fail_at_epoch:
                marker.touch()
                raise RuntimeError("injected failure")
            if seed == interrupt_seed and metrics["epoch"] == 1:
                marker.touch()
                os.kill(driver, signal.SIGINT)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:  # the driver stops (kills) this trial before its next epoch
                    time.sleep(0.1)
                raise RuntimeError("the interrupted driver did not stop this trial")

        ray.tune.report = report_then_inject
        try:
            real(config, data)
        finally:
            ray.tune.report = report

    return wrapped


def starts(tmp_path: Path) -> list[str]:
    return sorted(p.name.split("-")[0] + "-" + p.name.split("-")[2] for p in (tmp_path / "starts").iterdir())


@pytest.mark.slow
def test_failed_trial_restarts_from_its_checkpoint(local_ray, tmp_path, data, monkeypatch):
    monkeypatch.setattr(dtune, "trainable", injecting(tmp_path, fail_at_epoch=1))
    results = run(tmp_path, data, {"beta": 0.5, "alpha": 50, "checkpoint_every": 1}, max_failures=1)
    assert not results.errors and len(results) == 1
    assert starts(tmp_path) == ["0-fresh", "0-restored"]
    assert epochs(results[0]) == [1, 2]


COMPARED = ["epoch", "train_loss", "train_acc", "val_acc", "test_acc", "subset_size", "images_seen", "resample", "beta_n"]


@pytest.mark.slow
def test_a_trial_failing_between_checkpoints_ends_as_an_uninterrupted_one(local_ray, tmp_path, data, monkeypatch):
    """Checkpoints every 2 epochs; the trial fails after epoch 3, restarts from epoch 2's checkpoint, and
    its metrics, epoch by epoch, equal those of a trial that never failed."""
    space = {"policy": "variant", "beta": 0.5, "alpha": 60, "delta": 0.2, "epochs": 4, "checkpoint_every": 2}
    clean = run(tmp_path / "clean", data, space)[0].metrics_dataframe
    monkeypatch.setattr(dtune, "trainable", injecting(tmp_path, fail_at_epoch=3))
    results = run(tmp_path, data, space, max_failures=1)
    assert not results.errors and starts(tmp_path) == ["0-fresh", "0-restored"]
    frame = results[0].metrics_dataframe.drop_duplicates("epoch", keep="last")  # epoch 3 was reported twice
    assert frame[COMPARED].reset_index(drop=True).equals(clean[COMPARED].reset_index(drop=True))
    assert sorted(clean["resample"].unique()) != ["none"]  # the sampler's state was restored, not just the model


@pytest.mark.slow
def test_a_trial_with_an_unreadable_checkpoint_says_so(local_ray, tmp_path, data, monkeypatch):
    """A checkpoint corrupted on storage: the restarted trial's error names the unreadable file."""
    real = dtune.trainable

    def corrupting(config, data=None):
        import ray.tune

        report = ray.tune.report

        def report_then_corrupt(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            if checkpoint is not None and metrics["epoch"] == 1:
                for state in (tmp_path / "exp").rglob(dtune.STATE_FILE):
                    state.write_bytes(state.read_bytes()[:1000])
                raise RuntimeError("injected failure")

        ray.tune.report = report_then_corrupt
        try:
            real(config, data)
        finally:
            ray.tune.report = report

    monkeypatch.setattr(dtune, "trainable", corrupting)
    results = run(tmp_path, data, {"beta": 0.5, "alpha": 50, "checkpoint_every": 1}, max_failures=1)
    assert len(results.errors) == 1
    assert dtune.STATE_FILE in str(results.errors[0]) and "CheckpointError" in str(results.errors[0])


@pytest.mark.slow
def test_interrupted_experiment_resumes_without_redoing_finished_trials(local_ray, tmp_path, data, data_args, monkeypatch, capsys):
    monkeypatch.setattr(dtune, "trainable", injecting(tmp_path, interrupt_seed=1))
    space = write_space(tmp_path, {"beta": 0.5, "alpha": 50, "checkpoint_every": 1})
    argv = ["tune", "--storage", str(tmp_path), "--name", "exp", "--space", space, "--seeds", "2", "--cpus-per-trial", "2",
            "--live-report-s", "0", *data_args]
    assert cli.main(argv) == 130
    assert "run the same command with --resume" in capsys.readouterr().err
    assert starts(tmp_path) == ["0-fresh", "1-fresh"]
    assert cli.main([*argv, "--resume"]) == 0
    assert starts(tmp_path)[:2] == ["0-fresh", "1-fresh"] and len(starts(tmp_path)) == 3  # seed 0 not redone
    from ray import tune

    results = tune.Tuner.restore(f"{tmp_path}/exp", trainable=dtune.trainable).get_results()
    assert sorted(r.config["seed"] for r in results) == [0, 1] and all(epochs(r) == [1, 2] for r in results)
    with pytest.raises(ConfigError, match="an experiment already exists"):
        dtune.plan(space, storage=str(tmp_path), name="exp", overrides=data)


@pytest.mark.slow
def test_trainable_in_a_users_own_tuner(local_ray, tmp_path, tiny_folder):
    """A plain Tuner: config keys are option names, the rest take the command's defaults; with
    with_parameters the trials take the data from the object store (the folder is gone by then)."""
    import shutil

    from ray import tune

    from dyntrain.data import load_dataset

    folder = tmp_path / "folder"
    shutil.copytree(tiny_folder, folder)
    config = {"dataset": f"folder:{folder}", "data_dir": str(tmp_path / "data"), "val_size": 20, "test_limit": 20,
              "alpha": tune.grid_search([30, 60]), "epochs": 1, "batch_size": 64}
    data = load_dataset(config["dataset"], config["data_dir"], progress=False)
    shutil.rmtree(folder)
    shutil.rmtree(tmp_path / "data")
    results = tune.Tuner(tune.with_parameters(dtune.trainable, data=data), param_space=config,
                         run_config=tune.RunConfig(storage_path=str(tmp_path), name="own", verbose=0)).fit()
    assert not results.errors
    assert sorted(r.metrics["subset_size"] for r in results) == [30, 60]
    assert all(r.metrics["beta_n"] == 0.7 for r in results)  # the default beta, as `dyntrain train`


@pytest.mark.slow
def test_a_users_pbt_perturbs_beta(local_ray, tmp_path, data):
    """A user's own scheduler: PBT clones the better trial's checkpoint into the worse one with a
    perturbed beta, so a trial resumes from a checkpoint it did not write."""
    from ray.tune.schedulers import PopulationBasedTraining

    # Synchronous: every trial waits at each perturbation interval for the others, so the worse one
    # always exploits the better (asynchronous PBT skips it when one trial has finished first).
    pbt = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1, synch=True,
                                  hyperparam_mutations={"beta": [0.2, 0.4, 0.6, 0.8]})
    space = {"policy": "dynamic", "alpha": 60, "beta": [0.2, 0.8], "delta": 0.5, "epochs": 3, "checkpoint_every": 1}
    results = run(tmp_path, data, space, scheduler=pbt, metric="val_acc", cpus_per_trial=1)
    assert not results.errors and len(results) == 2
    # A clone continues the donor's history: it ends at epoch 3, or at once when the donor's checkpoint
    # was already its last epoch (its own reports then stop earlier).
    assert all(1 <= r.metrics["epoch"] <= 3 for r in results)
    assert max(r.metrics["epoch"] for r in results) == 3
    # PBT logs each exploitation (the clone of a checkpoint into another trial) to pbt_global.txt.
    exploits = (tmp_path / "exp" / "pbt_global.txt").read_text().splitlines()
    assert exploits, "PBT never exploited: no trial restored another's checkpoint"


@pytest.mark.slow
def test_mlflow_tracker_logs_every_trial(local_ray, tmp_path, data):
    """--tracker mlflow: MLflow's own client reads back each trial's alpha/beta and its val_acc per epoch."""
    from mlflow.tracking import MlflowClient

    results = run(tmp_path, data, {"policy": "dynamic", "alpha": [40, 60], "beta": 0.5}, tracker="mlflow")
    assert not results.errors
    client = MlflowClient(f"sqlite:///{tmp_path / 'exp' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("exp")
    logged = client.search_runs([experiment.experiment_id])
    assert sorted(int(r.data.params["alpha"]) for r in logged) == [40, 60]
    assert {r.data.params["beta"] for r in logged} == {"0.5"}
    by_alpha = {r.config["alpha"]: r.metrics_dataframe for r in results}
    for r in logged:
        history = client.get_metric_history(r.info.run_id, "val_acc")
        ray_history = by_alpha[int(r.data.params["alpha"])]
        assert [h.step for h in sorted(history, key=lambda h: h.step)] == [1, 2]
        assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(ray_history.val_acc.tolist())
