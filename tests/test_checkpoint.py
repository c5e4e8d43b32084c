"""Checkpoints are data: load_checkpoint refuses code, truncated or random bytes, other formats;
CheckpointSchedule decides when to write one."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from dyntrain.config import ConfigError, TrainConfig
from dyntrain.engine import CheckpointSchedule
from dyntrain.runs import CHECKPOINT_FORMAT, CHECKPOINT_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from dyntrain.sampling import make_policy


def fake_state() -> dict:
    """A Trainer.state_dict() in shape: tensors, plain data, a policy state with 128-bit rng ints."""
    policy = make_policy("variant", 100, 30, 0.4, 0.01, 0.97, 0)
    policy.update(1, 7, 10)
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": {"policy": "variant", "alpha": 30, "beta": 0.4, "time_budget_s": None, "augment": False},
        "model": {"w": torch.randn(64, 64), "b": torch.zeros(64)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(64)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
        "scheduler": {"last_epoch": 3, "_step_count": 4, "base_lrs": [1e-3], "_last_lr": [9e-4]},
        "policy": policy.state_dict(),
        "generator": torch.Generator().get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [{"epoch": 1, "val_acc": 0.7, "resample": "none", "stopped": ""}],
    }
    assert set(state) == set(CHECKPOINT_KEYS)
    return state


def refused(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    error = info.value  # no chained traceback from torch's unpickler
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return message


def test_round_trip_is_data(tmp_path):
    state = fake_state()
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["policy"] == state["policy"]  # lists and the 128-bit PCG64 ints come back equal
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["history"] == state["history"]
    policy = make_policy("variant", 100, 30, 0.4, 0.01, 0.97, 1)
    policy.load_state_dict(loaded["policy"])
    assert policy.best_correct == 7 and policy.subset.dtype == np.int64


class Planted:
    """Unpickling this would create a file: the stand-in for any code a planted checkpoint runs."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["pickle2", "pickle5", "torch.save"])
def test_code_in_a_checkpoint_is_not_executed(tmp_path, writer):
    target, path = tmp_path / "pwned", tmp_path / "checkpoint.pt"
    if writer == "torch.save":
        torch.save({**fake_state(), "history": [Planted(target)]}, path)
    else:
        path.write_bytes(pickle.dumps(Planted(target), protocol=int(writer[-1])))
    message = refused(path)
    assert not target.exists()
    assert "refusing to execute it" in message
    if writer != "pickle5":  # protocol 5 is refused at its first opcode, before the global
        assert "GLOBAL io.open" in message
    assert "weights_only=False" not in message and "safe_globals" not in message  # no advice to run it


def test_a_format_1_checkpoint_with_numpy_arrays_is_refused(tmp_path):
    state = {**fake_state(), "policy": {"subset": np.arange(5)}}
    state.pop("format")
    torch.save(state, tmp_path / "old.pt")
    assert "numpy" in refused(tmp_path / "old.pt")


@pytest.mark.parametrize("damage", ["half", "tail", "empty", "random", "text"])
def test_truncated_or_corrupt_files_are_refused(tmp_path, damage):
    save_checkpoint(fake_state(), tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    data = {"half": good[: len(good) // 2], "tail": good[:-10], "empty": b"",
            "random": np.random.default_rng(0).bytes(4096), "text": b"epoch,val_acc\n1,0.5\n"}[damage]
    (tmp_path / "bad.pt").write_bytes(data)
    message = refused(tmp_path / "bad.pt")
    if damage in ("half", "tail"):
        assert "truncated or corrupt" in message
    if damage == "empty":
        assert "empty or truncated" in message


def test_other_formats_and_missing_keys_are_refused(tmp_path):
    cases = {
        "list.pt": [1, 2, 3],
        "v1.pt": {**fake_state(), "format": 1},
        "none.pt": {k: v for k, v in fake_state().items() if k != "format"},
        "partial.pt": {k: v for k, v in fake_state().items() if k != "optimizer"},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    assert "list" in refused(tmp_path / "list.pt")
    assert "format 1" in refused(tmp_path / "v1.pt") and "format None" in refused(tmp_path / "none.pt")
    assert "missing optimizer" in refused(tmp_path / "partial.pt")


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_schedule_by_time():
    clock = Clock()
    s = CheckpointSchedule(every=None, interval_s=60, clock=clock)
    clock.t += 59.9
    assert not s.due(1, last=False)
    assert s.due(1, last=True)  # the final epoch always
    clock.t += 0.1
    assert s.due(2, last=False)
    s.saved()
    clock.t += 30
    assert not s.due(3, last=False)
    clock.t += 30
    assert s.due(4, last=False)


def test_schedule_by_epochs_and_both():
    s = CheckpointSchedule(every=2, interval_s=None, clock=Clock())
    assert [e for e in range(1, 8) if s.due(e, last=e == 7)] == [2, 4, 6, 7]
    clock = Clock()
    both = CheckpointSchedule(every=3, interval_s=10, clock=clock)
    due = []
    for epoch in range(1, 8):
        clock.t += 6  # 6 s an epoch: 10 s have passed since the last save at epochs 2 and 5
        if both.due(epoch, last=False):
            due.append(epoch)
            both.saved()
    assert due == [2, 3, 5, 6]
    assert CheckpointSchedule(every=None, interval_s=0, clock=Clock()).due(1, last=False)  # 0: every epoch
    assert not CheckpointSchedule(every=None, interval_s=None, clock=Clock()).due(5, last=False)


@pytest.mark.parametrize("kw", [{"checkpoint_every": 0}, {"checkpoint_every": True}, {"checkpoint_every": 1.5},
                                {"checkpoint_interval_s": -1}, {"checkpoint_interval_s": 0},
                                {"checkpoint_interval_s": float("nan")}, {"checkpoint_interval_s": float("inf")}])
def test_schedule_of_a_config_validates_it(kw):
    with pytest.raises(ConfigError):
        CheckpointSchedule.of(TrainConfig(**kw))
    schedule = CheckpointSchedule.of(TrainConfig(checkpoint_every=3, checkpoint_interval_s=None))
    assert (schedule.every, schedule.interval_s) == (3, None)


def test_no_temporary_left_behind(tmp_path):
    save_checkpoint(fake_state(), tmp_path / "c.pt")
    assert os.listdir(tmp_path) == ["c.pt"]


def test_a_checkpoint_from_before_schedules_loads_with_none(tmp_path):
    old = {k: v for k, v in fake_state().items() if k != "scheduler"} | {"format": 2}
    save_checkpoint(old, tmp_path / "v2.pt")
    state = load_checkpoint(tmp_path / "v2.pt")
    assert state["format"] == CHECKPOINT_FORMAT == 3 and state["scheduler"] == {}
