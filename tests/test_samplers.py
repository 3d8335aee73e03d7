"""Samplers against the analytic Gaussian reference, and the engine's NFE counter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aotbench.edm import karras_sigmas
from aotbench.errors import UserError
from aotbench.evaluate import EvalContext
from aotbench.seeds import PerSampleNoise
from aotbench.config import CellConfig, resolve
from aotbench.data import Splits
from analytic import GaussianDenoiser, exact_solution
from conftest import tiny_train

MU, S = 0.3, 0.5


def endpoint_error(registry, sampler, steps, sigma_min=0.5, rho=7.0, **params):
    """Max error of the sampler's end point at sigma_min against the exact ODE solution. The schedule is cut
    before its final 0, so the last (Euler) step to sigma = 0 does not blur the order being measured."""
    fn = registry.get("sampler", sampler).build(**registry.get("sampler", sampler).resolve(params))
    sig = karras_sigmas(steps, sigma_min, 80.0, rho)[:-1]  # end at sigma_min, not 0: pure ODE order
    x_t = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    d = GaussianDenoiser(MU, S)
    x = fn(lambda x, s, **_: d(x, s), x_t.clone(), sig)
    return float((x - exact_solution(x_t, 80.0, sigma_min, MU, S)).abs().max())


def fitted_order(registry, sampler, steps=(8, 16, 32, 64), **kw):
    errs = [endpoint_error(registry, sampler, n, **kw) for n in steps]
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    return -slope, errs


def test_euler_converges_with_order_one(registry):
    order, errs = fitted_order(registry, "euler")
    assert 0.85 < order < 1.2, errs


def test_heun_converges_with_order_two(registry):
    order, errs = fitted_order(registry, "heun")
    assert 1.8 < order < 2.3, errs


def test_heun_ends_with_an_euler_step_to_zero(registry):
    """With sigma_N = 0 the last step must not evaluate D at sigma = 0."""
    seen = []
    d = GaussianDenoiser(MU, S)

    def denoise(x, s, **_):
        seen.append(float(s))
        return d(x, s)

    registry.get("sampler", "heun").build()(denoise, torch.randn(8, 2) * 80, karras_sigmas(5))
    assert 0.0 not in seen and len(seen) == 9


def context(registry, model, sampler, steps, n=64, rho=7.0, shape=(3,), guidance="none", metrics=()):
    cell = CellConfig(train=tiny_train(registry), sampler=resolve(registry, "sampler", sampler),
                      guidance=resolve(registry, "guidance", guidance), steps=steps, rho=rho, n_samples=n,
                      metrics=tuple(resolve(registry, "metric", m) for m in metrics))
    x = torch.zeros(10, *shape)
    return EvalContext(registry, cell, Splits("gauss", x, x), model, batch=25)


@pytest.mark.parametrize("sampler,steps,nfe", [("heun", 1, 1), ("heun", 5, 9), ("heun", 18, 35),
                                               ("euler", 1, 1), ("euler", 7, 7)])
def test_nfe_is_counted_by_the_engine(registry, sampler, steps, nfe):
    ctx = context(registry, GaussianDenoiser(MU, S), sampler, steps)
    ctx.samples
    assert ctx.nfe == nfe


def test_the_engine_samples_the_exact_gaussian_with_many_heun_steps(registry):
    ctx = context(registry, GaussianDenoiser(MU, S), "heun", 64, n=4000, shape=(2,))
    x = ctx.samples.double()
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(S, rel=0.03)


def test_curvature_is_zero_for_a_point_mass_and_positive_for_a_wide_gaussian(registry):
    point = registry.get("metric", "curvature").build().compute(
        context(registry, GaussianDenoiser(MU, 0.0), "heun", 3))["curvature"]
    wide = registry.get("metric", "curvature").build().compute(
        context(registry, GaussianDenoiser(MU, 10.0), "heun", 3))["curvature"]
    assert abs(point) < 1e-9
    assert wide > 1e-3


def test_curvature_matches_a_direct_computation_on_a_stored_trajectory(registry):
    """The on-the-fly accumulation equals the formula evaluated on the full reference trajectory."""
    from aotbench_plugins.samplers.heun import sample_heun

    d = GaussianDenoiser(MU, 2.0)
    ctx = context(registry, d, "heun", 3, n=20)
    got = registry.get("metric", "curvature").build().compute(ctx)["curvature"]
    sig = karras_sigmas(64, 0.002, 80.0, 7.0)
    xs, ds = [], []
    sample_heun(lambda x, s, **_: d(x, s), ctx.noise.double() * 80.0, sig,
                callback=lambda info: (xs.append(info["x"]), ds.append(info["denoised"])))
    x_end = sample_heun(lambda x, s, **_: d(x, s), ctx.noise.double() * 80.0, sig)
    chord = (xs[0] - x_end) / 80.0
    total = torch.zeros(20, dtype=torch.float64)
    for i in range(64):
        slope = (xs[i] - ds[i]) / sig[i]
        total += (sig[i] - sig[i + 1]) / sig[0] * (slope - chord).pow(2).sum(1) / chord.pow(2).sum(1)
    assert got == pytest.approx(float(total.mean()), rel=1e-4)


def test_truncation_error_falls_with_steps(registry):
    errs = [registry.get("metric", "trunc_err").build().compute(
        context(registry, GaussianDenoiser(MU, 2.0), "heun", n))["trunc_err"] for n in (3, 9, 32)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("kw,msg", [({"steps": 0}, "steps must be >= 1"), ({"rho": 0.0}, "rho must be > 0"),
                                    ({"sigma_min": 80.0}, "sigma_min < sigma_max")])
def test_bad_schedules_are_refused(registry, kw, msg):
    base = dict(train=tiny_train(registry), sampler=resolve(registry, "sampler", "heun"),
                guidance=resolve(registry, "guidance", "none"), steps=5)
    with pytest.raises(UserError, match=msg):
        CellConfig(**{**base, **kw})


def test_karras_schedule_shape_and_endpoints():
    s = karras_sigmas(14, 0.002, 80.0, 90.0)
    assert len(s) == 15 and s[-1] == 0 and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002)
    assert torch.all(s[:-1] > s[1:])
    # larger rho puts more steps at small sigma
    assert karras_sigmas(14, 0.002, 80.0, 90.0)[7] < karras_sigmas(14, 0.002, 80.0, 7.0)[7]
    assert math.isclose(float(karras_sigmas(1)[0]), 80.0)


def test_dpmpp_2m_converges_with_order_two(registry):
    order, errs = fitted_order(registry, "dpmpp-2m", steps=(16, 32, 64, 128))
    assert 1.7 < order < 2.4, errs


@pytest.mark.parametrize("sampler,steps,nfe", [("dpmpp-2m", 7, 7), ("edm-stochastic", 6, 11)])
def test_nfe_of_the_other_fixed_step_samplers(registry, sampler, steps, nfe):
    ctx = context(registry, GaussianDenoiser(MU, S), sampler, steps)
    ctx.samples
    assert ctx.nfe == nfe


def test_edm_stochastic_without_churn_equals_heun_exactly(registry):
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1)) * 80
    d = GaussianDenoiser(MU, S)
    sig = karras_sigmas(9)
    heun = registry.get("sampler", "heun").build()(lambda x, s, **_: d(x, s), x.clone(), sig)
    stoch = registry.get("sampler", "edm-stochastic").build(s_churn=0.0)(
        lambda x, s, **_: d(x, s), x.clone(), sig, noise_sampler=PerSampleNoise(range(32), "t"))
    assert torch.equal(heun, stoch)


def test_edm_stochastic_with_churn_is_seeded_and_still_samples_the_target(registry):
    comp = registry.get("sampler", "edm-stochastic")
    fn = comp.build(**comp.resolve({"s_churn": 10.0, "s_min": 0.05, "s_max": 50.0}))
    d = GaussianDenoiser(MU, S)
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    a = fn(lambda x, s, **_: d(x, s), x.clone(), karras_sigmas(64), noise_sampler=PerSampleNoise(range(4000), "t"))
    b = fn(lambda x, s, **_: d(x, s), x.clone(), karras_sigmas(64), noise_sampler=PerSampleNoise(range(4000), "t"))
    assert torch.equal(a, b)
    assert not torch.equal(a, registry.get("sampler", "heun").build()(lambda x, s, **_: d(x, s), x.clone(), karras_sigmas(64)))
    assert a.mean().item() == pytest.approx(MU, abs=0.03) and a.std().item() == pytest.approx(S, rel=0.03)


def test_rk45_needs_fewer_evaluations_for_a_straight_ode(registry):
    nfe = {}
    for name, s in (("point", 0.0), ("wide", 3.0)):
        ctx = context(registry, GaussianDenoiser(MU, s), "rk45", 18)
        ctx.samples
        nfe[name] = ctx.nfe
    assert nfe["point"] < nfe["wide"], nfe


def test_rk45_reaches_the_exact_solution_within_tolerance(registry):
    comp = registry.get("sampler", "rk45")
    fn = comp.build(**comp.resolve({"rtol": 1e-6, "atol": 1e-6}))
    d = GaussianDenoiser(MU, S)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    out = fn(lambda x, s, **_: d(x, s), x.clone(), karras_sigmas(18))
    exact = d(exact_solution(x, 80.0, 0.002, MU, S), 0.002)
    assert float((out - exact).abs().max()) < 1e-4


@pytest.mark.parametrize("sampler,params,msg", [("edm-stochastic", {"s_churn": -1.0}, "s_churn >= 0"),
                                                ("rk45", {"rtol": 0.0}, "rtol > 0")])
def test_sampler_parameters_outside_their_domain_are_refused(registry, sampler, params, msg):
    with pytest.raises(UserError, match=msg):
        registry.get("sampler", sampler).resolve(params)


def test_rk45_fails_in_one_line_instead_of_stopping_short_at_its_step_cap(registry):
    fn = registry.get("sampler", "rk45").build(max_steps=3)
    d = GaussianDenoiser(0.0, 0.5)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    with pytest.raises(UserError, match=r"did not reach sigma_min 0.002 within max_steps=3"):
        fn(lambda x, s, **_: d(x, s), x, karras_sigmas(18))


def test_rk45_fails_in_one_line_on_a_denoiser_that_returns_nan(registry):
    fn = registry.get("sampler", "rk45").build()
    calls = []

    def nan_denoiser(x, s, **_):  # would make the step shrink forever: every step is rejected
        calls.append(1)
        return torch.full_like(x, float("nan"))

    with pytest.raises(UserError, match="became non-finite"):
        fn(nan_denoiser, torch.ones(4, 2, dtype=torch.float64) * 80, karras_sigmas(18))
    assert len(calls) <= 7  # one attempted step (the first slope and six stages), then the error
