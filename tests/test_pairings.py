"""Pairing plugins: optimality, bijection, per-class blocks, and the approximations' guarantees."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from aotbench.assignment import cost_matrix, per_class, total_cost


def make_pool(n, shape=(3, 2, 2), seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand((n, *shape), generator=g) * 2 - 1
    noise = torch.randn((n, *shape), generator=g)
    lab = None if labels is None else torch.randint(labels, (n,), generator=g)
    return data, noise, lab


def pairing(registry, name, **params):
    return registry.get("pairing", name).build(**registry.get("pairing", name).resolve(params))


def brute_force(data, noise, cost):
    best = min(itertools.permutations(range(len(data))),
               key=lambda p: total_cost(data, noise, torch.tensor(p), cost))
    return total_cost(data, noise, torch.tensor(best), cost)


def scipy_optimum(data, noise, cost):
    c = cost_matrix(data, noise, cost).double().numpy()
    r, col = linear_sum_assignment(c)
    return total_cost(data, noise, torch.as_tensor(col[np.argsort(r)]), cost)


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("n", [2, 5, 7])
def test_aot_is_optimal_against_brute_force(registry, cost, n):
    data, noise, _ = make_pool(n, seed=n)
    perm = pairing(registry, "aot", cost=cost).pair(data, noise)
    assert total_cost(data, noise, perm, cost) == pytest.approx(brute_force(data, noise, cost), rel=1e-9)


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("solver", ["lapjv", "lap", "scipy", "emd"])
def test_aot_matches_scipy_total_cost_at_256(registry, monkeypatch, cost, solver):
    from aotbench_plugins.pairings import aot

    # a requested solver that is missing silently falls back to another one: skip instead of testing that one
    module = aot._BACKENDS[solver][0]
    pytest.importorskip(module, reason=f"solver {solver!r} needs the optional package {module!r}, not installed")
    data, noise, _ = make_pool(256, shape=(3, 8, 8), seed=1)
    assert aot.pick_solver(solver, data[0].numel())[0] == solver

    # spy on every backend, so a fallback (through _BACKENDS or a module-level _solve_*) cannot pass unnoticed
    called = []

    def spy(name, fn):
        def wrapped(c):
            called.append(name)
            return fn(c)
        return wrapped

    for name, (mod, fn) in list(aot._BACKENDS.items()):
        monkeypatch.setitem(aot._BACKENDS, name, (mod, spy(name, fn)))
        monkeypatch.setattr(aot, f"_solve_{name}", spy(name, getattr(aot, f"_solve_{name}")))
    perm = pairing(registry, "aot", cost=cost, solver=solver).pair(data, noise)
    assert called == [solver], f"asked for solver {solver!r}, ran {called}"
    assert torch.equal(perm.sort().values, torch.arange(256))
    assert total_cost(data, noise, perm, cost) == pytest.approx(scipy_optimum(data, noise, cost), rel=1e-6)


def test_aot_beats_independent_pairing(registry):
    data, noise, _ = make_pool(128, seed=2)
    ident = total_cost(data, noise, torch.arange(128), "l2")
    assert total_cost(data, noise, pairing(registry, "aot").pair(data, noise), "l2") < 0.97 * ident


def test_l2_and_sqeuclidean_are_different_problems(registry):
    data, noise, _ = make_pool(512, shape=(3, 16, 16), seed=3)
    p1 = pairing(registry, "aot", cost="l2").pair(data, noise)
    p2 = pairing(registry, "aot", cost="sqeuclidean").pair(data, noise)
    assert not torch.equal(p1, p2)
    assert total_cost(data, noise, p1, "l2") <= total_cost(data, noise, p2, "l2") + 1e-6
    assert total_cost(data, noise, p2, "sqeuclidean") <= total_cost(data, noise, p1, "sqeuclidean") + 1e-6


@pytest.mark.parametrize("name", ["aot", "pot-exact", "sinkhorn", "paper"])
def test_per_class_never_pairs_across_classes(registry, name):
    data, noise, labels = make_pool(60, seed=4, labels=4)
    perm = pairing(registry, name).pair(data, noise, labels)
    assert torch.equal(labels[perm], labels)


def test_per_class_total_is_sum_of_class_optima(registry):
    data, noise, labels = make_pool(18, seed=5, labels=3)
    perm = pairing(registry, "aot", cost="l2").pair(data, noise, labels)
    expected = 0.0
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        expected += scipy_optimum(data[idx], noise[idx], "l2")
    assert total_cost(data, noise, perm, "l2") == pytest.approx(expected, rel=1e-9)
    # and per_class=False solves the global problem, which is at least as good
    glob = pairing(registry, "aot", per_class=False).pair(data, noise, labels)
    assert total_cost(data, noise, glob, "l2") <= expected + 1e-9


def test_pot_exact_equals_aot_in_sqeuclidean_cost(registry):
    data, noise, _ = make_pool(200, shape=(3, 4, 4), seed=6)
    pot = pairing(registry, "pot-exact").pair(data, noise)
    aot = pairing(registry, "aot", cost="sqeuclidean").pair(data, noise)
    assert total_cost(data, noise, pot, "sqeuclidean") == pytest.approx(
        total_cost(data, noise, aot, "sqeuclidean"), rel=1e-9)


def test_pot_exact_raises_its_iteration_cap_instead_of_returning_a_non_optimal_plan(registry):
    data, noise, _ = make_pool(150, shape=(3, 4, 4), seed=7)
    capped = pairing(registry, "pot-exact", num_iter_max=10).pair(data, noise)
    assert total_cost(data, noise, capped, "sqeuclidean") == pytest.approx(
        scipy_optimum(data, noise, "sqeuclidean"), rel=1e-9)


def test_pot_exact_fails_loudly_when_the_cap_cannot_be_raised(registry):
    data, noise, _ = make_pool(150, shape=(3, 4, 4), seed=7)
    with pytest.raises(RuntimeError, match="optimality"):
        pairing(registry, "pot-exact", num_iter_max=10, max_iter_cap=10).pair(data, noise)


# ---------------------------------------------------------------- the benchmark's reference methods, as pairings

#: each reference method and the cost it minimizes (the AOT paper's: plain L2; torchcfm's: squared L2)
REFERENCE_COSTS = {"paper": "l2", "torchcfm-emd": "sqeuclidean"}


@pytest.mark.parametrize("name", sorted(REFERENCE_COSTS))
@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_reference_methods_are_optimal_bijections_against_brute_force(registry, name, n):
    cost = REFERENCE_COSTS[name]
    data, noise, _ = make_pool(n, seed=20 + n)
    perm = torch.as_tensor(pairing(registry, name).pair(data, noise))
    assert perm.dtype == torch.long and torch.equal(perm.sort().values, torch.arange(n))
    assert total_cost(data, noise, perm, cost) == pytest.approx(brute_force(data, noise, cost), rel=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCE_COSTS))
def test_reference_methods_reach_aots_optimal_cost(registry, name):
    cost = REFERENCE_COSTS[name]
    data, noise, _ = make_pool(200, shape=(3, 4, 4), seed=21)
    perm = torch.as_tensor(pairing(registry, name).pair(data, noise))
    assert torch.equal(perm.sort().values, torch.arange(200))
    best = pairing(registry, "aot", cost=cost).pair(data, noise)
    assert total_cost(data, noise, perm, cost) == pytest.approx(total_cost(data, noise, best, cost), rel=1e-6)


def test_paper_pairs_within_classes_as_the_papers_conditional_code_and_torchcfm_across(registry):
    data, noise, labels = make_pool(7, seed=22, labels=2)
    perm = pairing(registry, "paper").pair(data, noise, labels)
    expected = 0.0
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        expected += brute_force(data[idx], noise[idx], "l2")
    assert torch.equal(labels[perm], labels)
    assert total_cost(data, noise, perm, "l2") == pytest.approx(expected, rel=1e-6)
    glob = pairing(registry, "paper", per_class=False).pair(data, noise, labels)
    assert total_cost(data, noise, glob, "l2") == pytest.approx(brute_force(data, noise, "l2"), rel=1e-6)
    cfm = pairing(registry, "torchcfm-emd").pair(data, noise, labels)  # torchcfm has no classes: labels unused
    assert torch.equal(cfm, pairing(registry, "torchcfm-emd").pair(data, noise))


def test_torchcfm_emd_fails_loudly_when_the_cap_cannot_be_raised(registry):
    data, noise, _ = make_pool(150, shape=(3, 4, 4), seed=7)
    with pytest.raises(RuntimeError, match="^torchcfm-emd: ot.emd did not reach optimality"):
        pairing(registry, "torchcfm-emd", num_iter_max=10, max_iter_cap=10).pair(data, noise)
    capped = pairing(registry, "torchcfm-emd", num_iter_max=10).pair(data, noise)  # the cap is raised instead
    assert total_cost(data, noise, capped, "sqeuclidean") == pytest.approx(
        scipy_optimum(data, noise, "sqeuclidean"), rel=1e-6)


def test_sinkhorn_lies_between_optimum_and_a_small_factor_of_it(registry):
    data, noise, _ = make_pool(200, shape=(3, 4, 4), seed=8)
    opt = scipy_optimum(data, noise, "sqeuclidean")
    cost = total_cost(data, noise, pairing(registry, "sinkhorn", reg=0.05).pair(data, noise), "sqeuclidean")
    assert opt - 1e-9 <= cost <= 1.05 * opt


def test_sinkhorn_approaches_the_optimum_as_reg_shrinks(registry):
    data, noise, _ = make_pool(200, shape=(3, 4, 4), seed=9)
    opt = scipy_optimum(data, noise, "sqeuclidean")
    gaps = [total_cost(data, noise, pairing(registry, "sinkhorn", reg=r, num_iter_max=5000).pair(data, noise),
                       "sqeuclidean") / opt - 1 for r in (1.0, 0.1, 0.01, 0.0003)]
    assert all(b <= a + 1e-3 for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[0] > 0.01 and abs(gaps[-1]) < 1e-9, gaps


def test_chunked_cost_equals_unchunked():
    data, noise, _ = make_pool(300, shape=(3, 8, 8), seed=10)
    for cost in ("l2", "sqeuclidean"):
        full, chunked = cost_matrix(data, noise, cost), cost_matrix(data, noise, cost, chunk=7)
        # BLAS may block the product differently per chunk: equal to float32 rounding, same assignment
        assert torch.allclose(full, chunked, rtol=1e-6, atol=1e-5)
        from aotbench_plugins.pairings.aot import assignment
        assert np.array_equal(assignment(full), assignment(chunked))
        assert torch.allclose(full, torch.cdist(data.flatten(1), noise.flatten(1)) ** (1 if cost == "l2" else 2),
                              rtol=1e-4, atol=1e-3)


def test_cost_matrix_refuses_a_pool_over_the_memory_budget():
    data, noise, _ = make_pool(64)
    with pytest.raises(MemoryError, match="GiB"):
        cost_matrix(data, noise, max_bytes=1000)


def test_per_class_helper_keeps_blocks(registry):
    labels = torch.tensor([0, 1, 0, 1, 1])
    perm = per_class(labels, 5, lambda idx: torch.arange(len(idx)).flip(0))
    assert perm.tolist() == [2, 4, 0, 3, 1]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(1, 6), classes=st.sampled_from([None, 1, 3]),
       name=st.sampled_from(["none", "aot", "pot-exact", "sinkhorn", "paper", "torchcfm-emd"]),
       seed=st.integers(0, 1000))
def test_every_pairing_returns_a_permutation(registry, n, dim, classes, name, seed):
    data, noise, labels = make_pool(n, shape=(dim,), seed=seed, labels=classes)
    perm = pairing(registry, name).pair(data, noise, labels)
    assert torch.equal(torch.sort(torch.as_tensor(perm)).values, torch.arange(n))


def test_missing_solver_falls_back_with_one_notice(registry, monkeypatch, capsys):
    from aotbench_plugins.pairings import aot

    monkeypatch.setattr(aot, "_installed", lambda module: module == "scipy")
    monkeypatch.setattr(aot, "_NOTICED", set())
    data, noise, _ = make_pool(30)
    p = pairing(registry, "aot", solver="lapjv")
    for _ in range(3):
        perm = p.pair(data, noise)
    assert capsys.readouterr().err.count("not installed") == 1
    assert total_cost(data, noise, perm, "l2") == pytest.approx(scipy_optimum(data, noise, "l2"), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 33, 700])
@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("dim", [2, 48])  # auto: network simplex in 2-D, JV above
def test_fast_aot_equals_scipy_at_several_sizes(registry, n, cost, dim):
    data, noise, _ = make_pool(n, shape=(dim,), seed=n)
    fast = pairing(registry, "aot", cost=cost, chunk=64).pair(data, noise)
    assert total_cost(data, noise, fast, cost) == pytest.approx(scipy_optimum(data, noise, cost), rel=1e-7)


def test_a_pool_over_the_memory_budget_is_refused_before_training(tmp_path):
    from conftest import run_cli

    out = run_cli("run", "--dataset", "moons", "--pairing", "aot:max_memory_gb=0.001", "--batch", "64",
                  "--pool", "1024", "--results", str(tmp_path))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "pool of 1024" in out.stderr and "max_memory_gb" in out.stderr
    assert not any(tmp_path.iterdir())


def test_auto_picks_the_network_simplex_only_for_very_low_dimensional_pools():
    from aotbench_plugins.pairings.aot import pick_solver

    assert pick_solver("auto", 2)[0] == "emd"
    assert pick_solver("auto", 64)[0] in ("lapjv", "lap")


def test_every_exact_solver_returns_the_same_pairs_when_a_pool_repeats_an_image(registry):
    # pools run across epoch boundaries, so one image can sit in a pool twice: its noises are interchangeable,
    # and before canonical ordering lap and lapjv handed them out differently (two models for one config)
    g = torch.Generator().manual_seed(3)
    base = torch.rand(40, 6, generator=g) * 2 - 1
    data = torch.cat([base, base[:10], base[:5]])  # rows 0-4 three times, 5-9 twice
    noise = torch.randn(55, 6, generator=g)
    solvers = [s for s in ("lapjv", "lap", "scipy", "emd") if s != "lapjv" or _has("lapjv")]
    perms = {s: pairing(registry, "aot", solver=s).pair(data, noise) for s in solvers}
    first = perms[solvers[0]]
    for s, p in perms.items():
        assert torch.equal(p, first), s
    best = linear_sum_assignment(cost_matrix(data, noise).double().numpy())[1]
    assert total_cost(data, noise, first) == pytest.approx(total_cost(data, noise, torch.as_tensor(best)), rel=1e-9)
    for i in range(10):  # within each group of equal rows, noises in increasing order of position
        group = [i, 40 + i] + ([50 + i] if i < 5 else [])
        assert first[group].tolist() == sorted(first[group].tolist())
    sq = pairing(registry, "aot", cost="sqeuclidean").pair(data, noise)
    assert torch.equal(pairing(registry, "pot-exact").pair(data, noise), sq)  # emd and JV agree too


def random_costs(kind: str, n: int, seed: int) -> np.ndarray:
    """An n x n cost matrix of a kind that stresses an exact solver differently."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, n))
    if kind == "ties":  # few distinct values: many optimal assignments, all of one total
        return rng.integers(0, 3, (n, n)).astype(np.float64)
    if kind == "duplicate rows":
        c = rng.random((n, n))
        c[n // 2:] = c[:n - n // 2]
        return c
    if kind == "l2 pools":  # what the aot plugin solves: float32 distances between image-like pools
        data, noise, _ = make_pool(n, shape=(48,), seed=seed)
        return cost_matrix(data, noise).numpy()
    if kind == "wide range":  # magnitudes from 1e-3 to 1e6, some negative, columns far apart
        return (rng.standard_normal((n, n)) * 10.0 ** rng.integers(-3, 7, n)[None, :]).astype(np.float64)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["uniform", "ties", "duplicate rows", "l2 pools", "wide range"])
@pytest.mark.parametrize("n", [1, 2, 9, 64, 300])
def test_every_jv_solver_on_reduced_costs_finds_the_scipy_optimum_of_the_original(kind, n):
    from aotbench_plugins.pairings.aot import assignment

    c = random_costs(kind, n, seed=n)
    rows, cols = linear_sum_assignment(c.astype(np.float64))
    optimum = c.astype(np.float64)[rows, cols].sum()
    for solver in [s for s in ("lapjv", "lap", "scipy") if _has(s)]:
        perm = assignment(c, solver, dim=48)
        assert sorted(perm.tolist()) == list(range(n)), solver
        total = c.astype(np.float64)[np.arange(n), perm].sum()
        assert total == pytest.approx(optimum, rel=1e-12, abs=1e-9 * float(np.abs(c).max())), (solver, kind)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_reduced_costs_change_every_assignment_by_the_same_constant(n, seed):
    from aotbench_plugins.pairings.aot import reduce_costs

    rng = np.random.default_rng(seed)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-6)):  # R is rounded to C's type
        c = (rng.standard_normal((n, n)) * 100).astype(dtype)
        r, v = reduce_costs(c)
        assert r.dtype == dtype and v.shape == (n,) and np.all(r.min(1) == 0)  # a zero in every row, none below
        shifts = [c.astype(np.float64)[np.arange(n), p].sum() - r[np.arange(n), p].astype(np.float64).sum()
                  for p in (rng.permutation(n) for _ in range(5))]
        assert np.ptp(shifts) <= rtol * np.abs(c).astype(np.float64).sum()


def test_the_dual_certificate_accepts_the_optimum_and_rejects_anything_else():
    lapjv = pytest.importorskip("lapjv").lapjv
    from aotbench_plugins.pairings.aot import dual_certificate

    c = random_costs("l2 pools", 200, seed=4).astype(np.float64)
    best, _, (_, _, v) = lapjv(c, force_doubles=True)
    rows, cols = linear_sum_assignment(c)
    assert c[np.arange(200), best].sum() == pytest.approx(c[rows, cols].sum(), rel=1e-12)
    assert dual_certificate(c, best, v, atol=1e-9)
    worse = best.copy()
    worse[[0, 1]] = worse[[1, 0]]
    extra = c[np.arange(200), worse].sum() - c[np.arange(200), best].sum()
    assert extra > 0 and not dual_certificate(c, worse, v, atol=extra / 2)
    assert not dual_certificate(c, best, np.zeros(200), atol=1e-9)  # duals that prove nothing


def test_a_lapjv_answer_that_fails_its_certificate_is_solved_again_on_the_full_costs(monkeypatch):
    lapjv_module = pytest.importorskip("lapjv")
    from aotbench_plugins.pairings import aot

    c = random_costs("l2 pools", 120, seed=6)
    real = lapjv_module.lapjv
    calls = []

    def first_answer_wrong(m, **kw):
        perm, cols, duals = real(m, **kw)
        calls.append(m)
        if len(calls) == 1:  # the solve on the reduced costs: hand back a non-optimal assignment
            perm = perm.copy()
            perm[[0, 1]] = perm[[1, 0]]
        return perm, cols, duals

    monkeypatch.setattr(lapjv_module, "lapjv", first_answer_wrong)
    monkeypatch.setitem(aot.FALLBACKS, "lapjv", 0)
    perm = aot.assignment(c, "lapjv")
    assert aot.FALLBACKS["lapjv"] == 1 and len(calls) == 2 and calls[1] is c  # the fallback solved C itself
    rows, best = linear_sum_assignment(c.astype(np.float64))
    assert c.astype(np.float64)[np.arange(120), perm].sum() == pytest.approx(c.astype(np.float64)[rows, best].sum(),
                                                                             rel=1e-12)
    aot.assignment(c, "lapjv")  # left alone, the reduced solve is certified: no second fallback
    assert aot.FALLBACKS["lapjv"] == 1


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- non-finite costs

NON_FINITE_SCRIPT = r'''
import json, sys
import numpy as np, torch
from aotbench.errors import UserError
from aotbench.plugins import get_registry
from aotbench_plugins.pairings.aot import assignment

solver = sys.argv[1]
comp = get_registry().get("pairing", "aot")
out = {}
for bad in ("1e20", "nan"):
    g = torch.Generator().manual_seed(0)
    data, noise = torch.rand(512, 48, generator=g) * 2 - 1, torch.randn(512, 48, generator=g)
    data[3, 5] = float(bad)
    c = np.random.default_rng(0).random((512, 512))
    c[7, 9] = float("inf") if bad == "1e20" else float("nan")
    for what, run in (("pair", lambda: comp.build(**comp.resolve({"solver": solver})).pair(data, noise)),
                      ("assignment", lambda: assignment(c, solver))):
        try:
            run()
            out[f"{what} {bad}"] = "returned"
        except UserError as err:
            out[f"{what} {bad}"] = "UserError: " + str(err)
        except Exception as err:
            out[f"{what} {bad}"] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
'''


@pytest.mark.parametrize("solver", ["lapjv", "lap", "scipy", "emd"])
def test_exact_solvers_refuse_a_non_finite_cost_in_one_line(solver):
    # one pixel of 1e20 is finite in float32 but its square is not: lapjv then wrote out of bounds and killed the
    # process (exit 134), or returned a non-bijection; so the solver runs in a subprocess, where a crash is a failure
    import json
    import subprocess
    import sys

    from aotbench_plugins.pairings import aot

    pytest.importorskip(aot._BACKENDS[solver][0], reason=f"solver {solver!r} is not installed")
    run = subprocess.run([sys.executable, "-c", NON_FINITE_SCRIPT, solver], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["pair 1e20"].startswith("UserError: pairing 'aot': the cost matrix overflows float32 "
                                       "(largest |value|: 1e+20 in the data"), out
    assert out["pair nan"] == ("UserError: pairing 'aot': the data holds 1 non-finite value(s) (NaN or inf), so the "
                               "cost matrix does too; check the dataset"), out
    for bad in ("1e20", "nan"):
        assert out[f"assignment {bad}"].startswith("UserError: pairing 'aot': the cost matrix holds inf or NaN"), out
    assert all(len(v.splitlines()) == 1 for v in out.values())


@pytest.mark.parametrize("name", ["pot-exact", "sinkhorn"])
@pytest.mark.parametrize("bad", [1e20, float("nan")])
def test_pot_pairings_refuse_a_non_finite_cost_in_one_line(registry, name, bad):
    from aotbench.assignment import emd_permutation
    from aotbench.errors import UserError

    data, noise, labels = make_pool(60, seed=11, labels=2)
    data[4, 0, 1, 1] = bad
    expected = "the cost matrix overflows float32" if bad == 1e20 else "the data holds 1 non-finite value"
    with pytest.raises(UserError, match=f"^pairing '{name}': {expected}"):
        pairing(registry, name).pair(data, noise, labels)
    c = np.ones((10, 10))
    c[2, 3] = np.inf if bad == 1e20 else np.nan
    with pytest.raises(UserError, match="^pairing 'pot-exact': the cost matrix holds inf or NaN"):
        emd_permutation(c, "pot-exact")
    s = pairing(registry, "sinkhorn")
    with pytest.raises(UserError, match="^pairing 'sinkhorn': the cost matrix holds inf or NaN"):
        s.plan(torch.from_numpy(c))


# ---------------------------------------------------------------- sinkhorn ends honestly

def _old_greedy_round(plan):
    n = plan.shape[0]
    order = np.argsort(-plan.max(1), kind="stable")
    taken = np.zeros(n, dtype=bool)
    perm = np.empty(n, dtype=np.int64)
    for i in order:
        row = np.where(taken, -np.inf, plan[i])
        j = int(np.argmax(row))
        perm[i], taken[j] = j, True
    return perm


def old_sinkhorn(data, noise, labels=None, *, reg=0.05, cost="sqeuclidean", per_class_=True, num_iter_max=1000,
                 stop_thr=1e-6):
    """``sinkhorn`` as it was before the marginal check (commit 9d51dfb), copied verbatim: the reference that its
    default output must keep matching exactly (checked-in results were computed with it)."""
    import warnings

    import ot

    def plan(c):
        c = c.to("cpu", torch.float64)
        c = c / c.mean()
        w = torch.full((c.shape[0],), 1.0 / c.shape[0], dtype=torch.float64, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = ot.bregman.sinkhorn_log(w, w, c, reg, numItermax=num_iter_max, stopThr=stop_thr)
        return p.cpu().numpy()

    def solve(idx):
        return torch.from_numpy(_old_greedy_round(plan(cost_matrix(data[idx], noise[idx], cost, device="cpu"))))
    return per_class(labels if per_class_ else None, data.shape[0], solve)


@pytest.mark.parametrize("n,shape,classes,seed", [
    (256, (2,), None, 20),          # moons-like 2-D: the slowest to converge at the default reg
    (128, (1,), None, 21),
    (200, (3, 4, 4), 4, 22),        # per-class blocks
    (96, (3, 8, 8), None, 23),
])
def test_sinkhorn_defaults_return_exactly_the_old_permutations(registry, n, shape, classes, seed):
    data, noise, labels = make_pool(n, shape=shape, seed=seed, labels=classes)
    new = pairing(registry, "sinkhorn").pair(data, noise, labels)
    assert torch.equal(new, old_sinkhorn(data, noise, labels))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(1, 6), classes=st.sampled_from([None, 1, 3]), seed=st.integers(0, 1000))
def test_sinkhorn_defaults_match_the_old_implementation_on_small_pools(registry, n, dim, classes, seed):
    data, noise, labels = make_pool(n, shape=(dim,), seed=seed, labels=classes)
    assert torch.equal(pairing(registry, "sinkhorn").pair(data, noise, labels), old_sinkhorn(data, noise, labels))


def test_sinkhorn_refuses_a_plan_that_did_not_converge_instead_of_rounding_it(registry):
    # reg=1e-8 barely moves within the iteration cap: the old code rounded a plan misplacing ~45 % of the mass
    from aotbench.errors import UserError

    data, noise, _ = make_pool(128, shape=(3, 4, 4), seed=12)
    with pytest.raises(UserError) as err:
        pairing(registry, "sinkhorn", reg=1e-8, num_iter_max=50).pair(data, noise)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith("pairing 'sinkhorn': the entropic plan did not converge at reg=1e-08 (its marginals "
                          "misplace ")
    assert "larger reg" in msg and "pot-exact" in msg and "aot" in msg
    # the same pool at the default reg converges far inside the tolerance
    from aotbench_plugins.pairings.sinkhorn import Sinkhorn, marginal_error

    c = cost_matrix(data, noise, "sqeuclidean").double()
    w = torch.full((128,), 1 / 128, dtype=torch.float64)
    assert marginal_error(torch.from_numpy(Sinkhorn().plan(c)), w) < 1e-3 * Sinkhorn.marginal_tol


@pytest.mark.parametrize("reg", [0.0, -1.0, float("inf"), float("nan"), 1e-320])
def test_sinkhorn_refuses_a_reg_that_cannot_be_represented_before_training(registry, reg):
    from aotbench.errors import UserError

    with pytest.raises(UserError, match="pairing 'sinkhorn': reg must be a finite float > 0"):
        registry.get("pairing", "sinkhorn").resolve({"reg": reg})
