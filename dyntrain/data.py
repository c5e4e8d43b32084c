"""Load CIFAR-10/100 or an image-folder dataset once, as uint8 NCHW arrays, and split it by index.

Everything downstream works on index arrays into these arrays (the pool, the subset A, the
validation set), so the images are decoded once per process and never copied per epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm

from dyntrain.config import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = 1  # bump when the cached arrays change meaning, so that old caches miss
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


class DataError(ValueError):
    """The dataset cannot be loaded; the message names the path and the problem."""


@dataclass
class Dataset:
    name: str  # "cifar10", "cifar100" or "folder:/abs/path"
    classes: list[str]
    train_x: np.ndarray  # uint8 (N, 3, H, W), C-contiguous
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray


def load_dataset(spec: str, data_dir: str = "data", progress: bool = True) -> Dataset:
    """`spec` is "cifar10" or "cifar100" (torchvision, downloaded into `data_dir` if absent) or "folder:PATH"
    (PATH/train/<class>/*.png|jpg and PATH/test/<class>/*, decoded once and cached in data_dir/cache)."""
    if spec in ("cifar10", "cifar100"):
        return _load_cifar(spec, data_dir)
    if spec.startswith("folder:") and len(spec) > len("folder:"):
        return _load_folder(Path(spec[len("folder:") :]), Path(data_dir), progress)
    raise DataError(f"unknown dataset {spec!r}: must be cifar10, cifar100 or folder:PATH")


def _load_cifar(name: str, data_dir: str) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train, test = (cls(root=data_dir, train=flag, download=True) for flag in (True, False))
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"could not load {name} into {os.path.abspath(data_dir)}: {e}. Without a network, use "
            "--dataset folder:PATH with an image folder (e.g. shared/data/cifar10-jpeg.tar.gz unpacked)"
        ) from e

    def arrays(part):  # torchvision turned the stored NCHW batches into an NHWC view; this undoes it for free
        return np.ascontiguousarray(part.data.transpose(0, 3, 1, 2)), np.asarray(part.targets, np.int64)

    return Dataset(name, list(train.classes), *arrays(train), *arrays(test))


def _list_split(root: Path, split: str) -> dict[str, list[os.DirEntry]]:
    """class name -> image files in PATH/<split>/<class>/, sorted by name. os.scandir, not pathlib:
    listing and stat-ing the files is most of what a cached load costs (60k files: ~0.4 s in all)."""
    top = root / split
    if not top.is_dir():
        raise DataError(f"{root}: no {split}/ folder (expected {root}/train/<class>/*.png and {root}/test/<class>/*)")
    with os.scandir(top) as entries:
        class_dirs = sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
    listing = {}
    for d in class_dirs:
        with os.scandir(d) as entries:
            files = [e for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()]
        if not files:
            raise DataError(f"{d}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        listing[os.path.basename(d)] = sorted(files, key=lambda e: e.name)
    if not listing:
        raise DataError(f"{top}: no class folders")
    return listing


def _load_folder(root: Path, data_dir: Path, progress: bool) -> Dataset:
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    train, test = _list_split(root, "train"), _list_split(root, "test")
    if train.keys() != test.keys():
        raise DataError(
            f"{root}: class folders differ between train/ and test/: "
            f"only in train: {', '.join(sorted(train.keys() - test.keys())) or '-'}; "
            f"only in test: {', '.join(sorted(test.keys() - train.keys())) or '-'}"
        )
    classes = sorted(train)
    files = [f for listing in (train, test) for c in classes for f in listing[c]]
    n_train = sum(len(train[c]) for c in classes)
    cache, name = _cache_path(root, files, data_dir), f"folder:{root}"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Dataset(name, z["classes"].tolist(), *(z[k] for k in _ARRAYS))
        except Exception as e:  # an unreadable cache is only a miss: decode again and overwrite it
            warnings.warn(f"ignoring unreadable dataset cache {cache}: {e}", stacklevel=2)

    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        x = _decode_all([f.path for f in files], progress, f"decoding {root.name}")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    train_y, test_y = (np.repeat(np.arange(len(classes)), [len(listing[c]) for c in classes]) for listing in (train, test))
    ds = Dataset(name, classes, x[:n_train], train_y.astype(np.int64), x[n_train:], test_y.astype(np.int64))
    _write_cache(cache, ds)
    return ds


def _decode(path: str) -> np.ndarray:
    """One image as uint8 (H, W, 3)."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes it all, so that a truncated file fails here
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from e


def _decode_all(files: list[str], progress: bool, desc: str) -> np.ndarray:
    first = _decode(files[0])  # every image must have its size
    out = np.empty((len(files), 3, *first.shape[:2]), np.uint8)
    out[0] = first.transpose(2, 0, 1)

    def put(i: int) -> None:
        img = _decode(files[i])
        if img.shape != first.shape:
            raise DataError(
                f"{files[i]}: image is {img.shape[1]}x{img.shape[0]} but {files[0]} is "
                f"{first.shape[1]}x{first.shape[0]}; all images must have the same size"
            )
        out[i] = img.transpose(2, 0, 1)

    # PIL's decoders release the GIL, so threads help (1.4x on 2 cores for CIFAR) with no pickling of images.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    pool = ThreadPoolExecutor(min(32, cores))
    try:
        decoded = pool.map(put, range(1, len(files)))
        for _ in tqdm(decoded, desc, total=len(files), initial=1, unit="img", disable=not progress):
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # on the first bad image, stop instead of decoding the rest
    return out


def _cache_path(root: Path, files: list[os.DirEntry], data_dir: Path) -> Path:
    """Keyed by the folder and every file's name, size and mtime: any change to the folder is a new key."""
    stats = [(f.path[len(str(root)) :], s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()]]
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, str(root), stats]).encode()).hexdigest()
    folder_key = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return data_dir / "cache" / f"folder-{folder_key}-{digest[:16]}-{root.name}.npz"


def _write_cache(cache: Path, ds: Dataset) -> None:
    """Atomically (tmp file + os.replace), so that concurrent trials never read half a cache; older caches
    of the same folder are removed. A cache that cannot be written is only a warning."""
    tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, classes=np.array(ds.classes), **{k: getattr(ds, k) for k in _ARRAYS})
        os.replace(tmp, cache)
        same_folder = "-".join(cache.name.split("-")[:2]) + "-"  # "folder-<hash of the path>-"
        for old in cache.parent.iterdir():
            if old.name.startswith(same_folder) and old.suffix == ".npz" and old != cache:
                old.unlink(missing_ok=True)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write dataset cache {cache}: {e}; the folder will be decoded again next time", stacklevel=2)


@dataclass(frozen=True, eq=False)  # eq=False: a generated __eq__ would compare arrays and raise
class Split:
    train_idx: np.ndarray  # int64 indices into dataset.train_x: the pool the sampling policy draws from
    val_idx: np.ndarray  # into dataset.train_x (holdout), or into dataset.test_x when val_from_test
    test_idx: np.ndarray  # into dataset.test_x
    val_from_test: bool  # True under protocol "paper"


def make_split(
    dataset: Dataset, val_size: int, seed: int, protocol: str = "holdout",
    train_limit: int | None = None, test_limit: int | None = None,
) -> Split:
    """Seeded, stratified split. `train_limit`/`test_limit` first keep a stratified sample of that many
    images (a limit at or above the set's size keeps it all). Protocol "holdout" then holds `val_size`
    images out of the training set for validation; "paper" validates on the test set itself, as the
    paper does, and ignores val_size. All index arrays are sorted int64."""
    for limit_name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ConfigError(f"{limit_name}={limit!r} is invalid: must be an integer >= 1 or unset")
    # One independent stream per draw, so that e.g. test_limit does not change which images are held out.
    rng_train, rng_test, rng_val = (np.random.default_rng([seed, k]) for k in range(3))
    pool = _stratified_sample(dataset.train_y, train_limit, rng_train)
    test_idx = _stratified_sample(dataset.test_y, test_limit, rng_test)
    if protocol == "paper":
        return Split(pool, test_idx, test_idx, True)
    if protocol != "holdout":
        raise ConfigError(f"protocol={protocol!r} is invalid: must be one of holdout, paper")
    if not 1 <= val_size < len(pool):
        raise ConfigError(
            f"val_size={val_size!r} is invalid: must be 1..{len(pool) - 1} "
            f"(fewer than the {len(pool)} training images available)"
        )
    val_idx = pool[_stratified_sample(dataset.train_y[pool], val_size, rng_val)]
    return Split(np.setdiff1d(pool, val_idx), val_idx, test_idx, False)


def _stratified_sample(y: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of k elements of y, each class in proportion to its share of y (largest
    remainder, ties broken at random), drawn at random within the class. k None or >= len(y): all."""
    if k is None or k >= len(y):
        return np.arange(len(y), dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    exact = k * counts / len(y)
    quota = np.floor(exact).astype(np.int64)
    order = rng.permutation(len(classes))
    order = order[np.argsort(quota[order] - exact[order], kind="stable")]  # largest remainder first
    quota[order[: k - quota.sum()]] += 1
    picks = [rng.choice(np.flatnonzero(y == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks)).astype(np.int64)
