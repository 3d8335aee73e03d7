"""Guidance: CFG's exact endpoints and doubled NFE, DG's exact cases, and refusals before any work."""

from __future__ import annotations

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
from aotbench.train import TrainOptions
from analytic import GaussianDenoiser
from conftest import run_cli, tiny_train


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
    ({"conditional": True, "label": 8}, "class label 8 is outside dataset '8gaussians' (labels 0..7)"),
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
        s2 = float(sigma) ** 2
        va, vb = self.a**2 + s2, self.b**2 + s2
        d = x.shape[1]
        lp_real = -0.5 * (x**2).sum(1) / va - 0.5 * d * torch.log(torch.tensor(va))
        lp_fake = -0.5 * ((x - self.m) ** 2).sum(1) / vb - 0.5 * d * torch.log(torch.tensor(vb))
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
    # guided evaluations: every evaluation with sigma >= 0.045 pays one discriminator gradient
    assert 0 < rec["metrics"]["disc_grad_evals"] <= 7
    cached = list((tmp_path / "cache" / "dg").glob("*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    run_cells(registry, expand(registry, {**spec, "steps": 5}), tmp_path, "a", opts)
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not retrained
