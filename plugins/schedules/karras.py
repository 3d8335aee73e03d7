"""``karras``: EDM's ρ-schedule (Karras et al. 2022, Eq. 5; ``generate.py``), the default.

σ_i = (σ_max^(1/ρ) + i/(N−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ for i = 0..N−1, then σ_N = 0. ρ = 7 is EDM's choice;
the AOT paper's low-NFE settings use ρ = 90 (unconditional) and 72 (conditional). The formula is EDM's bit for bit,
so its end points are σ_max and σ_min to within float rounding (a few ulp), as in EDM's own sampler.
"""

from aotbench import hookimpl
from aotbench.edm import karras_sigmas


class Karras:
    """EDM's ρ-schedule; reads the cell's ``rho``."""

    uses_rho = True

    def sigmas(self, steps, sigma_min, sigma_max, rho, *, device=None):
        """``[steps + 1]`` float64 (see the module docstring)."""
        return karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)


@hookimpl
def register_schedules(register):
    register("karras", Karras, default=True)
