"""``paper``: the AOT paper's own pairing, as its code does it (Kim et al. 2024, arXiv 2403.05069).

It follows ``training/loss.py`` of the paper's code, EDM-AOT (github.com/large-scale-kim/EDM-AOT), its
``assignment_problem`` and, for conditional models, ``assignment_problem_label``: the cost is ``torch.cdist``
between the flattened data and noise (plain L2, float32 on the CPU), the assignment is scipy's
``linear_sum_assignment``, and with labels each class is solved on its own (``per_class``, the paper's conditional
setting). No chunking, no faster solver, no tie rule: this is the reference the benchmark times ``aot`` against
(``python -m aotbench bench pairing``), and it can be trained as well. Its total L2 cost is the optimum, the same as
``aot``'s.
"""

from __future__ import annotations

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.assignment import per_class


def _assign(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The column for each row of the L2 cost ``torch.cdist(data, noise)`` [n, n] minimizing the total, by scipy."""
    from scipy.optimize import linear_sum_assignment

    c = torch.cdist(data.flatten(1), noise.flatten(1))
    rows, cols = linear_sum_assignment(c.numpy())
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


class Paper:
    """The AOT paper's pairing as its code does it: torch.cdist (L2), then scipy linear_sum_assignment."""

    def __init__(self, *, per_class: bool = True):
        self.per_class = per_class

    def pair(self, data, noise, labels=None):
        """``perm`` [P] such that noise[perm[i]] goes with data[i], minimizing the total L2 cost (per class if set)."""
        if labels is None or not self.per_class:
            return _assign(data, noise)
        return per_class(labels, data.shape[0], lambda idx: _assign(data[idx], noise[idx]))


@hookimpl
def register_pairings(register):
    """Register ``paper`` (not a default pairing)."""
    register("paper", Paper)
