"""Metric formulas against closed forms and POT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.stats import ortho_group

from aotbench.frechet import frechet_distance, frechet_from_features
from aotbench_plugins.metrics.w2 import wasserstein2


def test_fd_is_zero_for_identical_sets():
    f = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_from_features(f, f)) < 1e-9


def test_fd_equals_the_closed_form_for_commuting_gaussians():
    q = ortho_group.rvs(6, random_state=0)
    a, b = np.array([1, 2, 3, .5, .1, 4.]), np.array([2, 1, .3, .5, 1, 1.])
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.arange(6.0), np.arange(6.0)[::-1]
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_fd_equals_the_general_formula_with_a_matrix_square_root():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fd_of_samples_estimates_the_population_value():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 3, generator=g)
    y = torch.randn(20000, 3, generator=g) * 2 + 1
    assert frechet_from_features(x, y) == pytest.approx(3 * 1 + 3 * 1, rel=0.05)  # 3*(1)^2 + 3*(2-1)^2


def test_w2_matches_pot_and_the_sorted_closed_form_in_one_dimension():
    import ot

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 1, generator=g).double(), torch.randn(300, 1, generator=g).double() * 0.5 + 2
    sorted_w2 = float(((x.flatten().sort().values - y.flatten().sort().values) ** 2).mean().sqrt())
    assert wasserstein2(x, y) == pytest.approx(sorted_w2, rel=1e-9)
    x2, y2 = torch.randn(80, 5, generator=g), torch.randn(60, 5, generator=g)
    pot = np.sqrt(ot.emd2(np.full(80, 1 / 80), np.full(60, 1 / 60), ot.dist(x2.double().numpy(),
                                                                            y2.double().numpy())))
    assert wasserstein2(x2, y2) == pytest.approx(pot, rel=1e-9)
