"""Benchmarks: pairing cost side by side, and training throughput with pairing off the critical path.

``bench pairing`` times registered pairings (by default every one), through the registry as training uses them, on
the same seeded pools of image-like data (uniform in [-1, 1]) against standard-normal noise. Two of them are the
benchmark's reference methods, registered as non-default pairings:

- ``paper``: what the AOT paper's code does, ``torch.cdist`` (plain L2) then scipy's ``linear_sum_assignment``;
- ``torchcfm-emd``: torchcfm's exact OT, squared ``torch.cdist`` then POT's ``ot.emd``, run to optimality.

Each row reports the median seconds over ``repeats``, the total plain-L2 and squared-L2 cost of the permutation,
whether it is L2-optimal (to float tolerance, against ``paper``'s solution, when ``paper`` is among the strategies),
and the speed-up against ``paper`` measured in the same run. The machines are shared and noisy: compare ratios, not
absolute seconds.

``bench training`` measures optimizer steps per second of the real training engine for each pairing, with the
pairing worker in the background (or in line), and the throughput ratio against independent pairing.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .errors import UserError
from .plugins import Registry


def pool_data(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-like data (uniform in [-1, 1]) and standard-normal noise, [n, dim] each, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=g) * 2 - 1, torch.randn(n, dim, generator=g)


def bench_pairing(registry: Registry, pools: list[int], dim: int, repeats: int = 3,
                  strategies: list[str] | None = None, progress=print) -> pd.DataFrame:
    """One row per (strategy, pool); see the module docstring. ``strategies`` are pairing names (default: every
    registered pairing, each with its default parameters)."""
    from .config import resolve
    from .pool import call_pairing, is_stateful, noise_factor

    check_positive("--repeats", [repeats])
    names = strategies or registry.names("pairing")
    rows = []
    for n in pools:
        data, noise = pool_data(n, dim)
        optimum = None
        for name in names:
            choice = resolve(registry, "pairing", name)  # a name, or name:key=value
            inst = registry.get("pairing", choice.name).build(**choice.kwargs)
            f = noise_factor(inst, name)  # nearest-of-k draws f n noises; the first n are the plain pool's
            pool_noise = noise if f == 1 else torch.cat([noise, pool_data(n * (f - 1), dim, seed=1)[1]])
            index = torch.arange(n)

            def once():
                if is_stateful(inst):  # a fresh state each time: every repeat pairs the same first pool
                    inst.start(n, 0)
                perm, used, _ = call_pairing(inst, name, data, pool_noise, None, index)
                return perm, used

            once()  # warm-up: imports, allocator, thread pools
            times, perm = [], None
            for _ in range(repeats):
                t0 = time.perf_counter()
                perm, used = once()
                times.append(time.perf_counter() - t0)
            used = used[perm]
            l2 = float((data.double() - used.double()).norm(dim=1).sum())
            sq = float((data.double() - used.double()).pow(2).sum())
            if name == "paper":
                optimum = l2
            rows.append({"strategy": name, "pool": n, "dim": dim, "seconds": statistics.median(times),
                         "total_cost": l2, "total_sqeuclidean": sq})
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
    """Steps per second of the real engine per pool size (``spec["pool"]``, an int or a list) and pairing (fresh
    model each, same data and seed), and each pairing's throughput against the first pairing's (normally ``none``)
    at the same pool: the share of training speed the pairing costs with ``workers`` background pairing processes
    (several pair consecutive pools at once)."""
    from .config import CellConfig, TrainConfig, resolve
    from .datasets import bind_data
    from .grid import validate
    from .train import TrainOptions, train_model

    dataset = resolve(registry, "dataset", spec["dataset"])
    dcls = registry.get("dataset", dataset.name).obj
    network = resolve(registry, "network", spec.get("network") or dcls.network)
    pools = spec["pool"] if isinstance(spec["pool"], (list, tuple)) else [spec["pool"]]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(train_threads)
    rows = []
    try:
        for pool in pools:
            for name in pairings:
                cfg = bind_data(registry, TrainConfig(dataset=dataset, network=network,
                                                      pairing=resolve(registry, "pairing", name), train_steps=steps,
                                                      batch=spec["batch"], pool=pool, seed=0))
                validate(registry, [CellConfig(cfg, resolve(registry, "sampler", registry.names("sampler")[0]),
                                               resolve(registry, "guidance", "none"), steps=1)])
                with tempfile.TemporaryDirectory() as tmp:
                    opts = TrainOptions(progress=False, pair_workers=workers, pair_threads=pair_threads,
                                        ckpt_every=10**9)
                    t0 = time.perf_counter()
                    ckpt = train_model(registry, cfg, Path(tmp) / "m.pt", opts)
                    wall = time.perf_counter() - t0
                t = ckpt["timing"]
                rows.append({"pairing": name, "pool": pool, "train_steps": steps, "batch": cfg.batch,
                             "steps_per_second": steps / t["train_seconds"], "train_seconds": t["train_seconds"],
                             "pair_seconds": t["pair_seconds"], "pair_wait_seconds": t["pair_wait_seconds"],
                             "wall_seconds": wall, "workers": workers, "train_threads": train_threads,
                             "pair_threads": pair_threads})
                progress(f"  pool {pool:<6} {name:<10} {rows[-1]['steps_per_second']:.3f} steps/s  (pairing "
                         f"{t['pair_seconds']:.1f} s in total, trainer waited {t['pair_wait_seconds']:.1f} s)")
    finally:
        torch.set_num_threads(old_threads)
    df = pd.DataFrame(rows)
    base = df.groupby("pool")["steps_per_second"].transform("first")
    df["throughput_vs_first"] = df.steps_per_second / base
    return df


def check_positive(name: str, values: list[int]) -> None:
    """Refuse, in one line, an empty list or a value below 1 for the option ``name``."""
    if not values or any(v < 1 for v in values):
        raise UserError(f"{name} must be positive integers, got {values}")
