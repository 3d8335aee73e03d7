"""``w2``: exact 2-Wasserstein distance between samples and the held-out split (POT's network simplex)."""

import warnings

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.seeds import generator


def wasserstein2(x, y, num_iter_max: int = 10_000_000) -> float:
    """W2 between the empirical measures of x [n, ...] and y [m, ...] (uniform weights), exact."""
    import ot

    x = x.reshape(x.shape[0], -1).double().numpy()
    y = y.reshape(y.shape[0], -1).double().numpy()
    m = ot.dist(x, y, metric="sqeuclidean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cost, log = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), m, numItermax=num_iter_max,
                            log=True)
    if log["result_code"] != 1:
        raise RuntimeError(f"w2: ot.emd2 did not reach optimality ({log['warning']})")
    return float(np.sqrt(max(cost, 0.0)))


class W2:
    """Exact W2 (POT emd2) between up to max_n samples and up to max_n held-out points, each a seeded random subset
    (the held-out split may be ordered, e.g. by class, so its first rows are not a sample of it)."""

    def __init__(self, *, max_n: int = 5000):
        if not 2 <= max_n <= 20000:
            raise ValueError(f"max_n must be in [2, 20000] (exact OT is O(n^3)), got {max_n}")
        self.max_n = max_n

    def compute(self, ctx):
        x, y = ctx.samples, ctx.splits.heldout
        pick_x = torch.randperm(len(x), generator=generator("w2-samples", ctx.cell.sample_seed))[: self.max_n]
        pick_y = torch.randperm(len(y), generator=generator("w2-heldout", ctx.cell.sample_seed))[: self.max_n]
        return {"w2": wasserstein2(x[pick_x], y[pick_y]), "w2_n": len(pick_x), "w2_ref_n": len(pick_y)}


@hookimpl
def register_metrics(register):
    register("w2", W2, default=True)
