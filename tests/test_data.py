"""dyntrain.data: loading image folders and CIFAR, the decode cache, errors, and splits."""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from dyntrain import data
from dyntrain.config import ConfigError
from dyntrain.data import DataError, Dataset, load_dataset, make_split

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load(root: Path, data_dir: Path, **kw) -> Dataset:
    return load_dataset(f"folder:{root}", str(data_dir), progress=False, **kw)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def count_decodes(monkeypatch):
    """A list that grows by one path per image decoded."""
    calls: list[str] = []
    real = data._decode

    def spy(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data, "_decode", spy)
    return calls


# ---------------------------------------------------------------- image folders


def test_folder_layout_labels_and_pixels(tiny_folder, tmp_path, cifar_tar):
    ds = load(tiny_folder, tmp_path / "data")
    assert ds.name == f"folder:{tiny_folder.resolve()}"
    assert ds.classes == CLASSES == sorted(p.name for p in (tiny_folder / "train").iterdir())
    assert len(ds.classes) == 10
    for x, y, n in ((ds.train_x, ds.train_y, 30), (ds.test_x, ds.test_y, 10)):
        assert x.shape == (10 * n, 3, 32, 32) and x.dtype == np.uint8 and x.flags.c_contiguous
        assert y.dtype == np.int64 and np.array_equal(np.bincount(y), [n] * 10)
    # Sorted files of class k sit at rows k*n.. with label k, in NCHW.
    cat = sorted((tiny_folder / "train" / "cat").iterdir())
    assert ds.train_y[3 * 30] == 3
    pixels = np.asarray(Image.open(cat[1]).convert("RGB"))
    np.testing.assert_array_equal(ds.train_x[3 * 30 + 1], pixels.transpose(2, 0, 1))
    if cifar_tar is not None:  # real CIFAR-10: natural images, not one flat colour per class
        assert 80 < ds.train_x.mean() < 160 and ds.train_x.std() > 40


def test_relative_path_is_resolved(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_folder.parent)
    ds = load_dataset(f"folder:{tiny_folder.name}", str(tmp_path / "data"), progress=False)
    assert ds.name == f"folder:{tiny_folder.resolve()}"


def test_second_load_comes_from_cache_and_leaves_the_folder_alone(tiny_folder, tmp_path, monkeypatch):
    before = snapshot(tiny_folder)
    first = load(tiny_folder, tmp_path / "data")
    assert [p.suffix for p in (tmp_path / "data" / "cache").iterdir()] == [".npz"]  # no tmp files left

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache is fresh")

    monkeypatch.setattr(data, "_decode", no_decoding)
    second = load(tiny_folder, tmp_path / "data")
    assert second.classes == first.classes and second.name == first.name
    for field in ("train_x", "train_y", "test_x", "test_y"):
        a, b = getattr(first, field), getattr(second, field)
        assert np.array_equal(a, b) and a.dtype == b.dtype and b.flags.c_contiguous
    assert snapshot(tiny_folder) == before  # the dataset folder may be read-only: nothing is written there


def test_changed_folder_is_decoded_again(tiny_folder_factory, tmp_path, count_decodes):
    root = tiny_folder_factory()
    load(root, tmp_path / "data")
    assert len(count_decodes) == 400

    # New content in one file: decoded again, the new pixels are served, the stale cache is gone.
    target = sorted((root / "train" / "cat").iterdir())[0]
    Image.new("RGB", (32, 32), (0, 0, 0)).save(target, format=Image.open(target).format)
    count_decodes.clear()
    ds = load(root, tmp_path / "data")
    assert len(count_decodes) == 400 and not ds.train_x[3 * 30].any()
    assert len(list((tmp_path / "data" / "cache").iterdir())) == 1

    # Same bytes, newer mtime: still counts as a change.
    count_decodes.clear()
    load(root, tmp_path / "data")
    assert count_decodes == []
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load(root, tmp_path / "data")
    assert len(count_decodes) == 400

    # A file added.
    count_decodes.clear()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(root / "test" / "cat" / "extra.png")
    ds = load(root, tmp_path / "data")
    assert len(count_decodes) == 401 and len(ds.test_y) == 101 and np.bincount(ds.test_y)[3] == 11


def test_unreadable_cache_is_a_miss(tiny_folder, tmp_path, count_decodes):
    first = load(tiny_folder, tmp_path / "data")
    (cache,) = (tmp_path / "data" / "cache").iterdir()
    cache.write_bytes(b"not an npz")
    count_decodes.clear()
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        again = load(tiny_folder, tmp_path / "data")
    assert len(count_decodes) == 400 and np.array_equal(again.train_x, first.train_x)
    count_decodes.clear()
    load(tiny_folder, tmp_path / "data")  # rewritten
    assert count_decodes == []


def test_unwritable_cache_only_warns(tiny_folder, tmp_path):
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where data_dir should be")
    with pytest.warns(UserWarning, match="could not write dataset cache"):
        ds = load(tiny_folder, not_a_dir)
    assert ds.train_x.shape == (300, 3, 32, 32)


def test_progress_bar(tiny_folder_factory, tmp_path, capsys):
    root = tiny_folder_factory()
    load_dataset(f"folder:{root}", str(tmp_path / "a"), progress=False)
    assert "decoding" not in capsys.readouterr().err
    load_dataset(f"folder:{root}", str(tmp_path / "b"), progress=True)
    err = capsys.readouterr().err
    assert f"decoding {root.name}" in err and "400/400" in err


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("empty", [r"no train/ folder"]),
        ("no_images", [r"train/airplane: class folder holds no images"]),
        ("unequal_classes", [r"class folders differ", r"only in train: truck; only in test: lorry"]),
        ("truncated_jpeg", [r"train/cat/truncated\.jpg: corrupt or unreadable image", r"truncated"]),
        ("corrupt_file", [r"train/dog/corrupt\.png: corrupt or unreadable image"]),
        ("mixed_sizes", [r"test/dog/big\.png: image is 40x40 but \S*train/airplane/0000\.(jpg|png) is 32x32"]),
    ],
)
def test_broken_folders(tiny_folder_factory, tmp_path, variant, expected):
    root = tiny_folder_factory(variant)
    with pytest.raises(DataError) as err:
        load(root, tmp_path / "data")
    assert str(root) in str(err.value)
    for pattern in expected:
        assert err.match(pattern)
    assert not (tmp_path / "data" / "cache").exists() or not any((tmp_path / "data" / "cache").iterdir())


def test_truncated_jpeg_rejected_even_if_pil_was_told_to_accept_them(tiny_folder_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="truncated.jpg"):
        load(tiny_folder_factory("truncated_jpeg"), tmp_path / "data")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "test").mkdir()
    with pytest.raises(DataError, match=r"ds/train: no class folders"):
        load(tmp_path / "ds", tmp_path / "data")


@pytest.mark.parametrize("spec, pattern", [
    ("folder:/no/such/dataset", r"dataset folder /no/such/dataset does not exist"),
    ("imagenet", r"unknown dataset 'imagenet'"),
    ("folder:", r"unknown dataset 'folder:'"),
])
def test_bad_specs(tmp_path, spec, pattern):
    with pytest.raises(DataError, match=pattern):
        load_dataset(spec, str(tmp_path / "data"), progress=False)
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- CIFAR through torchvision


def _fake_cifar(root: Path, name: str, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Write torchvision's on-disk format: pickled dicts of (N, 3072) rows, each an R, G, B plane."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n_train + n_test, 3, 32, 32), dtype=np.uint8)
    n_cls = 10 if name == "cifar10" else 100
    y = np.arange(n_train + n_test) % n_cls
    classes = [f"class{i:03d}" for i in range(n_cls)]
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def batch(sl):
        return {"data": x[sl].reshape(-1, 3072), label_key: y[sl].tolist(), "coarse_labels": (y[sl] // 5).tolist()}

    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        per = n_train // 5
        files = {f"data_batch_{i + 1}": batch(slice(i * per, (i + 1) * per)) for i in range(5)}
        files["test_batch"] = batch(slice(n_train, None))
        files["batches.meta"] = {"label_names": classes}
    else:
        d = root / "cifar-100-python"
        files = {"train": batch(slice(0, n_train)), "test": batch(slice(n_train, None))}
        files["meta"] = {"fine_label_names": classes}
    d.mkdir(parents=True)
    for fname, obj in files.items():
        (d / fname).write_bytes(pickle.dumps(obj))
    return x, y, classes


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_files_already_in_data_dir(tmp_path, monkeypatch, name):
    import torchvision.datasets.cifar as tv_cifar

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our fake files have other md5s
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_download)
    x, y, classes = _fake_cifar(tmp_path / "data", name, n_train=250, n_test=50)
    ds = load_dataset(name, str(tmp_path / "data"))
    assert ds.name == name and ds.classes == classes
    np.testing.assert_array_equal(ds.train_x, x[:250])  # NCHW exactly as stored, after torchvision's NHWC
    np.testing.assert_array_equal(ds.test_x, x[250:])
    np.testing.assert_array_equal(ds.train_y, y[:250])
    np.testing.assert_array_equal(ds.test_y, y[250:])
    for arr in (ds.train_x, ds.test_x):
        assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert ds.train_y.dtype == ds.test_y.dtype == np.int64


def test_cifar_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"could not load cifar10 into .*network unreachable.*folder:PATH"):
        load_dataset("cifar10", str(tmp_path / "data"))


# ---------------------------------------------------------------- splits


def toy(train_counts, test_counts=(10, 10, 10)) -> Dataset:
    """A dataset with the given images per class; pixels are irrelevant to splitting."""
    ty = np.repeat(np.arange(len(train_counts)), train_counts).astype(np.int64)
    vy = np.repeat(np.arange(len(test_counts)), test_counts).astype(np.int64)
    blank = lambda n: np.zeros((n, 3, 1, 1), np.uint8)  # noqa: E731
    return Dataset("toy", [str(i) for i in range(len(train_counts))], blank(len(ty)), ty, blank(len(vy)), vy)


def assert_proportional(labels: np.ndarray, picked: np.ndarray, k: int) -> None:
    """Each class's count in `picked` is within 1 of its share of k."""
    counts = np.bincount(labels, minlength=labels.max() + 1)
    got = np.bincount(labels[picked], minlength=len(counts))
    assert np.all(np.abs(got - k * counts / len(labels)) < 1), (got, k * counts / len(labels))


def assert_index_array(a: np.ndarray) -> None:
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)  # sorted, no repeats


def test_holdout_split():
    ds = toy([500, 300, 200])
    s = make_split(ds, val_size=100, seed=0)
    for a in (s.train_idx, s.val_idx, s.test_idx):
        assert_index_array(a)
    assert len(s.val_idx) == 100 and len(s.train_idx) == 900 and not s.val_from_test
    assert not np.intersect1d(s.train_idx, s.val_idx).size
    assert np.array_equal(np.union1d(s.train_idx, s.val_idx), np.arange(1000))
    assert np.array_equal(s.test_idx, np.arange(30))
    assert np.array_equal(np.bincount(ds.train_y[s.val_idx]), [50, 30, 20])


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 60), min_size=1, max_size=12),
    val_frac=st.floats(0.0, 1.0),
    train_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_invariants(counts, val_frac, train_frac, seed):
    ds = toy(counts, counts)
    n = len(ds.train_y)
    train_limit = max(2, round(train_frac * n))
    pool = min(train_limit, n)
    if pool < 2:
        return
    val_size = 1 + round(val_frac * (pool - 2))
    s = make_split(ds, val_size, seed, train_limit=train_limit, test_limit=train_limit)
    again = make_split(ds, val_size, seed, train_limit=train_limit, test_limit=train_limit)
    for a, b in ((s.train_idx, again.train_idx), (s.val_idx, again.val_idx), (s.test_idx, again.test_idx)):
        assert_index_array(a)
        assert np.array_equal(a, b)  # deterministic per seed
    assert len(s.val_idx) == val_size and len(s.train_idx) + val_size == pool
    assert not np.intersect1d(s.train_idx, s.val_idx).size
    used = np.union1d(s.train_idx, s.val_idx)
    assert_proportional(ds.train_y, used, pool)  # the limited pool is stratified
    assert_proportional(ds.train_y[used], np.searchsorted(used, s.val_idx), val_size)  # and so is val within it
    assert len(s.test_idx) == min(train_limit, n)
    assert_proportional(ds.test_y, s.test_idx, len(s.test_idx))


def test_seed_changes_the_split():
    ds = toy([500, 300, 200])
    a, b = make_split(ds, 100, seed=0), make_split(ds, 100, seed=1)
    assert not np.array_equal(a.val_idx, b.val_idx)


def test_equal_classes_spread_remainders_by_seed():
    """10 equal classes, 5 held out: which classes give one is random, not always the first five."""
    ds = toy([20] * 10)
    giving = [np.bincount(ds.train_y[make_split(ds, 5, seed).val_idx], minlength=10) for seed in range(20)]
    chosen = {tuple(np.flatnonzero(g)) for g in giving}
    assert len(chosen) > 1


def test_paper_protocol_validates_on_the_test_set():
    ds = toy([50, 30, 20], [40, 40, 20])
    s = make_split(ds, val_size=10**9, seed=3, protocol="paper")  # val_size is ignored
    assert s.val_from_test
    assert np.array_equal(s.train_idx, np.arange(100))
    assert np.array_equal(s.val_idx, np.arange(100)) and np.array_equal(s.test_idx, np.arange(100))
    limited = make_split(ds, 0, seed=3, protocol="paper", train_limit=10, test_limit=20)
    assert len(limited.train_idx) == 10 and len(limited.test_idx) == 20
    assert np.array_equal(limited.val_idx, limited.test_idx)
    assert np.array_equal(np.bincount(ds.test_y[limited.test_idx]), [8, 8, 4])


def test_limits():
    ds = toy([500, 300, 200], [100, 60, 40])
    s = make_split(ds, 50, seed=0, train_limit=200, test_limit=50)
    assert len(s.train_idx) == 150 and len(s.val_idx) == 50 and len(s.test_idx) == 50
    assert np.array_equal(np.bincount(ds.train_y[np.union1d(s.train_idx, s.val_idx)]), [100, 60, 40])
    assert np.array_equal(np.bincount(ds.test_y[s.test_idx]), [25, 15, 10])
    # The test subsample does not depend on the training limit, nor the held-out set on test_limit.
    assert np.array_equal(make_split(ds, 50, seed=0, train_limit=300, test_limit=50).test_idx, s.test_idx)
    assert np.array_equal(make_split(ds, 50, seed=0, train_limit=200).val_idx, s.val_idx)
    # A limit at or above the set's size keeps everything.
    full = make_split(ds, 50, seed=0, train_limit=10**6, test_limit=200)
    assert len(full.train_idx) + len(full.val_idx) == 1000 and len(full.test_idx) == 200


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(val_size=1000), r"val_size=1000 is invalid: must be 1\.\.999 \(fewer than the 1000 training images"),
    (dict(val_size=100, train_limit=100), r"val_size=100 is invalid: must be 1\.\.99"),
    (dict(val_size=0), r"val_size=0 is invalid"),
    (dict(val_size=10, protocol="test"), r"protocol='test' is invalid"),
    (dict(val_size=10, train_limit=0), r"train_limit=0 is invalid"),
    (dict(val_size=10, test_limit=-1), r"test_limit=-1 is invalid"),
])
def test_split_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_split(toy([500, 300, 200]), seed=0, **kwargs)


def test_split_on_the_tiny_folder(tiny_folder, tmp_path):
    ds = load(tiny_folder, tmp_path / "data")
    s = make_split(ds, val_size=50, seed=0)
    assert np.array_equal(np.bincount(ds.train_y[s.val_idx]), [5] * 10)
    assert np.array_equal(np.bincount(ds.train_y[s.train_idx]), [25] * 10)


def test_synthetic_fallback_folder_is_loadable_and_learnable(tmp_path):
    """Without the CIFAR archive, conftest draws class-coloured PNGs: each class must look different."""
    from conftest import _synthesize

    _synthesize(tmp_path / "synth", {"train": 4, "test": 2})
    ds = load(tmp_path / "synth", tmp_path / "data")
    assert ds.classes == CLASSES and ds.train_x.shape == (40, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    class_means = np.stack([ds.train_x[ds.train_y == k].mean(axis=(0, 2, 3)) for k in range(10)])
    gaps = np.linalg.norm(class_means[:, None] - class_means[None], axis=-1) + np.eye(10) * 1e9
    assert gaps.min() > 20
