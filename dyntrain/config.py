"""Every knob of a dyntrain run: one validated dataclass, the single source of defaults and ranges.

`dyntrain train` options, Ray Tune config keys and YAML config files all map onto the fields of
`TrainConfig` by name (`--val-size` <-> `val_size`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

POLICIES = ("full", "static", "dynamic", "variant", "random")
PROTOCOLS = ("holdout", "paper")
COMPILE_MODES = ("none", "default", "cudagraphs")
DEVICES = ("auto", "cuda", "cpu")
BUILTIN_DATASETS = ("cifar10", "cifar100")

# Fields that may differ between a checkpoint and the run that resumes it: raising `epochs` extends
# a finished run, and where the data or the outputs live does not change what is computed.
RESUMABLE_CHANGES = frozenset({"epochs", "data_dir", "device", "progress"})


class ConfigError(ValueError):
    """A parameter is out of its valid range; the message names the parameter and the range."""


@dataclass(frozen=True)
class TrainConfig:
    # The method (PAPER.md "Parameters").
    policy: str = "dynamic"
    alpha: int = 25_000  # |A|, images per epoch
    beta: float = 0.7  # share of A replaced at a resample (beta_0 for the variant)
    delta: float = 0.01  # validation-accuracy threshold (accuracy as a fraction)
    gamma: float = 0.97  # variant only: beta_n = gamma**n * beta_0 (Eq. 3)
    # Training (PAPER.md "Network and training").
    epochs: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    batchnorm: bool = False
    augment: bool = False
    seed: int = 0
    # Data.
    dataset: str = "cifar10"  # cifar10 | cifar100 | folder:PATH
    data_dir: str = "data"
    val_size: int = 5_000
    protocol: str = "holdout"  # holdout: val split of the training set; paper: val = test set
    train_limit: int | None = None  # use only the first N training images (stratified): scaled-down runs
    test_limit: int | None = None  # likewise for the test set
    # Budgets, so that policies can be compared at equal cost.
    time_budget_s: float | None = None
    image_budget: int | None = None
    # Speed.
    device: str = "auto"
    compile: str = "none"
    progress: bool = True

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping with only known keys; unknown keys are an error, not ignored."""
        unknown = sorted(set(values) - field_names())
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(field_names()))}")
        coerced = {k: _coerce(k, v) for k, v in values.items()}
        return cls(**coerced)

    def validate(self, n_train: int | None = None) -> "TrainConfig":
        """Raise ConfigError for any out-of-range value. `n_train` is the size of the training split
        (after the validation hold-out) when it is known; alpha is checked against it."""
        _check(self.policy in POLICIES, "policy", self.policy, f"one of {', '.join(POLICIES)}")
        _check(self.protocol in PROTOCOLS, "protocol", self.protocol, f"one of {', '.join(PROTOCOLS)}")
        _check(self.compile in COMPILE_MODES, "compile", self.compile, f"one of {', '.join(COMPILE_MODES)}")
        _check(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        _check(
            self.dataset in BUILTIN_DATASETS or (self.dataset.startswith("folder:") and len(self.dataset) > 7),
            "dataset", self.dataset, "cifar10, cifar100 or folder:PATH",
        )
        _check(_is_int(self.alpha) and self.alpha >= 1, "alpha", self.alpha, "an integer >= 1")
        if n_train is not None and self.policy != "full":
            _check(self.alpha <= n_train, "alpha", self.alpha, f"1..{n_train} (the size of the training split)")
        if n_train is not None and self.policy in ("dynamic", "variant") and _is_real(self.beta):
            replaced = self.alpha - int(round(self.alpha * (1 - self.beta)))
            _check(
                replaced <= n_train - self.alpha, "beta", self.beta,
                f"small enough that the {replaced} images replaced at a resample fit outside A "
                f"(only {n_train - self.alpha} of the {n_train} training images lie outside; lower beta or alpha)",
            )
        _check(_is_real(self.beta) and 0.0 <= self.beta <= 1.0, "beta", self.beta, "[0, 1]")
        _check(_is_real(self.delta) and self.delta >= 0.0, "delta", self.delta, "a number >= 0")
        _check(_is_real(self.gamma) and 0.0 < self.gamma <= 1.0, "gamma", self.gamma, "(0, 1]")
        _check(_is_int(self.epochs) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(_is_real(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(_is_int(self.val_size) and self.val_size >= 0, "val_size", self.val_size, "an integer >= 0")
        if self.protocol == "holdout":
            _check(self.val_size >= 1, "val_size", self.val_size, ">= 1 with --protocol holdout (or use --protocol paper)")
        for name in ("train_limit", "test_limit", "image_budget"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= 1), name, value, "an integer >= 1 or unset")
        _check(
            self.time_budget_s is None or (_is_real(self.time_budget_s) and self.time_budget_s > 0),
            "time_budget_s", self.time_budget_s, "a number > 0 or unset",
        )
        return self


def field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


def config_diff(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, ignoring those a resume may change."""
    a, b = old.to_dict(), new.to_dict()
    return {k: (a[k], b[k]) for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]}


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _types() -> dict[str, Any]:
    defaults = TrainConfig()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(TrainConfig)}


_OPTIONAL_INT = {"train_limit", "test_limit", "image_budget"}
_OPTIONAL_FLOAT = {"time_budget_s"}


def _coerce(name: str, value: Any) -> Any:
    """Accept the obvious spellings (YAML ints for floats, numpy scalars from Ray); reject the rest later."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar from a Ray/Optuna search space
    kind = int if name in _OPTIONAL_INT else float if name in _OPTIONAL_FLOAT else _types()[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok: bool, name: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: must be {valid}")
