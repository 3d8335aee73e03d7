"""``logsnr``: noise levels uniform in log σ (uniform in log-SNR, λ = −log σ), DPM-Solver's default for few steps
(Lu et al. 2022, arXiv 2206.00927, Sec. 3.3 "logSNR" step sizes).

σ_i = exp(log σ_max + i/(N−1) (log σ_min − log σ_max)) for i = 0..N−1, then 0; the end points are pinned to
σ_max and σ_min exactly. ρ is not used.
"""

import math

import torch

from aotbench import hookimpl
from aotbench.edm import finish_schedule, schedule_fractions


class LogSNR:
    """Uniform in log σ; ignores ``rho``."""

    uses_rho = False

    def sigmas(self, steps, sigma_min, sigma_max, rho, *, device=None):
        """``[steps + 1]`` float64, strictly decreasing, end points exact. Raises ValueError for a bad range."""
        frac = schedule_fractions(steps, sigma_min, sigma_max, device)
        sig = torch.exp(math.log(sigma_max) + frac * (math.log(sigma_min) - math.log(sigma_max)))
        return finish_schedule(sig, sigma_min, sigma_max)


@hookimpl
def register_schedules(register):
    register("logsnr", LogSNR)
