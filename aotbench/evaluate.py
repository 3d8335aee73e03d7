"""The sampling engine and what metrics see.

The engine owns the two things samplers and guidance must not do themselves:

- counting network evaluations: :class:`NFECounter` wraps the model *below* guidance, so a guidance that calls the
  network twice (CFG) is charged twice, and NFE is rows evaluated / samples, so batching both passes into one call
  costs the same;
- the noise and labels: every cell of a model with the same ``sample_seed`` starts from the same noise, which is
  what makes truncation error (a sampler's x_N against a fine reference from the same noise) meaningful. Each
  sample's starting noise, class label and stochastic-sampler noise come from generators seeded by the sample's
  own index (:mod:`aotbench.seeds`), so a sample never depends on the evaluation batch size or its position.

Metrics receive an :class:`EvalContext`. Expensive things (samples, features of the reference split, the reference
trajectory) are computed lazily and memoized, within a cell and across cells of the same model, under keys from
:mod:`aotbench.identity`.

The engine also owns the **reference solve** of the probability-flow ODE that curvature and truncation error are
measured on (:meth:`EvalContext.solve_reference`): EDM's Heun method (:func:`reference_heun`) with
:data:`REFERENCE_STEPS` steps on the rho = :data:`REFERENCE_RHO` schedule over the cell's sigma range, from the
cell's own noise and labels, through its guided, counted denoiser. It is part of the engine, not a sampler plugin,
so that what every trajectory metric measures against cannot change when a sampler plugin does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import edm, identity
from .config import CellConfig
from .data import Splits
from .errors import UserError
from .objective import Denoiser
from .plugins import Registry
from .progress import bar
from .seeds import PerSampleNoise, per_sample

#: the reference solve (curvature, truncation error): Heun steps, and the schedule's rho
REFERENCE_STEPS, REFERENCE_RHO = 64, 7.0


class NFECounter:
    """Calls the model and counts rows evaluated; ``nfe(n)`` is evaluations per sample."""

    def __init__(self, model: Denoiser):
        self.model, self.rows = model, 0

    def __call__(self, x, sigma, class_labels=None):
        self.rows += x.shape[0]
        with torch.no_grad():
            return self.model(x, sigma, class_labels)

    def nfe(self, n: int) -> float:
        """Network evaluations per sample: rows evaluated so far / ``n`` samples."""
        return self.rows / n


def reference_heun(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, *, noise_sampler=None,
                   callback: Callable | None = None) -> torch.Tensor:
    """EDM's deterministic Heun method (Karras et al. 2022, Algorithm 1), the engine's reference ODE solver.

    ``denoise(x, sigma, stage=0)`` returns D(x; sigma); ``x`` [B, *S] starts at noise * sigmas[0]; ``sigmas`` is
    descending and ends in 0. Each step is an Euler step from sigma_i to sigma_{i+1} corrected by the slope at its end
    point (``stage=1``), except the last step to sigma = 0, which stays Euler: 2 N - 1 evaluations for N steps.
    ``callback({"i", "x", "sigma", "denoised"})`` is called after each step's first evaluation. ``noise_sampler`` is
    accepted, as of any sampler, and unused (the method is deterministic). Returns x at sigma = 0, shaped like ``x``.
    """
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


@dataclass
class GuidanceContext:
    """What a guidance plugin may use. ``cond``/``uncond`` are the counted model denoisers ``f(x, sigma)`` for this
    batch (``uncond`` passes the null label; for an unconditional model both are the same function)."""

    cond: Callable
    uncond: Callable
    labels: torch.Tensor | None
    num_classes: int
    splits: Splits
    registry: Registry
    cell: CellConfig
    cache_dir: Path
    device: torch.device
    model: Denoiser
    progress: bool = False
    #: extra per-row costs the guidance spends (e.g. discriminator evaluations), summed by the engine
    costs: dict = field(default_factory=dict)
    #: which evaluation of the sampler's current step is being guided: 0 the step's first (Euler/predictor)
    #: evaluation, 1 a corrector's (Heun's second); set by the engine from what the sampler passes as ``stage``
    stage: int = 0


def _range_seed(cell: CellConfig, seed_range: int) -> tuple:
    """Seed coordinates of a seed range: range 0 is the cell's own; ranges 1, 2, ... are EDM's further 'seed ranges'
    (EDM reports FID as the minimum over three disjoint ranges of 50k seeds)."""
    return (cell.sample_seed,) if seed_range == 0 else (cell.sample_seed, "range", seed_range)


def class_labels(cell: CellConfig, splits: Splits, model: Denoiser, seed_range: int = 0) -> torch.Tensor | None:
    """Mapped labels [n] for conditional sampling: the cell's fixed class, or one class per sample drawn from its own
    generator, in the train split's class proportions (``label_sampling="train"``) or uniformly."""
    if model.num_classes == 0:
        return None
    n = cell.n_samples
    if cell.label is not None:
        return torch.full((n,), splits.classes.index(cell.label), dtype=torch.long)
    if cell.label_sampling == "uniform":
        probs = torch.full((model.num_classes,), 1.0 / model.num_classes, dtype=torch.float64)
    else:
        counts = torch.bincount(splits.train_labels, minlength=model.num_classes).double()
        probs = counts / counts.sum()
    u = per_sample(torch.rand, (), range(n), "labels", *_range_seed(cell, seed_range)).double()
    return torch.searchsorted(probs.cumsum(0), u, right=True).clamp(max=model.num_classes - 1)


class EvalContext:
    """One cell under evaluation; see the module docstring. ``memo`` is shared between cells of one model."""

    def __init__(self, registry: Registry, cell: CellConfig, splits: Splits, model: Denoiser, *,
                 device="cpu", cache_dir: Path = Path("results/cache"), memo: dict | None = None,
                 batch: int = 2000, progress: bool = False, checkpoint: dict | None = None):
        self.registry, self.cell, self.splits, self.model = registry, cell, splits, model
        self.checkpoint = checkpoint
        self.device, self.cache_dir, self.batch, self.progress = torch.device(device), Path(cache_dir), batch, progress
        self.memo_store = {} if memo is None else memo
        self.timings: dict[str, float] = {}
        self.costs: dict[str, float] = {}
        #: one-line notes on the numbers (e.g. fewer samples than feature dimensions), printed and recorded
        self.warnings: list[str] = []
        #: small arrays saved beside the record (sample grid, trajectories for figures)
        self.artifacts: dict[str, Any] = {}
        self._samples = None
        self.nfe = None
        guidance = registry.get("guidance", cell.guidance.name)
        self.guidance = guidance.build(**cell.guidance.kwargs)

    def memo(self, key, fn: Callable[[], Any]):
        """``fn()`` computed once per ``key`` for every cell of this model; build keys from :mod:`aotbench.identity`
        (a key that leaves out something the value depends on serves a wrong value to another cell)."""
        if key not in self.memo_store:
            self.memo_store[key] = fn()
        return self.memo_store[key]

    def warn(self, message: str) -> None:
        """A one-line note on this cell's numbers: printed by the runner and kept in the record's ``warnings``."""
        if message not in self.warnings:
            self.warnings.append(message)

    def coupling(self) -> dict[str, float]:
        """The model's coupling diagnostics (:func:`aotbench.train.coupling_diagnostics`): ``pair_cost_ratio``,
        ``noise_ks_p``, ``noise_mean_z``, ``noise_cov_max``, ``noise_n``, ``noise_ks_n``; once per model.

        Raises UserError when the context was built without the model's checkpoint."""
        from .train import coupling_diagnostics

        if self.checkpoint is None:
            raise UserError("coupling diagnostics need the model's training checkpoint, which this context lacks")
        return self.memo(("coupling", self.cell.train.key),
                         lambda: coupling_diagnostics(self.registry, self.cell.train, self.checkpoint))

    def noise_for(self, seed_range: int = 0) -> torch.Tensor:
        """Standard-normal starting noise [n, *S], row i from sample i's own generator: the same for every cell with
        this sample_seed and seed range (range 0 is shared through the memo; further ranges are for FID only)."""
        def draw():
            return per_sample(torch.randn, self.splits.shape, range(self.cell.n_samples), "sample-noise",
                                    *_range_seed(self.cell, seed_range))
        return self.memo(("noise", identity.sample_set_key(self.cell)), draw) if seed_range == 0 else draw()

    @property
    def noise(self) -> torch.Tensor:
        """The cell's starting noise [n, *S] (seed range 0; see :meth:`noise_for`)."""
        return self.noise_for(0)

    @property
    def labels(self) -> torch.Tensor | None:
        """The cell's mapped class labels [n] (long), or None for an unconditional model."""
        return class_labels(self.cell, self.splits, self.model)

    def solve(self, sample_fn: Callable, sigmas: torch.Tensor, callback: Callable | None = None,
              desc: str = "sample", seed_range: int = 0) -> tuple[torch.Tensor, float, dict]:
        """Run ``sample_fn`` with this cell's guided, counted denoiser from this cell's noise, in batches.

        ``callback(info)`` receives the sampler's per-step info plus ``"rows"``: the slice of samples in the batch.
        Returns (x0 [n, *S] on the CPU, NFE per sample, extra costs per sample).
        """
        n = self.cell.n_samples
        counter = NFECounter(self.model)
        labels_all = class_labels(self.cell, self.splits, self.model, seed_range)
        noise_all = self.noise_for(seed_range)
        costs: dict[str, float] = {}
        out = []
        prepare = getattr(self.guidance, "prepare", None)
        with bar(total=n, desc=desc, disable=not self.progress, unit="img") as pb:
            for b, start in enumerate(range(0, n, self.batch)):
                rows = slice(start, min(start + self.batch, n))
                labels = None if labels_all is None else labels_all[rows].to(self.device)

                def cond(x, sigma):
                    return counter(x, sigma, gctx.labels)

                def uncond(x, sigma):
                    null = None if gctx.labels is None else torch.full_like(gctx.labels, self.model.num_classes)
                    return counter(x, sigma, null)

                gctx = GuidanceContext(cond, uncond, labels, self.model.num_classes, self.splits, self.registry,
                                       self.cell, self.cache_dir, self.device, self.model, self.progress, costs)
                if prepare is not None and b == 0:
                    prepare(gctx)
                denoise = self.guidance.wrap(cond, context=gctx)
                x = noise_all[rows].to(self.device, torch.float64) * sigmas[0]
                cb = None if callback is None else (lambda info, _rows=rows: callback({**info, "rows": _rows}))
                noise_sampler = PerSampleNoise(range(rows.start, rows.stop), "sampler-noise",
                                               *_range_seed(self.cell, seed_range))
                x0 = sample_fn(_engine_denoise(denoise, gctx, labels), x.float(), sigmas.to(self.device),
                               noise_sampler=noise_sampler, callback=cb)
                out.append(x0.float().cpu())
                pb.update(rows.stop - rows.start)
        return torch.cat(out), counter.nfe(n), {k: v / n for k, v in costs.items()}

    def sigmas(self) -> torch.Tensor:
        """The cell's noise levels [steps + 1], float64, from its schedule plugin (EDM's ρ-schedule by default)."""
        schedule = self.registry.get("schedule", self.cell.schedule.name).build(**self.cell.schedule.kwargs)
        return schedule.sigmas(self.cell.steps, self.cell.sigma_min, self.cell.sigma_max, self.cell.rho)

    def reference_sigmas(self) -> torch.Tensor:
        """The reference solve's noise levels [REFERENCE_STEPS + 1], descending from the cell's sigma_max to 0: the
        Karras schedule at rho = REFERENCE_RHO over the cell's [sigma_min, sigma_max]."""
        return edm.karras_sigmas(REFERENCE_STEPS, self.cell.sigma_min, self.cell.sigma_max, REFERENCE_RHO)

    def solve_reference(self, callback: Callable | None = None) -> tuple[torch.Tensor, float]:
        """The reference solve of the probability-flow ODE (see the module docstring) from this cell's noise.

        ``callback(info)`` receives :func:`reference_heun`'s per-step info plus ``"rows"`` (as in :meth:`solve`), so
        a metric can accumulate along the trajectory without keeping it. Returns (x at sigma = 0 [n, *S] on the
        CPU, NFE per sample: 2 * REFERENCE_STEPS - 1, more under a guidance that evaluates the model twice). Not
        memoized: a caller memoizes what it derives under :func:`aotbench.identity.reference_key`.
        """
        x0, nfe, _ = self.solve(reference_heun, self.reference_sigmas(), callback, desc="reference ODE")
        return x0, nfe

    @property
    def samples(self) -> torch.Tensor:
        """The cell's samples [n, *S] (sampled once; NFE and costs recorded as a side effect)."""
        if self._samples is None:
            comp = self.registry.get("sampler", self.cell.sampler.name)
            sigmas = self.sigmas()
            t0 = time.perf_counter()
            self._samples, self.nfe, self.costs = self.solve(comp.build(**self.cell.sampler.kwargs), sigmas,
                                                             desc=f"sample {self.cell.sampler.name}")
            self.timings["sample_seconds"] = time.perf_counter() - t0
            self.artifacts["samples"] = self._samples[:64].numpy()
        return self._samples

    def samples_for(self, seed_range: int) -> torch.Tensor:
        """The cell's samples from another seed range (range 0 is :attr:`samples`); sampled once, not kept in memo."""
        if seed_range == 0:
            return self.samples
        comp = self.registry.get("sampler", self.cell.sampler.name)
        sigmas = self.sigmas()
        return self.solve(comp.build(**self.cell.sampler.kwargs), sigmas, desc=f"sample range {seed_range}",
                          seed_range=seed_range)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Domain features of x (the dataset's FD extractor, trained and cached on first use)."""
        self.splits.features.prepare(self.cache_dir, self.progress)
        return self.splits.features(x)

    @property
    def reference_features(self) -> torch.Tensor:
        """Features of the train split: FD compares with the training distribution, as EDM's FID does."""
        key = ("reference-features", self.splits.fingerprint, self.splits.features.name)
        if key not in self.memo_store:
            self.memo_store[key] = self.features(self.splits.train)
        return self.memo_store[key]


def _engine_denoise(denoise: Callable, gctx: GuidanceContext, labels: torch.Tensor | None) -> Callable:
    """What a sampler calls: ``f(x, sigma, stage=0, rows=None)``. Samplers may keep float64 states and sigmas (a
    scalar or one per row); the network sees float32 inputs and the result comes back in x's dtype. ``stage`` (0 =
    a step's first evaluation, 1 = a corrector's) is handed to guidance through its context; ``rows`` (indices into
    the batch) tells the engine which samples ``x`` holds when a sampler evaluates only some (adaptive samplers), so
    their labels go with them."""
    def f(x, sigma, stage: int = 0, rows: torch.Tensor | None = None):
        gctx.stage = stage
        gctx.labels = labels if labels is None or rows is None else labels[rows.to(labels.device)]
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        return denoise(x.to(torch.float32), sigma).to(x.dtype)
    return f
