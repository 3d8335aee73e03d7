"""``dpmpp-3m`` and ``unipc`` against the analytic Gaussian (exact denoiser and exact ODE solution).

Orders are fitted, as in test_samplers.py, to the max end-point error over 256 x 4 samples started at sigma = 80, on
EDM's rho = 7 schedule and on a schedule uniform in log sigma, with sigma_min = 0.5 (the Gaussian's s). "ode": the
schedule ends at sigma_min and the error is against the exact solution there (pure ODE order; a sampler's last step
is an ordinary one). "engine": the schedule ends in 0, as the engine's does, so the last step returns the denoiser
output, and the error is against D(exact solution at sigma_min). ``python tests/test_samplers_multistep_dpm.py``
prints the error tables. Measured orders (fit over 16, 32, 64 steps and over 64, 128, 256):

    sampler                          schedule  kind     16-64   64-256
    dpmpp-3m                         rho=7     ode      2.30    2.93
    dpmpp-3m                         rho=7     engine   2.31    2.95
    dpmpp-3m                         log       ode      2.57    2.96
    dpmpp-3m                         log       engine   2.61    2.98
    unipc                            rho=7     engine   3.76    2.49
    unipc                            log       engine   3.17    2.74
    unipc                            rho=7     ode      1.94    1.99   (its last step is first order by design)
    unipc                            log       ode      1.99    2.00   (idem)
    unipc:lower_order_final=False    rho=7     ode      3.31    4.00
    unipc:lower_order_final=False    log       ode      3.75    4.03
    dpmpp-2m, for comparison         rho=7     ode      2.16    2.07

Max errors (16, 32, 64, 128, 256 steps), rho = 7, engine: dpmpp-3m 2.55e-03 6.95e-04 1.04e-04 1.37e-05 1.74e-06;
unipc 4.28e-03 8.10e-05 2.34e-05 4.96e-06 7.42e-07. Log schedule, engine: dpmpp-3m 1.39e-03 2.70e-04 3.71e-05
4.76e-06 5.97e-07; unipc 8.96e-04 2.89e-05 1.11e-05 1.80e-06 2.49e-07.

dpmpp-3m is third order (k_diffusion=True, k-diffusion's coefficient, is second: see the module). UniPC of order 3
with its corrector is fourth order in the interior (UniC raises p to p + 1); with ``lower_order_final`` (the
default) the step before the step to 0 is a second-order predictor, which makes the engine-schedule error third order
asymptotically, and on an "ode" schedule its last step is first order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aotbench.data import Splits
from aotbench.edm import karras_sigmas
from aotbench.errors import UserError
from aotbench.evaluate import EvalContext
from analytic import GaussianDenoiser, exact_solution
from test_samplers import MU, S, context

SIGMA_MAX, SIGMA_MIN = 80.0, 0.5
SAMPLERS = ["dpmpp-3m", "unipc"]


def schedule(steps, kind, to_zero):
    """``steps`` steps from SIGMA_MAX: to SIGMA_MIN ("ode"), or to SIGMA_MIN and then 0 ("engine")."""
    n = steps if to_zero else steps + 1  # sigmas > 0
    if kind == "rho7":
        s = karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, 7.0)[:-1]
    else:
        s = torch.exp(torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n, dtype=torch.float64))
    return torch.cat([s, s.new_zeros(1)]) if to_zero else s


def sampler_fn(registry, spec):
    name, _, rest = spec.partition(":")
    params = dict(kv.split("=") for kv in rest.split(":")) if rest else {}
    params = {k: (v == "True") if v in ("True", "False") else int(v) for k, v in params.items()}
    comp = registry.get("sampler", name)
    return comp.build(**comp.resolve(params))


def end_error(fn, steps, kind, to_zero):
    d = GaussianDenoiser(MU, S)
    x_t = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    x = fn(lambda x, s, **_: d(x, s), x_t.clone(), schedule(steps, kind, to_zero))
    exact = exact_solution(x_t, SIGMA_MAX, SIGMA_MIN, MU, S)
    if to_zero:
        exact = d(exact, SIGMA_MIN)
    return float((x - exact).abs().max())


def fitted(fn, kind, to_zero, steps=(16, 32, 64)):
    errs = [end_error(fn, n, kind, to_zero) for n in steps]
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


# -- order ---------------------------------------------------------------------------------------------------------

ORDERS = [  # (sampler, schedule, to_zero, lower bound of the 16-64 fit); measured in the module docstring
    ("dpmpp-3m", "rho7", False, 2.0), ("dpmpp-3m", "rho7", True, 2.0),
    ("dpmpp-3m", "log", False, 2.3), ("dpmpp-3m", "log", True, 2.3),
    ("unipc", "rho7", True, 2.0), ("unipc", "log", True, 2.0),
    ("unipc:lower_order_final=False", "rho7", False, 2.0), ("unipc:lower_order_final=False", "log", False, 2.0),
]


@pytest.mark.parametrize("spec,kind,to_zero,bound", ORDERS)
def test_at_least_second_order_over_16_to_64_steps(registry, spec, kind, to_zero, bound):
    order, errs = fitted(sampler_fn(registry, spec), kind, to_zero)
    assert order > bound, (order, errs)


def test_dpmpp_3m_is_third_order_and_k_diffusions_coefficient_second():
    """Asymptotically (256-1024 steps, log schedule): the Taylor coefficient of D2 gives order 3; k-diffusion's, half
    of it, leaves an O(h^3) local error: order 2."""
    from aotbench_plugins.samplers.dpmpp_3m import sample_dpmpp_3m

    steps = (256, 512, 1024)
    ours, _ = fitted(sample_dpmpp_3m, "log", False, steps)
    kdiff, errs = fitted(lambda *a, **k: sample_dpmpp_3m(*a, k_diffusion=True, **k), "log", False, steps)
    assert 2.8 < ours < 3.3
    assert 1.7 < kdiff < 2.2, errs


def test_unipc_corrector_raises_the_order_by_one(registry):
    """UniP-3 + UniC-3 is fourth order where every step is corrected (64-256 steps, no lower-order final steps)."""
    order, errs = fitted(sampler_fn(registry, "unipc:lower_order_final=False"), "log", False, (64, 128, 256))
    assert 3.7 < order < 4.4, errs


# -- cost --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SAMPLERS + ["unipc:order=1", "unipc:order=2", "unipc:lower_order_final=False",
                                             "dpmpp-3m:k_diffusion=True"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 9])
def test_one_evaluation_per_step(registry, spec, steps):
    calls, seen = [], []
    d = GaussianDenoiser(MU, S)

    def denoise(x, s, **kw):
        calls.append((float(s), kw))
        return d(x, s)

    sig = karras_sigmas(steps)
    sampler_fn(registry, spec)(denoise, torch.randn(5, 3, dtype=torch.float64) * 80, sig, callback=seen.append)
    assert len(calls) == steps
    assert [s for s, _ in calls] == [float(s) for s in sig[:-1]]  # each sigma once, never sigma = 0
    assert all(kw == {} for _, kw in calls)  # no corrector stage: every evaluation is on the main path
    assert [info["i"] for info in seen] == list(range(steps))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_engine_counts_nfe_equal_to_steps(registry, sampler):
    ctx = context(registry, GaussianDenoiser(MU, S), sampler, 7)
    ctx.samples
    assert ctx.nfe == 7


# -- exact cases ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SAMPLERS + ["unipc:order=2", "unipc:lower_order_final=False"])
def test_a_point_mass_is_reached_on_its_straight_line(registry, spec):
    """A denoiser returning a constant c: every trajectory is x(sigma) = c + sigma/sigma_0 (x_0 - c), which each
    step of these solvers follows exactly (all differences of denoiser outputs vanish); the step to 0 returns c."""
    fn = sampler_fn(registry, spec)
    c = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 80

    def const(x, s, **_):
        return c.expand_as(x).clone()

    assert torch.equal(fn(const, x0.clone(), karras_sigmas(9)), c.expand_as(x0))
    sig = karras_sigmas(9, 0.01)[:-1]
    torch.testing.assert_close(fn(const, x0.clone(), sig), c + float(sig[-1]) / 80.0 * (x0 - c), rtol=1e-12,
                               atol=1e-12)


# -- fewer steps than the order needs -------------------------------------------------------------------------------

def run(fn, sig, x0):
    d = GaussianDenoiser(MU, S)
    return fn(lambda x, s, **_: d(x, s), x0.clone(), sig)


X0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 80


@pytest.mark.parametrize("spec", SAMPLERS + ["unipc:lower_order_final=False"])
def test_two_steps_are_an_euler_step_and_the_denoiser(registry, spec):
    """Order 3 with 2 steps: the first step is first order, which in sigma is exactly Euler's step
    (x' = (sigma'/sigma) x + (1 - sigma'/sigma) D), and the step to 0 returns D."""
    euler = run(registry.get("sampler", "euler").build(), karras_sigmas(2), X0)
    torch.testing.assert_close(run(sampler_fn(registry, spec), karras_sigmas(2), X0), euler, rtol=1e-12, atol=1e-12)


def test_dpmpp_3m_warms_up_through_first_and_second_order(registry):
    """Steps 1 and 2 of a 2-step schedule ending at sigma_min: DDIM, then the two-point second-order step."""
    sig = karras_sigmas(3, SIGMA_MIN)[:-1]
    d = GaussianDenoiser(MU, S)
    s0, s1, s2 = (float(s) for s in sig)
    d0 = d(X0, s0)
    x1 = s1 / s0 * X0 - math.expm1(math.log(s1 / s0)) * d0
    h0, h1 = math.log(s0 / s1), math.log(s1 / s2)
    d1 = d(x1, s1)
    c0 = -math.expm1(-h1)
    x2 = s2 / s1 * x1 + c0 * d1 + (1 - c0 / h1) * (d1 - d0) / (h0 / h1)
    torch.testing.assert_close(run(sampler_fn(registry, "dpmpp-3m"), sig, X0), x2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps,same_as", [(2, "unipc:order=1"), (3, "unipc:order=2")])
def test_unipc_lowers_its_order_where_steps_are_missing(registry, steps, same_as):
    """With lower_order_final, step i of n uses order min(3, i + 1, n - i): 2 steps are orders 1, 1 and 3 steps
    1, 2, 1, exactly as order 1 and order 2 would run them."""
    for to_zero in (True, False):
        sig = schedule(steps, "rho7", to_zero)
        assert torch.equal(run(sampler_fn(registry, "unipc"), sig, X0), run(sampler_fn(registry, same_as), sig, X0))


@pytest.mark.parametrize("spec", SAMPLERS + ["unipc:lower_order_final=False"])
@pytest.mark.parametrize("steps", [2, 3, 4, 6])
def test_few_steps_stay_accurate(registry, spec, steps):
    """With too few steps for order 3 the result is finite and at least as close to the exact solution as Euler's
    (measured max errors, ode schedule rho = 7, 2 / 6 steps: euler 0.479 / 0.240, dpmpp-3m 0.423 / 0.038, unipc
    0.478 / 0.209, unipc:lower_order_final=False 0.438 / 0.030)."""
    sig = schedule(steps, "rho7", False)
    exact = exact_solution(X0, SIGMA_MAX, SIGMA_MIN, MU, S)
    err = (run(sampler_fn(registry, spec), sig, X0) - exact).abs().max()
    euler = (run(registry.get("sampler", "euler").build(), sig, X0) - exact).abs().max()
    assert torch.isfinite(err) and err <= euler * (1 + 1e-9)


# -- rows and batches -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SAMPLERS + ["dpmpp-3m:k_diffusion=True", "unipc:order=2"])
def test_rows_do_not_depend_on_the_batch(registry, spec):
    """The first 7 rows solved alone equal the same rows of a batch of 64, bit for bit."""
    fn, sig = sampler_fn(registry, spec), karras_sigmas(12)
    assert torch.equal(run(fn, sig, X0[:7]), run(fn, sig, X0)[:7])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_engine_samples_and_nfe_do_not_depend_on_the_evaluation_batch(registry, sampler):
    x = torch.zeros(4, 3)
    runs = []
    for batch in (7, 64):
        ctx = context(registry, GaussianDenoiser(0.3, 0.7), sampler, 8)
        ctx = EvalContext(registry, ctx.cell, Splits("g", x, x), ctx.model, batch=batch)
        runs.append((ctx.samples, ctx.nfe))
    assert runs[0][1] == runs[1][1] == 8
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-6, atol=1e-6)


# -- parameters -----------------------------------------------------------------------------------------------------

def test_parameters_and_defaults(registry):
    assert registry.get("sampler", "dpmpp-3m").params == {"k_diffusion": False}
    assert registry.get("sampler", "unipc").params == {"order": 3, "lower_order_final": True}


@pytest.mark.parametrize("params,msg", [({"order": 0}, "order must be 1, 2 or 3, got 0"),
                                        ({"order": 4}, "order must be 1, 2 or 3, got 4"),
                                        ({"order": 2.5}, "order must be int"),
                                        ({"lower_order_final": 1}, "lower_order_final must be bool")])
def test_unipc_parameters_outside_their_domain_are_refused(registry, params, msg):
    with pytest.raises(UserError, match=msg):
        registry.get("sampler", "unipc").resolve(params)


def test_a_direct_call_with_a_bad_order_raises_value_error():
    from aotbench_plugins.samplers.unipc import sample_unipc

    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sample_unipc(lambda x, s, **_: x, torch.ones(2, 2), karras_sigmas(3), order=5)


def test_k_diffusion_must_be_a_bool(registry):
    with pytest.raises(UserError, match="k_diffusion must be bool"):
        registry.get("sampler", "dpmpp-3m").resolve({"k_diffusion": 1})


if __name__ == "__main__":  # the error tables behind the module docstring
    from aotbench.plugins import get_registry

    reg = get_registry()
    specs = ["dpmpp-3m", "dpmpp-3m:k_diffusion=True", "unipc", "unipc:lower_order_final=False", "dpmpp-2m"]
    for spec in specs:
        for kind in ("rho7", "log"):
            for to_zero in (False, True):
                steps = (16, 32, 64, 128, 256)
                errs = [end_error(sampler_fn(reg, spec), n, kind, to_zero) for n in steps]
                lo = -np.polyfit(np.log(steps[:3]), np.log(errs[:3]), 1)[0]
                hi = -np.polyfit(np.log(steps[2:]), np.log(errs[2:]), 1)[0]
                print(f"{spec:30s} {kind:5s} {'engine' if to_zero else 'ode':6s} 16-64 {lo:5.2f}  64-256 {hi:5.2f}  "
                      + "  ".join(f"{e:.2e}" for e in errs))
