"""``edm-stochastic``: EDM's stochastic sampler (Karras et al. 2022, Algorithm 2).

At each step with sigma_i in [s_min, s_max], noise is added to raise sigma_i to sigma_hat = (1 + gamma) sigma_i,
gamma = min(s_churn / N, sqrt(2) - 1), with s_noise scaling the added noise; then a Heun step from sigma_hat to
sigma_{i+1} (Euler for the last step). With s_churn = 0 it is exactly ``heun``. NFE = 2 * steps - 1.
"""

import math

import torch

from aotbench import hookimpl


def sample_edm_stochastic(denoise, x, sigmas, *, noise_sampler=None, callback=None, s_churn: float = 0.0,
                          s_min: float = 0.0, s_max: float = 1000.0, s_noise: float = 1.0):
    """EDM Algorithm 2 with S_churn, S_min, S_max (1000 stands for EDM's infinity), S_noise."""
    n = len(sigmas) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1) if n > 0 else 0.0
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if s_min <= float(s) <= s_max else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = noise_sampler(x) if noise_sampler is not None else torch.randn_like(x)
            x = x + (s_hat**2 - s**2).sqrt() * s_noise * eps
        denoised = denoise(x, s_hat)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s_hat, "denoised": denoised})
        d = (x - denoised) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, s_next, stage=1)) / s_next
            x_next = x + (s_next - s_hat) * (d + d_next) / 2
        x = x_next
    return x


def check(*, s_churn, s_min, s_max, s_noise):
    if s_churn < 0 or s_min < 0 or s_max < s_min or s_noise <= 0:
        raise ValueError(f"need s_churn >= 0, 0 <= s_min <= s_max and s_noise > 0; got s_churn={s_churn}, "
                         f"s_min={s_min}, s_max={s_max}, s_noise={s_noise}")


@hookimpl
def register_samplers(register):
    register("edm-stochastic", sample_edm_stochastic, check=check)
