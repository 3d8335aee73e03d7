"""Deterministic seeds derived from a run seed and a purpose.

Every random draw in training and sampling comes from a generator seeded by ``derive(seed, purpose, index...)``, so
any pool, sigma draw or dropout mask can be recomputed from its coordinates alone. That is what makes a resumed
(or background-paired, or re-launched) run bit-identical to an uninterrupted one. At sampling time the coordinates
include each sample's own index (:func:`per_sample`, :class:`PerSampleNoise`), so no sample depends on the
evaluation batch size or its position in a batch.
"""

from __future__ import annotations

import hashlib

import torch


def derive(*parts) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts, device="cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded by :func:`derive` of ``parts``."""
    return torch.Generator(device=device).manual_seed(derive(*parts))


def per_sample(draw, shape: tuple[int, ...], indices, *parts) -> torch.Tensor:
    """``[len(indices), *shape]`` draws of ``draw`` (``torch.randn``, ``torch.rand``), row i from its own generator
    ``(*parts, indices[i])``.

    A sample's noise is then a function of its global index alone, never of the batch it was drawn in or of how
    many samples were drawn with it (EDM's ``generate.py`` seeds one generator per image for the same reason)."""
    return torch.stack([draw(shape, generator=generator(*parts, int(i))) for i in indices])


class PerSampleNoise:
    """A sampler's ``noise_sampler`` for one batch: each call returns fresh N(0, I) noise shaped like the batch,
    row i drawn from the stream of sample ``indices[i]`` (EDM's ``StackedRandomGenerator``), so stochastic samplers
    give every sample the same noise whatever the evaluation batch size.

    ``__call__(like)`` -> tensor with ``like``'s shape, dtype and device; ``select(rows)`` -> the noise sampler of a
    subset of the batch (for samplers that drop finished rows)."""

    def __init__(self, indices, *parts, generators: list | None = None):
        self.generators = generators if generators is not None else [generator(*parts, int(i)) for i in indices]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise for {like.shape[0]} rows asked of a sampler of {len(self.generators)}")
        rows = [torch.randn(like.shape[1:], generator=g) for g in self.generators]
        return torch.stack(rows).to(like.device, like.dtype)

    def select(self, rows) -> PerSampleNoise:
        """The noise sampler of ``rows`` (indices into this batch); it shares their generators, so each row's stream
        goes on where it was."""
        return PerSampleNoise((), generators=[self.generators[int(r)] for r in rows])
