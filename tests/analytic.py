"""Closed-form references: a Gaussian data distribution N(mu, s^2 I) has an exact denoiser and PF-ODE solution.

For x_sigma = y + sigma n with y ~ N(mu, s^2 I):
    D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)
and the probability-flow ODE dx/dsigma = (x - D) / sigma = sigma / (s^2 + sigma^2) (x - mu) has the solution
    x(sigma) - mu = (x(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)).
s = 0 is a point mass: every trajectory is a straight line to mu.
"""

from __future__ import annotations

import torch
from torch import nn


class GaussianDenoiser(nn.Module):
    """The exact D(x; sigma) for N(mu, s^2 I), with the engine's model interface."""

    num_classes = 0

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 1:
            sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


def exact_solution(x_start, sigma_start, sigma_end, mu, s):
    return mu + (x_start - mu) * ((s**2 + sigma_end**2) / (s**2 + sigma_start**2)) ** 0.5
