"""A recipe beyond the paper's: SGD with Nesterov momentum, weight decay, one-cycle and cosine
schedules stepped every optimiser step, label smoothing; each changes what is trained and resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch

from dyntrain import spaces
from dyntrain.config import ConfigError, TrainConfig
from dyntrain.data import load_dataset
from dyntrain.engine import Trainer
from dyntrain.runs import load_checkpoint, save_checkpoint

TIMING = {"epoch_time_s", "wall_time_s"}


@pytest.fixture(scope="module")
def data(tiny_folder, tmp_path_factory):
    return load_dataset(f"folder:{tiny_folder}", str(tmp_path_factory.mktemp("cache")), progress=False)


def tiny(**kw) -> TrainConfig:
    base = dict(val_size=60, alpha=100, beta=0.5, batch_size=32, epochs=1, progress=False, device="cpu", dataset="folder:x")
    return TrainConfig(**{**base, **kw})


def weights_after_one_epoch(data, **kw) -> torch.Tensor:
    trainer = Trainer(tiny(**kw), data)
    trainer.run_epoch()
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


def test_the_defaults_are_the_papers_recipe(data):
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.lr_schedule, cfg.weight_decay, cfg.label_smoothing) == ("adam", 1e-3, "constant", 0, 0)
    trainer = Trainer(tiny(), data)
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.scheduler is None
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0


@pytest.mark.parametrize("change", [dict(weight_decay=0.1), dict(label_smoothing=0.2), dict(optimizer="sgd", lr=0.05),
                                    dict(lr_schedule="onecycle"), dict(lr_schedule="cosine")])
def test_each_option_changes_what_is_trained(data, change):
    assert not torch.equal(weights_after_one_epoch(data), weights_after_one_epoch(data, **change))


def test_momentum_and_nesterov_of_sgd(data):
    trainer = Trainer(tiny(optimizer="sgd", momentum=0.8, weight_decay=5e-4), data)
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.SGD) and (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 5e-4)
    assert Trainer(tiny(optimizer="sgd", momentum=0.0), data).optimizer.param_groups[0]["nesterov"] is False
    assert not torch.equal(weights_after_one_epoch(data, optimizer="sgd", lr=0.05, momentum=0.5),
                           weights_after_one_epoch(data, optimizer="sgd", lr=0.05, momentum=0.9))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_step_every_optimiser_step_over_the_planned_steps(data, schedule):
    cfg = tiny(lr_schedule=schedule, epochs=3, lr=0.01)
    trainer = Trainer(cfg, data)
    planned = math.ceil(100 / 32) * 3  # batches per epoch of A (the last one filled up) x epochs
    lrs = []
    for _ in range(3):
        trainer.run_epoch()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert trainer.scheduler.last_epoch == planned
    assert lrs[1] < lrs[0] <= cfg.lr  # annealing after the first epoch
    if schedule == "onecycle":  # warm-up over the first 30 % of the planned steps, then down
        assert trainer.scheduler.total_steps == planned and lrs[0] > cfg.lr / 25
    else:
        assert lrs[2] == pytest.approx(0.0, abs=1e-12)  # at the planned end


def test_a_run_resumes_exactly_mid_schedule(data, tmp_path):
    cfg = tiny(policy="dynamic", epochs=3, optimizer="sgd", lr=0.05, weight_decay=5e-4, lr_schedule="onecycle",
               label_smoothing=0.1, delta=0.05)
    full = [{k: v for k, v in m.items() if k not in TIMING} for m in Trainer(cfg, data)]
    first = Trainer(cfg, data)
    first.run_epoch()
    save_checkpoint(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt"))
    list(resumed)
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in resumed.history] == full
    assert resumed.scheduler.last_epoch == math.ceil(100 / 32) * 3


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "lamb", "optimizer='lamb' is invalid: must be one of adam, sgd"),
    ("lr_schedule", "step", "lr_schedule='step' is invalid: must be one of constant, onecycle, cosine"),
    ("momentum", 1.0, "momentum=1.0 is invalid: must be [0, 1)"),
    ("weight_decay", -1e-4, "weight_decay=-0.0001 is invalid: must be a number >= 0"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 is invalid: must be [0, 1)"),
])
def test_bad_recipe_values(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{field: value}).validate()


def test_recipe_options_are_search_dimensions():
    space = spaces.parse_space({"optimizer": ["adam", "sgd"], "lr_schedule": ["constant", "onecycle"],
                                "weight_decay": {"loguniform": [1e-5, 1e-3]}, "label_smoothing": [0.0, 0.1]})
    spaces.validate_space(space)
    assert len(list(spaces.points(space))) == 16


def test_a_scheduled_run_cannot_be_extended(data):
    cfg = tiny(lr_schedule="cosine", epochs=1)
    first = Trainer(cfg, data)
    first.run_epoch()
    longer = Trainer(cfg.replace(epochs=2), data)
    with pytest.raises(ConfigError, match="its cosine schedule was planned for 1 epochs"):
        longer.load_state_dict(first.state_dict())
    constant = Trainer(tiny(epochs=1), data)
    constant.run_epoch()
    Trainer(tiny(epochs=2), data).load_state_dict(constant.state_dict())  # a constant rate extends as before


def test_the_resnet18_cifar10_space_runs_as_is():
    points = list(spaces.points(spaces.parse_space(spaces.load_space("resnet18-cifar10"))))
    assert len(points) == 6 and spaces.DEFAULT_SEEDS["resnet18-cifar10"] == 2
    cfgs = [TrainConfig.from_dict(p).validate(n_train=45_000) for p in points]
    assert {c.policy for c in cfgs} == {"full", "static", "dynamic", "variant", "random"}
    assert all((c.model, c.optimizer, c.lr, c.momentum, c.weight_decay, c.lr_schedule, c.label_smoothing, c.augment,
                c.alpha, c.epochs) == ("resnet18", "sgd", 0.1, 0.9, 5e-4, "onecycle", 0.1, True, 22_500, 200) for c in cfgs)
    assert sorted(c.image_budget or 0 for c in cfgs) == [0] * 5 + [22_500 * 200]  # and full at equal images
