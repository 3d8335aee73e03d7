"""pytest-benchmark suite for pairing speed (skipped in the default run: `--benchmark-skip` in pyproject).

Run it with:  python -m pytest tests/bench --benchmark-only --benchmark-group-by=param:pool
It times the paper's method (pairing `paper`: torch.cdist + scipy) and torchcfm's (pairing `torchcfm-emd`: squared
cdist + POT ot.emd, to optimality) beside the other built-in pairings, each through the registry, on the same seeded
3072-d pools as `python -m aotbench bench pairing`.
Outside the timed region it checks every result: a bijection, and for the exact strategies the optimal total cost
(scipy's linear_sum_assignment on the float64 torch.cdist matrix, computed once per pool).
"""

import functools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from aotbench.assignment import total_cost
from aotbench.bench import pool_data
from aotbench.plugins import get_registry

POOLS = [512, 2048]
STRATEGIES = ["paper", "torchcfm-emd", "aot", "pot-exact", "sinkhorn"]
#: the cost each exact strategy minimizes (torchcfm and pot-exact: squared L2; the paper and aot: plain L2)
EXACT = {"paper": "l2", "torchcfm-emd": "sqeuclidean", "aot": "l2", "pot-exact": "sqeuclidean"}


@functools.lru_cache(maxsize=None)
def optimum(pool: int, cost: str) -> float:
    """The optimal total cost of the benchmark's pool, independently of every strategy under test."""
    data, noise = pool_data(pool, 3072)
    c = torch.cdist(data.flatten(1).double(), noise.flatten(1).double())
    if cost == "sqeuclidean":
        c = c ** 2
    c = c.numpy()
    rows, cols = linear_sum_assignment(c)
    return float(c[rows, cols].sum())


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pairing_speed(benchmark, strategy, pool):
    data, noise = pool_data(pool, 3072)
    inst = get_registry().get("pairing", strategy).build()
    perm = benchmark.pedantic(lambda: inst.pair(data, noise), rounds=3, warmup_rounds=1)
    benchmark.extra_info["total_l2_cost"] = total_cost(data, noise, perm, "l2")

    perm = torch.as_tensor(perm)
    assert perm.shape == (pool,) and torch.equal(perm.sort().values, torch.arange(pool)), "not a bijection"
    if strategy in EXACT:
        cost = EXACT[strategy]
        assert total_cost(data, noise, perm, cost) == pytest.approx(optimum(pool, cost), rel=1e-6), cost
    else:  # approximate (sinkhorn): a bijection can never beat the optimum, in either cost
        for cost in ("l2", "sqeuclidean"):
            assert total_cost(data, noise, perm, cost) >= optimum(pool, cost) * (1 - 1e-9), cost
