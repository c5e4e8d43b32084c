"""The method: which training images A an epoch sees, and when A is resampled (PAPER.md "Steps").

A subset is an int64 array of indices into the training split 0..n-1. `resample` is Eq. 1 / Eq. 2
as Fig. 7 writes it; the policies are Fig. 4-a / Fig. 5 (`dynamic`), Fig. 4-b with Eq. 3
(`variant`) and the baselines `full`, `static` and `random`. Pure numpy, seeded: the same seed gives
the same sequence of subsets, and `state_dict` captures everything needed to continue it, as plain
data (lists, ints, strings) that loads without executing code.

Decisions are taken on integer counts: `update(epoch, correct, total)` gets the number of validation
images classified correctly, and a change of accuracy is compared with delta exactly, as the
rational (c_n - c_{n-1}) / total against Fraction(str(delta)), the decimal the user wrote. Not
Fraction(delta): that is the binary float 0.01000000000000000020816..., a little above 1/100, and a
gain of exactly 100 of 10,000 would count as below delta = 0.01. Differences of float accuracies are
worse: 0.51 - 0.50 > 0.01 but 0.41 - 0.40 < 0.01, so the same gain fell either side by rounding.

Where the paper is ambiguous we decide:
- prior_acc (acc_0) starts at 0 (no image correct), and Fig. 5's `priorAcc <- currentAcc` belongs
  inside the loop, after the check (the figure puts it after the loop, which would never update it).
- dynamic resamples (type I) when abs(acc_n - acc_{n-1}) < delta, as in Fig. 5, although the text
  speaks of "improvement below delta": a large drop therefore keeps A. A change of exactly delta
  keeps A: Fig. 5 compares with a strict `<` and the text says "menor al umbral" (below the threshold).
- variant first records A* (the subset just trained) and best_acc if acc_n > best_acc. Then
  acc_n <= acc_{n-1}: type I of A with beta_0 (Eq. 3 is stated for type II only);
  acc_n - acc_{n-1} <= delta: type II from A* with beta = gamma**n * beta_0, n the epoch just finished;
  otherwise (a gain above delta) A is kept. A gain of exactly delta resamples: the text keeps A only
  when the difference "supera al umbral" (exceeds the threshold), Fig. 4-b. So at |change| == delta
  dynamic keeps A and variant resamples; each follows its own figure.
- A* is the subset with the highest validation accuracy so far (ties keep the earlier one), as Eq. 2
  defines it ("el que ha resultado en el mejor desempeño hasta la iteración actual"). The paper adds
  that with this method "the best set coincides with the previous iteration's training set"; that
  holds only while accuracy is at a new maximum. After a drop and a small recovery (0.80, 0.50,
  0.505) the set just trained is not the best one, and we follow the definition, not the remark.
- The number of images kept is int(round(alpha * (1 - beta))), Python's round (half to even);
  the other alpha - keep come from outside the kept-from set.
- static is one uniform subset, never resampled; random draws a fresh uniform subset of alpha from
  all n images every epoch; full is every image, never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

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
    validation counts and may replace `subset`. Subclasses decide in `_decide`."""

    name = "policy"
    params: tuple[str, ...] = ()  # the TrainConfig fields this policy reads (besides the seed)

    def __init__(self, n: int, alpha: int, beta: float, delta: float, gamma: float, seed: int):
        self.n, self.alpha, self.beta0, self.delta, self.gamma = n, alpha, beta, delta, gamma
        self.delta_exact = Fraction(str(delta))  # the decimal written, not the binary float (module doc)
        self.rng = np.random.default_rng(seed)
        self.subset = self._initial_subset()
        self.best_subset = self.subset.copy()  # A*
        self.best_correct = 0
        self.prior_correct = 0  # c_{n-1}: acc_{n-1} = prior_correct / total
        self.total = 0  # validation images; 0 until the first update
        self.epoch = 0

    @property
    def best_acc(self) -> float:
        return self.best_correct / self.total if self.total else 0.0

    @property
    def prior_acc(self) -> float:
        return self.prior_correct / self.total if self.total else 0.0

    def _initial_subset(self) -> np.ndarray:
        return self._draw()

    def _draw(self) -> np.ndarray:
        """alpha images drawn uniformly from all n (step 1, "Partition")."""
        return self.rng.choice(self.n, size=self.alpha, replace=False).astype(np.int64)

    def update(self, epoch: int, correct: int, total: int) -> Decision:
        """Epoch `epoch` (1-based) was trained on `subset`; `correct` of the `total` validation
        images were classified correctly. `total` is the same every epoch."""
        if not 0 <= correct <= total or total < 1:
            raise ValueError(f"need 0 <= correct <= total and total >= 1, got correct={correct}, total={total}")
        if self.total and total != self.total:
            raise ValueError(f"the validation set changed size ({self.total} -> {total}): accuracies not comparable")
        self.total = total
        if correct > self.best_correct:
            self.best_correct, self.best_subset = correct, self.subset.copy()
        decision = self._decide(epoch, Fraction(correct - self.prior_correct, total))
        self.prior_correct, self.epoch = correct, epoch
        return decision

    def _decide(self, epoch: int, change: Fraction) -> Decision:
        """`change` is acc_n - acc_{n-1}, exact; compare it with `delta_exact`."""
        return Decision(NONE, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """Plain data only (str, int, lists of int), so that a checkpoint loads without executing code."""
        return {
            "name": self.name,
            "subset": self.subset.tolist(),
            "best_subset": self.best_subset.tolist(),
            "best_correct": self.best_correct,
            "prior_correct": self.prior_correct,
            "total": self.total,
            "epoch": self.epoch,
            # PCG64: {"bit_generator": "PCG64", "state": {"state": int, "inc": int}, "has_uint32": int,
            # "uinteger": int}; the two 128-bit ints pickle as LONG1, which torch's weights_only loader reads.
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"state of policy {state['name']!r} cannot be loaded into {self.name!r}")
        self.subset = np.asarray(state["subset"], dtype=np.int64)
        self.best_subset = np.asarray(state["best_subset"], dtype=np.int64)
        self.best_correct, self.prior_correct = int(state["best_correct"]), int(state["prior_correct"])
        self.total, self.epoch = int(state["total"]), int(state["epoch"])
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

    def _decide(self, epoch: int, change: Fraction) -> Decision:
        self.subset = self._draw()
        return Decision(NEW, 1.0)


class Dynamic(Policy):
    """Base design, Fig. 4-a / Fig. 5: type-I resample (Eq. 1) when abs(acc_n - acc_{n-1}) < delta;
    a change of delta or more, up or down, keeps A."""

    name = "dynamic"
    params = ("alpha", "beta", "delta")

    def _decide(self, epoch: int, change: Fraction) -> Decision:
        if abs(change) < self.delta_exact:
            self.subset = resample(self.subset, self.n, self.beta0, self.rng)
            return Decision(TYPE_I, self.beta0)
        return Decision(NONE, self.beta0)


class Variant(Policy):
    """Fig. 4-b: a drop or no change resamples A (type I, Eq. 1, beta_0); a gain of at most delta
    resamples from the best subset A* (type II, Eq. 2) with beta = gamma**n * beta_0 (Eq. 3); only
    a gain that exceeds delta keeps A."""

    name = "variant"
    params = ("alpha", "beta", "delta", "gamma")

    def _decide(self, epoch: int, change: Fraction) -> Decision:
        beta = self.gamma**epoch * self.beta0
        if change <= 0:
            self.subset = resample(self.subset, self.n, self.beta0, self.rng)
            return Decision(TYPE_I, self.beta0)
        if change <= self.delta_exact:
            self.subset = resample(self.best_subset, self.n, beta, self.rng)
            return Decision(TYPE_II, beta)
        return Decision(NONE, beta)


POLICIES = {cls.name: cls for cls in (Full, Static, Dynamic, Variant, Random)}


def make_policy(name: str, n: int, alpha: int, beta: float = 0.7, delta: float = 0.01, gamma: float = 0.97,
                seed: int = 0) -> Policy:
    """The policy `name` over a training split of n images; `full` ignores alpha. beta, delta and gamma
    default to the paper's (Table 2's best cell; TrainConfig's defaults)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name == "full":
        alpha = n
    if not 1 <= alpha <= n:
        raise ValueError(f"alpha must be in [1, n={n}], got {alpha}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not 0.0 <= delta < float("inf"):
        raise ValueError(f"delta must be a finite number >= 0, got {delta}")
    return POLICIES[name](n, alpha, beta, delta, gamma, seed)
