"""The training objective in EDM's σ-space: the denoiser an objective's preconditioning makes of a raw network, and
the weighted denoising loss every objective trains with.

Every objective plugin (:class:`aotbench.contracts.Objective`) is expressed in the notation of EDM (Karras et al.
2022, Sec. 2 and Table 1): data y, standard-normal noise n, noise level σ, noisy input x = y + σ n and a denoiser
D(x; σ) ≈ E[y | x]. An objective chooses three things, and nothing else:

- the training noise levels, σ ~ p_train (``sample_sigma``);
- the loss weight λ(σ) of the loss E_σ λ(σ) ‖D(y + σ n; σ) − y‖² (EDM Eq. 2 and 8; ``weight``);
- the preconditioning D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)) of the raw network F (EDM Eq. 7;
  ``precond``).

Any objective whose model is a function of (x_t, t) on a path x_t = α(t) y + β(t) n can be written so, with
σ = β/α and x = x_t / α (EDM Sec. 2, "scaling"); flow matching's velocity loss and DDPM's ε-loss are λ-weighted
denoising losses (see ``plugins/objectives/``). Because the trained model is a D(x; σ) either way, the samplers,
schedules, guidance and metrics, which all work on D in σ-space, treat every objective alike, and curvature and
truncation error are measured on the same probability-flow ODE dx/dσ = (x − D(x; σ)) / σ.
"""

from __future__ import annotations

import torch
from torch import nn


def bcast(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ (a float, a 0-d tensor or a [B] tensor) as [B, 1, ..., 1] in ``x``'s dtype and device, to broadcast against
    ``x`` [B, *S]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Denoiser(nn.Module):
    """A raw network F wrapped by an objective's preconditioning into D(x; σ) = c_skip x + c_out F(c_in x; c_noise)
    (Karras et al. 2022, Eq. 7).

    ``objective`` is an instance of an objective plugin (not a module: it holds no weights, so the state dict is
    ``net``'s alone, under ``net.``). ``num_classes`` is kept so that samplers can ask for the "no label" index.
    """

    def __init__(self, net: nn.Module, objective, num_classes: int = 0):
        super().__init__()
        self.net, self.objective, self.num_classes = net, objective, num_classes

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        """D(x; σ): ``x`` [B, *S], ``sigma`` a float, 0-d or [B] tensor (> 0); returns [B, *S] in float32. The
        coefficients are computed in float32 (whatever ``x``'s dtype) and the network sees float32 input, as in
        EDM's ``EDMPrecond``."""
        sigma = bcast(sigma, x).to(torch.float32)
        c_skip, c_out, c_in, c_noise = self.objective.precond(sigma)
        f = self.net((c_in * x).to(torch.float32), c_noise, class_labels, augment_labels)
        return c_skip * x + c_out * f.to(torch.float32)


def denoising_loss(model: nn.Module, objective, y, noise, sigma, class_labels=None,
                   augment_labels=None) -> torch.Tensor:
    """Per-sample loss λ(σ) ‖D(y + σ n; σ) − y‖², summed over the coordinates; shape [B] (EDM Eq. 2 with the weight
    of Eq. 8, ``training/loss.py``'s ``EDMLoss`` for EDM's objective).

    ``model`` is the :class:`Denoiser` (or its DDP wrapper), ``objective`` its objective (which gives λ); ``y`` [B,
    *S] data; ``noise`` [B, *S] the (paired) standard-normal noise of each sample; ``sigma`` [B] its noise level.
    """
    s = bcast(sigma, y)
    denoised = model(y + s * noise, sigma, class_labels, augment_labels)
    return (objective.weight(s) * (denoised - y) ** 2).flatten(1).sum(1)
