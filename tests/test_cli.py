"""`dyntrain train` end to end on the CPU: outputs, resume, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from dyntrain import cli
from dyntrain.engine import METRICS, Trainer

TIMING = {"epoch_time_s", "wall_time_s"}


@pytest.fixture
def base(tiny_folder, tmp_path):
    return ["--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "data"), "--val-size", "60",
            "--alpha", "100", "--beta", "0.5", "--batch-size", "32", "--device", "cpu", "--no-progress"]


def rows(path):
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def test_train_writes_metrics_summary_and_checkpoint(base, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *base, "--policy", "dynamic", "--delta", "1", "--epochs", "2", "--out", str(out)]) == 0
    with open(out / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == METRICS
    records = rows(out / "metrics.csv")
    assert [r["epoch"] for r in records] == ["1", "2"] and [r["resample"] for r in records] == ["I", "I"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["policy"] == "dynamic" and summary["config"]["alpha"] == 100
    assert summary["environment"]["torch"] and summary["environment"]["device"] == "cpu"
    assert summary["n_train"] == 240 and summary["epochs_run"] == 2 and summary["stopped"] == "epochs"
    assert summary["best"]["val_acc"] == max(float(r["val_acc"]) for r in records)
    assert (out / "checkpoint.pt").exists() and json.loads((out / "config.json").read_text())["epochs"] == 2
    assert "best val_acc" in capsys.readouterr().out


def test_yaml_config_and_command_line_precedence(base, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("policy: static\nepochs: 1\nalpha: 50\n")
    out = tmp_path / "run"
    assert cli.main(["train", *base, "--config", str(cfg), "--out", str(out)]) == 0  # base gives --alpha 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["policy"] == "static" and summary["config"]["epochs"] == 1
    assert summary["config"]["alpha"] == 100


def test_interrupted_then_resumed_equals_uninterrupted(base, tmp_path, monkeypatch):
    args = [*base, "--policy", "variant", "--delta", "0.05", "--augment", "--epochs", "3"]
    assert cli.main(["train", *args, "--out", str(tmp_path / "straight")]) == 0

    real = Trainer.run_epoch

    def crash_on_epoch_3(self):
        if self.epoch == 2:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(self)

    monkeypatch.setattr(Trainer, "run_epoch", crash_on_epoch_3)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", *args, "--out", str(out)])
    assert not (out / "summary.json").exists()  # an unfinished run never looks finished
    assert len(rows(out / "metrics.csv")) == 2
    monkeypatch.setattr(Trainer, "run_epoch", real)

    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert rows(out / "metrics.csv") == rows(tmp_path / "straight" / "metrics.csv")
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 3


def test_resume_extends_epochs_and_refuses_other_changes(base, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *base, "--policy", "static", "--epochs", "1", "--out", str(out)]) == 0
    assert cli.main(["train", "--resume", "--out", str(out), "--beta", "0.3"]) == 2
    assert "another configuration (beta: 0.5 -> 0.3)" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in rows(out / "metrics.csv")] == ["1", "2"]


def test_refuses_to_overwrite_or_resume_nothing(base, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *base, "--policy", "static", "--epochs", "1", "--out", str(out)]) == 0
    assert cli.main(["train", *base, "--epochs", "1", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--alpha", "0"], "alpha=0 is invalid: must be an integer >= 1"),
        (["--alpha", "241"], "alpha=241 is invalid: must be 1..240"),
        (["--beta", "1.5"], "beta=1.5 is invalid: must be [0, 1]"),
        (["--beta", "-0.1"], "beta=-0.1 is invalid"),
        (["--delta", "-0.01"], "delta=-0.01 is invalid: must be a number >= 0"),
        (["--gamma", "0"], "gamma=0.0 is invalid: must be (0, 1]"),
        (["--gamma", "1.01"], "gamma=1.01 is invalid"),
        (["--epochs", "0"], "epochs=0 is invalid: must be an integer >= 1"),
        (["--policy", "magic"], "policy='magic' is invalid: must be one of full, static, dynamic, variant, random"),
        (["--dataset", "mnist"], "dataset='mnist' is invalid: must be cifar10, cifar100 or folder:PATH"),
        (["--dataset", "folder:/nonexistent/dyntrain"], "/nonexistent/dyntrain"),
    ],
)
def test_bad_input_fails_before_any_work(base, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert cli.main(["train", *base, *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("variant,message", [
    ("empty", "no train/ folder"), ("unequal_classes", "lorry"), ("truncated_jpeg", "truncated.jpg"), ("corrupt_file", "corrupt.png"),
])
def test_broken_folder_dataset_fails_clearly(tiny_folder_factory, tmp_path, capsys, variant, message):
    root = tiny_folder_factory(variant)
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", f"folder:{root}", "--data-dir", str(tmp_path / "d"), "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "dyntrain train: error:" in err
    assert not out.exists()


def test_unknown_yaml_key_is_named(base, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("alpah: 10\n")
    assert cli.main(["train", *base, "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "unknown option(s) alpah" in capsys.readouterr().err


def test_top_level_usage(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().err
