"""The sampling engine and what metrics see.

The engine owns the two things samplers and guidance must not do themselves:

- counting network evaluations: :class:`NFECounter` wraps the model *below* guidance, so a guidance that calls the
  network twice (CFG) is charged twice, and NFE is rows evaluated / samples, so batching both passes into one call
  costs the same;
- the noise and labels: every cell of a model with the same ``sample_seed`` starts from the same noise, which is
  what makes truncation error (a sampler's x_N against a fine reference from the same noise) meaningful.

Metrics receive an :class:`EvalContext`. Expensive things (samples, features of the reference split, the reference
trajectory) are computed lazily and memoized, within a cell and across cells of the same model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import edm
from .config import CellConfig
from .data import Splits
from .plugins import Registry
from .progress import bar
from .seeds import generator


class NFECounter:
    """Calls the model and counts rows evaluated; ``nfe(n)`` is evaluations per sample."""

    def __init__(self, model: edm.Precond):
        self.model, self.rows = model, 0

    def __call__(self, x, sigma, class_labels=None):
        self.rows += x.shape[0]
        with torch.no_grad():
            return self.model(x, sigma, class_labels)

    def nfe(self, n: int) -> float:
        return self.rows / n


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
    model: edm.Precond
    progress: bool = False
    #: extra per-row costs the guidance spends (e.g. discriminator evaluations), summed by the engine
    costs: dict = field(default_factory=dict)


def _range_seed(cell: CellConfig, seed_range: int) -> tuple:
    """Seed coordinates of a seed range: range 0 is the cell's own; ranges 1, 2, ... are EDM's further 'seed ranges'
    (EDM reports FID as the minimum over three disjoint ranges of 50k seeds)."""
    return (cell.sample_seed,) if seed_range == 0 else (cell.sample_seed, "range", seed_range)


def class_labels(cell: CellConfig, splits: Splits, model: edm.Precond, seed_range: int = 0) -> torch.Tensor | None:
    """Labels for conditional sampling: the cell's fixed class, or uniform over classes (seeded)."""
    if model.num_classes == 0:
        return None
    if cell.label is not None:
        return torch.full((cell.n_samples,), cell.label, dtype=torch.long)
    return torch.randint(model.num_classes, (cell.n_samples,),
                         generator=generator("labels", *_range_seed(cell, seed_range)))


class EvalContext:
    """One cell under evaluation; see the module docstring. ``memo`` is shared between cells of one model."""

    def __init__(self, registry: Registry, cell: CellConfig, splits: Splits, model: edm.Precond, *,
                 device="cpu", cache_dir: Path = Path("results/cache"), memo: dict | None = None,
                 batch: int = 2000, progress: bool = False):
        self.registry, self.cell, self.splits, self.model = registry, cell, splits, model
        self.device, self.cache_dir, self.batch, self.progress = torch.device(device), Path(cache_dir), batch, progress
        self.memo_store = {} if memo is None else memo
        self.timings: dict[str, float] = {}
        self.costs: dict[str, float] = {}
        #: small arrays saved beside the record (sample grid, trajectories for figures)
        self.artifacts: dict[str, Any] = {}
        self._samples = None
        self.nfe = None
        guidance = registry.get("guidance", cell.guidance.name)
        self.guidance = guidance.build(**cell.guidance.kwargs)

    def memo(self, key, fn: Callable[[], Any]):
        key = (self.cell.sample_seed, self.cell.n_samples, key)
        if key not in self.memo_store:
            self.memo_store[key] = fn()
        return self.memo_store[key]

    def noise_for(self, seed_range: int = 0) -> torch.Tensor:
        """Standard-normal starting noise [n, *S], the same for every cell with this sample_seed and seed range
        (range 0 is shared through the memo; further ranges are drawn on demand, for FID only)."""
        def draw():
            return torch.randn((self.cell.n_samples, *self.splits.shape),
                               generator=generator("sample-noise", *_range_seed(self.cell, seed_range)))
        return self.memo("noise", draw) if seed_range == 0 else draw()

    @property
    def noise(self) -> torch.Tensor:
        return self.noise_for(0)

    @property
    def labels(self) -> torch.Tensor | None:
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
                null = None if labels is None else torch.full_like(labels, self.model.num_classes)

                def cond(x, sigma, _labels=labels):
                    return counter(x, sigma, _labels)

                def uncond(x, sigma, _null=null):
                    return counter(x, sigma, _null)

                gctx = GuidanceContext(cond, uncond, labels, self.model.num_classes, self.splits, self.registry,
                                       self.cell, self.cache_dir, self.device, self.model, self.progress, costs)
                if prepare is not None and b == 0:
                    prepare(gctx)
                denoise = self.guidance.wrap(cond, context=gctx)
                x = noise_all[rows].to(self.device, torch.float64) * sigmas[0]
                cb = None if callback is None else (lambda info, _rows=rows: callback({**info, "rows": _rows}))
                x0 = sample_fn(_as_float32(denoise), x.float(), sigmas.to(self.device),
                               generator=generator("sampler", self.cell.sample_seed, b, device=self.device),
                               callback=cb)
                out.append(x0.float().cpu())
                pb.update(rows.stop - rows.start)
        return torch.cat(out), counter.nfe(n), {k: v / n for k, v in costs.items()}

    @property
    def samples(self) -> torch.Tensor:
        """The cell's samples [n, *S] (sampled once; NFE and costs recorded as a side effect)."""
        if self._samples is None:
            comp = self.registry.get("sampler", self.cell.sampler.name)
            sigmas = edm.karras_sigmas(self.cell.steps, self.cell.sigma_min, self.cell.sigma_max, self.cell.rho)
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
        sigmas = edm.karras_sigmas(self.cell.steps, self.cell.sigma_min, self.cell.sigma_max, self.cell.rho)
        return self.solve(comp.build(**self.cell.sampler.kwargs), sigmas, desc=f"sample range {seed_range}",
                          seed_range=seed_range)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Domain features of x (the dataset's FD extractor, trained and cached on first use)."""
        self.splits.features.prepare(self.cache_dir, self.progress)
        return self.splits.features(x)

    @property
    def reference_features(self) -> torch.Tensor:
        """Features of the train split: FD compares with the training distribution, as EDM's FID does."""
        key = ("reference-features", self.splits.name, self.splits.features.name)
        if key not in self.memo_store:
            self.memo_store[key] = self.features(self.splits.train)
        return self.memo_store[key]


def _as_float32(denoise: Callable) -> Callable:
    """Samplers may keep float64 sigmas; the network sees float32 inputs and returns x's dtype."""
    def f(x, sigma):
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        return denoise(x.to(torch.float32), sigma).to(x.dtype)
    return f
