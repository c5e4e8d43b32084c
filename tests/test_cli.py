"""`dyntrain train` end to end on the CPU: outputs, resume, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from dyntrain import cli
from dyntrain.engine import Trainer
from dyntrain.runs import METRICS

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


def interrupt_at(monkeypatch, epoch: int):
    """Ctrl-C during epoch `epoch` of the next run; returns a function that undoes it."""
    real = Trainer.run_epoch

    def crash(self):
        if self.epoch == epoch - 1:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(self)

    monkeypatch.setattr(Trainer, "run_epoch", crash)
    return lambda: monkeypatch.setattr(Trainer, "run_epoch", real)


def test_interrupted_between_checkpoints_then_resumed_equals_uninterrupted(base, tmp_path, monkeypatch):
    """Checkpoints every 2 epochs; Ctrl-C in epoch 4 loses epoch 3, which the resume trains again."""
    args = [*base, "--policy", "variant", "--delta", "0.05", "--augment", "--epochs", "5", "--checkpoint-every", "2"]
    assert cli.main(["train", *args, "--out", str(tmp_path / "straight")]) == 0

    undo = interrupt_at(monkeypatch, 4)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", *args, "--out", str(out)])
    assert not (out / "summary.json").exists()  # an unfinished run never looks finished
    assert len(rows(out / "metrics.csv")) == 3
    undo()

    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert rows(out / "metrics.csv") == rows(tmp_path / "straight" / "metrics.csv")
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 5


def test_interrupted_before_its_first_checkpoint_resumes_from_the_start(base, tmp_path, monkeypatch, capsys):
    """The default checkpoints once a minute: a short run stopped early has none yet, and resuming
    trains it again from its saved configuration."""
    args = [*base, "--policy", "dynamic", "--epochs", "3"]
    assert cli.main(["train", *args, "--out", str(tmp_path / "straight")]) == 0
    undo = interrupt_at(monkeypatch, 2)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", *args, "--out", str(out)])
    assert not (out / "checkpoint.pt").exists()
    undo()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert "no checkpoint yet" in capsys.readouterr().err
    assert rows(out / "metrics.csv") == rows(tmp_path / "straight" / "metrics.csv")


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


@pytest.mark.parametrize("text, message", [
    ("policy: static\nalpha: [50\n", ":3: not valid YAML"),
    ("policy: static\n  alpha: 50\n", ":2: not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping of option names to values, got list"),
])
def test_a_malformed_config_file_is_one_line_naming_it(base, tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = tmp_path / "run"
    assert cli.main(["train", *base, "--config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dyntrain train: error: {bad}") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert cli.main(["tune", "--space", str(bad), "--storage", str(tmp_path / "ray")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dyntrain tune: error: {bad}") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ray").exists()


class Planted:
    """A pickle that would create a file when unpickled: what a hostile checkpoint.pt does."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_planted_checkpoint_is_refused_and_never_run(base, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    assert cli.main(["train", *base, "--policy", "static", "--epochs", "1", "--out", str(out)]) == 0
    target = tmp_path / "pwned"
    torch.save({"config": {}, "payload": Planted(target)}, out / "checkpoint.pt")
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert not target.exists() and str(out / "checkpoint.pt") in err and "Traceback" not in err
    (out / "checkpoint.pt").write_bytes(b"\x80\x02 truncated")
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 2
    assert str(out / "checkpoint.pt") in capsys.readouterr().err
