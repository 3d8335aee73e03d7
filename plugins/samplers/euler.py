"""``euler``: first-order probability-flow ODE solver, dx/dsigma = (x - D(x; sigma)) / sigma. NFE = steps."""

from aotbench import hookimpl


def sample_euler(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """Euler steps along the EDM schedule (x = noise * sigmas[0]); one evaluation per step."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]
        x = x + (sigmas[i + 1] - sigmas[i]) * d
    return x


@hookimpl
def register_samplers(register):
    register("euler", sample_euler)
