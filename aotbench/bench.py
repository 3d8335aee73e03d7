"""Benchmarks: pairing cost side by side, and training throughput with pairing off the critical path.

``bench pairing`` times every registered pairing and two reference implementations written here, on the same
seeded pools of image-like data (uniform in [-1, 1]) against standard-normal noise:

- ``paper``: what the AOT paper does, ``torch.cdist`` (plain L2) then scipy's ``linear_sum_assignment``;
- ``torchcfm-emd``: torchcfm's exact OT, squared ``torch.cdist`` then POT's ``ot.emd``, run to optimality (its
  default iteration cap stops early on large pools and returns a non-optimal plan; ``optimal`` says so).

Each row reports the median seconds over ``repeats``, the total plain-L2 and squared-L2 cost of the permutation,
whether it is L2-optimal (to float tolerance, against the paper's solution), and the speed-up against ``paper``
measured in the same run. The machines are shared and noisy: compare ratios, not absolute seconds.

``bench training`` measures optimizer steps per second of the real training engine for each pairing, with the
pairing worker in the background (or in line), and the throughput ratio against independent pairing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .assignment import total_cost
from .errors import UserError
from .plugins import Registry


def _paper(data, noise):
    from scipy.optimize import linear_sum_assignment

    c = torch.cdist(data.flatten(1), noise.flatten(1))
    rows, cols = linear_sum_assignment(c.numpy())
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm), True


def _torchcfm_emd(data, noise, num_iter_max=100_000, cap=100_000_000):
    import ot

    c = torch.cdist(data.flatten(1), noise.flatten(1)) ** 2
    w = np.full(len(c), 1 / len(c))
    optimal = False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan, log = ot.emd(w, w, c.double().numpy(), numItermax=num_iter_max, log=True)
        if log["result_code"] == 1 or num_iter_max >= cap:
            optimal = log["result_code"] == 1
            break
        num_iter_max *= 10
    return torch.from_numpy(plan.argmax(1)), optimal


REFERENCES = {"paper": _paper, "torchcfm-emd": _torchcfm_emd}


def pool_data(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-like data (uniform in [-1, 1]) and standard-normal noise, [n, dim] each, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=g) * 2 - 1, torch.randn(n, dim, generator=g)


def bench_pairing(registry: Registry, pools: list[int], dim: int, repeats: int = 3,
                  strategies: list[str] | None = None, progress=print) -> pd.DataFrame:
    """One row per (strategy, pool); see the module docstring."""
    names = strategies or [*REFERENCES, *registry.names("pairing")]
    rows = []
    for n in pools:
        data, noise = pool_data(n, dim)
        optimum = None
        for name in names:
            if name in REFERENCES:
                fn = REFERENCES[name]
            else:
                inst = registry.get("pairing", name).build()
                fn = (lambda inst: lambda d, z: (inst.pair(d, z), None))(inst)
            fn(data, noise)  # warm-up: imports, allocator, thread pools
            times, perm, flag = [], None, None
            for _ in range(repeats):
                t0 = time.perf_counter()
                perm, flag = fn(data, noise)
                times.append(time.perf_counter() - t0)
            l2, sq = total_cost(data, noise, perm, "l2"), total_cost(data, noise, perm, "sqeuclidean")
            if name == "paper":
                optimum = l2
            rows.append({"strategy": name, "pool": n, "dim": dim, "seconds": statistics.median(times),
                         "total_cost": l2, "total_sqeuclidean": sq, "solver_optimal": flag})
            progress(f"  pool {n}: {name:<14} {statistics.median(times):8.3f} s   L2 cost {l2:.2f}")
        for r in rows:
            if r["pool"] == n and optimum is not None:
                r["l2_optimal"] = bool(abs(r["total_cost"] - optimum) <= 1e-6 * optimum)
    df = pd.DataFrame(rows)
    paper = df[df.strategy == "paper"].set_index("pool")["seconds"] if "paper" in names else None
    df["speedup_vs_paper"] = [paper[p] / s if paper is not None else float("nan")
                              for p, s in zip(df.pool, df.seconds)]
    return df


def bench_training(registry: Registry, spec: dict, pairings: list[str], steps: int, train_threads: int,
                   pair_threads: int, workers: int, progress=print) -> pd.DataFrame:
    """Steps per second of the real engine per pairing (fresh model each, same data and seed)."""
    from .config import TrainConfig, resolve
    from .datasets import bind_data
    from .train import TrainOptions, train_model

    dataset = resolve(registry, "dataset", spec["dataset"])
    dcls = registry.get("dataset", dataset.name).obj
    network = resolve(registry, "network", spec.get("network") or dcls.network)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(train_threads)
    rows = []
    try:
        for name in pairings:
            cfg = bind_data(registry, TrainConfig(dataset=dataset, network=network,
                                                  pairing=resolve(registry, "pairing", name), steps=steps,
                                                  batch=spec["batch"], pool=spec["pool"], seed=0))
            with tempfile.TemporaryDirectory() as tmp:
                opts = TrainOptions(progress=False, pair_workers=workers, pair_threads=pair_threads,
                                    ckpt_every=10**9)
                t0 = time.perf_counter()
                ckpt = train_model(registry, cfg, Path(tmp) / "m.pt", opts)
                wall = time.perf_counter() - t0
            t = ckpt["timing"]
            rows.append({"pairing": name, "steps": steps, "batch": cfg.batch, "pool": cfg.pool,
                         "steps_per_second": steps / t["train_seconds"], "train_seconds": t["train_seconds"],
                         "pair_seconds": t["pair_seconds"], "pair_wait_seconds": t["pair_wait_seconds"],
                         "wall_seconds": wall, "workers": workers, "train_threads": train_threads,
                         "pair_threads": pair_threads})
            progress(f"  {name:<10} {rows[-1]['steps_per_second']:.3f} steps/s  (pairing {t['pair_seconds']:.1f} s "
                     f"in total, trainer waited {t['pair_wait_seconds']:.1f} s)")
    finally:
        torch.set_num_threads(old_threads)
    df = pd.DataFrame(rows)
    base = df.steps_per_second.iloc[0]
    df["throughput_vs_first"] = df.steps_per_second / base
    return df


def check_positive(name: str, values: list[int]) -> None:
    if not values or any(v < 1 for v in values):
        raise UserError(f"{name} must be positive integers, got {values}")
