"""``dg``: Discriminator Guidance (Kim et al. 2023), as the AOT paper combines it with AOT.

A small time-conditioned discriminator d(x, sigma[, y]) is trained with BCE to tell real training samples (label 1)
from samples of the trained model (label 0), both noised at sigma drawn from the EDM training distribution. Its
logit is log(d / (1 - d)), an estimate of log p_data/p_model at noise level sigma, so the guided denoiser

    D~(x; sigma) = D(x; sigma) + w sigma^2 grad_x log(d / (1 - d))

corrects the model's score by the density-ratio gradient (the denoiser and the score differ by a factor sigma^2).
It applies only for sigma in [sigma_lo, sigma_hi]; elsewhere D is returned untouched.

The fake samples come from a stated sampler configuration (``sampler``, ``sampler_steps``, ``n_fake``). With
``pairing`` other than ``none`` the discriminator's training noise is paired to its inputs by that pairing plugin
(the paper's "AOT for the discriminator" reading). The trained discriminator is cached like a model, under the
model's train_key plus these settings. Each guided evaluation costs one discriminator forward and backward per
sample, reported as ``disc_grad_evals`` beside NFE.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from aotbench import hookimpl
from aotbench.edm import SIGMA_DATA, karras_sigmas, sample_sigma
from aotbench.layers import SinusoidalEmbedding
from aotbench.seeds import derive, generator
from aotbench.storage import atomic_torch_save, load_checkpoint, stable_hash

FORMAT = "aotbench-discriminator-v1"


class Discriminator(nn.Module):
    """Logit of d(x, sigma, y): a small CNN for images, an MLP for flat data; input scaled by EDM's c_in."""

    def __init__(self, shape, num_classes: int = 0, width: int = 64):
        super().__init__()
        self.shape, self.num_classes, self.width = tuple(shape), num_classes, width
        if len(shape) == 3:
            self.body = nn.Sequential(
                nn.Conv2d(shape[0], width, 3, padding=1), nn.SiLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
                nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
        else:
            d = math.prod(shape)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, 2 * width), nn.SiLU(),
                                      nn.Linear(2 * width, 2 * width), nn.SiLU())
        self.emb = nn.Sequential(SinusoidalEmbedding(2 * width), nn.Linear(2 * width, 2 * width))
        self.cls = nn.Embedding(num_classes + 1, 2 * width) if num_classes else None
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(2 * width, 2 * width), nn.SiLU(), nn.Linear(2 * width, 1))

    def forward(self, x, sigma, labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).float()
        c_in = (sigma**2 + SIGMA_DATA**2).rsqrt().reshape(-1, *([1] * (x.ndim - 1)))
        h = self.body((c_in * x).float()) + self.emb(sigma.log() / 4)
        if self.cls is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
            h = h + self.cls(labels)
        return self.head(h).squeeze(1)


class DG:
    """Discriminator guidance: D + w sigma^2 grad log(d/(1-d)) for sigma in [sigma_lo, sigma_hi]."""

    needs: frozenset = frozenset()

    def __init__(self, *, w: float | None = None, sigma_lo: float = 0.045, sigma_hi: float = 80.0,
                 disc_steps: int = 1500, disc_batch: int = 128, disc_lr: float = 1e-3, disc_width: int = 64,
                 n_fake: int = 2000, sampler: str = "heun", sampler_steps: int = 18, pairing: str = "none",
                 disc_path: str = ""):
        if w is not None and w < 0:
            raise ValueError(f"w must be >= 0 (or unset: 2 unconditional, 1 conditional), got {w}")
        if not 0 <= sigma_lo <= sigma_hi:
            raise ValueError(f"need 0 <= sigma_lo <= sigma_hi, got {sigma_lo}, {sigma_hi}")
        if disc_steps < 0 or disc_batch < 2 or disc_lr <= 0 or disc_width < 1 or n_fake < 2 or sampler_steps < 1:
            raise ValueError("need disc_steps >= 0, disc_batch >= 2, disc_lr > 0, disc_width >= 1, n_fake >= 2, "
                             "sampler_steps >= 1")
        if disc_steps == 0 and not disc_path:
            raise ValueError("no discriminator: give disc_steps > 0 (train one) or disc_path (a cached one)")
        if disc_path and not Path(disc_path).is_file():
            raise FileNotFoundError(f"discriminator file not found: {disc_path}")
        self.w, self.sigma_lo, self.sigma_hi = w, sigma_lo, sigma_hi
        self.settings = dict(disc_steps=disc_steps, disc_batch=disc_batch, disc_lr=disc_lr, disc_width=disc_width,
                             n_fake=n_fake, sampler=sampler, sampler_steps=sampler_steps, pairing=pairing)
        self.disc_path = disc_path
        self.disc: nn.Module | None = None

    # -- training ---------------------------------------------------------------------------------------------
    def prepare(self, context) -> None:
        """Load the cached discriminator for this model and settings, or train and cache it."""
        if self.disc is not None:
            return
        shape, k = context.splits.shape, context.num_classes
        disc = Discriminator(shape, k, self.settings["disc_width"])
        path = Path(self.disc_path) if self.disc_path else (
            context.cache_dir / "dg" / f"{stable_hash({'model': context.cell.train.key, **self.settings})}.pt")
        if path.is_file():
            disc.load_state_dict(load_checkpoint(path, FORMAT)["state"])
        else:
            self._fit(disc, context)
            atomic_torch_save(path, {"format": FORMAT, "settings": self.settings, "model": context.cell.train.key,
                                     "state": disc.state_dict()})
        self.disc = disc.to(context.device).eval().requires_grad_(False)

    @torch.no_grad()
    def _fakes(self, context):
        s = self.settings
        sample = context.registry.get("sampler", s["sampler"]).build()
        n = s["n_fake"]
        seed = derive("dg-fake", context.cell.sample_seed)
        labels = (torch.randint(context.num_classes, (n,), generator=generator(seed, "labels"))
                  if context.num_classes else None)
        noise = torch.randn((n, *context.splits.shape), generator=generator(seed, "noise"))
        sigmas = karras_sigmas(s["sampler_steps"], context.cell.sigma_min, context.cell.sigma_max, 7.0)
        out = []
        for i in range(0, n, 500):
            lab = None if labels is None else labels[i:i + 500].to(context.device)
            x = noise[i:i + 500].to(context.device) * float(sigmas[0])
            out.append(sample(lambda x, sg, _l=lab: context.model(x, sg, _l), x, sigmas.to(context.device),
                              generator=generator(seed, "sampler", i, device=context.device)).cpu())
        return torch.cat(out), labels

    def _fit(self, disc: Discriminator, context) -> None:
        from aotbench.progress import bar

        s = self.settings
        fake, fake_labels = self._fakes(context)
        real = context.splits.train
        real_labels = context.splits.train_labels if context.num_classes else None
        pairing = context.registry.get("pairing", s["pairing"]).build()
        disc.to(context.device).train()
        opt = torch.optim.Adam(disc.parameters(), lr=s["disc_lr"])
        b = s["disc_batch"]
        with torch.random.fork_rng(devices=[]), bar(total=s["disc_steps"], desc="dg discriminator",
                                                    disable=not context.progress, unit="step") as pb:
            for step in range(s["disc_steps"]):
                g = generator("dg-step", context.cell.train.key, step)
                ri = torch.randint(len(real), (b,), generator=g)
                fi = torch.randint(len(fake), (b,), generator=g)
                y = torch.cat([real[ri], fake[fi]])
                labels = None if real_labels is None else torch.cat([real_labels[ri], fake_labels[fi]])
                noise = torch.randn(y.shape, generator=g)
                noise = noise[pairing.pair(y, noise, labels)]
                sigma = sample_sigma(2 * b, g)
                x = y + sigma.reshape(-1, *([1] * (y.ndim - 1))) * noise
                target = torch.cat([torch.ones(b), torch.zeros(b)])
                logits = disc(x.to(context.device), sigma.to(context.device),
                              None if labels is None else labels.to(context.device))
                loss = F.binary_cross_entropy_with_logits(logits, target.to(context.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                pb.update()

    # -- guidance ---------------------------------------------------------------------------------------------
    def wrap(self, denoise, *, context):
        if self.disc is None:
            self.prepare(context)
        w = self.w if self.w is not None else (1.0 if context.num_classes else 2.0)
        labels, costs, disc = context.labels, context.costs, self.disc

        def guided(x, sigma):
            d = denoise(x, sigma)
            s = float(sigma)
            if not self.sigma_lo <= s <= self.sigma_hi or w == 0:
                return d
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                logit = disc(xg, sigma, labels)
                (grad,) = torch.autograd.grad(logit.sum(), xg)
            costs["disc_grad_evals"] = costs.get("disc_grad_evals", 0.0) + x.shape[0]
            return d + w * s**2 * grad.to(d.dtype)

        return guided


@hookimpl
def register_guidance(register):
    register("dg", DG)
