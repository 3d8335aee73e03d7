"""Training objectives (aotbench/objective.py, plugins/objectives/): EDM's is the engine as it was, bit for bit;
rectified flow is flow matching exactly, checked against the closed-form Gaussian target and the textbook loss."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from analytic import GaussianDenoiser
from aotbench.cli import main
from aotbench.config import TrainConfig
from aotbench.grid import expand
from aotbench.identity import stable_hash
from aotbench.objective import Denoiser, denoising_loss
from aotbench.runner import RunOptions, run_cells
from aotbench.train import TrainOptions
from conftest import REPO, tiny_train

#: a fixed small EDM case, trained and evaluated on commit 10b2baa (before objectives were plugins), 1 thread
BEFORE = json.loads((REPO / "tests" / "data" / "edm_before_objective.json").read_text())
BEFORE_GRID = {"dataset": "moons", "network": "mlp:width=32:depth=2", "pairing": "aot", "train_steps": 30,
               "batch": 64, "pool": 128, "sampler": "heun", "steps": 4, "n_samples": 200,
               "metrics": "fd,curvature,trunc_err,nfe,w2", "seeds": 0}
MU, S = 0.3, 0.7


def rectified_flow(registry, **params):
    return registry.get("objective", "rectified-flow").build(**params)


class OptimalVelocity(torch.nn.Module):
    """The flow-matching optimum for data N(MU, S^2 I): v*(x_t, t) = E[n - y | x_t] on x_t = (1 - t) y + t n, with
    the raw network's interface F(x, c_noise) (c_noise = t). Joint Gaussian: with m = x_t - (1 - t) MU and
    V = (1 - t)^2 S^2 + t^2, E[n | x_t] = t m / V and E[y | x_t] = MU + (1 - t) S^2 m / V."""

    def forward(self, xt, c_noise, class_labels=None, augment_labels=None):
        t = c_noise.double().reshape(-1, *([1] * (xt.ndim - 1)))
        m = xt.double() - (1 - t) * MU
        v = (1 - t) ** 2 * S**2 + t**2
        return (t * m / v - (MU + (1 - t) * S**2 * m / v)).float()


def test_edm_keys_weights_losses_and_metrics_are_those_of_the_engine_before_objectives(registry):
    """Same train and cell keys, same EMA weights, loss history and record metrics as commit 10b2baa computed (the
    reference file, computed on this machine's CPU kernels with one thread); the record's training config gains
    only ``objective: {"name": "edm"}``."""
    (cell,) = expand(registry, BEFORE_GRID)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as d:
            opts = RunOptions(progress=False, train=TrainOptions(progress=False, pair_workers=0, log_every=10))
            (record,), _ = run_cells(registry, [cell], d, "x", opts, log=lambda *_: None)
            from aotbench.storage import load_checkpoint
            ckpt = load_checkpoint(Path(d) / "models" / f"{cell.train.key}.pt", "aotbench-model-v1")
    finally:
        torch.set_num_threads(threads)
    from aotbench.identity import tensor_digest

    assert (record["train_key"], record["cell_key"]) == (BEFORE["train_key"], BEFORE["cell_key"])
    train = dict(record["config"]["train"])
    assert train.pop("objective") == {"name": "edm"} and train.pop("global_pool") is False  # added since
    assert {**record["config"], "train": train} == BEFORE["config"]
    assert tensor_digest(*[ckpt["ema"][k] for k in sorted(ckpt["ema"])]) == BEFORE["ema_digest"]
    assert [list(h) for h in ckpt["history"]] == BEFORE["history"]
    metrics = dict(record["metrics"])
    assert metrics.pop("fd_extractor_accuracy") is None  # added since (a 2-D set's FD uses no trained net)
    assert metrics == BEFORE["metrics"]


def test_the_objective_is_part_of_the_model_key_and_edm_keeps_the_keys_of_models_trained_before_it(registry):
    edm = tiny_train(registry)
    old = edm.to_dict()
    old.pop("objective")  # a config written before objectives (and global pools) existed
    old.pop("global_pool")
    assert TrainConfig.from_dict(old) == edm
    old["steps"] = old.pop("train_steps")  # keys hash the field's first name (config.RENAMED)
    assert edm.key == stable_hash({"train": old})
    keys = {edm.key, tiny_train(registry, objective="rectified-flow").key,
            tiny_train(registry, objective="rectified-flow:t_dist=logit-normal").key,
            tiny_train(registry, objective="rectified-flow:t_dist=logit-normal:scale=0.5").key}
    assert len(keys) == 4


def test_rectified_flow_preconditioning_of_the_optimal_velocity_is_the_gaussian_denoiser(registry):
    model = Denoiser(OptimalVelocity(), rectified_flow(registry))
    sigma = torch.tensor([0.002, 0.02, 0.2, 0.5, 1.0, 3.0, 20.0, 80.0])
    g = torch.Generator().manual_seed(0)
    x = MU + (S**2 + sigma[:, None] ** 2).sqrt() * torch.randn(len(sigma), 16, generator=g)
    expected = GaussianDenoiser(MU, S)(x, sigma)
    assert torch.allclose(model(x, sigma), expected, rtol=1e-5, atol=1e-5)
    edm = Denoiser(OptimalVelocity(), registry.get("objective", "edm").build())
    assert not torch.allclose(edm(x, sigma), expected, rtol=1e-2, atol=1e-2)  # the test can tell objectives apart


@pytest.mark.parametrize("t", [0.01, 0.2, 0.5, 0.8, 0.98])
def test_rectified_flow_loss_at_the_optimum_is_the_irreducible_variance(registry, t):
    """E ||v* - v||^2 per coordinate = Var(n - y | x_t) = S^2 / ((1 - t)^2 S^2 + t^2) for data N(MU, S^2 I). The
    Monte-Carlo mean of N x D squared Gaussians has relative sd sqrt(2 / (N D)) = 0.35 %; the tolerance is 4 sd."""
    objective = rectified_flow(registry)
    model = Denoiser(OptimalVelocity(), objective)
    g = torch.Generator().manual_seed(1)
    n_samples, dim = 20000, 8
    y = MU + S * torch.randn(n_samples, dim, generator=g)
    noise = torch.randn(n_samples, dim, generator=g)
    loss = denoising_loss(model, objective, y, noise, torch.full((n_samples,), t / (1 - t)))
    irreducible = S**2 / ((1 - t) ** 2 * S**2 + t**2)
    assert loss.mean().item() / dim == pytest.approx(irreducible, rel=4 * (2 / (n_samples * dim)) ** 0.5)


@pytest.mark.parametrize("t_dist", ["uniform", "logit-normal"])
def test_rectified_flow_loss_is_the_textbook_velocity_loss(registry, t_dist):
    """||v_hat(x_t, t) - (n - y)||^2 with x_t = (1 - t) y + t n, computed directly, at the objective's own t draws;
    float32, so the tolerance is float32's (1e-7) times 100, divided by the smallest t drawn (the loss is
    ||D - y||^2 / t^2)."""
    objective = rectified_flow(registry, t_dist=t_dist)
    net = registry.get("network", "mlp").obj((3,), 0, width=32, depth=2)
    g = torch.Generator().manual_seed(2)
    y, noise = torch.randn(256, 3, generator=g), torch.randn(256, 3, generator=g)
    sigma = objective.sample_sigma(256, g)
    t = (sigma / (1 + sigma)).double()
    with torch.no_grad():
        xt = ((1 - t[:, None]) * y + t[:, None] * noise).float()
        textbook = ((net(xt, t.float()) - (noise - y)) ** 2).sum(1)
        loss = denoising_loss(Denoiser(net, objective), objective, y, noise, sigma)
    assert torch.allclose(loss, textbook, rtol=1e-5 / t.min().item(), atol=0)


def test_rectified_flow_draws_t_uniform_or_logit_normal_in_its_range(registry):
    g = torch.Generator().manual_seed(3)
    uniform = rectified_flow(registry, t_min=0.1, t_max=0.6).sample_sigma(20000, g).double()
    t = uniform / (1 + uniform)
    assert t.min() >= 0.1 - 1e-6 and t.max() <= 0.6 + 1e-6
    assert t.mean().item() == pytest.approx(0.35, abs=0.005) and t.var().item() == pytest.approx(0.5**2 / 12, rel=0.03)
    ln = rectified_flow(registry, t_dist="logit-normal", loc=0.5, scale=0.8).sample_sigma(20000, g).double()
    logit = torch.log(ln)  # t / (1 - t) = sigma: logit(t) = ln(sigma), N(loc, scale^2) up to the [t_min, t_max] squeeze
    assert logit.mean().item() == pytest.approx(0.5, abs=0.02) and logit.std().item() == pytest.approx(0.8, rel=0.02)


def test_euler_on_the_flow_uniform_schedule_is_euler_on_the_flow_in_t(registry):
    """The sampler steps x = x_t (1 + sigma) in sigma; divided by 1 + sigma each step is x_t' = x_t + (t' - t) v."""
    objective = rectified_flow(registry)
    model = Denoiser(OptimalVelocity(), objective)
    sigmas = registry.get("schedule", "flow-uniform").build().sigmas(6, 0.002, 80.0, 7.0)
    t = sigmas / (1 + sigmas)
    assert torch.allclose(t[1:-1] - t[:-2], t[1] - t[0])  # uniform in t between t(sigma_max) and t(sigma_min)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        x = registry.get("sampler", "euler").obj(lambda x, s, **_: model(x.float(), float(s)).double(),
                                                 noise * sigmas[0], sigmas)
        xt = noise * t[0]
        for i in range(len(t) - 1):
            xt = xt + (t[i + 1] - t[i]) * OptimalVelocity()(xt.float(), torch.full((64,), t[i].item())).double()
    assert torch.allclose(x, xt, atol=1e-4)


def test_a_rectified_flow_model_on_moons_trains_to_an_fd_near_edms_at_equal_budget(registry, tmp_path):
    """A smoke test, not a benchmark: 300 steps of the same small network and pairing under each objective, FD of
    500 samples at 9 Heun evaluations within a factor 3 of EDM's."""
    grid = {"dataset": "moons", "network": "mlp:width=64:depth=2", "objective": "edm,rectified-flow",
            "pairing": "none", "sampler": "heun", "steps": 5, "train_steps": 300, "batch": 64, "pool": 128,
            "n_samples": 500, "metrics": "fd", "seeds": 0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opts = RunOptions(progress=False, train=TrainOptions(progress=False, pair_workers=0))
        records, _ = run_cells(registry, expand(registry, grid), tmp_path, "x", opts, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    fd = {r["config"]["train"]["objective"]["name"]: r["metrics"]["fd"] for r in records}
    assert set(fd) == {"edm", "rectified-flow"}
    assert fd["rectified-flow"] < 3 * fd["edm"], fd


@pytest.mark.parametrize("spec, expected", [
    ("rectified-flow:t_dist=logit-normal:scale=0", "scale must be > 0"),
    ("rectified-flow:t_dist=logit-normal:scale=-1", "scale must be > 0"),
    ("rectified-flow:t_min=0", "need 0 < t_min < t_max < 1"),
    ("rectified-flow:t_max=1", "need 0 < t_min < t_max < 1"),
    ("rectified-flow:t_min=0.5:t_max=0.4", "need 0 < t_min < t_max < 1"),
    ("rectified-flow:t_dist=beta", "t_dist must be one of uniform, logit-normal"),
    ("rectified-flow:scale=2", "loc and scale shape t_dist=logit-normal only"),
    ("flow", "unknown objective 'flow'"),
])
def test_an_objective_parameter_outside_its_domain_is_one_line_before_any_work(tmp_path, capsys, spec, expected):
    code = main(["run", "--dataset", "moons", "--objective", spec, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r" / "models").exists()
