"""``edm``: EDM's training objective (Karras et al. 2022, Table 1 "Ours"; ``training/networks.py`` ``EDMPrecond``,
``training/loss.py`` ``EDMLoss``), the default.

- noise levels: ln σ ~ N(P_mean, P_std²) with P_mean = −1.2, P_std = 1.2;
- loss weight: λ(σ) = (σ² + σ_d²) / (σ σ_d)², σ_d = 0.5;
- preconditioning: c_skip = σ_d² / (σ² + σ_d²), c_out = σ σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²),
  c_noise = ln(σ) / 4.

The operations are those the engine ran before objectives were plugins, in the same order, so a model trained with
this objective has the same weights, bit for bit, and the same key (``edm`` is the field's first value).
"""

from aotbench import hookimpl
from aotbench.edm import SIGMA_DATA, loss_weight, sample_sigma


class EDM:
    """EDM's objective; no parameters (σ_data, P_mean and P_std are EDM's)."""

    def sample_sigma(self, n, generator=None):
        """[n] float32 training noise levels, ln σ ~ N(−1.2, 1.2²)."""
        return sample_sigma(n, generator)

    def weight(self, sigma):
        """λ(σ) = (σ² + σ_d²) / (σ σ_d)², shaped like ``sigma``."""
        return loss_weight(sigma)

    def precond(self, sigma):
        """(c_skip, c_out, c_in) shaped like ``sigma`` [B, 1, ..., 1], and c_noise = ln(σ)/4 [B]."""
        sd = SIGMA_DATA
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.flatten().log() / 4
        return c_skip, c_out, c_in, c_noise


@hookimpl
def register_objectives(register):
    register("edm", EDM, default=True)
