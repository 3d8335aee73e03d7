"""``pot-exact``: POT's network-simplex OT plan (``ot.emd``, torchcfm's exact solver) turned into a permutation.

With uniform weights over equal-size pools every vertex of the transport polytope is a permutation matrix / n, so
the plan's row-wise argmax is the optimal assignment (:func:`aotbench.assignment.emd_permutation`). POT stops at
``numItermax`` and then returns a *non-optimal* plan with only a warning; the cap is raised until the solver reports
optimality, and past ``max_iter_cap`` the pairing fails loudly. It never returns a silently non-optimal pairing.
Unlike ``torchcfm-emd`` (torchcfm's procedure as it is), the cost comes from
:func:`aotbench.assignment.cost_matrix`, classes are paired apart (``per_class``), and the noises of identical pool
rows are handed out in index order (:func:`aotbench.assignment.canonical_ties`).
"""

from __future__ import annotations

import torch

from aotbench import hookimpl
from aotbench.assignment import canonical_ties, check_cost, cost_matrix, emd_permutation, per_class


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
        """``perm`` [P] such that noise[perm[i]] goes with data[i]: the exact OT assignment (per class if set)."""
        def solve(idx):
            c = cost_matrix(data[idx], noise[idx], self.cost, who="pot-exact").double().numpy()
            try:
                q = torch.from_numpy(emd_permutation(c, "pot-exact", self.num_iter_max, self.max_iter_cap)).long()
            except RuntimeError as err:
                raise RuntimeError(f"pot-exact: {err}; raise max_iter_cap or use 'aot'") from None
            return canonical_ties(data[idx], q)
        return per_class(labels if self.per_class else None, data.shape[0], solve)


@hookimpl
def register_pairings(register):
    register("pot-exact", POTExact)
