"""The multistep samplers ``ipndm`` and ``deis`` against the analytic Gaussian reference (issue 14).

Orders are fitted over 16, 32 and 64 steps, at the end point sigma_min = 0.002 of the schedule cut before its final
0 (the step to 0 returns D and would add a floor of O(sigma_min^2) that does not shrink with the steps), against
the exact ODE solution, max error over 256 x 4 coordinates. Measured (max error at 8/16/32/64/128 steps):

EDM rho = 7, sigma 80 -> 0.002:
    ipndm          1.17e-1  4.23e-2  8.83e-3  1.94e-3  4.63e-4   fit 16-64: 2.22, 64 -> 128: 2.07
    deis           4.16e-1  1.15e-1  2.19e-2  3.36e-3  4.62e-4   fit 16-64: 2.55, 64 -> 128: 2.86
    deis order 4   4.08e-1  9.76e-2  1.30e-2  1.16e-3  8.63e-5   fit 16-64: 3.20, 64 -> 128: 3.75
    (heun          6.20e-1  1.14e-1  2.47e-2  5.78e-3  1.40e-3   fit 16-64: 2.15, at twice the NFE)
uniform in log sigma, 80 -> 0.002:
    ipndm          9.69e-2  3.27e-2  7.80e-3  1.85e-3  4.53e-4   fit 16-64: 2.07, 64 -> 128: 2.03
    deis           3.38e-1  1.02e-1  2.14e-2  3.53e-3  5.08e-4   fit 16-64: 2.43, 64 -> 128: 2.80
    deis order 4   3.33e-1  8.95e-2  1.37e-2  1.40e-3  1.13e-4   fit 16-64: 3.00, 64 -> 128: 3.63

iPNDM's fixed (equal-step) coefficients make it second order on any smoothly non-uniform schedule, whatever
max_order; DEIS's exactly integrated weights reach their nominal order 3 (or 4) only asymptotically, the large
first steps from sigma = 80 keep the fitted slope below it at 16-64 steps. (With sigma_min = 0.5, as the
order tests of tests/test_samplers.py use, iPNDM's error changes sign near 16 steps on rho = 7 and a fit over
16-64 steps means nothing; hence sigma_min = 0.002 here, EDM's own.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aotbench.edm import karras_sigmas
from aotbench.errors import UserError
from aotbench_plugins.samplers.deis import ab_weights
from analytic import GaussianDenoiser, exact_solution
from test_samplers import MU, S, context

SAMPLERS = ("ipndm", "deis")
SIGMA_MIN = 0.002


def build(registry, name, **params):
    comp = registry.get("sampler", name)
    return comp.build(**comp.resolve(params))


def rho7(steps):
    return karras_sigmas(steps, SIGMA_MIN, 80.0, 7.0)


def log_uniform(steps):
    s = torch.exp(torch.linspace(math.log(80.0), math.log(SIGMA_MIN), steps, dtype=torch.float64))
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def start(n=256, dim=4, seed=0, dtype=torch.float64):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 80.0


def gaussian():
    d = GaussianDenoiser(MU, S)
    return lambda x, s, **_: d(x, s)


def endpoint_error(fn, schedule, steps):
    """Max error at sigma_min of ``steps`` steps on ``schedule`` cut before its 0, against the exact solution."""
    sig = schedule(steps)[:-1]
    x_t = start()
    return float((fn(gaussian(), x_t.clone(), sig) - exact_solution(x_t, 80.0, SIGMA_MIN, MU, S)).abs().max())


def orders(fn, schedule, steps=(16, 32, 64)):
    errs = [endpoint_error(fn, schedule, n) for n in steps]
    fit = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    return fit, errs


@pytest.mark.parametrize("name,params,lo,hi", [("ipndm", {}, 1.9, 2.6), ("deis", {"max_order": 3}, 2.3, 3.2),
                                               ("deis", {}, 2.9, 3.8)])
def test_order_on_the_edm_rho_7_schedule(registry, name, params, lo, hi):
    fit, errs = orders(build(registry, name, **params), rho7)
    assert lo < fit < hi, (fit, errs)


@pytest.mark.parametrize("name,params,lo,hi", [("ipndm", {}, 1.8, 2.4), ("deis", {"max_order": 3}, 2.2, 3.0),
                                               ("deis", {}, 2.7, 3.6)])
def test_order_on_a_schedule_uniform_in_log_sigma(registry, name, params, lo, hi):
    fit, errs = orders(build(registry, name, **params), log_uniform)
    assert lo < fit < hi, (fit, errs)


@pytest.mark.parametrize("schedule", [rho7, log_uniform])
def test_deis_approaches_third_order_and_ipndm_stays_second(registry, schedule):
    """The pairwise order from 64 to 128 steps: DEIS's exact weights tend to 3, iPNDM's fixed ones to 2."""
    deis = [endpoint_error(build(registry, "deis"), schedule, n) for n in (64, 128)]
    ipndm = [endpoint_error(build(registry, "ipndm"), schedule, n) for n in (64, 128)]
    assert math.log2(deis[0] / deis[1]) > 2.7, deis
    assert 1.9 < math.log2(ipndm[0] / ipndm[1]) < 2.2, ipndm


def test_ipndm_beats_heun_at_the_same_number_of_evaluations(registry):
    """32 iPNDM steps (32 NFE) against 16 Heun steps (31 NFE) on rho = 7."""
    assert endpoint_error(build(registry, "ipndm"), rho7, 32) < endpoint_error(build(registry, "heun"), rho7, 16) / 2


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_exactly_one_evaluation_per_step_and_none_at_sigma_zero(registry, name, steps):
    calls, seen = [], []
    d = gaussian()

    def denoise(x, s, **kw):
        calls.append((float(s), kw))
        return d(x, s)

    sig = rho7(steps)
    build(registry, name)(denoise, start(8), sig, callback=lambda info: seen.append(info["i"]))
    assert [s for s, _ in calls] == [float(v) for v in sig[:-1]]
    assert all(kw == {} for _, kw in calls)  # stage 0, all rows
    assert seen == list(range(steps))


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_engine_counts_nfe_equal_to_steps(registry, name):
    ctx = context(registry, GaussianDenoiser(MU, S), name, 7)
    ctx.samples
    assert ctx.nfe == 7


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_point_mass_is_reached_exactly_along_the_straight_line(registry, name):
    point = GaussianDenoiser(MU, 0.0)  # D(x; sigma) = MU for every x
    x_t = start(32)
    path = []
    out = build(registry, name)(lambda x, s, **_: point(x, s), x_t.clone(), rho7(18),
                                callback=lambda info: path.append((info["x"], float(info["sigma"]))))
    assert torch.equal(out, torch.full_like(out, MU))
    n = (x_t - MU) / 80.0
    for x, s in path:  # every multistep combination of the constant slope n is n
        assert float((x - (MU + s * n)).abs().max()) < 1e-12


@pytest.mark.parametrize("name", SAMPLERS)
def test_too_few_steps_for_max_order_fall_back_to_the_orders_reached(registry, name):
    x_t = start(64)
    four = build(registry, name, max_order=4)
    euler = build(registry, "euler")
    # 2 steps to 0: one Euler step to sigma_min, then D; exactly the Euler sampler
    out = four(gaussian(), x_t.clone(), rho7(2))
    assert torch.isfinite(out).all()
    assert torch.equal(out, euler(gaussian(), x_t.clone(), rho7(2)))
    # 2 and 3 steps to sigma_min: orders 1, 2 (, 3), exactly max_order = 2 (3), no worse than Euler
    exact = exact_solution(x_t, 80.0, SIGMA_MIN, MU, S)
    for steps in (2, 3):
        sig = rho7(steps)[:-1]
        got = four(gaussian(), x_t.clone(), sig)
        assert torch.equal(got, build(registry, name, max_order=steps)(gaussian(), x_t.clone(), sig))
        assert torch.isfinite(got).all()
        assert (got - exact).abs().max() <= (euler(gaussian(), x_t.clone(), sig) - exact).abs().max() * 1.001


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_row_does_not_depend_on_the_batch(registry, name, dtype):
    x = start(64, dim=5, seed=4, dtype=dtype) + torch.arange(64, dtype=dtype)[:, None]  # every row different
    fn, d, sig = build(registry, name), gaussian(), rho7(18)
    big = fn(d, x.clone(), sig)
    small = fn(d, x[:7].clone(), sig)
    assert big.dtype == dtype and big.shape == x.shape
    assert torch.equal(big[:7], small)
    assert torch.equal(big[30:37], fn(d, x[30:37].clone(), sig))


@pytest.mark.parametrize("name", SAMPLERS)
def test_lower_order_final_lowers_the_last_steps(registry, name):
    x_t = start(64)
    sig = rho7(2)[:-1]  # two steps to sigma_min: orders 1 and min(2, 1) = 1, two Euler steps
    got = build(registry, name, lower_order_final=True)(gaussian(), x_t.clone(), sig)
    assert float((got - build(registry, "euler")(gaussian(), x_t.clone(), sig)).abs().max()) < 1e-12
    long = build(registry, name, lower_order_final=True)
    plain = build(registry, name)
    assert not torch.equal(long(gaussian(), x_t.clone(), rho7(8)), plain(gaussian(), x_t.clone(), rho7(8)))
    assert endpoint_error(long, rho7, 64) < 2 * endpoint_error(plain, rho7, 64)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("bad", [0, 5, -1])
def test_max_order_outside_1_to_4_is_refused(registry, name, bad):
    with pytest.raises(UserError, match=r"1 <= max_order <= 4"):
        registry.get("sampler", name).resolve({"max_order": bad})


def test_the_registered_parameters_and_defaults(registry):
    assert registry.get("sampler", "ipndm").params == {"max_order": 4, "lower_order_final": False, "afs": False}
    assert registry.get("sampler", "deis").params == {"max_order": 4, "lower_order_final": False, "afs": False}


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_deis_weights_integrate_the_interpolating_polynomial_exactly(k):
    rng = np.random.default_rng(k)
    nodes = sorted(rng.uniform(1.0, 10.0, k).tolist())  # ascending: nodes[0] is the newest (smallest sigma)
    a, b = nodes[0], nodes[0] - rng.uniform(0.1, 2.0)
    w = ab_weights(nodes, a, b)
    for deg in range(k):  # every polynomial of degree < k is integrated exactly
        coef = rng.normal(size=deg + 1)
        integral = np.polyval(np.polyint(coef), b) - np.polyval(np.polyint(coef), a)
        assert sum(wj * np.polyval(coef, t) for wj, t in zip(w, nodes)) == pytest.approx(integral, rel=1e-12)


def test_on_equal_steps_deis_is_ipndm(registry):
    """The exactly integrated weights reduce to the fixed Adams-Bashforth coefficients on equal steps."""
    sig = torch.linspace(80.0, 0.5, 25, dtype=torch.float64)
    x_t = start(64)
    a = build(registry, "deis", max_order=4)(gaussian(), x_t.clone(), sig)
    b = build(registry, "ipndm", max_order=4)(gaussian(), x_t.clone(), sig)
    assert float((a - b).abs().max()) < 1e-11


@pytest.mark.parametrize("name", ["ipndm", "deis"])
def test_the_analytical_first_step_saves_one_evaluation_and_the_engine_counts_it(registry, name):
    """AFS takes D(x; sigma_max) = 0 on the first step: NFE = steps - 1. At sigma_max = 80 the Gaussian's denoiser
    is close to 0 (its mean 0.3 shrunk by sigma_data-like weights), so the end point moves little."""
    sig = karras_sigmas(8, 0.002, 80.0, 7.0)
    x_t = torch.randn(64, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80.0
    calls = []

    def counted(x, s, **_):
        calls.append(float(s))
        return gaussian()(x, s)

    plain = build(registry, name)(counted, x_t.clone(), sig)
    n_plain = len(calls)
    calls.clear()
    fast = build(registry, name, afs=True)(counted, x_t.clone(), sig)
    assert n_plain == 8 and len(calls) == 7 and 80.0 not in calls
    assert torch.isfinite(fast).all() and float((fast - plain).abs().max()) < 0.05
    one = karras_sigmas(1, 0.002, 80.0, 7.0)  # a single step to 0 must still evaluate the model
    calls.clear()
    build(registry, name, afs=True)(counted, x_t.clone(), one)
    assert calls == [80.0]
