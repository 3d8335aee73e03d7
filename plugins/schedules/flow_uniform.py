"""``flow-uniform``: noise levels uniform in flow-matching time t = σ / (1 + σ), the grid flow-matching models are
usually sampled on (torchcfm's and rectified flow's fixed-step Euler; Lipman et al. 2023, arXiv 2210.02747; Liu et al.
2023, arXiv 2209.03003), mapped to EDM's σ through the linear interpolant x_t = (1 − t) y + t n, for which
x_t / (1 − t) = y + σ n (``plugins/objectives/rectified_flow.py`` derives it):

    t(σ) = σ / (1 + σ),    σ(t) = t / (1 − t).

t_i = t(σ_max) + i/(N−1) (t(σ_min) − t(σ_max)), σ_i = σ(t_i), then a final 0; the end points are pinned to σ_max and
σ_min exactly. ρ is not used. Any model can be sampled on it; for one trained with ``rectified-flow``, Euler on it is
the Euler method on the learned flow dx_t/dt = v̂ at uniform time steps.
"""

from aotbench import hookimpl
from aotbench.edm import finish_schedule, schedule_fractions


class FlowUniform:
    """Uniform in t = σ / (1 + σ); ignores ``rho``."""

    uses_rho = False

    def sigmas(self, steps, sigma_min, sigma_max, rho, *, device=None):
        """``[steps + 1]`` float64, strictly decreasing, end points exact. Raises ValueError for a bad range."""
        frac = schedule_fractions(steps, sigma_min, sigma_max, device)
        a, b = sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min)
        t = a + frac * (b - a)
        return finish_schedule(t / (1 - t), sigma_min, sigma_max)


@hookimpl
def register_schedules(register):
    register("flow-uniform", FlowUniform)
