"""The epoch loop: train on the subset A, evaluate, ask the sampling policy (PAPER.md "Steps").

    trainer = Trainer(cfg, load_dataset(cfg.dataset, cfg.data_dir))
    trainer.load_state_dict(load_checkpoint(path))     # to resume (dyntrain.runs)
    for metrics, state in trainer.epochs(CheckpointSchedule.of(cfg)):  # METRICS keys, one dict per epoch
        if state is not None:                          # a checkpoint is due: write it before the next epoch
            save_checkpoint(state, path)

Performance by design: the split is moved to the device once as uint8; an epoch is a device
`randperm` of A and fixed-shape gathers; loss and accuracy are summed on the device and read once
per epoch (the only host synchronisation); on CUDA the step runs in bf16 autocast, channels_last,
and optionally compiled or captured in a CUDA graph.

Fixed batch shapes without dropping data: when alpha is not a multiple of the batch size, the last
batch is filled up with images from the start of the epoch's permutation and those fillers get
weight 0 in the loss. Every image of A is trained on exactly once per epoch, and `images_seen`
counts alpha per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dyntrain import augment, sampling
from dyntrain.config import ConfigError, TrainConfig
from dyntrain.data import Dataset, make_split
from dyntrain.model import build_model, model_name
from dyntrain.runs import CHECKPOINT_FORMAT, environment

EVAL_BATCH = 1024


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid: no CUDA device is available (use auto or cpu)")
    return torch.device(name)


class Trainer:
    """One run of `cfg` on `data`. `model`, a factory called as model(num_classes=K), replaces
    cfg.model (which then records its module:qualname); it is built on the device, seeded."""

    def __init__(self, cfg: TrainConfig, data: Dataset, device: torch.device | str | None = None,
                 model: Callable[..., torch.nn.Module] | None = None):
        if model is not None:
            cfg = cfg.replace(model=model_name(model))
        cfg.validate()
        split = make_split(data, cfg.val_size, cfg.seed, cfg.protocol, cfg.train_limit, cfg.test_limit)
        self.n_train = len(split.train_idx)
        self.alpha = self.n_train if cfg.policy == "full" else cfg.alpha
        cfg.validate(n_train=self.n_train)
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.cfg = cfg = cfg.replace(compile=compile_mode(cfg, self.device))
        if cfg.compile == "cudagraphs" and not cuda:
            raise ConfigError("compile='cudagraphs' is invalid on the CPU: it needs a CUDA device")

        # The data, moved to the device once (indexing copies, so read-only object-store arrays are fine).
        def put(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

        pool = data.train_x[split.train_idx]
        self.pool_x, self.pool_y = put(pool), put(data.train_y[split.train_idx])
        val_src_x, val_src_y = (data.test_x, data.test_y) if split.val_from_test else (data.train_x, data.train_y)
        self.n_val, self.n_test = len(split.val_idx), len(split.test_idx)
        self.val_x, self.val_y = _pad_for_eval(put(val_src_x[split.val_idx]), put(val_src_y[split.val_idx]))
        self.test_x, self.test_y = _pad_for_eval(put(data.test_x[split.test_idx]), put(data.test_y[split.test_idx]))
        self.val_is_test = split.val_from_test
        # Per channel: a float64 temporary of one channel, not of the whole pool (1.1 GB for CIFAR-10).
        mean = [pool[:, c].mean(dtype=np.float64) / 255.0 for c in range(pool.shape[1])]
        std = [pool[:, c].std(dtype=np.float64) / 255.0 for c in range(pool.shape[1])]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

        torch.manual_seed(cfg.seed)
        self.model = build_model(model or cfg.model, len(data.classes), data.train_x.shape[1:], cfg.batchnorm).to(self.device)
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # batch shapes are fixed: autotune each convolution once
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg, steps=math.ceil(self.alpha / cfg.batch_size) * cfg.epochs)
        self.policy = sampling.make_policy(cfg.policy, self.n_train, self.alpha, cfg.beta, cfg.delta, cfg.gamma, cfg.seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        # Autocast's weight-cast cache would be baked into a captured graph as stale tensors.
        graphs = cfg.compile == "cudagraphs"
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graphs) if cuda
                         else torch.autocast("cpu", enabled=False))
        self.history: list[dict[str, Any]] = []
        self._forward = torch.compile(self.model) if cfg.compile == "default" else self.model
        self._graph: _GraphStep | None = None
        self._subset_of: np.ndarray | None = None  # the policy's A that `_subset` (on the device) holds

    # --- one epoch ----------------------------------------------------------------------------
    def _logits(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = (x_uint8.float().div_(255.0) - self.mean) / self.std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            return self._forward(x)

    def _step(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns (weighted loss sum, correct count) as a device tensor."""
        logits = self._logits(x)
        # The loss and its sums in fp32: under bf16 autocast the logits are bf16 (about 3 digits).
        losses = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=self.cfg.label_smoothing)
        loss = (losses * w).sum() / w.sum()  # the mean over the batch's real images (fillers weigh 0)
        # Zeroed in place, not freed: a captured CUDA graph writes the gradients to fixed addresses,
        # and buffers set to None would be reallocated elsewhere on the next backward.
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.optimizer.step()
        correct = ((logits.argmax(1) == y).float() * w).sum()
        # Stays on the device: reading it here (.item()) would synchronise every batch.
        return torch.stack([(losses.detach() * w).sum(), correct])

    def _train_epoch(self, subset: torch.Tensor) -> torch.Tensor:
        self.model.train()
        bs = self.cfg.batch_size
        idx, weight = epoch_batches(subset, bs, self.generator)
        n_batches = len(idx) // bs
        totals = torch.zeros(2, device=self.device)
        for b in range(n_batches):
            sl = slice(b * bs, (b + 1) * bs)
            x = self.pool_x[idx[sl]]
            if self.cfg.augment:
                x = augment.flip_and_translate(x, self.generator)
            y, w = self.pool_y[idx[sl]], weight[sl]
            if self.cfg.compile == "cudagraphs":
                if self._graph is None:
                    self._graph = _GraphStep(self._step, x, y, w)
                totals += self._graph(x, y, w)
            else:
                totals += self._step(x, y, w)
            if self.scheduler is not None:
                self.scheduler.step()  # a float, or a device tensor filled in place that a captured step reads
        return totals

    @torch.no_grad()
    def _correct(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        correct = torch.zeros((), device=self.device)
        bs = min(EVAL_BATCH, len(xs))
        for i in range(0, len(xs), bs):
            correct += (self._logits(xs[i : i + bs]).argmax(1) == ys[i : i + bs]).sum()
        return correct

    # --- the loop -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return len(self.history)

    def done(self) -> bool:
        return self.stop_reason() is not None

    def stop_reason(self) -> str | None:
        if not self.history:
            return None
        last, cfg = self.history[-1], self.cfg
        if last["epoch"] >= cfg.epochs:
            return "epochs"
        if cfg.time_budget_s is not None and last["wall_time_s"] >= cfg.time_budget_s:
            return "time_budget"
        if cfg.image_budget is not None and last["images_seen"] >= cfg.image_budget:
            return "image_budget"
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while not self.done():
            yield self.run_epoch()

    def epochs(self, schedule: CheckpointSchedule) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
        """The loop with checkpoints: each epoch's metrics, and the state to save when `schedule` says
        a checkpoint is due (else None). The caller saves it before asking for the next epoch."""
        for metrics in self:
            due = schedule.due(self.epoch, last=self.done())
            yield metrics, self.state_dict() if due else None
            if due:
                schedule.saved()

    def run_epoch(self) -> dict[str, Any]:
        start = time.perf_counter()
        epoch = self.epoch + 1
        if self._subset_of is not self.policy.subset:  # A changed (a resample, a load): copy it over once
            self._subset_of, self._subset = self.policy.subset, torch.from_numpy(self.policy.subset).to(self.device)
        subset = self._subset
        train_totals = self._train_epoch(subset)
        val_correct = self._correct(self.val_x, self.val_y)
        test_correct = val_correct if self.val_is_test else self._correct(self.test_x, self.test_y)
        # The one host synchronisation of the epoch. Counts are float32 sums, exact below 2**24.
        loss_sum, train_correct, val_c, test_c = torch.cat([train_totals, val_correct[None], test_correct[None]]).tolist()
        n = subset.numel()
        val_acc, test_acc = val_c / self.n_val, test_c / self.n_test
        decision = self.policy.update(epoch, round(val_c), self.n_val)  # decides on counts, exactly
        prev = self.history[-1] if self.history else None
        improved = prev is None or val_acc > prev["best_val_acc"]
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "train_acc": train_correct / n,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "best_val_acc": val_acc if improved else prev["best_val_acc"],
            "test_acc_at_best_val": test_acc if improved else prev["test_acc_at_best_val"],
            "subset_size": n,
            "images_seen": (prev["images_seen"] if prev else 0) + n,
            "resample": decision.resample,
            "beta_n": decision.beta,
            "epoch_time_s": time.perf_counter() - start,
        }
        metrics["wall_time_s"] = (prev["wall_time_s"] if prev else 0.0) + metrics["epoch_time_s"]
        metrics["stopped"] = ""
        self.history.append(metrics)
        metrics["stopped"] = self.stop_reason() or ""
        return metrics

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain data only (CHECKPOINT_KEYS), so that `load_checkpoint` reads it as data."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "policy": self.policy.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [dict(m) for m in self.history],  # str/int/float values
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        planned = state["config"].get("epochs", self.cfg.epochs)
        if self.scheduler is not None and planned != self.cfg.epochs:
            raise ConfigError(f"epochs={self.cfg.epochs} is invalid for this run: its {self.cfg.lr_schedule} schedule "
                              f"was planned for {planned} epochs (only a constant learning rate extends)")
        self._graph = None  # a captured step would replay on the optimizer's old state tensors: capture again
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.policy.load_state_dict(state["policy"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [dict(m) for m in state["history"]]
        if self.history:
            self.history[-1]["stopped"] = ""  # a resumed run may go on past its old end

    def summary(self) -> dict[str, Any]:
        best = max(self.history, key=lambda m: m["val_acc"]) if self.history else {}
        return {
            "config": self.cfg.to_dict(),
            "environment": environment(self.device),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "epochs_run": self.epoch,
            "stopped": self.stop_reason() or "",
            "best": best,
            "final": self.history[-1] if self.history else {},
            "total_time_s": self.history[-1]["wall_time_s"] if self.history else 0.0,
        }


def compile_mode(cfg: TrainConfig, device: torch.device) -> str:
    """`cfg.compile`, with auto resolved: the captured CUDA-graph step on CUDA (checked against an fp32
    reference and measured fastest: docs/benchmarks.md) unless the optimiser cannot be captured."""
    if cfg.compile != "auto":
        return cfg.compile
    return "cudagraphs" if device.type == "cuda" and cfg.optimizer == "adam" else "none"


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, steps: int):
    """The optimiser and learning-rate schedule of `cfg` (the paper's: Adam, constant lr), the schedule
    planned over `steps` optimiser steps and stepped after each (None when constant). Under a captured
    CUDA-graph step with a schedule the learning rate is a device tensor that the schedule fills in
    place, so the replayed step reads the current rate."""
    graphs = cfg.compile == "cudagraphs"
    if graphs and cfg.optimizer == "sgd":
        raise ConfigError("optimizer='sgd' is invalid with compile='cudagraphs': torch's SGD reads a tensor learning "
                          "rate on the host (use compile none or default, or adam)")
    lr = torch.tensor(cfg.lr, device=next(model.parameters()).device) if graphs and cfg.lr_schedule != "constant" else cfg.lr
    params = model.parameters()
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, capturable=graphs, foreach=True)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                              weight_decay=cfg.weight_decay, foreach=True)
    # The schedules compute from a float base rate: from the tensor rate they would read it back (.item()) every step.
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
    if cfg.lr_schedule == "onecycle":  # torch's defaults: warm up over 30 %, cosine down; momentum left as set
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, cycle_momentum=False)
    if cfg.lr_schedule == "cosine":  # CosineAnnealingLR's recursive form reads the current (tensor) rate back
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    return opt, None


def _pad_for_eval(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad an evaluation set once to whole batches of min(EVAL_BATCH, len) images, so that every
    evaluation batch has one shape (no recompiles); padded labels are -1 and never count as correct."""
    bs = min(EVAL_BATCH, len(y))
    pad = -len(y) % bs
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        y = torch.cat([y, y.new_full((pad,), -1)])
    return x, y


def epoch_batches(subset: torch.Tensor, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random order of the subset, filled up to a whole number of batches (fixed shapes), and
    per-position weights: 1 for each image of A (exactly once), 0 for the fillers."""
    n = subset.numel()
    order = subset[torch.randperm(n, device=subset.device, generator=generator)]
    pad = -n % batch_size
    idx = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]]) if pad else order
    weight = torch.ones(n + pad, device=subset.device)
    weight[n:] = 0.0
    return idx, weight


class _GraphStep:
    """The whole train step (forward, backward, Adam) captured once in a CUDA graph and replayed.

    Batches are copied into static input buffers; Adam runs with capturable=True so its step count
    lives on the device. Warm-up steps on a side stream train on real batches, as CUDA graphs require.
    """

    WARMUP = 3

    def __init__(self, step, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        self.step = step
        self.x, self.y, self.w = x.clone(), y.clone(), w.clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.y.copy_(y)
        self.w.copy_(w)
        if self.graph is None:
            self.calls += 1
            if self.calls <= self.WARMUP:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.step(self.x, self.y, self.w)
                torch.cuda.current_stream().wait_stream(side)
                return out
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.step(self.x, self.y, self.w)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out


class CheckpointSchedule:
    """When to write a checkpoint after an epoch: always after the last one; every `every` epochs
    (1-based epoch numbers, so the cadence survives a resume) when `every` is set; and whenever
    `interval_s` seconds have passed since the last save (or since the schedule was made) when
    `interval_s` is set. Pure: the clock is injected; call `saved()` after writing. The values are
    TrainConfig's checkpoint_every and checkpoint_interval_s, which it validates (`of`).

    Suggested defaults: every=None, interval_s=60 -- at most about a minute of work lost, and for the
    paper's network a ~13 MB write (weights and Adam state) a minute, plus the final checkpoint."""

    def __init__(self, every: int | None = None, interval_s: float | None = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.every, self.interval_s, self.clock = every, interval_s, clock
        self.last_save = clock()

    @classmethod
    def of(cls, cfg: TrainConfig) -> CheckpointSchedule:
        cfg.validate()
        return cls(cfg.checkpoint_every, cfg.checkpoint_interval_s)

    def due(self, epoch: int, last: bool) -> bool:
        if last:
            return True
        if self.every is not None and epoch % self.every == 0:
            return True
        return self.interval_s is not None and self.clock() - self.last_save >= self.interval_s

    def saved(self) -> None:
        self.last_save = self.clock()
