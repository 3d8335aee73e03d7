"""pytest-benchmark suite for pairing speed (skipped in the default run: `--benchmark-skip` in pyproject).

Run it with:  python -m pytest tests/bench --benchmark-only --benchmark-group-by=param:pool
It times the paper's method (torch.cdist + scipy) and torchcfm's (squared cdist + POT ot.emd, to optimality)
beside every built-in pairing, on the same seeded 3072-d pools as `python -m aotbench bench pairing`.
"""

import pytest

from aotbench.assignment import total_cost
from aotbench.bench import REFERENCES, pool_data
from aotbench.plugins import get_registry

POOLS = [512, 2048]
STRATEGIES = ["paper", "torchcfm-emd", "aot", "pot-exact", "sinkhorn"]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pairing_speed(benchmark, strategy, pool):
    data, noise = pool_data(pool, 3072)
    if strategy in REFERENCES:
        fn = REFERENCES[strategy]
        perm = benchmark.pedantic(lambda: fn(data, noise)[0], rounds=3, warmup_rounds=1)
    else:
        inst = get_registry().get("pairing", strategy).build()
        perm = benchmark.pedantic(lambda: inst.pair(data, noise), rounds=3, warmup_rounds=1)
    benchmark.extra_info["total_l2_cost"] = total_cost(data, noise, perm, "l2")
