"""``dg``: Discriminator Guidance (Kim et al., ICML 2023, "Refining Generative Process with Discriminator Guidance in
Score-based Diffusion Models"; reference code github.com/alsdudrla10/DG), as the AOT paper combines it with AOT.

What DG does
------------
A time-conditioned discriminator d(x, t[, y]) is trained with BCE to tell real training samples (label 1) from
samples of the trained model (label 0), both diffused to a random time (DG's ``train.py``). Its log-odds
log(d / (1 - d)) estimate log p_data/p_model of the noised distributions, and DG adds their gradient, the
paper's correction term c_phi(x, t) = grad_x log(d_phi / (1 - d_phi)), weighted by ``w``, to the model's score
(s_theta + w c_phi, the score that deceives the discriminator; exact for the optimal discriminator and w = 1).
In EDM's denoiser form (D and the score differ by sigma^2) that is

    D~(x; sigma) = D(x; sigma) + w sigma^2 grad_x log(d / (1 - d)).

DG's sampler (``edm_sampler`` in its ``generate.py``) and what this plugin does the same way:

- **Only the Euler evaluation is corrected by default.** Each Heun step adds the correction to its first
  evaluation with ``dg_weight_1st_order`` (default 2) and to the second, corrector evaluation with
  ``dg_weight_2nd_order`` (default 0). Here ``w`` is the first weight, applied when the engine's
  ``context.stage`` is 0, and ``w2nd`` the second, applied at stage 1 (default 0). ``w2nd = w`` applies the same
  correction at both evaluations (what this plugin did before: about twice DG's strength).
  ``w`` unset means DG's published recipes: 2 for an unconditional model (generate.py's default), 1 for a
  conditional one (the README's conditional command).
- **Where**: DG corrects for VP times tau in [time_min, time_max] = [0.01, 1] (``generate.py``), where
  tau(sigma) is the time of its VP-SDE (beta_min 0.1, beta_max 20) with the same signal-to-noise ratio,
  sigma^2 = exp(0.5 (beta_max - beta_min) tau^2 + beta_min tau) - 1 (``classifier_lib.vpsde``). In sigma that is
  [``sigma_lo``, ``sigma_hi``] = [0.044688, 152.167], the defaults (EDM's sigma_max = 80, even raised by
  churn, stays below 152, so only sigma_lo bites). Each row is tested against its own sigma (the rk45 sampler
  passes one per row); rows outside are returned untouched and cost no discriminator evaluation.
- **Clipping**: DG clips d to [1e-5, 1 - 1e-5] before taking log(d / (1 - d)) (``classifier_lib.get_log_ratio``;
  not a command-line option there, a constant ``D_CLIP`` here). The log-ratio is then bounded by
  +-log((1 - 1e-5) / 1e-5) = +-11.51 and a row whose d is clipped gets a zero gradient (no correction). This
  plugin clamps the logit to that bound, which gives the same values and gradients without rounding d.
- **Boosting** (``generate.py``'s ``--boosting``; flag default 0, set to 1 in the README's recipe for the
  conditional CIFAR-10 model): on every ``period_weight`` = 2nd step (i = 0, 2, 4, ...) the first-order
  correction of the samples whose (clipped) log-ratio is negative is doubled; and on every ``period`` = 5th step,
  the samples whose log-ratio was negative at the previous step are re-noised with S_churn = 4 (EDM's churn)
  before the step. ``boosting`` unset follows the recipes: on for a conditional model, off for an unconditional
  one. Only the doubling is done here: the step index i is the number of stage-0 evaluations of the batch so far
  (one per step for euler, heun, edm-stochastic and dpmpp-2m; for rk45, one per Runge-Kutta stage), and the
  doubling never applies at stage 1 (DG computes no log-ratio there). The re-noising is an action of the sampler
  on its state, which a denoiser wrapper cannot take; it is left out.

How the discriminator is trained
--------------------------------
- **Noise levels** (``disc_sigma="dg"``, the default): DG's ``train.py`` draws times by importance sampling
  (``vpsde.get_diffusion_time``, ``importance_sampling=True``, t_min = 1e-5): the density of t is proportional to
  beta(t) / (1 - exp(-int_0^t beta)) on [1e-5, 1], drawn by inverting its CDF. Its antiderivative is
  log(exp(int_0^t beta) - 1) = log sigma(t)^2, so in EDM's sigma DG's draw is exactly **log-uniform**:
  ln sigma ~ U[ln sigma(1e-5), ln sigma(1)] = U[ln 1.0005e-3, ln 152.17], density 1 / (sigma ln(152.17/1.0005e-3)).
  ``disc_sigma="edm"`` draws EDM's training distribution instead (ln sigma ~ N(-1.2, 1.2^2)).
  (DG feeds its discriminator the VP-scaled input x / sqrt(1 + sigma^2) and tau; the built-in discriminator here
  takes EDM's c_in-scaled input and ln(sigma) / 4, an equivalent parametrization of the same noise level.)
- **Fakes**: ``n_fake`` samples of the model from a stated sampler (``sampler``, ``sampler_steps``, EDM's schedule
  between the cell's sigma_min and sigma_max with rho = 7), unguided, as DG trains on its vanilla samples
  (README step 2). Every fake's starting noise, label (in the train split's class proportions) and stochastic-
  sampler noise come from its own generator, seeded by its index and the model's train_key, so the fakes depend
  neither on an internal batch size nor on the cell that happened to train the discriminator first.
- **Discriminator**: DG's is a classifier head on the features of a pretrained, frozen noise-conditional classifier
  (ADM's, ``classifier_lib.get_discriminator``). By default this plugin trains a small CNN (images) or MLP (flat
  data) from scratch, CPU-sized. ``features_path`` names a TorchScript file of the user's mapping
  (x [B, *S], sigma [B]) -> features [B, F] (x is the noisy sample y + sigma n in data scale, sigma EDM's; a VP
  classifier like DG's wants x / sqrt(1 + sigma^2) and tau(sigma) computed inside it): it is kept frozen, the small
  head is trained on its features, and guidance differentiates through it. Only the head is cached; the
  TorchScript is only ever loaded from the user's path, never from a results folder, and its sha256 is part of the
  cache key.
- With ``pairing`` other than ``none`` the discriminator's training noise is paired to its inputs by that pairing
  plugin (the paper's "AOT for the discriminator" reading). The trained discriminator is cached under
  stable_hash({'model': train_key, **settings}), where settings hold everything that changes it.

Each corrected row costs one discriminator forward and backward, reported as ``disc_grad_evals`` beside NFE.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from aotbench import hookimpl
from aotbench.edm import SIGMA_DATA, karras_sigmas, sample_sigma
from aotbench.errors import UserError
from aotbench.layers import SinusoidalEmbedding
from aotbench.seeds import PerSampleNoise, derive, generator, per_sample
from aotbench.storage import atomic_torch_save, load_checkpoint, stable_hash

FORMAT = "aotbench-discriminator-v2"

#: DG's VP-SDE (``classifier_lib.vpsde``): beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0
#: d is clipped to [D_CLIP, 1 - D_CLIP] before log(d / (1 - d)) (``classifier_lib.get_log_ratio``)
D_CLIP = 1e-5
#: the bound that clipping puts on the log-ratio, log((1 - D_CLIP) / D_CLIP) = 11.51
LOG_RATIO_MAX = math.log((1 - D_CLIP) / D_CLIP)
#: boosting (``generate.py``): every BOOST_EVERY-th step, rows with a negative log-ratio get BOOST_FACTOR x
BOOST_EVERY, BOOST_FACTOR = 2, 2.0
#: fakes are sampled this many at a time (memory only: every fake is drawn from its own generators)
FAKE_BATCH = 500


def vp_sigma(t: float) -> float:
    """EDM sigma with the signal-to-noise ratio of DG's VP-SDE at time t: sigma^2 = exp(int_0^t beta) - 1."""
    integral = 0.5 * (VP_BETA_MAX - VP_BETA_MIN) * t * t + VP_BETA_MIN * t
    return math.sqrt(math.expm1(integral))


def vp_time(sigma: float) -> float:
    """The inverse of :func:`vp_sigma` (DG's ``vpsde.compute_tau``)."""
    b0, db = VP_BETA_MIN, VP_BETA_MAX - VP_BETA_MIN
    return (-b0 + math.sqrt(b0 * b0 + 2 * db * math.log1p(sigma * sigma))) / db


#: DG's guidance range, time_min = 0.01 and time_max = 1 (``generate.py``), as sigma: [0.044688, 152.167]
DG_SIGMA_LO, DG_SIGMA_HI = vp_sigma(0.01), vp_sigma(1.0)
#: DG's discriminator training range, t in [1e-5, 1] (``train.py`` via ``vpsde.get_diffusion_time``)
TRAIN_SIGMA_MIN, TRAIN_SIGMA_MAX = vp_sigma(1e-5), vp_sigma(1.0)
DISC_SIGMA = ("dg", "edm")


def draw_train_sigma(n: int, g: torch.Generator, how: str = "dg") -> torch.Tensor:
    """[n] training noise levels of the discriminator.

    ``"dg"``: DG's importance-sampled times mapped to sigma, i.e. ln sigma ~ U[ln TRAIN_SIGMA_MIN, ln
    TRAIN_SIGMA_MAX] (density 1 / (sigma ln(TRAIN_SIGMA_MAX / TRAIN_SIGMA_MIN)); see the module docstring).
    ``"edm"``: EDM's training distribution, ln sigma ~ N(-1.2, 1.2^2)."""
    if how == "edm":
        return sample_sigma(n, g)
    lo, hi = math.log(TRAIN_SIGMA_MIN), math.log(TRAIN_SIGMA_MAX)
    return (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).exp().float()


def clipped_log_ratio(logit: torch.Tensor) -> torch.Tensor:
    """log(d_c / (1 - d_c)) with d = sigmoid(logit) and d_c = clip(d, D_CLIP, 1 - D_CLIP): the logit clamped to
    +-LOG_RATIO_MAX (the same values, and zero gradient where d is clipped, as DG's torch.clip gives)."""
    return logit.clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def load_features(path: str) -> tuple[torch.jit.ScriptModule, str]:
    """The user's TorchScript feature extractor and the sha256 of its file; a one-line error if it will not do."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    data = p.read_bytes()
    try:
        module = torch.jit.load(str(p), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError, ValueError, ... for a file that is not TorchScript
        raise ValueError(f"features_path {path} is not a loadable TorchScript file: {_one_line(err)}") from None
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module, hashlib.sha256(data).hexdigest()


class Discriminator(nn.Module):
    """Logit of d(x, sigma, y): a small CNN for images, an MLP for flat data (input scaled by EDM's c_in), or, with
    ``feature_dim`` > 0, a head on the features of an attached frozen extractor f(x, sigma) -> [B, F]."""

    def __init__(self, shape, num_classes: int = 0, width: int = 64, feature_dim: int = 0):
        super().__init__()
        self.shape, self.num_classes, self.width, self.feature_dim = tuple(shape), num_classes, width, feature_dim
        if feature_dim:
            self.body = nn.Sequential(nn.Linear(feature_dim, 2 * width), nn.SiLU())
        elif len(shape) == 3:
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
        self.attach(None)

    def attach(self, extractor) -> None:
        """Set the frozen feature extractor; kept out of the module's state (only the head is saved)."""
        object.__setattr__(self, "extractor", extractor)

    def forward(self, x, sigma, labels=None):
        sigma = torch.as_tensor(sigma, device=x.device).float().expand(x.shape[0])
        if self.feature_dim:
            h = self.body(self.extractor(x.float(), sigma).float())
        else:
            c_in = (sigma**2 + SIGMA_DATA**2).rsqrt().reshape(-1, *([1] * (x.ndim - 1)))
            h = self.body(c_in * x.float())
        h = h + self.emb(sigma.log() / 4)
        if self.cls is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
            h = h + self.cls(labels)
        return self.head(h).squeeze(1)


def _row_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma (a float, a 0-d tensor or one per row) as [B] in x's dtype."""
    s = torch.as_tensor(sigma, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    if s.ndim == 0:
        return s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"dg: sigma must be a scalar or one per row ({x.shape[0]}), got shape {tuple(s.shape)}")
    return s


class DG:
    """Discriminator guidance as DG's sampler: D + w sigma^2 grad log(d/(1-d)) at a step's first evaluation only."""

    needs: frozenset = frozenset()

    def __init__(self, *, w: float | None = None, w2nd: float = 0.0, sigma_lo: float = DG_SIGMA_LO,
                 sigma_hi: float = DG_SIGMA_HI, boosting: bool | None = None, disc_steps: int = 1500,
                 disc_batch: int = 128, disc_lr: float = 1e-3, disc_width: int = 64, disc_sigma: str = "dg",
                 features_path: str = "", n_fake: int = 2000, sampler: str = "heun", sampler_steps: int = 18,
                 pairing: str = "none", disc_path: str = ""):
        """``w``: weight at a step's first (Euler/predictor) evaluation, DG's ``dg_weight_1st_order`` (unset: 2
        unconditional, 1 conditional, DG's recipes); ``w2nd``: weight at the corrector (Heun's second) evaluation,
        DG's ``dg_weight_2nd_order`` (default 0, DG's; ``w2nd = w`` corrects both); [``sigma_lo``, ``sigma_hi``]:
        where to correct (default DG's VP time range [0.01, 1] as sigma); ``boosting``: DG's doubling of the
        correction of rows with a negative log-ratio every 2nd step (unset: on for conditional models, off for
        unconditional ones, DG's recipes); ``disc_sigma``: the discriminator's training noise levels, ``dg``
        (DG's importance sampling, log-uniform in sigma) or ``edm``; ``features_path``: a TorchScript feature
        extractor (x, sigma) -> [B, F] to train the head on; the rest: the discriminator's training budget, its
        fakes' sampler, the pairing of its noise, or ``disc_path``, a discriminator file to use instead."""
        if w is not None and w < 0:
            raise ValueError(f"w must be >= 0 (or unset: 2 unconditional, 1 conditional), got {w}")
        if w2nd < 0:
            raise ValueError(f"w2nd must be >= 0, got {w2nd}")
        if not 0 <= sigma_lo <= sigma_hi:
            raise ValueError(f"need 0 <= sigma_lo <= sigma_hi, got {sigma_lo}, {sigma_hi}")
        if disc_steps < 0 or disc_batch < 2 or disc_lr <= 0 or disc_width < 1 or n_fake < 2 or sampler_steps < 1:
            raise ValueError("need disc_steps >= 0, disc_batch >= 2, disc_lr > 0, disc_width >= 1, n_fake >= 2, "
                             "sampler_steps >= 1")
        if disc_sigma not in DISC_SIGMA:
            raise ValueError(f"disc_sigma must be one of {', '.join(DISC_SIGMA)}, got {disc_sigma!r}")
        if disc_steps == 0 and not disc_path:
            raise ValueError("no discriminator: give disc_steps > 0 (train one) or disc_path (a cached one)")
        if disc_path and not Path(disc_path).is_file():
            raise FileNotFoundError(f"discriminator file not found: {disc_path}")
        self.extractor, features_sha256 = load_features(features_path) if features_path else (None, "")
        self.w, self.w2nd, self.sigma_lo, self.sigma_hi, self.boosting = w, w2nd, sigma_lo, sigma_hi, boosting
        #: everything that changes the trained discriminator (with the model's train_key and the fakes' schedule)
        self.settings = dict(format=FORMAT, disc_steps=disc_steps, disc_batch=disc_batch, disc_lr=disc_lr,
                             disc_width=disc_width, disc_sigma=disc_sigma, features_sha256=features_sha256,
                             n_fake=n_fake, sampler=sampler, sampler_steps=sampler_steps, pairing=pairing)
        self.disc_path = disc_path
        self.disc: nn.Module | None = None

    # -- training ---------------------------------------------------------------------------------------------
    def disc_settings(self, context) -> dict:
        """The settings the cache key hashes: the constructor's plus the fakes' noise schedule."""
        cell = context.cell
        return {**self.settings, "fake_schedule": [float(cell.sigma_min), float(cell.sigma_max), 7.0]}

    def _feature_dim(self, context) -> int:
        probe = context.splits.train[:2].float().to(context.device)
        try:
            with torch.no_grad():
                out = self.extractor(probe, torch.ones(2, device=context.device))
        except Exception as err:
            raise UserError(f"dg: the features_path extractor failed on data of shape {tuple(probe.shape)}: "
                            f"{_one_line(err)}") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 1:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"dg: the features_path extractor must map (x [B, *S], sigma [B]) to [B, F], got {got}")
        return int(out.shape[1])

    def prepare(self, context) -> None:
        """Load the cached discriminator for this model and settings, or train and cache it."""
        if self.disc is not None:
            return
        settings = self.disc_settings(context)
        key = stable_hash({"model": context.cell.train.key, **settings})
        if self.extractor is not None:
            self.extractor = self.extractor.to(context.device)
        fdim = self._feature_dim(context) if self.extractor is not None else 0
        with torch.random.fork_rng(devices=[]):  # initial weights from the key, the global generator untouched
            torch.manual_seed(derive("dg-init", key))
            disc = Discriminator(context.splits.shape, context.num_classes, self.settings["disc_width"], fdim)
        disc.attach(self.extractor)
        path = Path(self.disc_path) if self.disc_path else context.cache_dir / "dg" / f"{key}.pt"
        if path.is_file():
            ck = load_checkpoint(path, FORMAT)
            have = ck.get("settings", {}).get("features_sha256", "")
            if have != settings["features_sha256"]:
                raise UserError(f"dg: discriminator {path} was trained on features {have or 'none'}, "
                                f"not on {settings['features_sha256'] or 'none'} (features_path)")
            try:
                disc.load_state_dict(ck["state"])
            except (RuntimeError, KeyError) as err:
                raise UserError(f"dg: discriminator {path} does not fit these settings: {_one_line(err)}") from None
        else:
            self._fit(disc, context, key)
            atomic_torch_save(path, {"format": FORMAT, "settings": settings, "model": context.cell.train.key,
                                     "state": disc.state_dict()})
        self.disc = disc.to(context.device).eval().requires_grad_(False)

    def fake_labels(self, context, n: int) -> torch.Tensor | None:
        """[n] labels of the fakes of a conditional model, in the train split's class proportions, each from its
        own generator."""
        k = context.num_classes
        if not k:
            return None
        counts = torch.bincount(context.splits.train_labels, minlength=k).double()
        u = per_sample(torch.rand, (), range(n), "dg-fake-labels", context.cell.train.key).double()
        return torch.searchsorted((counts / counts.sum()).cumsum(0), u, right=True).clamp(max=k - 1)

    @torch.no_grad()
    def _fakes(self, context):
        """``n_fake`` unguided samples of the model and their labels; every fake from its own generators."""
        s, key, device = self.settings, context.cell.train.key, context.device
        sample = context.registry.get("sampler", s["sampler"]).build()
        n = s["n_fake"]
        labels = self.fake_labels(context, n)
        sigmas = karras_sigmas(s["sampler_steps"], context.cell.sigma_min, context.cell.sigma_max, 7.0)
        out = []
        for i in range(0, n, FAKE_BATCH):
            rows = range(i, min(i + FAKE_BATCH, n))
            lab = None if labels is None else labels[rows.start:rows.stop].to(device)

            def denoise(x, sigma, stage=0, _l=lab):
                sg = torch.as_tensor(sigma, device=x.device).to(torch.float32)
                return context.model(x.to(torch.float32), sg, _l).to(x.dtype)

            x = per_sample(torch.randn, context.splits.shape, rows, "dg-fake-start", key).to(device, torch.float64)
            # deterministic samplers never call the noise sampler; a stochastic one gets each fake's own stream
            x0 = sample(denoise, (x * sigmas[0]).float(), sigmas.to(device),
                        noise_sampler=PerSampleNoise(rows, "dg-fake-noise", key))
            out.append(x0.float().cpu())
        return torch.cat(out), labels

    def _fit(self, disc: Discriminator, context, key: str) -> None:
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
                g = generator("dg-step", key, step)
                ri = torch.randint(len(real), (b,), generator=g)
                fi = torch.randint(len(fake), (b,), generator=g)
                y = torch.cat([real[ri], fake[fi]])
                labels = None if real_labels is None else torch.cat([real_labels[ri], fake_labels[fi]])
                noise = torch.randn(y.shape, generator=g)
                noise = noise[pairing.pair(y, noise, labels)]
                sigma = draw_train_sigma(2 * b, g, s["disc_sigma"])
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
        w1 = self.w if self.w is not None else (1.0 if context.num_classes else 2.0)
        w2 = self.w2nd
        boosting = self.boosting if self.boosting is not None else bool(context.num_classes)
        costs, disc, lo, hi = context.costs, self.disc, self.sigma_lo, self.sigma_hi
        steps = [0]  # stage-0 evaluations of this batch so far: DG's step index i

        def guided(x, sigma):
            d = denoise(x, sigma)
            labels = context.labels  # read per call: an adaptive sampler evaluates a subset of the batch's rows
            stage = getattr(context, "stage", 0)
            if stage == 0:
                i = steps[0]
                steps[0] += 1
            weight = w1 if stage == 0 else w2
            if weight == 0:
                return d
            s = _row_sigma(sigma, x)
            rows = torch.nonzero((s >= lo) & (s <= hi)).flatten()
            if rows.numel() == 0:
                return d
            with torch.enable_grad():
                xg = x[rows].detach().requires_grad_(True)
                log_ratio = clipped_log_ratio(disc(xg, s[rows], None if labels is None else labels[rows]))
                (grad,) = torch.autograd.grad(log_ratio.sum(), xg)
            costs["disc_grad_evals"] = costs.get("disc_grad_evals", 0.0) + rows.numel()
            scale = weight * s[rows] ** 2
            if boosting and stage == 0 and i % BOOST_EVERY == 0:
                scale = torch.where(log_ratio.detach().to(scale.dtype) < 0, BOOST_FACTOR * scale, scale)
            out = d.clone()
            out[rows] = d[rows] + (scale.reshape(-1, *([1] * (x.ndim - 1))) * grad).to(d.dtype)
            return out

        return guided


@hookimpl
def register_guidance(register):
    register("dg", DG)
