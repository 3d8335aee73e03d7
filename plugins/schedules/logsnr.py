"""``logsnr``: noise levels uniform in log σ (uniform in log-SNR, λ = −log σ), DPM-Solver's default for few steps
(Lu et al. 2022, arXiv 2206.00927, Sec. 3.3 "logSNR" step sizes).

σ_i = exp(log σ_max + i/(N−1) (log σ_min − log σ_max)) for i = 0..N−1, then 0; the end points are pinned to
σ_max and σ_min exactly. ρ is not used.
"""

import math

import torch

from aotbench import hookimpl


class LogSNR:
    """Uniform in log σ; ignores ``rho``."""

    uses_rho = False

    def sigmas(self, steps, sigma_min, sigma_max, rho, *, device=None):
        """``[steps + 1]`` float64, strictly decreasing, end points exact. Raises ValueError for a bad range."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        frac = torch.arange(steps, dtype=torch.float64, device=device) / max(steps - 1, 1)
        sig = torch.exp(math.log(sigma_max) + frac * (math.log(sigma_min) - math.log(sigma_max)))
        sig[0] = sigma_max
        if steps > 1:
            sig[-1] = sigma_min
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64, device=device)])


@hookimpl
def register_schedules(register):
    register("logsnr", LogSNR)
