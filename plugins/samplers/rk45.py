"""``rk45``: adaptive Dormand-Prince 5(4) on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma.

It integrates in sigma from sigma_max (``sigmas[0]``) to sigma_min (``sigmas[-2]``), choosing its own steps (the
schedule's interior points are ignored), then takes EDM's final Euler step to sigma = 0, which returns
D(x; sigma_min). Its NFE is whatever the engine counts: a straighter ODE (a point mass is exactly straight in sigma)
lets the error estimate vanish and the step grow, so it needs fewer evaluations. One step size is shared by the
batch; the error norm is the RMS over all elements (as in torchdiffeq), with tolerance atol + rtol * |x|. The
stages are combined in float64: a long step towards sigma_min cancels x ~ sigma_max down to x ~ sigma_min, which in
float32 would swamp the error estimate with rounding and force needlessly small steps.
"""

import torch

from aotbench import hookimpl

# Dormand-Prince 5(4) tableau.
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
      [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def sample_rk45(denoise, x, sigmas, *, generator=None, callback=None, rtol: float = 1e-3, atol: float = 1e-3,
                max_steps: int = 10000):
    """Adaptive RK45 from sigma_max to sigma_min, then the final Euler step to 0 (see the module docstring)."""
    s_start, s_end = float(sigmas[0]), float(sigmas[-2]) if len(sigmas) > 1 else float(sigmas[0])

    dtype = x.dtype
    x = x.double()

    def f(x, s):
        return (x - denoise(x, s).double()) / s

    s, h = s_start, -(s_start - s_end) / 100  # integrating towards smaller sigma: negative steps
    k1 = f(x, s)
    steps = 0
    while s > s_end and steps < max_steps:
        h = max(h, s_end - s)  # do not overshoot sigma_min
        ks = [k1]
        for j in range(1, 7):
            xj = x + h * sum(a * k for a, k in zip(_A[j], ks))
            ks.append(f(xj, s + _C[j] * h))
        x5 = x + h * sum(b * k for b, k in zip(_B5, ks))
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks))
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        norm = float((err / scale).pow(2).mean().sqrt())
        if norm <= 1.0:
            x, s, k1 = x5, s + h, ks[-1]  # FSAL: the 7th stage is the slope at the new point
            steps += 1
            if callback is not None:
                callback({"i": steps - 1, "x": x, "sigma": s, "denoised": x - s * k1})
        factor = 10.0 if norm == 0 else min(10.0, max(0.2, 0.9 * norm ** -0.2))
        h *= factor
    return denoise(x, s_end).to(dtype)


def check(*, rtol, atol, max_steps):
    if rtol <= 0 or atol <= 0 or max_steps < 1:
        raise ValueError(f"need rtol > 0, atol > 0, max_steps >= 1; got {rtol}, {atol}, {max_steps}")


@hookimpl
def register_samplers(register):
    register("rk45", sample_rk45, check=check)
