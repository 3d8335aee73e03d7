"""``knn``: nearest-of-k noise, Improved Immiscible Diffusion (Li et al. 2025, arXiv 2505.18521, Sec. 3).

Each item draws k candidate noises of its own and keeps the one nearest to it; there is no assignment, so the cost
is one pass over the k P candidates. The candidates of different items are disjoint: with the engine's noise
[k P, *S], item i's are rows i, i + P, ..., i + (k - 1) P, so ``k = 1`` keeps row i, exactly independent pairing
(``none``). Unlike a bijective pairing, the choice changes the marginal of the noise trained on: the kept noise
leans toward the data, more so as k grows (the ``coupling`` metric's ``noise_ks_p`` measures it). The nearest
candidate is the same under the L2 and the squared-L2 cost, so there is no cost parameter.

Immiscible Diffusion's first form (Li et al. 2024, arXiv 2406.12303), an assignment over the batch, is ``aot`` with
pool = batch.
"""

from __future__ import annotations

import torch

from aotbench import hookimpl
from aotbench.assignment import check_finite


class KNN:
    """Each item keeps the nearest of its own ``k`` candidate noises (an injective map into k P noises)."""

    def __init__(self, *, k: int = 4):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = k

    @property
    def noise_factor(self) -> int:
        """The engine draws k P noises per pool for this pairing."""
        return self.k

    def pair(self, data, noise, labels=None):
        """``data`` [P, *S], ``noise`` [k P, *S] -> [P] long: item i's nearest candidate among rows i + j P."""
        n = data.shape[0]
        d2 = (noise.reshape(self.k, n, -1) - data.reshape(1, n, -1)).pow(2).sum(-1)  # [k, P]
        check_finite(d2, "knn")
        return d2.argmin(0) * n + torch.arange(n)


@hookimpl
def register_pairings(register):
    register("knn", KNN)
