"""Every knob of a dyntrain run: one validated dataclass, the single source of truth for options.

Each field carries its default, its type (the annotation), its help text and, where it has them, its
choices (the field's metadata). `dyntrain train` and `dyntrain tune` generate their command-line
options from these fields; YAML config files, search spaces and Ray Tune configs use the same names
(`--val-size` <-> `val_size`). The policy names come from `sampling.POLICIES`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dyntrain.sampling import POLICIES

PROTOCOLS = ("holdout", "paper")
COMPILE_MODES = ("auto", "none", "default", "cudagraphs")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "onecycle", "cosine")
DEVICES = ("auto", "cuda", "cpu")
BUILTIN_DATASETS = ("cifar10", "cifar100")
FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_<][\w.<>]*")  # MODULE:FUNCTION; a callable records module:qualname


class ConfigError(ValueError):
    """A parameter is out of its valid range; the message names the parameter and the range."""


def option(default: Any, help: str, choices: tuple | None = None, runtime: bool = False) -> Any:
    """A TrainConfig field. `runtime`: where or how fast the run happens, never what it computes (a
    resume may change it, and runs that differ only in it are the same arm of a comparison)."""
    return field(default=default, metadata={"help": help, "choices": choices, "runtime": runtime})


@dataclass(frozen=True)
class TrainConfig:
    # The method (PAPER.md "Parameters").
    policy: str = option("dynamic", "subset policy; dynamic is the base design (Fig. 4-a), variant Fig. 4-b", tuple(POLICIES))
    alpha: int = option(25_000, "images per epoch, |A| (absolute, not a share of the pool)")
    beta: float = option(0.7, "share of A replaced at a resample (beta_0 for the variant)")
    delta: float = option(0.01, "validation-accuracy change (a fraction) below which A is resampled")
    gamma: float = option(0.97, "variant: beta_n = gamma**n * beta_0 (Eq. 3)")
    # Training (PAPER.md "Network and training").
    model: str = option("paper", "paper (Table 1) | resnet18 (the CIFAR ResNet-18) | MODULE:FUNCTION, a factory "
                        "called as FUNCTION(num_classes=K) that returns an nn.Module mapping (N, C, H, W) to logits")
    epochs: int = option(200, "epochs to train")
    batch_size: int = option(512, "images per optimiser step")
    lr: float = option(1e-3, "learning rate (the peak of a schedule)")
    optimizer: str = option("adam", "adam (the paper's) | sgd (with Nesterov momentum when momentum > 0)", OPTIMIZERS)
    momentum: float = option(0.9, "sgd: momentum")
    weight_decay: float = option(0.0, "L2 weight decay (coupled, as torch's Adam and SGD apply it)")
    lr_schedule: str = option("constant", "constant (the paper's) | onecycle | cosine, stepped every optimiser step "
                              "over the planned steps: ceil(images per epoch / batch) x epochs", LR_SCHEDULES)
    label_smoothing: float = option(0.0, "label smoothing of the training loss")
    batchnorm: bool = option(False, "model paper: add BatchNorm after every convolution (not in the paper)")
    augment: bool = option(False, "random flip and translation (pad 4, crop 32) on the device")
    seed: int = option(0, "seed of the split, the network, the order and the sampling")
    # Data.
    dataset: str = option("cifar10", "cifar10 | cifar100 | folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*)")
    data_dir: str = option("data", "where datasets are downloaded and decoded images cached", runtime=True)
    val_size: int = option(5_000, "validation images held out of the training set (protocol holdout)")
    protocol: str = option("holdout", "holdout: a held-out split drives resampling; paper: the test set does, "
                           "as in the paper", PROTOCOLS)
    train_limit: int | None = option(None, "use only N training images (stratified): for scaled-down runs")
    test_limit: int | None = option(None, "use only N test images (stratified)")
    # Budgets, so that policies can be compared at equal cost.
    time_budget_s: float | None = option(None, "stop after the epoch in which this much training time was spent")
    image_budget: int | None = option(None, "stop after the epoch in which this many images were trained on")
    # Speed and bookkeeping.
    device: str = option("auto", "where to train", DEVICES, runtime=True)
    compile: str = option("auto", "auto (cudagraphs on CUDA with adam, the fastest correct mode measured; else "
                          "none) | none | default (torch.compile) | cudagraphs (the train step in one CUDA graph; "
                          "CUDA only)", COMPILE_MODES, runtime=True)
    checkpoint_every: int | None = option(None, "also checkpoint every N epochs (the last epoch is always saved)", runtime=True)
    checkpoint_interval_s: float | None = option(
        60.0, "checkpoint when this many seconds passed since the last one: bounds lost work, and costs one "
        "~13 MB write a minute however fast epochs are", runtime=True)
    progress: bool = option(True, "show a progress bar", runtime=True)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping with only known keys; unknown keys are an error, not ignored."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(FIELDS))}")
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def validate(self, n_train: int | None = None) -> TrainConfig:
        """Raise ConfigError for any out-of-range value. `n_train` is the size of the training split
        (after the validation hold-out) when it is known; alpha is checked against it."""
        for f in fields(self):
            choices = f.metadata["choices"]
            if choices:
                _check(getattr(self, f.name) in choices, f.name, getattr(self, f.name), f"one of {', '.join(choices)}")
        _check(
            self.dataset in BUILTIN_DATASETS or (self.dataset.startswith("folder:") and len(self.dataset) > 7),
            "dataset", self.dataset, "cifar10, cifar100 or folder:PATH",
        )
        _check(isinstance(self.model, str) and (self.model in ("paper", "resnet18") or bool(FACTORY.fullmatch(self.model))),
               "model", self.model, "paper, resnet18 or MODULE:FUNCTION")
        _check(not self.batchnorm or self.model == "paper", "batchnorm", self.batchnorm,
               "False unless model is paper (the other networks bring their own normalisation)")
        _check(_is_int(self.alpha) and self.alpha >= 1, "alpha", self.alpha, "an integer >= 1")
        if n_train is not None and self.policy != "full":
            _check(self.alpha <= n_train, "alpha", self.alpha, f"1..{n_train} (the size of the training split)")
        if n_train is not None and "beta" in POLICIES[self.policy].params and _is_real(self.beta):
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
        _check(_is_real(self.momentum) and 0.0 <= self.momentum < 1.0, "momentum", self.momentum, "[0, 1)")
        _check(_is_real(self.weight_decay) and self.weight_decay >= 0.0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(_is_real(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0, "label_smoothing",
               self.label_smoothing, "[0, 1)")
        _check(_is_int(self.val_size) and self.val_size >= 0, "val_size", self.val_size, "an integer >= 0")
        if self.protocol == "holdout":
            _check(self.val_size >= 1, "val_size", self.val_size, ">= 1 with --protocol holdout (or use --protocol paper)")
        for name in ("train_limit", "test_limit", "image_budget", "checkpoint_every"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= 1), name, value, "an integer >= 1 or unset")
        for name in ("time_budget_s", "checkpoint_interval_s"):
            value = getattr(self, name)
            _check(value is None or (_is_real(value) and value > 0), name, value, "a number > 0 or unset")
        return self


def _field_type(annotation: Any) -> type:
    """int for `int | None`, and so on: the type a value of the field must have when it is set."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if isinstance(annotation, types.UnionType) else annotation


FIELDS: dict[str, type] = {name: _field_type(t) for name, t in typing.get_type_hints(TrainConfig).items()}
RUNTIME = frozenset(f.name for f in fields(TrainConfig) if f.metadata["runtime"])
# Fields a resume may change: raising `epochs` extends a finished run; runtime fields change nothing computed.
RESUMABLE_CHANGES = RUNTIME | {"epochs"}


# A search-space key whose values are whole points: a grid over `arm: [{policy: full}, {policy: static}]`
# sets several fields at once per trial (the arms of a comparison). And a value of image_budget in a
# space: alpha x epochs, the images every subset arm with the same alpha and epochs trains on.
ARM = "arm"
EQUAL_IMAGES = "equal"


def resolve_point(values: dict[str, Any]) -> dict[str, Any]:
    """A search point (a trial's config) as TrainConfig values: its `arm` merged in (an arm's fields
    win) and image_budget `equal` turned into alpha x epochs (defaults where the point omits them)."""
    values = dict(values)
    arm = values.pop(ARM, None) or {}
    if not isinstance(arm, dict):
        raise ConfigError(f"{ARM}={arm!r} is invalid: must be a mapping of option names to values")
    values |= {str(k).replace("-", "_"): v for k, v in arm.items()}
    if values.get("image_budget") == EQUAL_IMAGES:
        values["image_budget"] = int(values.get("alpha", TrainConfig.alpha)) * int(values.get("epochs", TrainConfig.epochs))
    return values


def config_diff(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, ignoring those a resume may change."""
    a, b = old.to_dict(), new.to_dict()
    return {k: (a[k], b[k]) for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]}


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping of option names to values; any file that cannot be read is one ConfigError
    naming the file (and the line, for a syntax error)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} file: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(name: str, value: Any) -> Any:
    """Accept the obvious spellings (YAML ints for floats, numpy scalars from Ray); reject the rest later."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar from a Ray/Optuna search space
    kind = FIELDS[name]
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
