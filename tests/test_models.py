"""Any PyTorch image classifier: the built-in networks, a factory named MODULE:FUNCTION, a callable
given to Trainer and search(); every bad model is one line before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from dyntrain import Trainer, cli, load_dataset, page, runs, tables
from dyntrain import tune as dtune
from dyntrain.config import ConfigError, TrainConfig
from dyntrain.model import PaperNet, ResNet18, build_model

TESTS = Path(__file__).resolve().parent
SMALL = ["--val-size", "20", "--test-limit", "20", "--batch-size", "64", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def args(tiny_folder, tmp_path_factory) -> list[str]:
    return ["--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path_factory.mktemp("data")), *SMALL]


def test_resnet18_is_the_cifar_variant_of_the_literature():
    net = ResNet18(10)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(net.stem[0], nn.Conv2d) and net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)


def test_the_paper_network_is_built_as_before():
    torch.manual_seed(0)
    a = PaperNet(10, True)
    torch.manual_seed(0)
    b = build_model("paper", 10, (3, 32, 32), batchnorm=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_users_factory_trains_through_dyntrain_train(args, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "user_models:small_cnn", "--policy", "full", "--out", str(out), *args]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == "user_models:small_cnn"
    assert json.loads((out / "summary.json").read_text())["config"]["model"] == "user_models:small_cnn"
    assert cli.main(["train", "--model", "user_models:Zoo.small", "--policy", "full", "--out", str(tmp_path / "r2"), *args]) == 0


def test_resnet18_one_epoch(args, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "resnet18", "--policy", "dynamic", "--alpha", "64", "--out", str(out), *args]) == 0
    rows = pd.read_csv(out / "metrics.csv")
    assert list(rows.epoch) == [1] and rows.images_seen.iloc[-1] == 64


@pytest.mark.parametrize("model, message", [
    ("no_such_module:f", "model='no_such_module:f': cannot import no_such_module (ModuleNotFoundError"),
    ("user_models:missing", "model='user_models:missing': user_models has no attribute missing"),
    ("user_models:NOT_CALLABLE", "NOT_CALLABLE is not callable"),
    ("user_models:raises", "the factory raised RuntimeError: no weights here"),
    ("user_models:not_a_module", "the factory returned str, not a torch.nn.Module"),
    ("user_models:wrong_logits", "logits of shape (2, 11) on a batch of shape (2, 3, 32, 32); expected (2, 10)"),
    ("user_models:needs_64px", "a batch of shape (2, 3, 32, 32) fails: RuntimeError"),
    ("resnet", "model='resnet' is invalid: must be paper, resnet18 or MODULE:FUNCTION"),
])
def test_every_bad_model_is_one_line_before_any_work(model, message, args, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", model, "--policy", "full", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_batchnorm_is_the_paper_networks_option():
    with pytest.raises(ConfigError, match="batchnorm=True is invalid: must be False unless model is paper"):
        TrainConfig(model="resnet18", batchnorm=True).validate()


def test_trainer_takes_a_factory_and_records_its_name(tiny_folder, tmp_path):
    data = load_dataset(f"folder:{tiny_folder}", str(tmp_path / "d"), progress=False)

    def tiny(num_classes):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

    trainer = Trainer(TrainConfig(policy="full", epochs=1, val_size=20, test_limit=20, batch_size=64, progress=False),
                      data, model=tiny)
    assert trainer.cfg.model.endswith("test_trainer_takes_a_factory_and_records_its_name.<locals>.tiny")
    assert isinstance(trainer.model[2], nn.Linear)
    assert next(iter(trainer))["epoch"] == 1
    assert trainer.summary()["config"]["model"] == trainer.cfg.model


@pytest.mark.slow
def test_a_factory_through_dyntrain_tune_and_search(args, tmp_path, tiny_folder):
    """`dyntrain tune --model MODULE:FUNCTION` (workers import it as the driver does, through PYTHONPATH),
    then search() with a callable shipped to the trials: both reach every trial and the report."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"policy": ["full", "dynamic"], "alpha": 140}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "dyntrain.cli", "tune", "--space", str(space), "--model", "user_models:small_cnn",
                           "--gpus-per-trial", "0", "--live-report-s", "0", "--storage", str(tmp_path), "--name", "cli", *args],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = tables.load(tmp_path / "cli")
    assert set(df.model) == {"user_models:small_cnn"} and df.run.nunique() == 2 and set(df.status) == {"finished"}

    def wide(num_classes):  # a closure: shipped to the trials by value, not imported by name
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    import ray

    fixed = {"dataset": f"folder:{tiny_folder}", "data_dir": str(tmp_path / "d"), "val_size": 20, "test_limit": 20,
             "batch_size": 64}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = dtune.search({"policy": ["full", "static"], "alpha": 140, "epochs": 1}, model=wide, storage=str(tmp_path),
                               name="api", overrides=fixed, live_report_s=None, verbose=0)
    finally:
        ray.shutdown()
    assert not results.errors and {r.config["model"] for r in results} == {f"{__name__}:{wide.__qualname__}"}
    t = tables.policy_table(tables.load(tmp_path / "api"))
    assert list(t.index) == ["full", "static α=140"]
    with pytest.raises(ConfigError, match="logits of shape"):
        dtune.plan({"policy": "full"}, model=lambda num_classes: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), storage=str(tmp_path),
                   overrides=fixed)


def test_runs_of_different_models_are_different_arms(tmp_path):
    for model in ("paper", "resnet18"):
        for seed in (0, 1):
            cfg = TrainConfig(policy="full", model=model, epochs=1, seed=seed).to_dict()
            row = {"epoch": 1, "val_acc": 0.5 + 0.1 * (model == "resnet18"), "test_acc_at_best_val": 0.5, "wall_time_s": 1.0,
                   "subset_size": 40, "images_seen": 40, "stopped": "epochs"}
            runs.write_run(tmp_path / f"{model}{seed}", cfg, [row], summary={"config": cfg, "n_train": 40})
    df = tables.load(tmp_path)
    t = tables.policy_table(df)
    assert list(t.index) == ["full model=paper", "full model=resnet18"] and list(t.n) == [2, 2]
    assert list(t.ref_full) == list(t.index)  # each model has its own full-data reference
    shown = page.render(df)
    assert "full model=resnet18" in shown and "full model=paper" in shown
