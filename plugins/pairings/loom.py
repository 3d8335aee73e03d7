"""``loom``: persistent per-item noise, re-optimised pool after pool (LOOM-CFM; Davtyan, Dadi, Cevher, Favaro,
"Faster Inference of Flow-Based Generative Models via Improved Data-Noise Coupling", ICLR 2025, Alg. 1).

Every training item holds ``caches`` noise *seeds* (the noise itself is regenerated from its seed, so the state is
a small integer table, as in the reference's seed cache). For each pool:

1. each item picks one of its caches at random, and its noise is generated from the seed there;
2. data and these noises are paired by an exact assignment (L2 cost, as the reference; within each class for a
   conditional model), and the pool trains on that pairing;
3. each item's cache now holds the seed of the noise it was paired with (the reference's seed swap).

A swap never raises the pool's total cost, so over epochs the assignment approaches a dataset-wide one without a
dataset-wide solve. Several caches per item keep the model from seeing only one noise per image (the reference's
CIFAR-10 setting is 6). The reference redraws every seed every ``resample_every`` epochs (1000 for CIFAR-10, beyond
any budget here), which is left out.

One departure, for pools that span two epochs: an item that occurs twice in a pool with the same cache would hand
its seed out twice. Its second occurrence gets a fresh seed that is never reused (a *guest*); the write-back keeps
every seed in the table distinct, so no two items ever share a noise.
"""

from __future__ import annotations

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.assignment import canonical_ties, check_cost, cost_matrix, per_class
from aotbench.seeds import generator


class Loom:
    """LOOM-CFM's persistent noise: per-item seed caches, swapped by an exact assignment in every pool."""

    stateful = True

    def __init__(self, *, caches: int = 6, cost: str = "l2", per_class: bool = True):
        if isinstance(caches, bool) or not isinstance(caches, int) or caches < 1:
            raise ValueError(f"caches must be an integer >= 1, got {caches!r}")
        check_cost(cost)
        self.caches, self.cost, self.per_class = caches, cost, per_class
        self.seed, self.n_items, self.seeds, self.pools = 0, 0, torch.zeros(0, caches, dtype=torch.long), 0

    def start(self, n_items: int, seed: int) -> None:
        """Item i's cache c starts with seed i * caches + c: every seed distinct."""
        self.seed, self.n_items, self.pools = seed, n_items, 0
        self.seeds = torch.arange(n_items * self.caches, dtype=torch.long).reshape(n_items, self.caches)

    def state_dict(self) -> dict:
        return {"n_items": self.n_items, "caches": self.caches, "seeds": self.seeds.clone(), "pools": self.pools}

    def load_state_dict(self, state: dict) -> None:
        if state["n_items"] != self.n_items or state["caches"] != self.caches:
            raise ValueError(f"the state was written for {state['n_items']} items x {state['caches']} caches, this "
                             f"run has {self.n_items} x {self.caches} (the dataset or the caches changed)")
        self.seeds, self.pools = state["seeds"].clone(), int(state["pools"])

    def noise_of(self, seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """[len(seeds), *shape] standard-normal noise, row i generated from seed ``seeds[i]`` alone."""
        return torch.stack([torch.randn(shape, generator=generator("loom-noise", self.seed, int(s)))
                            for s in seeds])

    def pair(self, data, noise, labels=None, *, index=None):
        """``data`` [P, *S] with dataset indices ``index`` [P] -> ``(perm, own_noise)``: the items' cached noises
        [P, *S] and the assignment between them. The engine's fresh ``noise`` is not used."""
        p = data.shape[0]
        slot = torch.randint(self.caches, (p,), generator=generator("loom-slot", self.seed, self.pools))
        cell = index.long() * self.caches + slot
        chosen = self.seeds.view(-1)[cell].clone()
        first = torch.ones(p, dtype=torch.bool)
        _, inverse = torch.unique(cell, return_inverse=True)
        seen = set()
        for i, c in enumerate(inverse.tolist()):
            if c in seen:
                first[i] = False
            seen.add(c)
        guests = (~first).nonzero().flatten()
        chosen[guests] = self.n_items * self.caches + self.pools * p + guests  # seeds never used before or after
        own = self.noise_of(chosen, tuple(data.shape[1:]))

        def solve(idx):
            from scipy.optimize import linear_sum_assignment

            c = cost_matrix(data[idx], own[idx], self.cost, who="loom").numpy().astype(np.float64)
            rows, cols = linear_sum_assignment(c)
            q = torch.from_numpy(cols[np.argsort(rows)]).long()
            return canonical_ties(data[idx], q)

        perm = per_class(labels if self.per_class else None, p, solve)
        self.seeds.view(-1)[cell[first]] = chosen[perm][first]
        self.pools += 1
        return perm, own


@hookimpl
def register_pairings(register):
    register("loom", Loom)
