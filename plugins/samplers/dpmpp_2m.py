"""``dpmpp-2m``: DPM-Solver++(2M) (Lu et al. 2022) in EDM's sigma parameterization. NFE = steps.

With lambda = -ln(sigma) and h = lambda_{i+1} - lambda_i, each step is the exact solution of the ODE for a
denoiser held constant over the step, x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h) D, where D is the current
denoiser output (first step) or its second-order multistep extrapolation from the previous step.
"""

import math

from aotbench import hookimpl


def sample_dpmpp_2m(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """Multistep 2nd-order DPM-Solver++ on the EDM schedule; the step to sigma = 0 returns the denoiser output."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        if s_next == 0:
            x = denoised
            break
        h = math.log(s) - math.log(s_next)
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (s_next / s) * x - math.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


@hookimpl
def register_samplers(register):
    register("dpmpp-2m", sample_dpmpp_2m)
