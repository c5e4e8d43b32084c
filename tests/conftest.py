"""Shared fixtures: a tiny image-folder dataset in the CIFAR-10 layout (real CIFAR-10 JPEGs from
shared/data when the archive is there, class-coloured synthetic PNGs otherwise) and broken copies of it."""

from __future__ import annotations

import os

# With this 0, a local Ray node takes 127.0.0.1 as its address (ray._private.services.get_node_ip_address)
# instead of the address other machines would reach it on: the tests' Ray stays on loopback. Ray reads it
# at import, so it is set before any test imports Ray; setdefault leaves an explicit setting alone.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import colorsys
import io
import itertools
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 30, "test": 10}


def cifar_tar_path() -> Path | None:
    """shared/data/cifar10-jpeg.tar.gz beside the repository (or $DYNTRAIN_CIFAR_TAR), None if absent."""
    env = os.environ.get("DYNTRAIN_CIFAR_TAR")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"DYNTRAIN_CIFAR_TAR={env} is not a file")
        return Path(env)
    path = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
    return path if path.is_file() else None


def _extract(tar: Path, dest: Path, per_class: dict[str, int]) -> None:
    """Copy the first per_class[split] images of each class, streaming the archive once and stopping
    as soon as every class seen has its share (the archive is ~60k files; we need a few hundred)."""
    taken: Counter = Counter()
    classes: set[str] = set()
    with tarfile.open(tar, "r|gz") as tf:
        for member in tf:
            parts = Path(member.name).parts  # cifar10-jpeg/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4 or parts[1] not in per_class:
                continue
            _, split, cls, name = parts
            classes.add(cls)
            if taken[split, cls] < per_class[split]:
                out = dest / split / cls / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tf.extractfile(member).read())
                taken[split, cls] += 1
                if all(taken[s, c] >= n for c in classes for s, n in per_class.items()):
                    return


def _synthesize(dest: Path, per_class: dict[str, int]) -> None:
    """32x32 PNGs whose hue is the class (plus noise), so a CNN can learn them."""
    rng = np.random.default_rng(0)
    for (split, n), (k, cls) in itertools.product(per_class.items(), enumerate(CIFAR10_CLASSES)):
        colour = 255 * np.array(colorsys.hsv_to_rgb(k / len(CIFAR10_CLASSES), 0.8, 0.9))
        (dest / split / cls).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(dest / split / cls / f"{i:04d}.png")


@pytest.fixture(scope="session")
def cifar_tar() -> Path | None:
    return cifar_tar_path()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, cifar_tar) -> Path:
    """PATH/{train,test}/<class>/*: 30 train + 10 test images for each of the 10 CIFAR-10 classes.
    Shared by the whole session: copy it (tiny_folder_factory) before changing anything."""
    root = tmp_path_factory.mktemp("tiny") / "cifar10-tiny"
    if cifar_tar is not None:
        _extract(cifar_tar, root, PER_CLASS)
    else:
        _synthesize(root, PER_CLASS)
    return root


def _jpeg_bytes(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def _break(root: Path, variant: str) -> None:
    if variant == "empty":  # the folder exists but holds nothing
        shutil.rmtree(root)
        root.mkdir()
    elif variant == "no_images":  # class folders that hold only non-image files
        for d in (root / "train").iterdir():
            for f in d.iterdir():
                f.unlink()
            (d / "README.txt").write_text("no images here")
    elif variant == "unequal_classes":  # train/truck has no test/ counterpart; test/lorry no train/ one
        (root / "test" / "truck").rename(root / "test" / "lorry")
    elif variant == "truncated_jpeg":
        (root / "train" / "cat" / "truncated.jpg").write_bytes(_jpeg_bytes()[:400])
    elif variant == "corrupt_file":
        (root / "train" / "dog" / "corrupt.png").write_bytes(b"this is not a png")
    elif variant == "mixed_sizes":
        Image.new("RGB", (40, 40), (10, 20, 30)).save(root / "test" / "dog" / "big.png")
    else:
        raise ValueError(f"unknown variant {variant!r}")


@pytest.fixture
def tiny_folder_factory(tiny_folder, tmp_path):
    """make(variant=None) -> a fresh, writable copy of tiny_folder under tmp_path, broken as `variant` says:
    "empty", "no_images", "unequal_classes" (test/truck renamed test/lorry), "truncated_jpeg"
    (adds train/cat/truncated.jpg), "corrupt_file" (adds train/dog/corrupt.png) or "mixed_sizes"
    (adds a 40x40 test/dog/big.png)."""
    counter = itertools.count()

    def make(variant: str | None = None) -> Path:
        root = tmp_path / f"folder{next(counter)}"
        shutil.copytree(tiny_folder, root)
        if variant is not None:
            _break(root, variant)
        return root

    return make
