"""``time-uniform``: noise levels uniform (``power = 1``) or polynomial (``power = κ``) in the time of the VP diffusion,
DEIS's time schedules (Zhang & Chen 2022, arXiv 2204.13902, Sec. 5 "time-uniform / time-quadratic"), mapped to
EDM's σ through the VP noise schedule of EDM's Table 1 (β_d = 19.9, β_min = 0.1):

    σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1),    t(σ) = (sqrt(β_min² + 2 β_d log(1 + σ²)) − β_min) / β_d.

t_i = (t_max^(1/κ) + i/(N−1) (t_min^(1/κ) − t_max^(1/κ)))^κ between t(σ_max) and t(σ_min), then σ_i = σ(t_i) and a
final 0; the end points are pinned to σ_max and σ_min exactly. ρ is not used.
"""

import math

import torch

from aotbench import hookimpl
from aotbench.edm import finish_schedule, schedule_fractions

BETA_D, BETA_MIN = 19.9, 0.1


def vp_sigma(t: torch.Tensor) -> torch.Tensor:
    """σ of VP time ``t`` (EDM Table 1)."""
    return torch.sqrt(torch.expm1(0.5 * BETA_D * t ** 2 + BETA_MIN * t))


def vp_time(sigma: float) -> float:
    """VP time of noise level ``sigma`` (the inverse of :func:`vp_sigma`)."""
    return (math.sqrt(BETA_MIN ** 2 + 2 * BETA_D * math.log1p(sigma ** 2)) - BETA_MIN) / BETA_D


class TimeUniform:
    """Uniform (``power = 1``) or polynomial in VP time; ignores ``rho``."""

    uses_rho = False

    def __init__(self, *, power: float = 1.0):
        if not power >= 1:
            raise ValueError(f"power must be >= 1 (1: uniform in time, 2: DEIS's time-quadratic), got {power}")
        self.power = power

    def sigmas(self, steps, sigma_min, sigma_max, rho, *, device=None):
        """``[steps + 1]`` float64, strictly decreasing, end points exact. Raises ValueError for a bad range."""
        frac = schedule_fractions(steps, sigma_min, sigma_max, device)
        a, b = vp_time(sigma_max) ** (1 / self.power), vp_time(sigma_min) ** (1 / self.power)
        return finish_schedule(vp_sigma((a + frac * (b - a)) ** self.power), sigma_min, sigma_max)


@hookimpl
def register_schedules(register):
    register("time-uniform", TimeUniform)
