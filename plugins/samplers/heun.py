"""``heun``: EDM's deterministic 2nd-order sampler (Karras et al. 2022, Algorithm 1).

Each step takes an Euler step from sigma_i to sigma_{i+1} and corrects it with the slope at the end point, except
the last step to sigma = 0, which stays Euler (the slope at sigma = 0 is undefined). NFE = 2 * steps - 1.
"""

from aotbench import hookimpl


def sample_heun(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """Heun steps along the EDM schedule; the final step to sigma=0 is an Euler step."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, s)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, s_next, stage=1)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


@hookimpl
def register_samplers(register):
    register("heun", sample_heun, default=True)
