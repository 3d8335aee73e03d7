"""The field's couplings on the pool contract: nearest-of-k noise (``knn``), persistent per-item noise (``loom``),
global pools over ranks, and the coupling diagnostics every model records."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from aotbench import contracts
from aotbench.assignment import total_cost
from aotbench.errors import UserError
from aotbench.grid import expand, validate
from aotbench.records import read_records
from aotbench.runner import RunOptions, run_cells
from aotbench.config import CellConfig, resolve
from aotbench.pool import PoolSource, RankPools, call_pairing, check_injection, coupling_stats, coupling_summary
from aotbench.train import TrainOptions, coupling_diagnostics, read_model_checkpoint, train_model
from conftest import run_cli, state_equal, tiny_train


def opts(**kw):
    return TrainOptions(progress=False, pair_workers=0, **kw)


def _train_until_killed(registry, cfg, path, *, at_step: int, ckpt_every: int) -> None:
    """Train ``cfg`` into ``path`` and stop it dead at ``at_step`` (as a SIGKILL would: no checkpoint of its own)."""
    class Kill(Exception):
        pass

    def die(step, loss):
        if step == at_step:
            raise Kill

    with pytest.raises(Kill):
        train_model(registry, cfg, path, opts(ckpt_every=ckpt_every, on_step=die))


def brute_force_cost(x: torch.Tensor, z: torch.Tensor) -> float:
    """The optimal total L2 cost over every permutation (small n only)."""
    return min(total_cost(x, z, torch.tensor(p)) for p in itertools.permutations(range(x.shape[0])))


# ----------------------------------------------------------------------------------------------------------- knn
@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_keeps_each_items_nearest_own_candidate_and_is_injective(registry, k):
    knn = registry.get("pairing", "knn").build(k=k)
    g = torch.Generator().manual_seed(k)
    y, noise = torch.rand(40, 3, generator=g) * 2 - 1, torch.randn(40 * k, 3, generator=g)
    perm = check_injection(knn.pair(y, noise), 40, 40 * k, "knn")
    for i in range(40):
        candidates = [i + j * 40 for j in range(k)]  # item i's own, disjoint from every other item's
        best = min(candidates, key=lambda c: float((y[i] - noise[c]).norm()))
        assert int(perm[i]) == best


def test_knn_with_k_1_is_independent_pairing(registry):
    data = torch.randn(300, 2)
    pools = {name: PoolSource(data, None, 64, 3, 0, registry.get("pairing", name).build(**kw), name)[2]
             for name, kw in (("none", {}), ("knn", {"k": 1}))}
    assert torch.equal(pools["none"].noise, pools["knn"].noise)
    assert torch.equal(pools["none"].perm, pools["knn"].perm) and torch.equal(pools["knn"].perm, torch.arange(64))


def test_a_noise_factor_pool_draws_k_noises_per_item_whose_first_block_is_the_plain_pools(registry):
    data = torch.randn(300, 2)
    plain = PoolSource(data, None, 64, 3, 0, registry.get("pairing", "none").build(), "none")[1]
    knn = PoolSource(data, None, 64, 3, 0, registry.get("pairing", "knn").build(k=4), "knn")[1]
    assert knn.noise.shape == (256, 2) and torch.equal(knn.y, plain.y)
    assert torch.equal(knn.perm % 64, torch.arange(64))  # each item's choice is among its own candidates


def test_knn_k_below_1_is_refused_in_one_line(tmp_path):
    out = run_cli("run", "--dataset", "moons", "--pairing", "knn:k=0", "--results", str(tmp_path), "--quiet")
    assert out.returncode == 2 and "k must be an integer >= 1" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "models").exists()


def test_the_engine_refuses_a_map_that_reuses_a_noise():
    with pytest.raises(UserError, match="non-injection"):
        check_injection(torch.tensor([0, 5, 5]), 3, 6, "bad")
    with pytest.raises(UserError, match="outside 0..5"):
        check_injection(torch.tensor([0, 6, 1]), 3, 6, "bad")


# ---------------------------------------------------------------------------------------------------------- loom
def test_loom_keeps_each_items_paired_noise_for_its_next_visit(registry):
    """caches=1: the noise an item is paired with in one epoch is the noise it starts with in the next."""
    loom = registry.get("pairing", "loom").build(caches=1)
    data = torch.randn(64, 2)
    loom.start(64, seed=5)
    src = PoolSource(data, None, 64, 0, 0, loom, "loom")  # one pool = one epoch
    first = src[0]
    assigned = {int(i): first.noise[first.perm[j]] for j, i in enumerate(first.index)}
    second = src[1]
    drawn = {int(i): second.noise[j] for j, i in enumerate(second.index)}  # own noise, in pool order
    assert all(torch.equal(assigned[i], drawn[i]) for i in range(64))
    assert total_cost(second.y, second.noise, second.perm) <= total_cost(second.y, second.noise, torch.arange(64))


def test_loom_seeds_stay_distinct_even_when_a_pool_holds_an_item_twice(registry):
    loom = registry.get("pairing", "loom").build(caches=1)
    loom.start(40, seed=1)
    src = PoolSource(torch.randn(40, 2), None, 32, 0, 0, loom, "loom")  # pools straddle epochs: repeats
    for k in range(12):
        pool = src[k]
        assert torch.unique(loom.seeds).numel() == 40
        check_injection(pool.perm, 32, 32, "loom")


def test_loom_cost_ratio_is_measured_against_fresh_noise_not_its_own_cache(registry):
    """Once an item's cached noise is the one it was paired with, pairing it again costs nothing more; the ratio
    must still compare with independent pairing of the engine's fresh noise, as for every other pairing."""
    loom = registry.get("pairing", "loom").build(caches=1)
    loom.start(64, seed=5)
    src = PoolSource(torch.rand(64, 2) * 2 - 1, None, 64, 0, 0, loom, "loom")
    later = [src[k] for k in range(6)][-1]  # the sixth epoch: caches long settled
    fresh = src.draw(5)["noise"]
    assert later.stats["independent"] == pytest.approx(float((later.y.double() - fresh.double()).norm(dim=1).sum()))
    assert later.stats["paired"] < 0.8 * later.stats["independent"]


def test_loom_refuses_a_state_written_for_another_dataset_size(registry):
    loom = registry.get("pairing", "loom").build()
    loom.start(100, seed=0)
    state = loom.state_dict()
    other = registry.get("pairing", "loom").build()
    other.start(120, seed=0)
    with pytest.raises(ValueError, match="100 items"):
        other.load_state_dict(state)


def test_loom_resumes_from_a_killed_run_with_bit_identical_weights(registry, tmp_path):
    cfg = tiny_train(registry, pairing="loom", train_steps=90, batch=32, pool=96)  # 3 steps per pool

    class Kill(Exception):
        pass

    def die(step, loss):
        if step == 47:  # the last checkpoint is at step 40, in the middle of pool 13 (steps 39-41)
            raise Kill

    with pytest.raises(Kill):
        train_model(registry, cfg, tmp_path / "r.pt", opts(ckpt_every=20, on_step=die))
    assert read_model_checkpoint(tmp_path / "r.pt", cfg)["pairing_state"][0]["pools"] == 13  # pairs pool 13 again
    resumed = train_model(registry, cfg, tmp_path / "r.pt", opts(ckpt_every=20))
    straight = train_model(registry, cfg, tmp_path / "s.pt", opts(ckpt_every=1000))
    assert state_equal(resumed["net"], straight["net"]) and state_equal(resumed["ema"], straight["ema"])
    assert torch.equal(resumed["pairing_state"][0]["seeds"], straight["pairing_state"][0]["seeds"])
    assert coupling_diagnostics(registry, cfg, resumed) == coupling_diagnostics(registry, cfg, straight)


def test_loom_at_a_pool_boundary_checkpoint_resumes_exactly(registry, tmp_path):
    cfg = tiny_train(registry, pairing="loom", train_steps=60, batch=32, pool=64)  # 2 steps per pool

    _train_until_killed(registry, cfg, tmp_path / "r.pt", at_step=25, ckpt_every=10)
    resumed = train_model(registry, cfg, tmp_path / "r.pt", opts(ckpt_every=10))
    straight = train_model(registry, cfg, tmp_path / "s.pt", opts(ckpt_every=1000))
    assert state_equal(resumed["net"], straight["net"])


def test_loom_in_a_background_worker_pairs_the_in_line_pools(registry, tmp_path):
    cfg = tiny_train(registry, pairing="loom", train_steps=40, batch=32, pool=64)
    inline = train_model(registry, cfg, tmp_path / "a.pt", opts())
    worker = train_model(registry, cfg, tmp_path / "b.pt", TrainOptions(progress=False, pair_workers=1))
    assert state_equal(inline["net"], worker["net"])
    assert torch.equal(inline["pairing_state"][0]["seeds"], worker["pairing_state"][0]["seeds"])


def test_a_stateful_pairing_with_two_workers_is_refused_in_one_line(registry, tmp_path):
    cfg = tiny_train(registry, pairing="loom", train_steps=10, batch=32, pool=64)
    with pytest.raises(UserError, match="keeps state from pool to pool.*--pair-workers 0 or 1"):
        train_model(registry, cfg, tmp_path / "m.pt", TrainOptions(progress=False, pair_workers=2))
    assert not (tmp_path / "m.pt").exists()


def test_a_stateful_pairing_over_global_pools_is_refused_before_any_work(registry):
    cfg = tiny_train(registry, pairing="loom", ranks=2, global_pool=True)
    cell = CellConfig(cfg, resolve(registry, "sampler", "euler"), resolve(registry, "guidance", "none"), steps=4)
    with pytest.raises(UserError, match="cannot pair global pools"):
        validate(registry, [cell])


def test_loom_on_changed_data_under_the_same_checkpoint_is_refused_in_one_line(registry, tmp_path):
    cfg = tiny_train(registry, pairing="loom", train_steps=20, batch=32, pool=64)
    train_model(registry, cfg, tmp_path / "m.pt", opts(ckpt_every=10))
    changed = tiny_train(registry, pairing="loom", train_steps=20, batch=32, pool=64,
                         dataset="moons:n_train=4000")
    with pytest.raises(UserError, match="belongs to another configuration"):
        train_model(registry, changed, tmp_path / "m.pt", opts())


# --------------------------------------------------------------------------------------------------- global pools
def test_a_global_pool_is_one_exact_assignment_over_the_concatenated_pools(registry):
    aot = registry.get("pairing", "aot").build()
    data = torch.rand(50, 2) * 2 - 1
    sources = {r: PoolSource(data, None, 3, 7, r, aot, "aot") for r in range(3)}
    for k in range(4):
        pools = RankPools(sources, [0, 1, 2], global_pool=True)[k]
        y = torch.cat([pools[r].y for r in range(3)])
        noise = pools[0].noise
        assert noise.shape[0] == 9 and all(pools[r].noise is noise for r in range(3))
        perm = torch.cat([pools[r].perm for r in range(3)])
        assert torch.equal(torch.sort(perm).values, torch.arange(9))
        assert total_cost(y, noise, perm) == pytest.approx(brute_force_cost(y, noise), rel=1e-6)
        assert torch.equal(noise, torch.cat([sources[r].draw(k)["noise"] for r in range(3)]))
        # one rank's process (DDP) takes exactly its part of the same assignment
        mine = RankPools(sources, [1], global_pool=True)[k]
        assert list(mine) == [1] and torch.equal(mine[1].perm, pools[1].perm)


def test_a_global_pool_over_one_rank_is_the_per_rank_pool_and_the_same_model(registry):
    aot = registry.get("pairing", "aot").build()
    src = PoolSource(torch.randn(300, 3), None, 64, 4, 0, aot, "aot")
    for k in range(3):
        assert torch.equal(RankPools({0: src}, [0], global_pool=True)[k][0].perm, src[k].perm)
    one = tiny_train(registry, global_pool=True)
    assert one.global_pool is False and one.key == tiny_train(registry).key  # nothing it could change is keyed


def test_global_pool_is_part_of_the_models_identity_only_when_set(registry):
    per_rank = tiny_train(registry, ranks=2)
    assert "global_pool" not in str(per_rank.key) and per_rank.key == tiny_train(registry, ranks=2).key
    assert tiny_train(registry, ranks=2, global_pool=True).key != per_rank.key


def test_a_global_pool_over_the_memory_budget_is_refused_in_one_line(tmp_path):
    args = ["run", "--dataset", "moons", "--pairing", "aot:max_memory_gb=0.0005", "--pool", "256", "--ranks", "4",
            "--batch", "256", "--results", str(tmp_path), "--quiet"]
    assert run_cli(*args, "--train-steps", "1", "--n-samples", "8", "--steps", "1").returncode == 0  # per rank fits
    out = run_cli(*args, "--global-pool", "true")
    assert out.returncode == 2 and "a global pool of 4 ranks x 256" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------- diagnostics
def _stats(y, noise, perm, rows=10_000):
    return coupling_summary(coupling_stats(y, noise[perm], noise[:y.shape[0]], rows))


def test_independent_pairing_has_cost_ratio_1_and_aot_never_exceeds_it(registry):
    aot = registry.get("pairing", "aot").build()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        y, noise = torch.rand(128, 4, generator=g) * 2 - 1, torch.randn(128, 4, generator=g)
        assert _stats(y, noise, torch.arange(128))["pair_cost_ratio"] == 1.0
        assert _stats(y, noise, aot.pair(y, noise))["pair_cost_ratio"] <= 1.0


def test_knn_with_large_k_shifts_the_noise_and_aot_never_does(registry):
    """A bijection uses every drawn noise once: its used noise is the drawn noise, whatever the order. Nearest-of-k
    picks noise near the data: the squared norms leave chi-squared."""
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2048, 8, generator=g) * 0.2 - 0.1  # data near 0: near noises have small norms
    noise = torch.randn(2048 * 16, 8, generator=g)
    knn = registry.get("pairing", "knn").build(k=16)
    aot = registry.get("pairing", "aot").build()
    shifted = _stats(y, noise, knn.pair(y, noise))
    plain = noise[:2048]
    assert shifted["noise_ks_p"] < 1e-6
    assert _stats(y, plain, aot.pair(y, plain))["noise_ks_p"] == _stats(y, plain, torch.arange(2048))["noise_ks_p"]
    assert _stats(y, plain, torch.arange(2048))["noise_ks_p"] > 1e-3


def test_the_diagnostics_summed_in_training_equal_an_exact_replay(registry, tmp_path):
    for kw in ({"pairing": "knn:k=3"}, {"pairing": "aot", "ranks": 2, "global_pool": True}):
        cfg = tiny_train(registry, train_steps=30, **kw)
        ckpt = train_model(registry, cfg, tmp_path / f"{cfg.key}.pt", opts())
        trained = coupling_diagnostics(registry, cfg, ckpt)
        replayed = coupling_diagnostics(registry, cfg, {**ckpt, "coupling": None})
        assert trained == replayed
        assert trained["noise_n"] == math.ceil(30 / cfg.steps_per_pool) * cfg.pool * cfg.ranks  # every pool drawn


def test_a_run_resumed_from_a_checkpoint_without_diagnostics_leaves_them_to_an_exact_replay(registry, tmp_path):
    """A checkpoint written before the diagnostics were kept: summing only the pools after the resume would pass a
    partial number off as the run's."""
    from aotbench.storage import atomic_torch_save

    cfg = tiny_train(registry, pairing="knn:k=3", train_steps=40, batch=32, pool=64)

    _train_until_killed(registry, cfg, tmp_path / "r.pt", at_step=25, ckpt_every=10)
    old = read_model_checkpoint(tmp_path / "r.pt", cfg)
    assert old["step"] == 20
    del old["coupling"]
    atomic_torch_save(tmp_path / "r.pt", old)
    resumed = train_model(registry, cfg, tmp_path / "r.pt", opts(ckpt_every=10))
    straight = train_model(registry, cfg, tmp_path / "s.pt", opts())
    assert resumed["coupling"] is None
    assert coupling_diagnostics(registry, cfg, resumed) == coupling_diagnostics(registry, cfg, straight)


def test_every_record_carries_the_coupling_diagnostics(registry, tmp_path):
    cells = expand(registry, {"dataset": "moons", "network": "mlp:width=32:depth=1", "pairing": "knn:k=4",
                              "sampler": "euler", "steps": 2, "train_steps": 20, "batch": 64, "pool": 128,
                              "n_samples": 32})
    run_cells(registry, cells, tmp_path, "exp", RunOptions(progress=False))
    m = read_records(tmp_path / "exp")[0]["metrics"]
    assert 0 < m["pair_cost_ratio"] < 1 and 0 <= m["noise_ks_p"] <= 1 and m["noise_n"] == 20 * 64
    assert math.isfinite(m["noise_mean_z"]) and math.isfinite(m["noise_cov_max"])


# ------------------------------------------------------------------------------------------------------ contract
class _StatefulWithoutState:
    stateful = True

    def pair(self, data, noise, labels=None, *, index=None):
        return torch.arange(data.shape[0])


class _StatefulWithoutIndex:
    stateful = True

    def pair(self, data, noise, labels=None):
        return torch.arange(data.shape[0])

    def start(self, n_items, seed):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_contract_holds_stateful_pairings_to_their_members():
    assert "it has no start(n_items, seed)" in contracts.problem("pairing", _StatefulWithoutState)
    assert "cannot be called as pair(data, noise, labels, index=...)" in contracts.problem(
        "pairing", _StatefulWithoutIndex)


def test_own_noise_of_the_wrong_shape_is_refused_in_one_line():
    class Own:
        def pair(self, data, noise, labels=None):
            return torch.arange(data.shape[0]), torch.randn(data.shape[0], 3)

    with pytest.raises(UserError, match="returned noise of shape"):
        call_pairing(Own(), "own", torch.randn(8, 2), torch.randn(8, 2), None, None)


def test_a_stateful_pairing_with_two_workers_is_refused_before_any_model_of_the_grid_trains(registry, tmp_path):
    cells = expand(registry, {"dataset": "moons", "network": "mlp:width=16:depth=1", "pairing": "none,loom",
                              "sampler": "euler", "steps": 2, "train_steps": 10, "batch": 32, "pool": 64,
                              "n_samples": 16, "metrics": "nfe"})
    opts = RunOptions(progress=False, train=TrainOptions(progress=False, pair_workers=2))
    with pytest.raises(UserError, match="keeps state from pool to pool"):
        run_cells(registry, cells, tmp_path, "exp", opts)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_bench_pairing_times_every_kind_of_pairing(registry):
    from aotbench.bench import bench_pairing

    df = bench_pairing(registry, [32], 3, 1, ["paper", "aot", "knn:k=3", "loom:caches=2", "none"],
                       progress=lambda m: None)
    assert list(df.strategy) == ["paper", "aot", "knn:k=3", "loom:caches=2", "none"]
    assert df.set_index("strategy").loc["aot", "l2_optimal"]
    assert (df.seconds > 0).all()
