"""Search spaces: the paper's, YAML files and Ray domains, parsed and validated before Ray starts.

A space maps TrainConfig field names to: a scalar (fixed for every trial), a list (a grid over its
values; a categorical choice under a searcher), a one-key mapping that is sampled -- {uniform: [lo, hi]},
{loguniform: [lo, hi]}, {randint: [lo, hi]} (both ends included) or {choice: [v, ...]}, the YAML form
-- or any Ray Tune domain (`tune.grid_search`, `tune.loguniform`, ...), the Python form. Every grid
point, with each sampled value at its bounds (or each choice), is validated as a TrainConfig.

`arm` is a grid over whole points: a list of mappings, each setting several fields at once (a grid
search only). In an arm or at the top, `image_budget: equal` is alpha x epochs: full data for as many
images as a subset arm with the same alpha and epochs trains on (`dyntrain.config.resolve_point`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyntrain.config import ARM, EQUAL_IMAGES, FIELDS, ConfigError, TrainConfig, load_yaml, resolve_point
from dyntrain.sampling import POLICIES

# Table 2: alpha x beta at delta 0.01, gamma 0.97 (the defaults) -- the paper's 21 runs. Alpha is
# absolute, as in the paper: under the default held-out protocol the pool is 45,000 images, so 25,000
# is 56 % of it (50 % of the paper's 50,000 with --protocol paper). `search` prints the shares.
PAPER_GRID = {"policy": "dynamic", "alpha": [15_000, 20_000, 25_000], "beta": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}
# Table 4/5 and the equal-budget baselines: every policy at the same alpha, with and without
# augmentation, and full data stopped at the images a subset arm trains on (alpha x epochs).
BASELINES = {ARM: [{"policy": p} for p in POLICIES] + [{"policy": "full", "image_budget": EQUAL_IMAGES}],
             "augment": [False, True]}
# The data-pruning literature's ResNet-18 recipe on CIFAR-10 (InfoBatch, RS2): SGD 0.1 with Nesterov
# momentum 0.9, weight decay 5e-4, one-cycle, label smoothing 0.1, augmentation, 200 epochs; every
# arm at alpha = 22,500, half of the 45,000-image pool of the default held-out protocol.
RESNET18_CIFAR10 = {**BASELINES, "augment": True, "model": "resnet18", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                    "weight_decay": 5e-4, "lr_schedule": "onecycle", "label_smoothing": 0.1, "alpha": 22_500,
                    "epochs": 200, "dataset": "cifar10"}
SPACES = {"paper-grid": PAPER_GRID, "baselines": BASELINES, "resnet18-cifar10": RESNET18_CIFAR10}
# Seeds per point unless told otherwise: a comparison of arms needs replicates (its CIs and tests).
DEFAULT_SEEDS = {"baselines": 3, "resnet18-cifar10": 2}
SAMPLERS = ("uniform", "loguniform", "randint", "choice")


@dataclass(frozen=True)
class Sampled:
    """A sampled space entry: `args` is (low, high) or the choices; `domain` the user's own Ray domain."""

    kind: str  # one of SAMPLERS
    args: tuple
    domain: Any = None


def options(value: Any) -> list:
    """The values a space entry may take, or for a range its two bounds: enough to validate every draw."""
    return value if isinstance(value, list) else list(value.args) if isinstance(value, Sampled) else [value]


def load_space(name_or_file: str) -> dict[str, Any]:
    """A built-in space by name, or a YAML file; raw values, not yet parsed."""
    if name_or_file in SPACES:
        return dict(SPACES[name_or_file])
    if not Path(name_or_file).is_file():
        raise ConfigError(f"space {name_or_file}: no such file, and not one of {', '.join(SPACES)}")
    return load_yaml(name_or_file, what="search space")


def parse_space(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw values -> fixed values, lists (grids) and `Sampled`; unknown keys and malformed samplers fail."""
    unknown = sorted(set(raw) - set(FIELDS) - {ARM})
    if unknown:
        raise ConfigError(f"search space: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(FIELDS))}")
    space = {}
    for key, value in raw.items():
        if isinstance(value, dict) and set(value) == {"grid_search"}:
            value = list(value["grid_search"])  # tune.grid_search([...])
        if key == ARM:
            value = _arms(value, raw)
        elif isinstance(value, list):
            if not value:
                raise ConfigError(f"search space: {key} is an empty list (a grid needs at least one value)")
        elif isinstance(value, dict):
            value = _sampler(key, value)
        elif _is_domain(value):
            value = _from_domain(key, value)
        space[key] = value
    return space


def _arms(value: Any, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The arms of a space: a non-empty list of mappings of known fields to fixed values, none of them
    also set at the top of the space (which one would win is not obvious)."""
    if not isinstance(value, list) or not value or not all(isinstance(a, dict) and a for a in value):
        raise ConfigError(f"search space: {ARM} must be a non-empty list of mappings of options to values, got {value!r}")
    arms = [{str(k).replace("-", "_"): v for k, v in a.items()} for a in value]
    for a in arms:
        unknown = sorted(set(a) - set(FIELDS))
        if unknown:
            raise ConfigError(f"search space: {ARM} {a}: unknown option(s) {', '.join(unknown)}")
        both = sorted(set(a) & set(raw))
        if both:
            raise ConfigError(f"search space: {', '.join(both)} set both in {ARM} {a} and for every trial; set it in one place")
        nested = [k for k, v in a.items() if isinstance(v, (list, dict))]
        if nested:
            raise ConfigError(f"search space: {ARM} {a}: {', '.join(nested)} must be a single value in an arm")
    return arms


def _sampler(key: str, spec: dict) -> Sampled:
    where = f"search space: {key}: {spec}"
    if len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
        raise ConfigError(f"{where} is not a sampler: use one of {', '.join(f'{{{s}: ...}}' for s in SAMPLERS)}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values")
        return Sampled(kind, tuple(args))
    numbers = isinstance(args, list) and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not (numbers and len(args) == 2):
        raise ConfigError(f"{where}: {kind} needs [low, high], two numbers")
    lo, hi = args
    if not lo < hi:
        raise ConfigError(f"{where}: low must be below high")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0")
    if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{where}: randint needs integer bounds")
    if kind != "randint" and FIELDS[key] is int:
        raise ConfigError(f"{where}: {key} is an integer, sample it with {{randint: [{lo}, {hi}]}}")
    return Sampled(kind, (int(lo), int(hi)) if kind == "randint" else (lo, hi))


def _is_domain(value: Any) -> bool:
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain)


def _from_domain(key: str, domain: Any) -> Sampled:
    """A Ray domain, kept as the user wrote it, with the bounds or choices that validation checks."""
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

    if isinstance(domain, Categorical):
        return Sampled("choice", tuple(domain.categories), domain)
    if isinstance(domain, Integer):
        return Sampled("randint", (domain.lower, domain.upper - 1), domain)  # Ray's upper is excluded
    if isinstance(domain, Float):
        if FIELDS[key] is int:
            raise ConfigError(f"search space: {key} is an integer, sample it with tune.randint")
        kind = "loguniform" if isinstance(domain.sampler, LogUniform) else "uniform"
        return Sampled(kind, (domain.lower, domain.upper), domain)
    raise ConfigError(f"search space: {key}: {type(domain).__name__} is not supported (use a grid, choice, "
                      "uniform, loguniform or randint domain)")


def points(space: dict[str, Any]):
    """Every grid point with every sampled value at each of its bounds (or each of its choices), its
    arm resolved into TrainConfig values."""
    for combo in itertools.product(*map(options, space.values())):
        yield resolve_point(dict(zip(space, combo)))


def validate_space(space: dict[str, Any], n_train: Any = None) -> None:
    """TrainConfig.validate on every point of `points(space)`; `n_train(cfg)` gives the size of the
    training split the point would train on, to check alpha against the data."""
    varying = [k for k, v in space.items() if isinstance(v, (list, Sampled)) and k != ARM]
    varying += sorted({k for a in space.get(ARM, []) for k in a})
    for point in points(space):
        try:
            cfg = TrainConfig.from_dict(point).validate()
            if n_train is not None:
                cfg.validate(n_train(cfg))
        except ConfigError as err:
            at = ", ".join(f"{k}={point[k]!r}" for k in varying if k in point)
            raise ConfigError(f"search space: {err}" + (f" (at {at})" if at else "")) from None


def to_param_space(space: dict[str, Any], search: str) -> dict[str, Any]:
    """Ray Tune's param_space: lists are grids (grid search) or categorical choices (a searcher)."""
    from ray import tune

    def domain(v: Any) -> Any:
        if isinstance(v, list):
            return tune.grid_search(v) if search == "grid" else tune.choice(v)
        if not isinstance(v, Sampled):
            return v
        if v.domain is not None:
            return v.domain
        if v.kind == "choice":
            return tune.choice(list(v.args))
        lo, hi = v.args
        if v.kind == "randint":
            return tune.randint(lo, hi + 1)  # Ray's high is excluded, ours included
        return tune.uniform(lo, hi) if v.kind == "uniform" else tune.loguniform(lo, hi)

    return {k: domain(v) for k, v in space.items()}


def start_point(space: dict[str, Any]) -> dict[str, Any]:
    """The paper's best point (Table 2's best cell: the TrainConfig defaults), moved into the domain of
    every searched parameter: the nearest bound of a range, the first value of a list."""
    defaults = TrainConfig().to_dict()
    point = {}
    for k, v in space.items():
        if isinstance(v, list) or isinstance(v, Sampled) and v.kind == "choice":
            point[k] = defaults[k] if defaults[k] in options(v) else options(v)[0]
        elif isinstance(v, Sampled):
            point[k] = min(max(defaults[k], v.args[0]), v.args[1])
    return point
