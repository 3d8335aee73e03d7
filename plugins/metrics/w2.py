"""``w2``: exact 2-Wasserstein distance between samples and the held-out split (POT's network simplex)."""

import warnings

import numpy as np

from aotbench import hookimpl


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
    """Exact W2 (POT emd2) between up to max_n samples and up to max_n held-out points."""

    def __init__(self, *, max_n: int = 5000):
        if not 2 <= max_n <= 20000:
            raise ValueError(f"max_n must be in [2, 20000] (exact OT is O(n^3)), got {max_n}")
        self.max_n = max_n

    def compute(self, ctx):
        return {"w2": wasserstein2(ctx.samples[: self.max_n], ctx.splits.heldout[: self.max_n])}


@hookimpl
def register_metrics(register):
    register("w2", W2, default=True)
