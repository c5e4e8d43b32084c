"""Dynamic Training in your own loop: a `torch.utils.data.Sampler` over a policy's current subset.

    policy = dyntrain.make_policy("dynamic", n=len(train_set), alpha=25_000)   # the paper's beta/delta/gamma
    loader = DataLoader(train_set, batch_size=512, sampler=dyntrain.SubsetSampler(policy, seed=0))
    for epoch in range(1, epochs + 1):
        train_one_epoch(model, loader)          # exactly the current subset A, each image once, shuffled
        policy.update(epoch, correct, total)    # validation counts; may resample A

The sampler reads `policy.subset` each time an epoch's iteration starts, so it follows every resample
without being rebuilt. The order of epoch e is a permutation drawn from (seed, e): reproducible, and
resumable through `state_dict`. DataLoader workers (`num_workers > 0`) receive the indices from the
main process, where the sampler runs. With `num_replicas`/`rank` (as `DistributedSampler` takes them)
each rank gets an equal share of the epoch's order, the last indices repeated to make the shares
equal; every rank must then update its policy with the same counts (all-reduce them first).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.utils.data

from dyntrain.sampling import Policy


class SubsetSampler(torch.utils.data.Sampler[int]):
    """Yields the indices of `policy.subset` once each per epoch, in a seeded random order."""

    def __init__(self, policy: Policy, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a dyntrain policy (dyntrain.make_policy), got {type(policy).__name__}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.policy, self.seed, self.num_replicas, self.rank = policy, seed, num_replicas, rank
        self.epoch = 0  # iterations started so far: the next one draws its order from (seed, epoch)

    def __len__(self) -> int:
        return -(-len(self.policy.subset) // self.num_replicas)  # this rank's share, rounded up

    def __iter__(self) -> Iterator[int]:
        subset = self.policy.subset
        order = subset[np.random.default_rng([self.seed, self.epoch]).permutation(len(subset))]
        self.epoch += 1
        padded = np.resize(order, len(self) * self.num_replicas)  # repeats the start to equal shares
        return iter(padded[self.rank :: self.num_replicas].tolist())

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration's order for `epoch` (0-based), as `DistributedSampler.set_epoch`."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position (save the policy's own `state_dict` beside it)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
