"""The epoch loop on the CPU: every policy, budgets, fixed batch shapes, checkpoints, augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dyntrain import augment
from dyntrain.config import ConfigError, TrainConfig
from dyntrain.data import load_dataset
from dyntrain.engine import CheckpointSchedule, Trainer, compile_mode, epoch_batches
from dyntrain.model import PaperNet
from dyntrain.runs import METRICS, load_checkpoint, save_checkpoint

TIMING = {"epoch_time_s", "wall_time_s"}


@pytest.fixture(scope="module")
def data(tiny_folder, tmp_path_factory):
    return load_dataset(f"folder:{tiny_folder}", str(tmp_path_factory.mktemp("cache")), progress=False)


def tiny(**kw) -> TrainConfig:
    base = dict(val_size=60, alpha=100, beta=0.5, batch_size=32, epochs=2, progress=False, device="cpu", dataset="folder:x")
    return TrainConfig(**{**base, **kw})


def without_timing(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_network_is_table_1():
    net = PaperNet(10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 14 and all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [32] * 3 + [64] * 4 + [128] * 7
    shapes = []
    x = torch.zeros(1, 3, 32, 32)
    for layer in net.layers:
        x = layer(x)
        if isinstance(layer, torch.nn.MaxPool2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 16, 16), (64, 8, 8), (128, 2, 2)]
    assert tuple(x.shape) == (1, 10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in PaperNet(10, batchnorm=True).modules())


@pytest.mark.parametrize("n,bs", [(100, 32), (64, 32), (5, 16), (1, 7)])
def test_epoch_batches_cover_every_image_once(n, bs):
    subset = torch.randperm(1000)[:n]
    idx, weight = epoch_batches(subset, bs, torch.Generator().manual_seed(0))
    assert len(idx) % bs == 0 and len(idx) == len(weight) >= n
    counted = idx[weight == 1].tolist()
    assert sorted(counted) == sorted(subset.tolist())  # each image of A exactly once with weight 1
    assert set(idx[weight == 0].tolist()) <= set(subset.tolist())  # fillers are images of A


@pytest.mark.parametrize("policy", ["full", "static", "dynamic", "variant", "random"])
def test_every_policy_trains_and_reports(data, policy):
    trainer = Trainer(tiny(policy=policy, delta=1.0), data)  # delta=1 makes dynamic/variant resample
    history = list(trainer)
    assert [m["epoch"] for m in history] == [1, 2]
    for m in history:
        assert list(m) == list(METRICS)
        assert 0.0 <= m["val_acc"] <= 1.0 and 0.0 <= m["test_acc"] <= 1.0 and m["train_loss"] > 0
    alpha = trainer.n_train if policy == "full" else 100
    assert trainer.n_train == 300 - 60
    assert [m["subset_size"] for m in history] == [alpha, alpha]
    assert [m["images_seen"] for m in history] == [alpha, 2 * alpha]
    assert history[-1]["stopped"] == "epochs"
    assert history[-1]["best_val_acc"] == max(m["val_acc"] for m in history)
    expected = {"full": "none", "static": "none", "dynamic": "I", "random": "new"}
    if policy in expected:
        assert {m["resample"] for m in history} == {expected[policy]}
    else:  # variant: a drop or tie -> I, a gain below delta=1 -> II
        assert {m["resample"] for m in history} <= {"I", "II"}


def test_subset_follows_the_policy(data, monkeypatch):
    """The images trained on in an epoch are exactly the policy's subset A of that epoch."""
    trainer = Trainer(tiny(policy="dynamic", delta=1.0, epochs=3), data)
    seen, expected = [], []
    real = trainer._train_epoch

    def spy(subset):
        expected.append(sorted(trainer.policy.subset.tolist()))
        seen.append(sorted(subset.tolist()))
        return real(subset)

    monkeypatch.setattr(trainer, "_train_epoch", spy)
    history = list(trainer)
    assert seen == expected
    assert all(m["resample"] == "I" for m in history)
    kept = len(set(seen[0]) & set(seen[1]))
    assert kept == round(100 * (1 - 0.5))  # Eq. 1 between consecutive epochs


def test_same_seed_same_run_different_seed_differs(data):
    a = without_timing(list(Trainer(tiny(seed=3), data)))
    b = without_timing(list(Trainer(tiny(seed=3), data)))
    c = without_timing(list(Trainer(tiny(seed=4), data)))
    assert a == b
    assert a != c


def test_checkpoint_resume_is_exact(data, tmp_path):
    cfg = tiny(policy="variant", epochs=3, delta=0.05, augment=True)
    full = without_timing(list(Trainer(cfg, data)))
    first = Trainer(cfg, data)
    first.run_epoch()
    save_checkpoint(first.state_dict(), tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # disturb global RNG state: the resumed run must not depend on it
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt"))
    rest = list(resumed)
    assert without_timing(resumed.history) == full
    assert [m["epoch"] for m in rest] == [2, 3]
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    pickle.dumps(resumed.state_dict())  # the whole state serialises


def test_interrupted_run_resumes_from_its_last_checkpoint(data, tmp_path):
    """Checkpoints every 2 epochs; the run dies after epoch 3; a fresh Trainer resumed from the
    epoch-2 checkpoint and run to epoch 5 reports what an uninterrupted 5-epoch run reports."""
    cfg = tiny(policy="variant", epochs=5, delta=0.05, augment=True, batchnorm=True, train_limit=200, alpha=64)
    straight = without_timing(list(Trainer(cfg, data)))
    path = tmp_path / "checkpoint.pt"
    first, schedule, saved_at = Trainer(cfg, data), CheckpointSchedule(every=2, interval_s=None), []
    for m in first:
        if schedule.due(m["epoch"], last=first.done()):
            save_checkpoint(first.state_dict(), path)
            schedule.saved()
            saved_at.append(m["epoch"])
        if m["epoch"] == 3:
            break  # killed between the checkpoints of epochs 2 and 4
    assert saved_at == [2]
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(load_checkpoint(path))
    assert resumed.epoch == 2
    assert [m["epoch"] for m in resumed] == [3, 4, 5]
    assert without_timing(resumed.history) == straight


def test_extend_finished_run_with_more_epochs(data):
    short = Trainer(tiny(epochs=1), data)
    list(short)
    assert short.done()
    longer = Trainer(tiny(epochs=2), data)
    longer.load_state_dict(short.state_dict())
    assert not longer.done()
    assert without_timing(list(longer))[0]["epoch"] == 2
    assert without_timing(longer.history) == without_timing(list(Trainer(tiny(epochs=2), data)))


def test_budgets_stop_the_run(data):
    by_images = list(Trainer(tiny(epochs=10, image_budget=250), data))
    assert [m["images_seen"] for m in by_images] == [100, 200, 300]
    assert by_images[-1]["stopped"] == "image_budget"
    by_time = list(Trainer(tiny(epochs=10, time_budget_s=1e-6), data))
    assert len(by_time) == 1 and by_time[-1]["stopped"] == "time_budget"


def test_paper_protocol_uses_test_set_as_validation(data):
    history = list(Trainer(tiny(protocol="paper", epochs=1), data))
    assert history[0]["val_acc"] == history[0]["test_acc"]
    assert Trainer(tiny(protocol="paper", epochs=1), data).n_train == 300


def test_alpha_is_checked_against_the_training_split(data):
    with pytest.raises(ConfigError, match=r"alpha=241 .*1\.\.240"):
        Trainer(tiny(alpha=241), data)
    with pytest.raises(ConfigError, match="beta"):
        Trainer(tiny(alpha=200, beta=0.9), data)  # 180 replacements, only 40 images outside A


def test_cudagraphs_needs_cuda(data):
    with pytest.raises(ConfigError, match="cudagraphs"):
        Trainer(tiny(compile="cudagraphs"), data)


def test_compile_auto_is_the_captured_step_on_cuda_and_eager_elsewhere(data):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert TrainConfig().compile == "auto"
    assert compile_mode(TrainConfig(), cuda) == "cudagraphs"
    assert compile_mode(TrainConfig(optimizer="sgd"), cuda) == "none"  # torch's SGD cannot be captured
    assert compile_mode(TrainConfig(), cpu) == "none"
    assert compile_mode(TrainConfig(compile="default"), cuda) == "default"  # an explicit mode is kept
    trainer = Trainer(tiny(compile="auto"), data)
    assert trainer.cfg.compile == "none" and trainer._forward is trainer.model  # what ran is recorded


def test_augmentation_is_a_flip_and_a_shift():
    x = torch.randint(1, 255, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment.flip_and_translate(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        matches = [
            (f, dy, dx)
            for f in (0, 1)
            for dy in range(9)
            for dx in range(9)
            if torch.equal((padded[i].flip(2) if f else padded[i])[:, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert matches, f"image {i} is not a flipped/shifted copy of its input"
        flips += matches[0][0]
    assert 0 < flips < len(x)  # both outcomes occur in a batch of 16
    again = augment.flip_and_translate(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_network_learns_on_tiny_data(data):
    """A sanity check that the loop really trains: the training loss falls on a fixed subset."""
    history = list(Trainer(tiny(policy="static", alpha=64, epochs=6, batch_size=64, batchnorm=True, lr=3e-3), data))
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert np.isfinite([m["train_loss"] for m in history]).all()


def test_evaluation_sets_are_padded_to_one_batch_shape(data, monkeypatch):
    import dyntrain.engine as engine

    monkeypatch.setattr(engine, "EVAL_BATCH", 32)  # 60 validation and 100 test images -> 64 and 128 rows
    trainer = Trainer(tiny(epochs=1), data)
    assert (len(trainer.val_x), len(trainer.test_x)) == (64, 128)
    assert (trainer.val_y[60:] == -1).all() and (trainer.test_y[100:] == -1).all()
    shapes = []
    real = trainer._logits
    monkeypatch.setattr(trainer, "_logits", lambda x: shapes.append(len(x)) or real(x))
    m = trainer.run_epoch()
    assert set(shapes) == {32}
    # accuracies are counted over the real images only
    assert m["val_acc"] * 60 == pytest.approx(round(m["val_acc"] * 60)) and m["test_acc"] * 100 == pytest.approx(round(m["test_acc"] * 100))
