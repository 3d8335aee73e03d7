"""``sinkhorn``: entropic OT (POT's log-domain Sinkhorn) rounded to a permutation.

Rounding, the documented choice: rows are visited in decreasing order of their largest plan entry, and each takes
its most probable column not yet taken. The result is always a bijection (unlike torchcfm's resampling of pairs
from the plan with replacement, which duplicates some noise vectors and drops others), and as ``reg`` shrinks the
plan concentrates on the optimal permutation, which the rounding then returns exactly.

``reg`` is relative to the mean cost of the pool, so one value means the same across datasets and dimensions.
With ``device="cuda"`` the iterations run on the GPU through POT's torch backend.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.assignment import check_cost, cost_matrix, per_class


def greedy_round(plan: np.ndarray) -> np.ndarray:
    """A permutation close to a (near-permutation) transport plan [n, n]; see the module docstring."""
    n = plan.shape[0]
    order = np.argsort(-plan.max(1), kind="stable")
    taken = np.zeros(n, dtype=bool)
    perm = np.empty(n, dtype=np.int64)
    for i in order:
        row = np.where(taken, -np.inf, plan[i])
        j = int(np.argmax(row))
        perm[i], taken[j] = j, True
    return perm


class Sinkhorn:
    """Log-domain Sinkhorn plan (POT) with relative regularization `reg`, greedily rounded to a permutation."""

    def __init__(self, *, reg: float = 0.05, cost: str = "sqeuclidean", per_class: bool = True,
                 num_iter_max: int = 1000, stop_thr: float = 1e-6, device: str = "cpu"):
        check_cost(cost)
        if not reg > 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        if num_iter_max < 1:
            raise ValueError(f"num_iter_max must be >= 1, got {num_iter_max}")
        torch.device(device)
        self.reg, self.cost, self.per_class = reg, cost, per_class
        self.num_iter_max, self.stop_thr, self.device = num_iter_max, stop_thr, device

    def plan(self, c: torch.Tensor) -> np.ndarray:
        import ot

        c = c.to(self.device, torch.float64)
        c = c / c.mean()
        w = torch.full((c.shape[0],), 1.0 / c.shape[0], dtype=torch.float64, device=self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-convergence is acceptable: the result is rounded anyway
            p = ot.bregman.sinkhorn_log(w, w, c, self.reg, numItermax=self.num_iter_max, stopThr=self.stop_thr)
        return p.cpu().numpy()

    def pair(self, data, noise, labels=None):
        def solve(idx):
            c = cost_matrix(data[idx], noise[idx], self.cost, device=self.device)
            return torch.from_numpy(greedy_round(self.plan(c)))
        return per_class(labels if self.per_class else None, data.shape[0], solve)


@hookimpl
def register_pairings(register):
    register("sinkhorn", Sinkhorn)
