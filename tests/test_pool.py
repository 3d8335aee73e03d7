"""The AOT pool: one pairing per pool, every pool element used exactly once, background == synchronous."""

from __future__ import annotations

import pytest
import torch

from aotbench.errors import UserError
from aotbench.plugins import Component
from aotbench.pool import PoolSource, iter_pools
from aotbench.train import TrainOptions, train_model
from conftest import tiny_train, with_components


class Reverse:
    """A deterministic, non-trivial pairing that records its calls."""

    calls: list = []

    def pair(self, data, noise, labels=None):
        Reverse.calls.append(data.shape[0])
        return torch.arange(data.shape[0]).flip(0)


class Broken:
    def pair(self, data, noise, labels=None):
        return torch.zeros(data.shape[0], dtype=torch.long)


def source(pairing, n=100, pool=32, seed=0):
    data = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    return PoolSource(data, None, pool, seed, 0, pairing, "test")


def test_each_pool_element_is_used_exactly_once_per_cycle():
    src = source(Reverse(), n=100, pool=32)  # pool 3 spans two epochs
    for pool in iter_pools(src, 0, 5, workers=0):
        batches = [pool.batch(j, 8) for j in range(4)]
        assert torch.equal(torch.cat([b["index"] for b in batches]), pool.index)
        row_of = {tuple(r.tolist()): i for i, r in enumerate(pool.noise.flatten(1))}
        used = [row_of[tuple(r.tolist())] for b in batches for r in b["noise"].flatten(1)]
        assert sorted(used) == list(range(32))  # every noise vector once
        assert used == pool.perm.tolist()  # ... paired as the pairing said


def test_pools_walk_through_seeded_epochs_without_repeats():
    src = source(Reverse(), n=96, pool=32)
    first_epoch = torch.cat([src.indices(k) for k in range(3)])
    assert torch.equal(torch.sort(first_epoch).values, torch.arange(96))
    assert not torch.equal(src.indices(0), src.indices(3))  # the next epoch is reshuffled
    spanning = source(Reverse(), n=50, pool=32)  # a pool may span two epochs
    assert torch.equal(spanning.indices(1)[:18], torch.cat([spanning.indices(0), spanning.indices(1)])[32:50])


def test_background_pairing_yields_exactly_the_synchronous_pools(registry):
    pairing = registry.get("pairing", "aot").build()
    src = PoolSource(torch.randn(300, 2), torch.randint(3, (300,)), 64, 7, 1, pairing, "aot")
    sync = list(iter_pools(src, 2, 6, workers=0))
    background = list(iter_pools(src, 2, 6, workers=1, threads=1))
    assert [p.k for p in background] == [2, 3, 4, 5]
    for a, b in zip(sync, background):
        assert torch.equal(a.index, b.index) and torch.equal(a.noise, b.noise) and torch.equal(a.perm, b.perm)


def test_a_spawned_multithreaded_worker_yields_the_same_pools(registry):
    """Several pairing threads use a spawned worker (a forked one can hang on the parent's OpenMP pool)."""
    pairing = registry.get("pairing", "aot").build()
    src = PoolSource(torch.randn(200, 2), None, 64, 3, 0, pairing, "aot")
    torch.set_num_threads(2)
    sync = list(iter_pools(src, 0, 3, workers=0))
    spawned = list(iter_pools(src, 0, 3, workers=1, threads=2, context="spawn"))
    assert all(torch.equal(a.perm, b.perm) and torch.equal(a.noise, b.noise) for a, b in zip(sync, spawned))


def test_engine_calls_the_pairing_once_per_pool(registry, tmp_path):
    reg = with_components(registry, Component("pairing", "reverse", Reverse, "test", "tests"))
    Reverse.calls = []
    cfg = tiny_train(reg, pairing="reverse", train_steps=40, batch=16, pool=64)  # 4 steps per pool
    train_model(reg, cfg, tmp_path / "m.pt", TrainOptions(pair_workers=0, progress=False))
    assert Reverse.calls == [64] * 10


def test_engine_simulates_ranks_with_one_pool_each(registry, tmp_path):
    reg = with_components(registry, Component("pairing", "reverse", Reverse, "test", "tests"))
    Reverse.calls = []
    cfg = tiny_train(reg, pairing="reverse", train_steps=8, batch=32, pool=64, ranks=2)  # per-rank batch 16
    train_model(reg, cfg, tmp_path / "m.pt", TrainOptions(pair_workers=0, progress=False))
    assert Reverse.calls == [64] * 4  # 2 pools (8 steps / 4 per pool) x 2 ranks


def test_a_pairing_that_returns_a_non_bijection_is_named(registry, tmp_path):
    reg = with_components(registry, Component("pairing", "broken", Broken, "test", "tests"))
    cfg = tiny_train(reg, pairing="broken")
    with pytest.raises(UserError, match="pairing 'broken' returned a non-bijection"):
        train_model(reg, cfg, tmp_path / "m.pt", TrainOptions(pair_workers=0, progress=False))
    assert not (tmp_path / "m.pt").exists()
