"""dyntrain.SubsetSampler: Dynamic Training in a plain PyTorch loop and DataLoader."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dyntrain
from dyntrain import SubsetSampler, TrainConfig, make_policy

ROOT = Path(__file__).resolve().parents[1]


def policy(**kw):
    return make_policy(kw.pop("name", "dynamic"), n=kw.pop("n", 100), alpha=kw.pop("alpha", 40), **kw)


def test_make_policy_defaults_are_the_papers():
    defaults = {k: v.default for k, v in inspect.signature(make_policy).parameters.items() if k in ("beta", "delta", "gamma", "seed")}
    cfg = TrainConfig()
    assert defaults == {k: getattr(cfg, k) for k in defaults} == {"beta": 0.7, "delta": 0.01, "gamma": 0.97, "seed": 0}
    p = policy()
    assert (p.beta0, p.delta, p.gamma) == (0.7, 0.01, 0.97)
    assert p.subset.tolist() == make_policy("dynamic", 100, 40, 0.7, 0.01, 0.97, 0).subset.tolist()


def test_each_epoch_yields_exactly_the_current_subset_once_and_follows_a_resample():
    p = policy()
    sampler = SubsetSampler(p, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 40 and sorted(first) == sorted(p.subset.tolist())
    second = list(sampler)
    assert sorted(second) == sorted(first) and second != first  # a fresh order each epoch, the same A
    before = set(p.subset.tolist())
    assert p.update(1, 50, 100).resample == "none" and p.update(2, 50, 100).resample == "I"  # no change: resample
    third = list(sampler)
    assert sorted(third) == sorted(p.subset.tolist()) and set(third) != before  # the new A, not rebuilt


def test_orders_are_reproducible_and_resume_from_the_state_dict():
    a, b = SubsetSampler(policy(), seed=7), SubsetSampler(policy(), seed=7)
    orders = [list(a) for _ in range(3)]
    assert orders == [list(b) for _ in range(3)]
    assert list(SubsetSampler(policy(), seed=8)) != orders[0]
    resumed = SubsetSampler(policy(), seed=0)
    b2 = SubsetSampler(policy(), seed=7)
    list(b2)
    resumed.load_state_dict(b2.state_dict())
    assert list(resumed) == orders[1]


def test_replicas_share_each_epoch_in_equal_parts():
    p = policy(alpha=41)
    shards = [SubsetSampler(p, seed=1, num_replicas=3, rank=r) for r in range(3)]
    parts = [list(s) for s in shards]
    assert [len(x) for x in parts] == [14, 14, 14] == [len(s) for s in shards]
    joined = sum(parts, [])
    assert set(joined) == set(p.subset.tolist()) and len(joined) - len(set(joined)) == 1  # one index repeated
    with pytest.raises(ValueError, match="rank must be in"):
        SubsetSampler(p, num_replicas=2, rank=2)
    with pytest.raises(TypeError, match="must be a dyntrain policy"):
        SubsetSampler(np.arange(4))


def test_a_dataloader_with_two_workers_sees_exactly_a():
    p = policy(n=60, alpha=25)
    data = TensorDataset(torch.arange(60))
    loader = DataLoader(data, batch_size=8, sampler=SubsetSampler(p, seed=0), num_workers=2)
    seen = torch.cat([x for (x,) in loader]).tolist()
    assert sorted(seen) == sorted(p.subset.tolist())


@pytest.mark.slow
def test_the_own_loop_example_trains_a_torchvision_model_on_an_image_folder(tiny_folder):
    out = subprocess.run([sys.executable, str(ROOT / "tune_scripts" / "own_loop.py"), "--data", str(tiny_folder),
                          "--alpha", "100", "--epochs", "2", "--val-size", "60", "--workers", "0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2"]
    assert all("trained on 100 images" in line for line in lines)
    assert dyntrain.SubsetSampler is SubsetSampler
