"""``pot-exact``: POT's network-simplex OT plan (``ot.emd``) turned into a permutation (torchcfm's exact OT).

With uniform weights over equal-size pools every vertex of the transport polytope is a permutation matrix / n, so
the plan's row-wise argmax is the optimal assignment. POT stops at ``numItermax`` and then returns a *non-optimal*
plan with only a warning; this plugin raises the cap until the solver reports optimality, and fails loudly past
``max_iter_cap``. It never returns a silently non-optimal pairing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.assignment import canonical_ties, check_cost, check_finite, cost_matrix, per_class


def emd_permutation(c: np.ndarray, num_iter_max: int = 100_000, max_iter_cap: int = 100_000_000) -> np.ndarray:
    """The optimal permutation for a square cost matrix by POT's network simplex, run to optimality.

    The iteration cap is raised tenfold until POT reports an optimal plan; past ``max_iter_cap`` it raises. A
    non-finite C is refused first (POT would report an infeasible problem at every cap; see ``check_finite``).
    """
    import ot

    check_finite(c, "pot-exact")
    n = c.shape[0]
    w = np.full(n, 1.0 / n)
    cap = num_iter_max
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT warns on the cap; we check result_code instead
            plan, log = ot.emd(w, w, np.asarray(c, dtype=np.float64), numItermax=cap, log=True)
        if log["result_code"] == 1:
            break
        if cap >= max_iter_cap:
            raise RuntimeError(f"ot.emd did not reach optimality within {cap} iterations (POT says: "
                               f"{log['warning']}); raise max_iter_cap or use 'aot'")
        cap = min(cap * 10, max_iter_cap)
    perm = plan.argmax(1)
    if len(np.unique(perm)) != n:
        raise RuntimeError("the optimal plan is not a permutation matrix (degenerate marginals)")
    return perm


class POTExact:
    """POT ot.emd plan as a permutation; the iteration cap is raised until the plan is optimal."""

    def __init__(self, *, cost: str = "sqeuclidean", per_class: bool = True, num_iter_max: int = 100_000,
                 max_iter_cap: int = 100_000_000):
        check_cost(cost)
        if num_iter_max < 1 or max_iter_cap < num_iter_max:
            raise ValueError(f"need 1 <= num_iter_max <= max_iter_cap, got {num_iter_max}, {max_iter_cap}")
        self.cost, self.per_class = cost, per_class
        self.num_iter_max, self.max_iter_cap = num_iter_max, max_iter_cap

    def pair(self, data, noise, labels=None):
        def solve(idx):
            c = cost_matrix(data[idx], noise[idx], self.cost, who="pot-exact").double().numpy()
            try:
                q = torch.from_numpy(emd_permutation(c, self.num_iter_max, self.max_iter_cap)).long()
            except RuntimeError as err:
                raise RuntimeError(f"pot-exact: {err}") from None
            return canonical_ties(data[idx], q)
        return per_class(labels if self.per_class else None, data.shape[0], solve)


@hookimpl
def register_pairings(register):
    register("pot-exact", POTExact)
