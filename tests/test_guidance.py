"""Guidance: CFG's exact endpoints and doubled NFE, DG's exact cases, and refusals before any work."""

from __future__ import annotations

import hashlib
import math
import types

import pytest
import torch
from torch import nn

from aotbench.config import CellConfig, resolve
from aotbench.data import Splits
from aotbench.errors import UserError
from aotbench.evaluate import EvalContext
from aotbench.grid import expand
from aotbench.runner import RunOptions, run_cells
from aotbench.plugins import Component
from aotbench.seeds import PerSampleNoise
from aotbench.train import TrainOptions
from aotbench_plugins.guidance import dg as DGMOD
from analytic import GaussianDenoiser
from conftest import run_cli, state_equal, tiny_train, with_components


class ClassShift(nn.Module):
    """A conditional 'model' whose output depends on the label (index 3 = no label)."""

    num_classes = 3

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        shift = torch.zeros(x.shape[0]) if class_labels is None else class_labels.float() - 1.5
        return 0.9 * x + shift.reshape(-1, *([1] * (x.ndim - 1)))


def guidance(registry, name, **params):
    comp = registry.get("guidance", name)
    return comp.build(**comp.resolve(params))


def gctx(model, labels, num_classes=3, **kw):
    null = torch.full_like(labels, num_classes) if labels is not None else None
    return types.SimpleNamespace(cond=lambda x, s: model(x, s, labels), uncond=lambda x, s: model(x, s, null),
                                 labels=labels, num_classes=num_classes, costs={}, **kw)


@pytest.mark.parametrize("w,which", [(0.0, "uncond"), (1.0, "cond")])
def test_cfg_endpoints_are_exactly_the_unconditional_and_conditional_denoisers(registry, w, which):
    model, labels = ClassShift(), torch.tensor([0, 1, 2, 0])
    ctx = gctx(model, labels)
    x = torch.randn(4, 5)
    guided = guidance(registry, "cfg", w=w).wrap(ctx.cond, context=ctx)
    assert torch.equal(guided(x, 1.3), getattr(ctx, which)(x, 1.3))


def test_cfg_doubles_nfe(registry):
    def cell(g):
        return CellConfig(train=tiny_train(registry, conditional=True, label_dropout=0.1),
                          sampler=resolve(registry, "sampler", "heun"), guidance=resolve(registry, "guidance", g),
                          steps=6, n_samples=20)
    nfe = {}
    for g in ("none", "cfg"):
        x = torch.zeros(10, 5)
        ctx = EvalContext(registry, cell(g), Splits("t", x, x, torch.zeros(10, dtype=torch.long),
                                                    torch.zeros(10, dtype=torch.long), 3), ClassShift())
        ctx.samples
        nfe[g] = ctx.nfe
    assert nfe == {"none": 11, "cfg": 22}


SMALL = {"dataset": "8gaussians", "network": "mlp:width=32:depth=1", "train_steps": 20, "batch": 32, "pool": 64,
         "n_samples": 50, "pairing": "aot", "sampler": "euler", "steps": 3, "metrics": "nfe"}


@pytest.mark.parametrize("spec,msg", [
    ({"guidance": "cfg"}, "needs a class-conditional model"),
    ({"guidance": "cfg", "conditional": True}, "needs a model trained with label dropout"),
    ({"guidance": "cfg:w=-1", "conditional": True, "label_dropout": 0.1}, "w must be >= 0"),
    ({"guidance": "dg:disc_steps=0"}, "no discriminator"),
    ({"guidance": "dg:sigma_lo=2:sigma_hi=1"}, "sigma_lo <= sigma_hi"),
    ({"conditional": True, "label": 8},
     "class label 8 is not in dataset '8gaussians' (its labels: 0, 1, 2, 3, 4, 5, 6, 7)"),
    ({"dataset": "checkerboard", "network": "mlp", "conditional": True}, "has no labels"),
])
def test_impossible_guidance_combinations_are_refused_before_any_work(registry, spec, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        expand(registry, {**SMALL, **spec})


def test_cfg_on_an_unconditional_model_exits_2_from_the_cli(tmp_path):
    out = run_cli("run", "--dataset", "moons", "--guidance", "cfg", "--results", str(tmp_path))
    assert out.returncode == 2 and "needs a class-conditional model" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


class ConstantLogit(nn.Module):
    def forward(self, x, sigma, labels=None):
        return torch.full((x.shape[0],), 0.7) + 0 * x.flatten(1).sum(1)


class GaussianLogRatio(nn.Module):
    """The exact log p_real/p_fake of two noised isotropic Gaussians N(0, a^2) and N(m, b^2)."""

    def __init__(self, a, m, b):
        super().__init__()
        self.a, self.m, self.b = a, m, b

    def forward(self, x, sigma, labels=None):
        s2 = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]) ** 2  # one sigma per row
        va, vb = self.a**2 + s2, self.b**2 + s2
        d = x.shape[1]
        lp_real = -0.5 * (x**2).sum(1) / va - 0.5 * d * torch.log(va)
        lp_fake = -0.5 * ((x - self.m) ** 2).sum(1) / vb - 0.5 * d * torch.log(vb)
        return lp_real - lp_fake


def dg_with(registry, disc, **params):
    dg = guidance(registry, "dg", **params)
    dg.disc = disc
    return dg


def test_dg_with_a_constant_discriminator_changes_nothing(registry):
    model = GaussianDenoiser(0.0, 0.5)
    ctx = gctx(lambda x, s, _l=None: model(x, s), None, num_classes=0)
    x = torch.randn(16, 3, dtype=torch.float64)
    guided = dg_with(registry, ConstantLogit(), w=2.0).wrap(ctx.cond, context=ctx)
    assert torch.equal(guided(x, 1.0), ctx.cond(x, 1.0))
    assert ctx.costs["disc_grad_evals"] == 16


def test_dg_with_an_analytic_log_ratio_equals_the_closed_form(registry):
    a, m, b, w, sigma = 0.5, 0.8, 0.7, 2.0, 0.9
    model = GaussianDenoiser(m, b)  # the "model" is the fake distribution
    ctx = gctx(lambda x, s, _l=None: model(x, s), None, num_classes=0)
    x = torch.randn(32, 4, dtype=torch.float64)
    guided = dg_with(registry, GaussianLogRatio(a, m, b), w=w).wrap(ctx.cond, context=ctx)
    s2 = sigma**2
    grad = -x / (a**2 + s2) + (x - m) / (b**2 + s2)
    expected = model(x, sigma) + w * s2 * grad
    assert torch.allclose(guided(x, sigma), expected, rtol=1e-6, atol=1e-6)
    # with w = 1 and the exact ratio, guidance turns the fake denoiser into the real one
    real = GaussianDenoiser(0.0, a)
    one = dg_with(registry, GaussianLogRatio(a, m, b), w=1.0).wrap(ctx.cond, context=ctx)
    assert torch.allclose(one(x, sigma), real(x, sigma), rtol=1e-6, atol=1e-6)


def test_dg_outside_its_sigma_range_changes_nothing_and_costs_nothing(registry):
    model = GaussianDenoiser(0.8, 0.7)
    ctx = gctx(lambda x, s, _l=None: model(x, s), None, num_classes=0)
    x = torch.randn(8, 4, dtype=torch.float64)
    guided = dg_with(registry, GaussianLogRatio(0.5, 0.8, 0.7), w=2.0, sigma_lo=0.5, sigma_hi=2.0).wrap(
        ctx.cond, context=ctx)
    for sigma in (0.1, 5.0):
        assert torch.equal(guided(x, sigma), ctx.cond(x, sigma))
    assert "disc_grad_evals" not in ctx.costs
    assert not torch.equal(guided(x, 1.0), ctx.cond(x, 1.0))


def test_dg_end_to_end_trains_caches_and_reports_its_cost(registry, tmp_path):
    spec = {**SMALL, "dataset": "moons", "guidance": "dg:disc_steps=30:n_fake=100:sampler_steps=4",
            "sampler": "heun", "steps": 4}
    opts = RunOptions(progress=False, train=TrainOptions(pair_workers=0))
    rec = run_cells(registry, expand(registry, spec), tmp_path, "a", opts)[0][0]
    assert rec["metrics"]["nfe"] == 7
    # heun, 4 steps, sigmas 80, 9.72, 0.47, 0.002: DG's sampler corrects only each step's first (Euler) evaluation,
    # so the three with sigma >= 0.0447 pay one discriminator gradient each; the correctors pay nothing
    assert rec["metrics"]["disc_grad_evals"] == 3
    cached = list((tmp_path / "cache" / "dg").glob("*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    run_cells(registry, expand(registry, {**spec, "steps": 5}), tmp_path, "a", opts)
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not retrained
    # w2nd > 0 also corrects the correctors at 9.72 and 0.47 (not 0.002): 3 + 2, with the same discriminator
    rec = run_cells(registry, expand(registry, {**spec, "guidance": spec["guidance"] + ":w2nd=1"}), tmp_path, "a",
                    opts)[0][0]
    assert rec["metrics"]["disc_grad_evals"] == 5
    assert list((tmp_path / "cache" / "dg").glob("*.pt")) == cached and cached[0].stat().st_mtime_ns == mtime


# -- DG's sampler: which evaluations, which rows, clipping, boosting ------------------------------------------------

def analytic_dg(registry, ctx_kw=None, **params):
    """DG with the exact log-ratio of N(0, 0.5^2) (real) against the model N(0.8, 0.7^2) (fake)."""
    a, m, b = 0.5, 0.8, 0.7
    model = GaussianDenoiser(m, b)
    ctx = gctx(lambda x, s, _l=None: model(x, s), None, num_classes=0, stage=0, **(ctx_kw or {}))
    guided = dg_with(registry, GaussianLogRatio(a, m, b), **params).wrap(ctx.cond, context=ctx)

    def expected(x, sigma, weight):
        s2 = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1) ** 2
        grad = -x / (a**2 + s2) + (x - m) / (b**2 + s2)
        return model(x, sigma) + weight * s2 * grad

    return ctx, guided, expected


def test_dg_corrects_only_a_steps_first_evaluation_by_default(registry):
    x = torch.randn(16, 3, dtype=torch.float64)
    ctx, guided, expected = analytic_dg(registry, w=2.0)
    ctx.stage = 1  # a corrector (Heun's second) evaluation: DG's dg_weight_2nd_order = 0
    assert torch.equal(guided(x, 0.9), ctx.cond(x, 0.9))
    assert "disc_grad_evals" not in ctx.costs
    ctx.stage = 0  # the step's first (Euler) evaluation: dg_weight_1st_order = w
    out = guided(x, 0.9)
    assert torch.allclose(out, expected(x, 0.9, 2.0), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, ctx.cond(x, 0.9), atol=1e-3)
    assert ctx.costs["disc_grad_evals"] == 16


def test_dg_w2nd_weights_the_corrector_evaluation(registry):
    x = torch.randn(16, 3, dtype=torch.float64)
    ctx, guided, expected = analytic_dg(registry, w=2.0, w2nd=0.7)
    ctx.stage = 1
    assert torch.allclose(guided(x, 0.9), expected(x, 0.9, 0.7), rtol=1e-6, atol=1e-6)
    ctx.stage = 0
    assert torch.allclose(guided(x, 0.9), expected(x, 0.9, 2.0), rtol=1e-6, atol=1e-6)
    # w2nd = w corrects both evaluations alike; w = 0 with w2nd > 0 corrects only the corrector
    ctx, both, _ = analytic_dg(registry, w=2.0, w2nd=2.0)
    for stage in (0, 1):
        ctx.stage = stage
        assert torch.allclose(both(x, 0.9), expected(x, 0.9, 2.0), rtol=1e-6, atol=1e-6)
    ctx, second, _ = analytic_dg(registry, w=0.0, w2nd=1.0)
    assert torch.equal(second(x, 0.9), ctx.cond(x, 0.9))
    ctx.stage = 1
    assert torch.allclose(second(x, 0.9), expected(x, 0.9, 1.0), rtol=1e-6, atol=1e-6)


def test_dg_defaults_are_dgs_sampler(registry):
    dg = guidance(registry, "dg")
    assert dg.w is None and dg.w2nd == 0.0 and dg.boosting is None and dg.settings["disc_sigma"] == "dg"
    # DG's time range [0.01, 1] of its VP-SDE (beta 0.1..20) as EDM sigma
    assert dg.sigma_lo == pytest.approx(0.0446877, rel=1e-5) and dg.sigma_hi == pytest.approx(152.167, rel=1e-5)
    assert DGMOD.vp_time(dg.sigma_lo) == pytest.approx(0.01) and DGMOD.vp_time(dg.sigma_hi) == pytest.approx(1.0)


def test_dg_per_row_sigma_corrects_only_the_rows_in_range(registry):
    x = torch.randn(6, 3, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.9, 3.0, 0.3, 5.0, 2.0], dtype=torch.float64)  # one per row (rk45)
    ctx, guided, expected = analytic_dg(registry, w=2.0, sigma_lo=0.1, sigma_hi=2.5)
    out = guided(x, sigma)
    inside = (sigma >= 0.1) & (sigma <= 2.5)
    assert inside.tolist() == [False, True, False, True, False, True]
    assert torch.equal(out[~inside], ctx.cond(x, sigma)[~inside])  # untouched, bit for bit
    assert torch.allclose(out[inside], expected(x, sigma, 2.0)[inside], rtol=1e-6, atol=1e-6)
    for i in range(6):  # each row as if evaluated alone at its own sigma
        alone = guided(x[i:i + 1], float(sigma[i]))
        assert torch.allclose(out[i:i + 1], alone, rtol=1e-6, atol=1e-6)
    assert ctx.costs["disc_grad_evals"] == 3 + 3  # only rows in range pay; then 3 of the single-row calls
    # a 0-d tensor sigma is one sigma for all rows
    assert torch.allclose(guided(x, torch.tensor(0.9)), expected(x, torch.tensor(0.9), 2.0), rtol=1e-6)


class SlopeLogit(nn.Module):
    """logit = k * x[:, 0]: the gradient of the log-ratio is k e_0 where d is not clipped."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, sigma, labels=None):
        return self.k * x[:, 0]


def test_dg_clips_d_as_dg_does(registry):
    logits = torch.linspace(-50, 50, 1001, dtype=torch.float64)
    lr = DGMOD.clipped_log_ratio(logits)
    bound = math.log((1 - 1e-5) / 1e-5)
    assert float(lr.abs().max()) == pytest.approx(bound) and bound == pytest.approx(11.5129, abs=1e-4)
    d = torch.sigmoid(logits).clamp(1e-5, 1 - 1e-5)  # DG: clip d, then log(d / (1 - d))
    assert torch.allclose(lr, torch.log(d / (1 - d)), atol=1e-6)
    # rows whose d is clipped get no correction; the others get w sigma^2 k e_0
    model = GaussianDenoiser(0.0, 0.5)
    ctx = gctx(lambda x, s, _l=None: model(x, s), None, num_classes=0, stage=0)
    guided = dg_with(registry, SlopeLogit(40.0), w=2.0).wrap(ctx.cond, context=ctx)
    x = torch.tensor([[-1.0, 0.3], [-0.2, 0.1], [0.1, -0.4], [0.5, 0.0]], dtype=torch.float64)  # logits -40, -8, 4, 20
    out, plain = guided(x, 1.5), ctx.cond(x, 1.5)
    assert torch.equal(out[[0, 3]], plain[[0, 3]])
    step = torch.tensor([2.0 * 1.5**2 * 40.0, 0.0], dtype=torch.float64)
    assert torch.allclose(out[[1, 2]], plain[[1, 2]] + step, rtol=1e-6)


def boosted_rows(registry, boosting, num_classes, calls):
    """Run ``calls`` (stages) through DG with logit = x_0 and report, per call, the correction divided by the
    unboosted one for each row (rows 0, 1 have a negative log-ratio, rows 2, 3 a positive one)."""
    x = torch.tensor([[-1.0, 0.0], [-0.3, 1.0], [0.2, 0.5], [2.0, -1.0]], dtype=torch.float64)
    if num_classes:
        labels = torch.tensor([0, 1, 2, 0])
        ctx = gctx(ClassShift(), labels, num_classes=num_classes, stage=0)
    else:
        model = GaussianDenoiser(0.0, 0.5)
        ctx = gctx(lambda x, s, _l=None: model(x, s), None, num_classes=0, stage=0)
    params = {} if boosting is None else {"boosting": boosting}
    guided = dg_with(registry, SlopeLogit(1.0), w=1.0, w2nd=1.0, **params).wrap(ctx.cond, context=ctx)
    ratios = []
    for stage in calls:
        ctx.stage = stage
        corr = guided(x, 0.8) - ctx.cond(x, 0.8)
        ratios.append([round(r, 9) for r in (corr[:, 0] / 0.8**2).tolist()])
        assert torch.all(corr[:, 1] == 0)
    return ratios


def test_dg_boosting_doubles_negative_log_ratio_rows_every_second_step(registry):
    calls = [0, 1, 0, 1, 0, 1, 0]  # heun: steps i = 0..3, each a first (stage 0) and a corrector evaluation
    got = boosted_rows(registry, True, 0, calls)
    boosted, plain = [2.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]
    # steps 0 and 2 double the rows with log-ratio < 0; steps 1, 3 and every corrector evaluation do not
    assert got == [boosted, plain, plain, plain, boosted, plain, plain]
    assert boosted_rows(registry, False, 0, calls) == [plain] * 7
    # unset: DG's recipes, on for a conditional model, off for an unconditional one
    assert boosted_rows(registry, None, 3, calls) == got
    assert boosted_rows(registry, None, 0, calls) == [plain] * 7
    assert boosted_rows(registry, False, 3, calls) == [plain] * 7


# -- the discriminator: its fakes, its training noise, a user's feature extractor -----------------------------------

class ToyModel(nn.Module):
    """The exact denoiser of N(0.3, 0.6^2) (conditional: shifted by the label), with the engine's interface."""

    def __init__(self, num_classes=0):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x, sigma, class_labels=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1)
        mu = 0.3 if class_labels is None else 0.3 + class_labels.to(x.dtype).reshape(-1, 1)
        return mu + 0.36 / (0.36 + s**2) * (x - mu)


def disc_context(registry, tmp_path, num_classes=0, n=300):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(n, 2, generator=g) * 0.5
    labels = torch.cat([torch.zeros(n - n // 10, dtype=torch.long), torch.full((n // 10,), 1)])[:n] if num_classes \
        else None
    splits = Splits("toy", train, train[:10], labels, None if labels is None else labels[:10], num_classes)
    cell = types.SimpleNamespace(train=types.SimpleNamespace(key="toy-model"), sigma_min=0.002, sigma_max=80.0)
    model = ToyModel(num_classes)
    return types.SimpleNamespace(registry=registry, cell=cell, splits=splits, model=model, device=torch.device("cpu"),
                                 cache_dir=tmp_path / "cache", num_classes=num_classes, progress=False, costs={},
                                 labels=None, stage=0, cond=lambda x, s: model(x, s))


def test_dg_fakes_are_per_sample_and_labels_follow_the_train_split(registry, tmp_path, monkeypatch):
    ctx = disc_context(registry, tmp_path, num_classes=2)
    dg = guidance(registry, "dg", n_fake=1200, sampler_steps=3)
    state = torch.get_rng_state()
    fake, labels = dg._fakes(ctx)
    assert torch.equal(torch.get_rng_state(), state)  # no draw from the global generator
    assert fake.shape == (1200, 2) and torch.isfinite(fake).all()
    assert abs(float((labels == 1).double().mean()) - 0.1) < 0.03  # the train split is 90% class 0, 10% class 1
    monkeypatch.setattr(DGMOD, "FAKE_BATCH", 7)
    fake7, labels7 = dg._fakes(ctx)
    assert torch.equal(fake, fake7) and torch.equal(labels, labels7)  # whatever the internal batch
    small, small_labels = guidance(registry, "dg", n_fake=50, sampler_steps=3)._fakes(ctx)
    assert torch.equal(small, fake[:50]) and torch.equal(small_labels, labels[:50])  # fake i is fake i


def test_dg_stochastic_fake_sampler_gets_each_fakes_own_noise(registry, tmp_path, monkeypatch):
    ctx = disc_context(registry, tmp_path)
    seen = []
    stochastic = registry.get("sampler", "edm-stochastic").obj

    def churned(denoise, x, sigmas, *, noise_sampler=None, callback=None):
        seen.append(noise_sampler)
        return stochastic(denoise, x, sigmas, noise_sampler=noise_sampler, s_churn=10.0)

    ctx.registry = with_components(registry, Component("sampler", "churned", churned, "test", "test"))
    dg = guidance(registry, "dg", n_fake=40, sampler_steps=4)
    dg.settings["sampler"] = "churned"
    state = torch.get_rng_state()
    fake, _ = dg._fakes(ctx)
    assert torch.equal(torch.get_rng_state(), state) and isinstance(seen[0], PerSampleNoise)
    monkeypatch.setattr(DGMOD, "FAKE_BATCH", 16)
    assert torch.equal(dg._fakes(ctx)[0], fake)


def test_dg_importance_sampled_sigma_matches_dgs_time_density():
    b0, b1 = 0.1, 20.0
    # DG's importance density of the VP time, p(t) ~ beta(t) / (1 - exp(-int_0^t beta)) on [1e-5, 1], integrated
    # numerically, against the stated CDF in sigma: ln sigma uniform on [ln sigma(1e-5), ln sigma(1)]
    t = torch.logspace(-5, 0, 200001, dtype=torch.float64)
    integral = 0.5 * (b1 - b0) * t**2 + b0 * t
    density = (b0 + t * (b1 - b0)) / -torch.expm1(-integral)
    cdf_t = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.cumsum(0.5 * (density[1:] + density[:-1]) * (t[1:] - t[:-1]), 0)])
    cdf_t = cdf_t / cdf_t[-1]
    lo, hi = math.log(DGMOD.TRAIN_SIGMA_MIN), math.log(DGMOD.TRAIN_SIGMA_MAX)
    sigma_t = torch.expm1(integral).sqrt()
    assert torch.allclose(cdf_t, (sigma_t.log() - lo) / (hi - lo), atol=1e-6)
    assert DGMOD.TRAIN_SIGMA_MIN == pytest.approx(1.0005e-3, rel=1e-4)
    assert DGMOD.TRAIN_SIGMA_MAX == pytest.approx(152.167, rel=1e-5)
    # the draws follow that CDF (Kolmogorov-Smirnov distance), EDM's log-normal does not
    n = 40000

    def ks(draws):
        u = ((draws.double().log() - lo) / (hi - lo)).sort().values
        grid = torch.arange(1, n + 1, dtype=torch.float64) / n
        return float(torch.maximum((grid - u).abs(), (u - (grid - 1 / n)).abs()).max())

    draws = DGMOD.draw_train_sigma(n, torch.Generator().manual_seed(1))
    assert float(draws.min()) >= DGMOD.TRAIN_SIGMA_MIN * (1 - 1e-6)
    assert float(draws.max()) <= DGMOD.TRAIN_SIGMA_MAX * (1 + 1e-6)
    assert ks(draws) < 0.01
    assert float(draws.median()) == pytest.approx(math.exp((lo + hi) / 2), rel=0.05)
    assert ks(DGMOD.draw_train_sigma(n, torch.Generator().manual_seed(1), "edm")) > 0.2
    assert torch.equal(draws, DGMOD.draw_train_sigma(n, torch.Generator().manual_seed(1)))


def test_dg_trains_on_importance_sampled_sigma_deterministically(registry, tmp_path, monkeypatch):
    ctx = disc_context(registry, tmp_path)
    calls = []
    real_draw = DGMOD.draw_train_sigma

    def spy(n, g, how="dg"):
        calls.append((n, how))
        return real_draw(n, g, how)

    monkeypatch.setattr(DGMOD, "draw_train_sigma", spy)
    params = dict(disc_steps=5, disc_batch=16, n_fake=40, sampler_steps=3, disc_width=8)
    state = torch.get_rng_state()
    dg = guidance(registry, "dg", **params)
    dg.prepare(ctx)
    assert calls == [(32, "dg")] * 5
    assert torch.equal(torch.get_rng_state(), state)  # initial weights and draws from seeded generators only
    again = guidance(registry, "dg", **params)
    ctx.cache_dir = tmp_path / "other"
    again.prepare(ctx)  # retrained from scratch in another cache: bit-identical
    assert state_equal(dg.disc.state_dict(), again.disc.state_dict())
    calls.clear()
    edm = guidance(registry, "dg", disc_sigma="edm", **params)
    edm.prepare(ctx)
    assert calls == [(32, "edm")] * 5 and len(list((tmp_path / "other" / "dg").glob("*.pt"))) == 2


class TinyFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(torch.cat([x.flatten(1), sigma.log()[:, None]], 1)))


def save_features(path, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.jit.script(TinyFeatures()).save(str(path))
    return path


def test_dg_trains_a_head_on_a_users_torchscript_features(registry, tmp_path):
    feats = save_features(tmp_path / "features.pt", 0)
    params = dict(disc_steps=40, disc_batch=16, n_fake=40, sampler_steps=3, disc_width=8, w=2.0)
    dg = guidance(registry, "dg", features_path=str(feats), **params)
    assert dg.settings["features_sha256"] == hashlib.sha256(feats.read_bytes()).hexdigest()
    ctx = disc_context(registry, tmp_path)
    dg.prepare(ctx)
    cached = list((tmp_path / "cache" / "dg").glob("*.pt"))
    assert len(cached) == 1
    state = torch.load(cached[0], weights_only=True)["state"]  # only the head: nothing of the extractor is kept
    assert not any(k.startswith("lin") or "extractor" in k for k in state) and "body.0.weight" in state
    assert state["body.0.weight"].shape == (16, 6)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    guided = dg.wrap(ctx.cond, context=ctx)
    out = guided(x, 0.7)
    assert not torch.allclose(out, ctx.cond(x, 0.7), atol=1e-6)  # the gradient flows through the extractor
    # reloaded from the cache with the extractor from the user's path again: the same guidance
    reloaded = guidance(registry, "dg", features_path=str(feats), **params)
    reloaded.prepare(ctx)
    assert torch.equal(reloaded.wrap(ctx.cond, context=ctx)(x, 0.7), out)
    assert list((tmp_path / "cache" / "dg").glob("*.pt")) == cached
    # another features file (same path, other content) is another discriminator; no features, another still
    save_features(feats, 1)
    guidance(registry, "dg", features_path=str(feats), **params).prepare(ctx)
    guidance(registry, "dg", **params).prepare(ctx)
    assert len(list((tmp_path / "cache" / "dg").glob("*.pt"))) == 3


def test_dg_refuses_a_missing_or_garbage_features_file_in_one_line(registry, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a TorchScript archive\n" * 10)
    state_dict = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    for path, msg in ((tmp_path / "missing.pt", "features file not found"),
                      (garbage, "is not a loadable TorchScript file"),
                      (state_dict, "is not a loadable TorchScript file")):
        with pytest.raises(UserError, match=msg) as err:
            guidance(registry, "dg", features_path=str(path))
        assert len(str(err.value).strip().splitlines()) == 1
    with pytest.raises(UserError, match="features file not found"):
        expand(registry, {**SMALL, "guidance": f"dg:features_path={tmp_path / 'missing.pt'}"})
