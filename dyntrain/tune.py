"""Ray Tune at the edge: the trainable, and `search`, one function that runs a search.

    from ray import tune
    from dyntrain.tune import search
    results = search({"alpha": tune.grid_search([15_000, 25_000]), "beta": tune.uniform(0.1, 0.9),
                      "epochs": 50}, search="optuna", num_samples=20, gpus_per_trial=0.25)

`trainable` is a thin adapter over `engine.Trainer`: one `dyntrain train` run that reports the
engine's metrics to Tune every epoch, with a checkpoint when one is due. Everything about a search
(the space, its validation against the data, searcher, scheduler, storage) is decided before Ray
starts, so a bad space costs nothing.

Spaces (YAML form or Ray domains) are `dyntrain.spaces`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dyntrain
from dyntrain.config import ARM, ConfigError, TrainConfig
from dyntrain.data import load_dataset, make_split
from dyntrain.engine import CheckpointSchedule, Trainer
from dyntrain.model import build_model, model_name
from dyntrain.runs import (
    ENVIRONMENT,
    MINIMISED,
    OBJECTIVES,
    environment,
    load_checkpoint,
    save_checkpoint,
    trial_config,
    write_json,
)
from dyntrain.spaces import (
    DEFAULT_SEEDS,
    Sampled,
    load_space,
    options,
    parse_space,
    points,
    start_point,
    to_param_space,
    validate_space,
)

STATE_FILE = "state.pt"
# Ray is imported inside the functions that use it: it reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at
# import, which `search` sets first for a local Ray (and `dyntrain --help` stays quick).
TABLE_FIRST = ("val_acc", "best_val_acc", "train_loss", "subset_size")  # Tune's live table shows 4 metrics
TRACKERS = ("mlflow",)


# --- the trainable --------------------------------------------------------------------------------
def trainable(config: dict[str, Any], data: Any = None, model: Any = None) -> None:
    """Ray Tune function trainable: one `dyntrain train` run with `config` (TrainConfig keys; the rest
    take their defaults), reporting every epoch's metrics, with a checkpoint when the config's
    checkpoint schedule says so (and always at the end), and resuming from `tune.get_checkpoint()`
    -- its own, or another trial's under PBT. `data` is a `Dataset`, or a dict of them by dataset
    spec, given once through `tune.with_parameters(trainable, data=...)` so that each node fetches it
    once from the object store; without it every trial loads `config["dataset"]` itself. `model`, a
    factory callable given the same way, builds the network (config["model"] records its name)."""
    from ray import tune  # late: see the note on Ray at the top

    # Ray logs a line per checkpoint; the trial table and dyntrain's own messages are what users read.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    cfg = TrainConfig.from_dict({**trial_config(config), "progress": False})
    if isinstance(data, dict):
        data = data.get(cfg.dataset)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir, progress=False)
    gpus = tune.get_context().get_trial_resources().required_resources.get("GPU", 0)
    cap_gpu_memory(gpus)
    trainer = Trainer(cfg, data, model=model)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(load_checkpoint(Path(folder) / STATE_FILE))
    placement = where_am_i(gpus)
    for metrics, state in trainer.epochs(CheckpointSchedule.of(cfg)):
        gpu_s = metrics["wall_time_s"] * (gpus or 1)
        metrics = {**metrics, "n_train": trainer.n_train, "gpu_s": gpu_s,
                   "best_val_acc_per_gpu_h": metrics["best_val_acc"] * 3600 / max(gpu_s, 1e-9), **placement}
        ordered = {k: metrics[k] for k in TABLE_FIRST} | metrics
        if state is None:
            tune.report(ordered)
            continue
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, Path(folder) / STATE_FILE)
            tune.report(ordered, checkpoint=tune.Checkpoint.from_directory(folder))


def where_am_i(gpus: float) -> dict[str, Any]:
    """Where this trial runs: Ray's node id and address, the GPU ids Ray gave it and its GPU share."""
    import ray  # late: see the note on Ray at the top

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "gpus": float(gpus)}


def cap_gpu_memory(gpus: float) -> bool:
    """With a fraction of a GPU, co-located trials share it: cap this process's CUDA memory to its
    share, so that a trial past it fails with a clear out-of-memory error instead of starving the others."""
    if 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpus)
        return True
    return False


# --- the search -----------------------------------------------------------------------------------
def objective(metric: str, mode: str | None) -> tuple[str, str]:
    if metric not in OBJECTIVES:
        raise ConfigError(f"metric {metric} is invalid: must be one of {', '.join(OBJECTIVES)}")
    if mode not in (None, "max", "min"):
        raise ConfigError(f"mode {mode} is invalid: must be max or min")
    return metric, mode or ("min" if metric in MINIMISED else "max")


@dataclass
class Plan:
    """Everything `search` needs, decided and validated before Ray starts."""

    space: dict[str, Any]
    datasets: dict[str, Any]  # dataset spec -> Dataset
    path: str  # the experiment: storage/name
    shares: dict[tuple[int, int], float]  # (alpha, n_train) -> alpha / n_train, for the start message
    seeds: int  # seeds per point


def plan(space: str | dict[str, Any], *, search: Any = "grid", seeds: int | None = None, overrides: dict | None = None,
         model: Any = None,
         gpus_per_trial: float | None = None, cpus_per_trial: float = 1, storage: str = "results/ray",
         name: str | None = None, resume: bool = False, address: str | None = None,
         dashboard: bool = False, tracker: str | None = None) -> Plan:
    """The space parsed, merged with `overrides` (fixed for every trial) and validated against the
    data; the experiment's path checked against `resume`. Raises ConfigError; starts nothing."""
    raw = load_space(space) if isinstance(space, str) else dict(space)
    if model is not None:  # a factory callable: trials record its name, and get it through with_parameters
        overrides = {**(overrides or {}), "model": model_name(model)}
    parsed = parse_space({**raw, **(overrides or {})})
    if seeds is None:
        seeds = DEFAULT_SEEDS.get(space, 1) if isinstance(space, str) else 1
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} is invalid: must be an integer >= 1")
    if seeds > 1:
        if isinstance(parsed.get("seed"), (list, Sampled)):
            raise ConfigError("search space: seed varies already; give seeds in the space or with seeds, not both")
        if search == "grid":
            base = parsed.get("seed", 0)
            parsed["seed"] = list(range(base, base + seeds))
    if ARM in parsed and search != "grid":
        raise ConfigError(f"search space: {ARM} is a grid over whole points; it needs search grid")
    if search == "optuna" and not any(isinstance(v, (list, Sampled)) for v in parsed.values()):
        raise ConfigError("search optuna needs a space with at least one list or sampler to search over")
    if isinstance(search, str) and search not in ("grid", "optuna"):
        raise ConfigError(f"search={search!r} is invalid: must be grid, optuna or a ray.tune.search.Searcher")
    if (gpus_per_trial or 0) < 0 or cpus_per_trial <= 0:
        raise ConfigError("gpus_per_trial must be >= 0 and cpus_per_trial > 0")
    if gpus_per_trial == 0 and "cuda" in options(parsed.get("device", "auto")):
        raise ConfigError("device=cuda is invalid with gpus_per_trial 0 (trials would see no GPU)")
    if dashboard and address:
        raise ConfigError("dashboard starts a local Ray; on a cluster, open its dashboard with `ray dashboard CLUSTER.yaml`")
    if tracker not in (None, *TRACKERS):
        raise ConfigError(f"tracker={tracker!r} is invalid: must be one of {', '.join(TRACKERS)}")
    validate_space(parsed)  # everything that does not need the data, before loading it

    datasets: dict[str, Any] = {}
    for p in points(parsed):
        cfg = TrainConfig.from_dict(p)
        if cfg.dataset not in datasets:
            datasets[cfg.dataset] = load_dataset(cfg.dataset, cfg.data_dir)
    sizes: dict[tuple, int] = {}
    shares: dict[tuple[int, int], float] = {}

    def n_train(cfg: TrainConfig) -> int:
        key = (cfg.dataset, cfg.val_size, cfg.protocol, cfg.train_limit, cfg.test_limit)
        if key not in sizes:
            sizes[key] = len(make_split(datasets[cfg.dataset], cfg.val_size, cfg.seed, *key[2:]).train_idx)
        if cfg.policy != "full":
            shares[cfg.alpha, sizes[key]] = cfg.alpha / sizes[key]
        return sizes[key]

    validate_space(parsed, n_train)
    built = set()
    for p in points(parsed):  # every network the space names, built once on the CPU and probed
        cfg = TrainConfig.from_dict(p)
        if (cfg.model, cfg.batchnorm, cfg.dataset) not in built:
            built.add((cfg.model, cfg.batchnorm, cfg.dataset))
            data = datasets[cfg.dataset]
            build_model(model or cfg.model, len(data.classes), data.train_x.shape[1:], cfg.batchnorm)
    name = name or (Path(space).stem if isinstance(space, str) else "search")
    storage = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    path = f"{storage.rstrip('/')}/{name}"
    from ray.tune import Tuner  # late: see the note on Ray at the top

    if resume and not Tuner.can_restore(path):
        raise ConfigError(f"resume: no experiment to restore at {path}")
    if not resume and Tuner.can_restore(path):
        raise ConfigError(f"an experiment already exists at {path}: resume it, or choose another name")
    return Plan(parsed, datasets, path, shares, seeds)


def search(space: str | dict[str, Any] = "paper-grid", *, search: Any = "grid", seeds: int | None = None,
           num_samples: int | None = None, metric: str = "best_val_acc", mode: str | None = None,
           scheduler: Any = None, grace_period: int = 10, max_concurrent: int = 4, search_seed: int = 0,
           gpus_per_trial: float | None = None, cpus_per_trial: float = 1, storage: str = "results/ray",
           name: str | None = None, resume: bool = False, max_failures: int = 0, address: str | None = None,
           dashboard: bool = False, callbacks: Sequence[Any] = (), tracker: str | None = None,
           tracking_uri: str | None = None, live_report_s: float | None = 10.0, overrides: dict | None = None,
           model: Any = None, reuse_actors: bool = True, progress: bool = True, verbose: int = 0):
    """Run a search and return Ray Tune's ResultGrid; everything is validated before Ray starts.

    space: "paper-grid", "baselines", a YAML file, or a dict (YAML-style values or Ray domains);
      `overrides` fixes TrainConfig fields for every trial on top of it. model: a factory callable,
      model(num_classes=K) -> nn.Module, for every trial (shipped to them with the data; trials
      record its module:qualname as their model).
    search: "grid" (every point of the grids, `num_samples` times), "optuna" (seeded TPE from the
      paper's best point, `max_concurrent` trials at once, its study kept in the experiment folder) or
      any `ray.tune.search.Searcher`. scheduler: None, "asha" (stops hopeless trials after
      `grace_period` epochs) or any `ray.tune.schedulers.TrialScheduler` (PBT, HyperBand, ...).
    seeds: repeat every point with seeds seed, seed+1, ... (default: 3 for "baselines", else 1).
    metric/mode: what the searcher, scheduler and the kept best checkpoint optimise (mode defaults
      to min for losses and times).
    gpus_per_trial: fractions allowed (CUDA memory is capped to the share); None: 1 when the cluster
      has GPUs, else 0. storage: a folder, a shared mount or a URI (s3://...); the experiment is
      storage/name. resume: continue that experiment, errored trials too. max_failures: restarts of
      a failed trial from its last checkpoint. address: a running cluster ("auto", HOST:PORT).
    callbacks: Ray Tune callbacks; tracker "mlflow" adds Ray's MLflowLoggerCallback (store
      `tracking_uri`, default the experiment's mlflow.db); live_report_s: keep report.html in the
      experiment folder current at most this often (None: no page).
    reuse_actors: a trial may start in a finished trial's process (torch loaded, CUDA initialised);
      False gives every trial a process of its own where Ray placed its resources, so where trials
      run does not depend on which process happens to be free first.
    progress: one refreshing line (`dyntrain.console.SearchProgress`); verbose: Tune's own console
      (1: its status table, 2: also each trial's config and result boxes).
    """
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray stays on 127.0.0.1
    metric, mode = objective(metric, mode)
    if isinstance(scheduler, str) and scheduler not in ("none", "asha"):
        raise ConfigError(f"scheduler={scheduler!r} is invalid: must be asha or a ray.tune.schedulers.TrialScheduler")
    p = plan(space, search=search, seeds=seeds, overrides=overrides, model=model, gpus_per_trial=gpus_per_trial,
             cpus_per_trial=cpus_per_trial, storage=storage, name=name, resume=resume, address=address,
             dashboard=dashboard, tracker=tracker)
    for (alpha, n), share in sorted(p.shares.items()):
        print(f"dyntrain tune: alpha={alpha} is {share:.1%} of the {n}-image training pool (alpha is absolute)")
    import ray  # late: see the note on Ray at the top
    from ray import tune

    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            context = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1")
            if dashboard:
                print(f"Ray dashboard: http://{context.dashboard_url}")
    if gpus_per_trial is None:
        gpus_per_trial = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        print(f"dyntrain tune: {gpus_per_trial} GPU per trial (set gpus_per_trial to change)")
    # model only when given: a trainable wrapped by the user may take (config, data) alone.
    shipped = {"data": p.datasets, **({"model": model} if model else {})}
    fn = tune.with_resources(tune.with_parameters(trainable, **shipped), {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    callbacks = list(callbacks) + _own_callbacks(p.path, tracker, tracking_uri, live_report_s)
    write_environment(p.path)
    if resume:
        return tune.Tuner.restore(p.path, trainable=fn, resume_errored=True).fit()

    num_samples = num_samples or (20 if search == "optuna" else 1)
    search_alg, num_samples = _searcher(search, p, metric, mode, p.seeds, num_samples, max_concurrent, search_seed)
    if progress:
        from dyntrain.console import SearchProgress  # imports Ray: see the note at the top

        callbacks.append(SearchProgress.of(p.space, search, num_samples, metric, mode))
    if scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler  # late: see the note on Ray at the top

        max_t = max(TrainConfig.from_dict(pt).epochs for pt in points(p.space))
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(grace_period, max_t))
    storage_path, name = p.path.rsplit("/", 1)
    tuner = tune.Tuner(
        fn,
        param_space=to_param_space(p.space, "grid" if search == "grid" else "searcher"),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler if scheduler != "none" else None,
            num_samples=num_samples, reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=verbose, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # The best checkpoint by this epoch's validation accuracy is kept as well as the latest
            # (Ray never deletes the latest), so the best model of a search survives it. PBT clones
            # checkpoints between trials and needs a few more kept (Ray's PBT examples keep 4).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if _clones_checkpoints(scheduler) else 1,
                                                    checkpoint_score_attribute="val_acc", checkpoint_score_order="max"),
        ),
    )
    return tuner.fit()


def _clones_checkpoints(scheduler: Any) -> bool:
    from ray.tune.schedulers import PopulationBasedTraining  # late: see the note on Ray at the top

    return isinstance(scheduler, PopulationBasedTraining)


def _searcher(search: Any, p: Plan, metric: str, mode: str, seeds: int, num_samples: int, max_concurrent: int,
              search_seed: int) -> tuple[Any, int]:
    """(search_alg, num_samples) for Tune: None for grids; Optuna seeded, its study in the experiment
    folder (a JournalStorage file optuna-dashboard opens); a user's Searcher as given."""
    if search == "grid":
        return None, num_samples
    from ray.tune.search import ConcurrencyLimiter, Repeater  # late: see the note on Ray at the top

    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # late: see the note on Ray at the top

        study = None
        if "://" not in p.path:
            import optuna  # heavy: only for an Optuna search
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            Path(p.path).mkdir(parents=True, exist_ok=True)
            study = JournalStorage(JournalFileBackend(str(Path(p.path) / "optuna.journal")))
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        search = OptunaSearch(points_to_evaluate=[start_point(p.space)], seed=search_seed, storage=study,
                              study_name=Path(p.path).name)
    if seeds > 1:
        search, num_samples = Repeater(search, repeat=seeds), num_samples * seeds
    return ConcurrencyLimiter(search, max_concurrent=max(max_concurrent, seeds)), num_samples


def _own_callbacks(path: str, tracker: str | None, tracking_uri: str | None, live_report_s: float | None) -> list:
    callbacks = []
    if tracker == "mlflow":
        try:
            from ray.air.integrations.mlflow import MLflowLoggerCallback  # optional: dyntrain[mlflow]
        except ImportError as err:
            raise ConfigError(f"tracker mlflow needs MLflow: pip install 'dyntrain[mlflow]' ({err})") from None
        if tracking_uri is None:
            if "://" in path:
                raise ConfigError("tracker mlflow with remote storage needs tracking_uri (an MLflow server)")
            Path(path).mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{Path(path) / 'mlflow.db'}"
        print(f"dyntrain tune: MLflow tracking store {tracking_uri} (mlflow ui --backend-store-uri {tracking_uri})")
        callbacks.append(MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name=Path(path).name,
                                              save_artifact=False))
    if live_report_s and "://" not in path:
        from dyntrain.live import LiveReport  # imports Ray: see the note at the top

        print(f"dyntrain tune: live report {Path(path) / 'report.html'} (updated every {live_report_s:g} s)")
        callbacks.append(LiveReport(path, every_s=live_report_s))
    return callbacks


def write_environment(path: str) -> None:
    """environment.json in the experiment folder: the driver's machine, versions and command."""
    if "://" in path:
        return
    import ray  # late: see the note on Ray at the top

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {**environment(device), "ray": ray.__version__, "dyntrain": dyntrain.__version__,
           "command": " ".join(sys.argv)}
    Path(path).mkdir(parents=True, exist_ok=True)
    write_json(Path(path) / ENVIRONMENT, env)


def best_summary(results, metric: str, mode: str) -> str | None:
    """One line on the best trial of a finished search, or None when every trial failed."""
    if len(results.errors) == len(results):
        return None
    best = results.get_best_result(metric, mode, scope="all")
    varying = {k for r in results for k, v in r.config.items() if any(o.config.get(k) != v for o in results)}
    point = {k: best.config[k] for k in sorted(varying)}
    return f"best {metric} {best.metrics_dataframe[metric].agg(mode):.4f} at {point} ({best.path})"


def unfinished_trials(experiment_path: str) -> int:
    """Trials the saved experiment state holds as neither finished nor failed (an interrupted search).
    The state on storage, not the ResultGrid: Tune marks trials it stopped at an interruption as
    terminated in memory, but saved them as unfinished, and resume continues them."""
    from ray.tune import ExperimentAnalysis  # late: see the note on Ray at the top

    return sum(t.status not in ("TERMINATED", "ERROR") for t in ExperimentAnalysis(experiment_path).trials)

