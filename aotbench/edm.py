"""EDM's formulas (Karras et al. 2022): its training noise-level distribution and loss weight, its sampling
schedule, and its training loop's EMA and learning-rate ramp.

Notation follows the EDM paper: data y with per-coordinate std sigma_data, noise level sigma, noisy input
x = y + sigma * n, and the denoiser D(x; sigma) that estimates y. EDM's training objective as a whole (these
noise levels and weight plus its preconditioning) is the ``edm`` objective plugin (``plugins/objectives/edm.py``;
:mod:`aotbench.objective`).
"""

from __future__ import annotations


import torch

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2


def sample_sigma(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """EDM's training noise levels (Karras et al. 2022, Table 1): ln sigma ~ N(P_mean, P_std^2); shape [n]."""
    return (torch.randn(n, generator=generator, device=device) * P_STD + P_MEAN).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM's loss weight (Karras et al. 2022, Eq. 8 and Table 1): lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2,
    which makes the effective training target of F unit-variance; shaped like ``sigma``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device=None) -> torch.Tensor:
    """The EDM rho-schedule plus a final 0; shape [steps + 1], float64 for accuracy in the samplers.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1, sigma_N = 0.
    With steps=1 the schedule is [sigma_max, 0].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    i = torch.arange(steps, dtype=torch.float64, device=device)
    frac = i / (steps - 1) if steps > 1 else i
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sig = (a + frac * (b - a)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64, device=device)])


def schedule_fractions(steps: int, sigma_min: float, sigma_max: float, device=None) -> torch.Tensor:
    """i / (N - 1) for i = 0..N-1 (just 0 for N = 1), float64: the grid an interpolating schedule spaces its noise
    levels on. Raises ValueError for ``steps < 1`` or ``not 0 < sigma_min < sigma_max``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return torch.arange(steps, dtype=torch.float64, device=device) / max(steps - 1, 1)


def finish_schedule(sig: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """``sig`` [N] with its end points pinned to sigma_max and sigma_min exactly (float rounding of the interpolation
    aside), then the final 0 appended: [N + 1]."""
    sig = sig.clone()
    sig[0] = sigma_max
    if len(sig) > 1:
        sig[-1] = sigma_min
    return torch.cat([sig, sig.new_zeros(1)])


def ema_beta(batch_img: int, cur_img: int, halflife_img: float, rampup_ratio: float | None) -> float:
    """EDM's EMA decay per step: half-life in images, optionally ramped up as rampup_ratio * images seen."""
    halflife = halflife_img
    if rampup_ratio is not None and rampup_ratio > 0:
        halflife = min(halflife, cur_img * rampup_ratio)
    return 0.5 ** (batch_img / max(halflife, 1e-8))


def lr_at(base_lr: float, cur_img: int, rampup_img: float) -> float:
    """EDM's linear learning-rate ramp-up over ``rampup_img`` images."""
    if rampup_img <= 0:
        return base_lr
    return base_lr * min(cur_img / rampup_img, 1.0)


