"""Ray Tune adapter: the trainable, search spaces, resources, storage and restore (`dyntrain tune`).

Ray stays at this edge. `trainable` is a thin adapter over `engine.Trainer`: one `dyntrain train`
run that reports the engine's per-epoch metrics to Tune with a checkpoint. Everything about the
search (the space, its validation against the data, the searcher, the scheduler) is decided in the
driver before Ray starts, so a bad space costs nothing.

    from ray import tune
    from dyntrain.tune import trainable
    tune.Tuner(trainable, param_space={"alpha": tune.grid_search([15000, 25000]), "epochs": 50}).fit()

A search space maps `dyntrain train` option names (underscores) to: a scalar (fixed), a list (a grid
over its values; a categorical choice under Optuna), or a one-key mapping that is sampled:
{uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]} (both ends included) or
{choice: [v, ...]}.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dyntrain.config import POLICIES, ConfigError, TrainConfig, field_names, load_yaml

# Table 2: alpha x beta at delta 0.01, gamma 0.97 -- the paper's 21 runs.
PAPER_GRID = {
    "policy": "dynamic", "alpha": [15_000, 20_000, 25_000], "beta": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    "delta": 0.01, "gamma": 0.97,
}
# Table 4/5 and the equal-budget baselines: every policy at the same alpha, with and without augmentation.
BASELINES = {"policy": list(POLICIES), "augment": [False, True]}
SPACES = {"paper-grid": PAPER_GRID, "baselines": BASELINES}
PAPER_BEST = {"policy": "dynamic", "alpha": 25_000, "beta": 0.7, "delta": 0.01, "gamma": 0.97}  # Table 2's best cell
SAMPLERS = ("uniform", "loguniform", "randint", "choice")
TRIAL_INDEX = "__trial_index__"  # set by ray.tune.search.Repeater on each repeat of a point (--seeds with Optuna)
STATE_FILE = "state.pt"
# Cost-aware metrics added to the engine's: GPU-seconds spent (wall seconds on CPU-only trials), and
# the best validation accuracy per GPU-hour.
COST_METRICS = ("gpu_s", "best_val_acc_per_gpu_h")
MINIMISED = ("train_loss", "epoch_time_s", "wall_time_s", "gpu_s")
TABLE_FIRST = ("val_acc", "best_val_acc", "train_loss", "subset_size")  # Tune's live table shows 4 metrics


# --- the trainable --------------------------------------------------------------------------------
def trainable(config: dict[str, Any], data: Any = None) -> None:
    """Ray Tune function trainable: one `dyntrain train` run with `config` (TrainConfig keys; the rest
    take the command's defaults), reporting each epoch's metrics with a checkpoint, and resuming from
    `ray.tune.get_checkpoint()`. `data` is a `Dataset`, or a dict of them by dataset spec, given once
    through `tune.with_parameters(trainable, data=...)` so that each node fetches it once from the
    object store; without it every trial loads `config["dataset"]` itself."""
    from ray import tune

    from dyntrain.data import load_dataset
    from dyntrain.engine import Trainer, load_checkpoint, save_checkpoint

    values = dict(config)
    values["seed"] = values.get("seed", 0) + values.pop(TRIAL_INDEX, 0)
    cfg = TrainConfig.from_dict({**values, "progress": False})
    if isinstance(data, dict):
        data = data.get(cfg.dataset)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir, progress=False)
    gpus = tune.get_context().get_trial_resources().required_resources.get("GPU", 0)
    cap_gpu_memory(gpus)
    trainer = Trainer(cfg, data)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(load_checkpoint(Path(folder) / STATE_FILE))
    placement = where_am_i(gpus)
    for metrics in trainer:
        gpu_s = metrics["wall_time_s"] * (gpus or 1)
        metrics = {**metrics, "n_train": trainer.n_train, "gpu_s": gpu_s,
                   "best_val_acc_per_gpu_h": metrics["best_val_acc"] * 3600 / max(gpu_s, 1e-9), **placement}
        ordered = {k: metrics[k] for k in TABLE_FIRST} | metrics
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(trainer.state_dict(), Path(folder) / STATE_FILE)
            tune.report(ordered, checkpoint=tune.Checkpoint.from_directory(folder))


def where_am_i(gpus: float) -> dict[str, Any]:
    """Where this trial runs: Ray's node id and address, the GPU ids Ray gave it and its GPU share."""
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "gpus": float(gpus)}


def cap_gpu_memory(gpus: float) -> bool:
    """With a fraction of a GPU, co-located trials share it: cap this process's CUDA memory to its
    share, so that a trial past it fails with a clear out-of-memory error instead of starving the others."""
    import torch

    if 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpus)
        return True
    return False


# --- search spaces --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampled:
    kind: str  # one of SAMPLERS
    args: tuple  # (low, high) or the choices


def options(value: Any) -> list:
    """The values a space entry may take, or for a range its two bounds: enough to validate every draw."""
    return value if isinstance(value, list) else list(value.args) if isinstance(value, Sampled) else [value]


def load_space(name_or_file: str) -> dict[str, Any]:
    """A built-in space by name, or a YAML file; raw values, not yet parsed."""
    if name_or_file in SPACES:
        return dict(SPACES[name_or_file])
    if not Path(name_or_file).is_file():
        raise ConfigError(f"--space {name_or_file}: no such file, and not one of {', '.join(SPACES)}")
    return load_yaml(name_or_file)


def parse_space(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw values -> fixed values, lists (grids) and `Sampled`; unknown keys and malformed samplers fail."""
    unknown = sorted(set(raw) - field_names())
    if unknown:
        valid = ", ".join(sorted(field_names()))
        raise ConfigError(f"search space: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    ints = {k for k, v in TrainConfig().to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
    space = {}
    for key, value in raw.items():
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"search space: {key} is an empty list (a grid needs at least one value)")
        elif isinstance(value, dict):
            value = _sampler(key, value, ints)
        space[key] = value
    return space


def _sampler(key: str, spec: dict, ints: set[str]) -> Sampled:
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
    if kind != "randint" and key in ints:
        raise ConfigError(f"{where}: {key} is an integer, sample it with {{randint: [{lo}, {hi}]}}")
    return Sampled(kind, (int(lo), int(hi)) if kind == "randint" else (lo, hi))


def points(space: dict[str, Any]):
    """Every grid point with every sampled value at each of its bounds (or each of its choices)."""
    for combo in itertools.product(*map(options, space.values())):
        yield dict(zip(space, combo))


def validate_space(space: dict[str, Any], n_train: Any = None) -> None:
    """TrainConfig.validate on every point of `points(space)`; `n_train(cfg)` gives the size of the
    training split the point would train on, to check alpha against the data."""
    varying = [k for k, v in space.items() if isinstance(v, (list, Sampled))]
    for point in points(space):
        try:
            cfg = TrainConfig.from_dict(point).validate()
            if n_train is not None:
                cfg.validate(n_train(cfg))
        except ConfigError as err:
            at = ", ".join(f"{k}={point[k]!r}" for k in varying)
            raise ConfigError(f"search space: {err}" + (f" (at {at})" if at else "")) from None


def to_param_space(space: dict[str, Any], search: str) -> dict[str, Any]:
    """Ray Tune's param_space: lists are grids (grid search) or categorical choices (Optuna)."""
    from ray import tune

    def domain(v: Any) -> Any:
        if isinstance(v, list):
            return tune.grid_search(v) if search == "grid" else tune.choice(v)
        if not isinstance(v, Sampled):
            return v
        if v.kind == "choice":
            return tune.choice(list(v.args))
        lo, hi = v.args
        if v.kind == "randint":
            return tune.randint(lo, hi + 1)  # Ray's high is excluded, ours included
        return tune.uniform(lo, hi) if v.kind == "uniform" else tune.loguniform(lo, hi)

    return {k: domain(v) for k, v in space.items()}


def start_point(space: dict[str, Any]) -> dict[str, Any]:
    """The paper's best point (the command's defaults for the other parameters), moved into the
    domain of every searched parameter: the nearest bound of a range, the first value of a list."""
    defaults = {**TrainConfig().to_dict(), **PAPER_BEST}
    point = {}
    for k, v in space.items():
        if isinstance(v, list) or isinstance(v, Sampled) and v.kind == "choice":
            point[k] = defaults[k] if defaults[k] in options(v) else options(v)[0]
        elif isinstance(v, Sampled):
            point[k] = min(max(defaults[k], v.args[0]), v.args[1])
    return point


# --- the command ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dyntrain tune", allow_abbrev=False, description=(
        "Ray Tune search over dyntrain's parameters. Training options given here fix that value for every trial."))
    p.add_argument("--space", default="paper-grid", help="paper-grid | baselines | FILE.yaml [paper-grid]")
    p.add_argument("--seeds", type=int, default=1, help="repeat every point with N seeds (seed, seed+1, ...) [1]")
    p.add_argument("--search", choices=("grid", "optuna"), default="grid", help="[grid]")
    p.add_argument("--num-samples", type=int, help="grid: repeats of the grid (fresh draws of sampled values) [1]; optuna: trials [20]")
    p.add_argument("--metric", default="best_val_acc", help="metric to optimise, e.g. val_acc, best_val_acc_per_gpu_h [best_val_acc]")
    p.add_argument("--mode", choices=("max", "min"), help="[min for losses and times, else max]")
    p.add_argument("--max-concurrent", type=int, default=4, help="optuna: trials in flight at once [4]")
    p.add_argument("--search-seed", type=int, default=0, help="optuna: sampler seed [0]")
    p.add_argument("--scheduler", choices=("none", "asha"), default="none", help="asha: stop hopeless trials early [none]")
    p.add_argument("--grace-period", type=int, default=10, help="asha: epochs every trial runs before it may be stopped [10]")
    p.add_argument("--gpus-per-trial", type=float, help="fractions allowed; 0 trains on the CPU [1 if the cluster has GPUs, else 0]")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="[1]")
    p.add_argument("--storage", default="results/ray", help="a folder, a shared mount or a URI such as s3://bucket/path [results/ray]")
    p.add_argument("--name", help="experiment name (a folder under --storage) [the space's name]")
    p.add_argument("--resume", action="store_true", help="continue the experiment --storage/--name, errored trials too")
    p.add_argument("--max-failures", type=int, default=0, help="restarts of a failed trial from its last checkpoint [0]")
    p.add_argument("--address", help="join a running Ray cluster: auto, or HOST:PORT")
    p.add_argument("--dashboard", action="store_true", help="start the local Ray with its dashboard on 127.0.0.1:8265")
    add_train_options(p)
    return p


def add_train_options(parser: argparse.ArgumentParser) -> None:
    from dyntrain.cli import add_train_options as add

    add(parser)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from dyntrain.cli import train_overrides as given

    return given(args)


@dataclass
class Plan:
    """Everything `search` needs, decided and validated before Ray starts."""

    space: dict[str, Any]
    datasets: dict[str, Any]  # dataset spec -> Dataset
    path: str  # the experiment: storage/name


def plan(args: argparse.Namespace) -> Plan:
    from dyntrain.data import load_dataset, make_split
    from dyntrain.engine import METRICS

    space = parse_space({**load_space(args.space), **train_overrides(args)})
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds} is invalid: must be >= 1")
    if args.seeds > 1:
        if isinstance(space.get("seed"), (list, Sampled)):
            raise ConfigError("search space: seed varies already; give seeds in the space or with --seeds, not both")
        if args.search == "grid":
            base = space.get("seed", 0)
            space["seed"] = list(range(base, base + args.seeds))
    if args.search == "optuna" and not any(isinstance(v, (list, Sampled)) for v in space.values()):
        raise ConfigError("--search optuna needs a space with at least one list or sampler to search over")
    metrics = [m for m in METRICS if m != "stopped"] + list(COST_METRICS)
    if args.metric not in metrics:
        raise ConfigError(f"--metric {args.metric} is invalid: must be one of {', '.join(metrics)}")
    if (args.gpus_per_trial or 0) < 0 or args.cpus_per_trial <= 0:
        raise ConfigError("--gpus-per-trial must be >= 0 and --cpus-per-trial > 0")
    if args.gpus_per_trial == 0 and "cuda" in options(space.get("device", "auto")):
        raise ConfigError("device=cuda is invalid with --gpus-per-trial 0 (trials would see no GPU)")
    if args.dashboard and args.address:
        raise ConfigError("--dashboard starts a local Ray; on a cluster, open its dashboard with `ray dashboard CLUSTER.yaml`")
    validate_space(space)  # everything that does not need the data, before loading it

    datasets: dict[str, Any] = {}
    for p in points(space):
        cfg = TrainConfig.from_dict(p)
        if cfg.dataset not in datasets:
            datasets[cfg.dataset] = load_dataset(cfg.dataset, cfg.data_dir)
    sizes: dict[tuple, int] = {}

    def n_train(cfg: TrainConfig) -> int:
        key = (cfg.dataset, cfg.val_size, cfg.protocol, cfg.train_limit, cfg.test_limit)
        if key not in sizes:
            sizes[key] = len(make_split(datasets[cfg.dataset], cfg.val_size, cfg.seed, *key[2:]).train_idx)
        return sizes[key]

    validate_space(space, n_train)
    name = args.name or Path(args.space).stem
    storage = args.storage if "://" in args.storage else str(Path(args.storage).expanduser().resolve())
    path = f"{storage.rstrip('/')}/{name}"
    from ray.tune import Tuner

    if args.resume and not Tuner.can_restore(path):
        raise ConfigError(f"--resume: no experiment to restore at {path}")
    if not args.resume and Tuner.can_restore(path):
        raise ConfigError(f"an experiment already exists at {path}: pass --resume to continue it, or --name for a new one")
    return Plan(space, datasets, path)


def search(args: argparse.Namespace):
    """Plan, start (or join) Ray, run the search; returns the ResultGrid."""
    address = args.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray stays on 127.0.0.1
    p = plan(args)
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            context = ray.init(include_dashboard=args.dashboard, dashboard_host="127.0.0.1")
            if args.dashboard:
                print(f"Ray dashboard: http://{context.dashboard_url}")
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        print(f"dyntrain tune: {gpus} GPU per trial (set --gpus-per-trial to change)")
    fn = tune.with_resources(tune.with_parameters(trainable, data=p.datasets), {"cpu": args.cpus_per_trial, "gpu": gpus})
    if args.resume:
        return tune.Tuner.restore(p.path, trainable=fn, resume_errored=True).fit()

    metric, mode = objective(args)
    num_samples = args.num_samples or (20 if args.search == "optuna" else 1)
    search_alg = None
    if args.search == "optuna":
        search_alg = OptunaSearch(points_to_evaluate=[start_point(p.space)], seed=args.search_seed)
        if args.seeds > 1:
            search_alg, num_samples = Repeater(search_alg, repeat=args.seeds), num_samples * args.seeds
        search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max(args.max_concurrent, args.seeds))
    scheduler = None
    if args.scheduler == "asha":
        max_t = max(TrainConfig.from_dict(pt).epochs for pt in points(p.space))
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(args.grace_period, max_t))
    storage, name = p.path.rsplit("/", 1)
    tuner = tune.Tuner(
        fn,
        param_space=to_param_space(p.space, args.search),
        tune_config=tune.TuneConfig(  # reuse_actors: a trial starts in a warm process (torch and CUDA loaded)
            metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler, num_samples=num_samples, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1,
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner.fit()


def objective(args: argparse.Namespace) -> tuple[str, str]:
    return args.metric, args.mode or ("min" if args.metric in MINIMISED else "max")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = search(args)
    from ray.tune import ExperimentAnalysis

    # The state saved on storage, not `results`: Tune marks trials it stopped at an interruption as
    # terminated in memory, but saved them as unfinished, and --resume continues them.
    saved = ExperimentAnalysis(results.experiment_path).trials
    unfinished = sum(t.status not in ("TERMINATED", "ERROR") for t in saved)
    if unfinished:
        print(f"dyntrain tune: interrupted with {unfinished} trial(s) unfinished; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    for r in results.errors:
        print(f"dyntrain tune: a trial failed: {r}", file=sys.stderr)
    if len(results.errors) < len(results):
        metric, mode = objective(args)
        best = results.get_best_result(metric, mode, scope="all")
        varying = {k for r in results for k, v in r.config.items() if any(o.config.get(k) != v for o in results)}
        point = {k: best.config[k] for k in sorted(varying)}
        print(f"best {metric} {best.metrics_dataframe[metric].agg(mode):.4f} at {point} ({best.path})")
    print(f"results: {results.experiment_path}\nTensorBoard: tensorboard --logdir {results.experiment_path}")
    return 1 if results.errors else 0
