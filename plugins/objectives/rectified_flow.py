"""``rectified-flow``: conditional flow matching with the linear interpolant (Lipman et al. 2023, arXiv 2210.02747,
Eq. 22-23 with σ_min = 0; Liu et al. 2023, arXiv 2209.03003, "rectified flow"; Esser et al. 2024, arXiv
2403.03206, "SD3", Sec. 2-3), written in EDM's σ-space.

The flow-matching model. On the path x_t = (1 − t) y + t n (t = 0 data, t = 1 noise; SD3's convention) a network
v̂(x_t, t) is trained to the conditional velocity v = dx_t/dt = n − y with the loss ‖v̂ − v‖², t ~ p(t). torchcfm's
``ConditionalFlowMatcher`` (σ = 0) is the same model with its time reversed: it writes x_t' = t' y + (1 − t') n and
u = y − n, i.e. t' = 1 − t and u = −v; a uniform t is a uniform t'.

The mapping to EDM's σ-space (Karras et al. 2022, Sec. 2: x = x_t / α(t) and σ = β(t) / α(t) for a path α y + β n).
Divide the path by 1 − t:

    x_t / (1 − t) = y + σ n   with   σ = t / (1 − t),   t = σ / (1 + σ),   1 − t = 1 / (1 + σ),

so x = x_t (1 + σ) is EDM's noisy input and x_t = x / (1 + σ). The conditional velocity gives the data back,
y = x_t − t v, so the denoiser of a velocity model is D(x; σ) = x_t − t v̂(x_t, t):

    c_skip = 1 / (1 + σ),   c_out = −σ / (1 + σ),   c_in = 1 / (1 + σ),   c_noise = t = σ / (1 + σ),

i.e. the network F = v̂ sees exactly x_t and the time t ∈ (0, 1) as its ``c_noise`` (torchcfm's and SD3's networks
take t as well; the networks' embeddings resolve t ∈ (0, 1) as they do EDM's ln(σ)/4 ∈ (−1.6, 1.1)). The loss:
D − y = (x_t − t v̂) − (x_t − t v) = −t (v̂ − v), hence

    ‖v̂ − v‖² = ‖D − y‖² / t² = λ(σ) ‖D − y‖²   with   λ(σ) = ((1 + σ) / σ)²,

and the flow-matching loss is EDM's weighted denoising loss with this λ, the same number, not an approximation. The
noise levels: t ~ U(t_min, t_max) (torchcfm, rectified flow), or t = t_min + (t_max − t_min) sigmoid(loc + scale z),
z ~ N(0, 1) (SD3's logit-normal, Eq. 19, squeezed into [t_min, t_max]); then σ = t / (1 − t). t_min > 0 and
t_max < 1 keep σ and λ finite (σ = 0 has λ = ∞, t = 1 has σ = ∞).

The probability-flow ODE is EDM's: dx/dσ = (x − D) / σ in x = x_t (1 + σ) is the flow dx_t/dt = v̂ in (x_t, t),
so every sampler steps the learned flow: an Euler step from σ to σ' on x is, divided by 1 + σ', the Euler step
x_t' = x_t + (t' − t) v̂ on the flow, and Euler on the schedule uniform in t (``flow-uniform``) is torchcfm's
fixed-step Euler sampler between t(σ_max) and t(σ_min) (started, as every sampler here, from x = σ_max n).
"""

import math

import torch

from aotbench import hookimpl

#: distributions of the training time t
T_DISTS = ("uniform", "logit-normal")


class RectifiedFlow:
    """Flow matching with the linear interpolant. ``t_dist``: ``uniform`` on [t_min, t_max] or ``logit-normal``
    (``loc``, ``scale``: the normal's mean and standard deviation before the sigmoid, SD3's m and s; they apply to
    it alone). Raises ValueError for ``t_dist`` unknown, ``not 0 < t_min < t_max < 1``, ``scale <= 0``, a
    non-finite ``loc``, and ``loc``/``scale`` set with ``t_dist="uniform"`` (they could not change the model)."""

    def __init__(self, *, t_dist: str = "uniform", loc: float = 0.0, scale: float = 1.0, t_min: float = 1e-5,
                 t_max: float = 1 - 1e-5):
        if t_dist not in T_DISTS:
            raise ValueError(f"t_dist must be one of {', '.join(T_DISTS)}, got {t_dist!r}")
        if not 0 < t_min < t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1 (t = 0 is sigma = 0, t = 1 is sigma = infinity), got "
                             f"t_min={t_min}, t_max={t_max}")
        if not scale > 0:
            raise ValueError(f"the logit-normal scale must be > 0, got {scale}")
        if not math.isfinite(loc):
            raise ValueError(f"the logit-normal loc must be finite, got {loc}")
        if t_dist == "uniform" and (loc != 0.0 or scale != 1.0):
            raise ValueError(f"loc and scale shape t_dist=logit-normal only; with t_dist=uniform leave them at "
                             f"0 and 1 (got loc={loc}, scale={scale})")
        self.t_dist, self.loc, self.scale, self.t_min, self.t_max = t_dist, loc, scale, t_min, t_max

    def sample_sigma(self, n, generator=None):
        """[n] float32 training noise levels σ = t / (1 − t), t drawn in float64 from ``t_dist`` on [t_min, t_max]."""
        if self.t_dist == "uniform":
            u = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            u = torch.sigmoid(self.loc + self.scale * torch.randn(n, generator=generator, dtype=torch.float64))
        t = self.t_min + (self.t_max - self.t_min) * u
        return (t / (1 - t)).float()

    def weight(self, sigma):
        """λ(σ) = ((1 + σ) / σ)² = 1 / t², which turns ‖D − y‖² into ‖v̂ − v‖²; shaped like ``sigma``."""
        return ((1 + sigma) / sigma) ** 2

    def precond(self, sigma):
        """(c_skip, c_out, c_in) = (1 − t, −t, 1 − t) shaped like ``sigma`` [B, 1, ..., 1], and c_noise = t [B], all
        computed from σ (1 − t = 1 / (1 + σ) keeps its precision as t approaches 1)."""
        c_in = 1 / (1 + sigma)
        t = sigma / (1 + sigma)
        return c_in, -t, c_in, t.flatten()


@hookimpl
def register_objectives(register):
    register("rectified-flow", RectifiedFlow)
