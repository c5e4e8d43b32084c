"""The method: which training images A an epoch sees, and when A is resampled (PAPER.md "Steps").

A subset is an int64 array of indices into the training split 0..n-1. `resample` is Eq. 1 / Eq. 2
as Fig. 7 writes it; the policies are Fig. 4-a / Fig. 5 (`dynamic`), Fig. 4-b with Eq. 3
(`variant`) and the baselines `full`, `static` and `random`. Pure numpy, seeded: the same seed gives
the same sequence of subsets, and `state_dict` captures everything needed to continue it.

Where the paper is ambiguous we decide:
- prior_acc (acc_0) starts at 0.0, and Fig. 5's `priorAcc <- currentAcc` belongs inside the loop,
  after the check (the figure puts it after the loop, which would never update it).
- dynamic resamples (type I) when abs(acc_n - acc_{n-1}) < delta, as in Fig. 5, although the text
  speaks of "improvement below delta": a large drop therefore keeps A.
- variant first records A* (the subset just trained) and best_acc if acc_n > best_acc. Then
  acc_n <= acc_{n-1}: type I of A with beta_0 (Eq. 3 is stated for type II only);
  acc_n - acc_{n-1} < delta: type II from A* with beta = gamma**n * beta_0, n the epoch just finished;
  otherwise A is kept.
- The number of images kept is int(round(alpha * (1 - beta))), Python's round (half to even);
  the other alpha - keep come from outside the kept-from set.
- static is one uniform subset, never resampled; random draws a fresh uniform subset of alpha from
  all n images every epoch; full is every image, never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE, TYPE_I, TYPE_II, NEW = "none", "I", "II", "new"


def resample(kept_from: np.ndarray, n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Eq. 1 (kept_from = A, type I) or Eq. 2 (kept_from = A*, type II), as Fig. 7:
    B = {0..n-1} - kept_from; permute both; return A'[:keep] ++ B'[:alpha - keep], with
    alpha = len(kept_from) and keep = int(round(alpha * (1 - beta))). Raises ValueError when B
    holds fewer than alpha - keep images."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    alpha = len(kept_from)
    keep = int(round(alpha * (1 - beta)))
    pool = np.setdiff1d(np.arange(n, dtype=np.int64), kept_from)  # B
    if len(pool) < alpha - keep:
        raise ValueError(f"cannot replace {alpha - keep} of {alpha} images: only {len(pool)} lie outside the set")
    kept = rng.permutation(np.asarray(kept_from, dtype=np.int64))[:keep]
    drawn = rng.permutation(pool)[: alpha - keep]
    return np.concatenate([kept, drawn])


@dataclass(frozen=True)
class Decision:
    """What `Policy.update` did: `resample` is NONE, TYPE_I, TYPE_II or NEW (random's fresh draw);
    `beta` is the beta applied, or for NONE the beta the policy would apply now."""

    resample: str
    beta: float


class Policy:
    """Holds A (`subset`) for the next epoch; `update` is called after each epoch with its
    validation accuracy and may replace `subset`. Subclasses decide in `_decide`."""

    name = "policy"
    params: tuple[str, ...] = ()  # the TrainConfig fields this policy reads (besides the seed)

    def __init__(self, n: int, alpha: int, beta: float, delta: float, gamma: float, seed: int):
        self.n, self.alpha, self.beta0, self.delta, self.gamma = n, alpha, beta, delta, gamma
        self.rng = np.random.default_rng(seed)
        self.subset = self._initial_subset()
        self.best_subset = self.subset.copy()  # A*
        self.best_acc = 0.0
        self.prior_acc = 0.0  # acc_{n-1}
        self.epoch = 0

    def _initial_subset(self) -> np.ndarray:
        return self._draw()

    def _draw(self) -> np.ndarray:
        """alpha images drawn uniformly from all n (step 1, "Partition")."""
        return self.rng.choice(self.n, size=self.alpha, replace=False).astype(np.int64)

    def update(self, epoch: int, val_acc: float) -> Decision:
        """Epoch `epoch` (1-based) was trained on `subset` and reached `val_acc` (a fraction)."""
        if val_acc > self.best_acc:
            self.best_acc, self.best_subset = val_acc, self.subset.copy()
        decision = self._decide(epoch, val_acc)
        self.prior_acc, self.epoch = val_acc, epoch
        return decision

    def _decide(self, epoch: int, val_acc: float) -> Decision:
        return Decision(NONE, 0.0)

    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "subset": self.subset.copy(),
            "best_subset": self.best_subset.copy(),
            "best_acc": self.best_acc,
            "prior_acc": self.prior_acc,
            "epoch": self.epoch,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["name"] != self.name:
            raise ValueError(f"state of policy {state['name']!r} cannot be loaded into {self.name!r}")
        self.subset = np.asarray(state["subset"], dtype=np.int64).copy()
        self.best_subset = np.asarray(state["best_subset"], dtype=np.int64).copy()
        self.best_acc, self.prior_acc, self.epoch = state["best_acc"], state["prior_acc"], state["epoch"]
        self.rng.bit_generator.state = state["rng"]


class Full(Policy):
    """Every training image, every epoch (regular training)."""

    name = "full"
    params = ()

    def _initial_subset(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)


class Static(Policy):
    """One uniform subset of alpha images, never resampled (the paper's Fig. 9 baseline)."""

    name = "static"
    params = ("alpha",)


class Random(Policy):
    """A fresh uniform subset of alpha images every epoch (an equal-budget baseline)."""

    name = "random"
    params = ("alpha",)

    def _decide(self, epoch: int, val_acc: float) -> Decision:
        self.subset = self._draw()
        return Decision(NEW, 1.0)


class Dynamic(Policy):
    """Base design, Fig. 4-a / Fig. 5: type-I resample (Eq. 1) when abs(acc_n - acc_{n-1}) < delta."""

    name = "dynamic"
    params = ("alpha", "beta", "delta")

    def _decide(self, epoch: int, val_acc: float) -> Decision:
        if abs(val_acc - self.prior_acc) < self.delta:
            self.subset = resample(self.subset, self.n, self.beta0, self.rng)
            return Decision(TYPE_I, self.beta0)
        return Decision(NONE, self.beta0)


class Variant(Policy):
    """Fig. 4-b: a drop resamples A (type I, Eq. 1, beta_0); a gain below delta resamples from the
    best subset A* (type II, Eq. 2) with beta = gamma**n * beta_0 (Eq. 3); a larger gain keeps A."""

    name = "variant"
    params = ("alpha", "beta", "delta", "gamma")

    def _decide(self, epoch: int, val_acc: float) -> Decision:
        beta = self.gamma**epoch * self.beta0
        if val_acc <= self.prior_acc:
            self.subset = resample(self.subset, self.n, self.beta0, self.rng)
            return Decision(TYPE_I, self.beta0)
        if val_acc - self.prior_acc < self.delta:
            self.subset = resample(self.best_subset, self.n, beta, self.rng)
            return Decision(TYPE_II, beta)
        return Decision(NONE, beta)


POLICIES = {cls.name: cls for cls in (Full, Static, Dynamic, Variant, Random)}


def make_policy(name: str, n: int, alpha: int, beta: float, delta: float, gamma: float, seed: int) -> Policy:
    """The policy `name` over a training split of n images; `full` ignores alpha."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name == "full":
        alpha = n
    if not 1 <= alpha <= n:
        raise ValueError(f"alpha must be in [1, n={n}], got {alpha}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return POLICIES[name](n, alpha, beta, delta, gamma, seed)
