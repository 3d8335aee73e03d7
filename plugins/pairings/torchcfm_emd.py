"""``torchcfm-emd``: torchcfm's exact minibatch OT, as a bijection.

It follows ``torchcfm/optimal_transport.py`` of torchcfm (Tong et al., arXiv 2302.00482;
github.com/atong01/conditional-flow-matching), ``OTPlanSampler`` with ``method="exact"``: the cost is
``torch.cdist(x0, x1) ** 2`` between the flattened pools (squared L2, float32 on the CPU; data rows and noise
columns, the transpose of torchcfm's noise-to-data plan) and the plan is POT's ``ot.emd`` with uniform weights. Two
documented departures, both needed for a pairing:

- torchcfm draws pairs from the plan with replacement, which duplicates some noises and drops others; here the plan's
  row-wise argmax is taken instead, the optimal permutation (the optimal plan of two equal uniform pools is a
  permutation matrix / n);
- torchcfm calls ``ot.emd`` with POT's default cap of 100,000 iterations, after which POT returns a non-optimal plan
  with only a warning; here the cap is raised tenfold until POT reports optimality, and the pairing fails loudly past
  ``max_iter_cap`` (:func:`aotbench.assignment.emd_permutation`).

As in torchcfm, classes are not paired apart (labels travel with their data) and ties are not re-ordered. This is
the second reference the benchmark times the built-in pairings against (``python -m aotbench bench pairing``), and
it can be trained as well. Its total squared-L2 cost is the optimum, the same as ``aot:cost=sqeuclidean``'s.
"""

from __future__ import annotations

import torch

from aotbench import hookimpl
from aotbench.assignment import emd_permutation


class TorchCFMEMD:
    """torchcfm's exact OT: squared torch.cdist, then POT ot.emd (run to optimality), plan argmax as a permutation."""

    def __init__(self, *, num_iter_max: int = 100_000, max_iter_cap: int = 100_000_000):
        if num_iter_max < 1 or max_iter_cap < num_iter_max:
            raise ValueError(f"need 1 <= num_iter_max <= max_iter_cap, got {num_iter_max}, {max_iter_cap}")
        self.num_iter_max, self.max_iter_cap = num_iter_max, max_iter_cap

    def pair(self, data, noise, labels=None):
        """``perm`` [P] such that noise[perm[i]] goes with data[i], minimizing the total squared L2 cost over the
        whole pool (``labels`` are not used)."""
        c = torch.cdist(data.flatten(1), noise.flatten(1)) ** 2
        try:
            perm = emd_permutation(c.double().numpy(), "torchcfm-emd", self.num_iter_max, self.max_iter_cap)
        except RuntimeError as err:
            raise RuntimeError(f"torchcfm-emd: {err}; raise max_iter_cap") from None
        return torch.from_numpy(perm)


@hookimpl
def register_pairings(register):
    """Register ``torchcfm-emd`` (not a default pairing)."""
    register("torchcfm-emd", TorchCFMEMD)
