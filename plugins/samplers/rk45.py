"""``rk45``: adaptive Dormand-Prince 5(4) on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma.

It integrates in sigma from sigma_max (``sigmas[0]``) to sigma_min (``sigmas[-2]``), choosing its own steps (the
schedule's interior points are ignored), then takes EDM's final Euler step to sigma = 0, which returns
D(x; sigma_min). Its NFE is whatever the engine counts: a straighter ODE (a point mass is exactly straight in sigma)
lets the error estimate vanish and the step grow, so it needs fewer evaluations. Every sample has its own step size
and error norm (the RMS over its coordinates, as torchdiffeq computes it for one state), with tolerance
atol + rtol * |x|, so the denoiser is called with one sigma per row. The
stages are combined in float64: a long step towards sigma_min cancels x ~ sigma_max down to x ~ sigma_min, which in
float32 would swamp the error estimate with rounding and force needlessly small steps.
"""

import torch

from aotbench import hookimpl
from aotbench.errors import UserError

# Dormand-Prince 5(4) tableau.
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
      [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def sample_rk45(denoise, x, sigmas, *, noise_sampler=None, callback=None, rtol: float = 1e-3, atol: float = 1e-3,
                max_steps: int = 10000):
    """Adaptive RK45 from sigma_max to sigma_min, one step size per sample, then the final Euler step to 0.

    Each sample keeps its own sigma, step size and error norm (RMS over its own coordinates), and only the samples
    still integrating are evaluated, so a sample's path and NFE never depend on the batch it is solved in. Raises
    :class:`aotbench.errors.UserError` when a sample needs more than ``max_steps`` attempted steps or its state
    becomes non-finite (the answer would otherwise stop short of sigma_min, or never end)."""
    s_start, s_end = float(sigmas[0]), float(sigmas[-2]) if len(sigmas) > 1 else float(sigmas[0])
    n, dtype = x.shape[0], x.dtype
    x = x.double()
    view = (-1, *([1] * (x.ndim - 1)))

    def f(x, s, rows=None):
        return (x - denoise(x, s, rows=rows).double()) / s.reshape(view)

    s = torch.full((n,), s_start, dtype=torch.float64, device=x.device)
    h = torch.full_like(s, -(s_start - s_end) / 100)  # integrating towards smaller sigma: negative steps
    k1 = f(x, s)
    tries = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.nonzero(s > s_end).flatten()
    it = 0
    while active.numel():
        xa, sa, k1a = x[active], s[active], k1[active]
        ha = torch.maximum(h[active], s_end - sa)  # do not overshoot sigma_min
        hv = ha.reshape(view)
        ks = [k1a]
        for j in range(1, 7):
            xj = xa + hv * sum(a * k for a, k in zip(_A[j], ks))
            ks.append(f(xj, sa + _C[j] * ha, active))
        x5 = xa + hv * sum(b * k for b, k in zip(_B5, ks))
        err = hv * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks))
        scale = atol + rtol * torch.maximum(xa.abs(), x5.abs())
        norm = (err / scale).pow(2).flatten(1).mean(1).sqrt()
        if not torch.isfinite(norm).all():
            raise UserError(f"rk45: the state of {int((~torch.isfinite(norm)).sum())} sample(s) became non-finite "
                            f"at sigma {float(sa[~torch.isfinite(norm)][0]):.4g}")
        ok = norm <= 1.0
        acc = active[ok]
        x[acc], s[acc], k1[acc] = x5[ok], sa[ok] + ha[ok], ks[-1][ok]  # FSAL: the 7th stage is the new slope
        factor = torch.where(norm == 0, torch.full_like(norm, 10.0),
                             (0.9 * norm.clamp_min(1e-300) ** -0.2).clamp(0.2, 10.0))
        h[active] = ha * factor
        tries[active] += 1
        if callback is not None:
            callback({"i": it, "x": x, "sigma": s, "denoised": x - s.reshape(view) * k1})
        it += 1
        active = active[(s[active] > s_end)]
        if active.numel() and int(tries[active].max()) >= max_steps:
            raise UserError(f"rk45: {int((tries[active] >= max_steps).sum())} sample(s) did not reach sigma_min "
                            f"{s_end:.4g} within max_steps={max_steps} steps (raise max_steps or loosen rtol/atol)")
    return denoise(x, s_end).to(dtype)  # every row again: rows=None


def check(*, rtol, atol, max_steps):
    if rtol <= 0 or atol <= 0 or max_steps < 1:
        raise ValueError(f"need rtol > 0, atol > 0, max_steps >= 1; got {rtol}, {atol}, {max_steps}")


@hookimpl
def register_samplers(register):
    register("rk45", sample_rk45, check=check)
