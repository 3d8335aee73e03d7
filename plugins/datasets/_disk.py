"""Helpers shared by the datasets read from local disk (``cifar10``, ``edm-zip``, ``folder``, ``npz``).

Not a plugin itself (it registers nothing): it holds the two choices every on-disk set must make identically, the
pixel -> [-1, 1] mapping and the seeded held-out split, so that they cannot drift apart between loaders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aotbench.data import stratified_split
from aotbench.seeds import generator

#: grid defaults for a small image set on the ``unet`` network (a laptop-to-workstation budget)
IMAGE_DEFAULTS = {"train_steps": 20000, "batch": 128, "pool": 512, "n_samples": 1000, "steps": [5, 9, 14, 18]}


def check_fraction(heldout_fraction: float) -> None:
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")


def check_path(path: str, what: str) -> None:
    if not path:
        raise ValueError(f"no path given: set path=... to {what}")


def to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, H, W] (pixel values 0..255) -> float32 [N, C, H, W] in [-1, 1], as x / 127.5 - 1 (EDM's map).

    uint16 (16-bit files, 0..65535) maps the same way from its own range, as x / 32767.5 - 1.
    """
    if images.dtype == np.uint16:
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(32767.5).sub_(1)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    return x.div_(127.5).sub_(1)


def heldout_split(n: int, labels: torch.Tensor | None, heldout_fraction: float,
                  source: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted index tensors (train, heldout) for the ``n`` items read from ``source``: a fixed split, seed 0.

    Stratified by class when ``labels`` are given; at least one item on each side. When stratifying holds none out
    (every class too small for the fraction), or holds everything out, the split is a plain seeded one instead.
    """
    if n < 2:
        raise ValueError(f"{source} holds {n} image(s); need at least 2 to split off a held-out set")
    if labels is not None:
        train, held = stratified_split(labels, heldout_fraction)
        if len(train) and len(held):
            return train, held
    order = torch.randperm(n, generator=generator("split", 0))
    k = min(max(1, round(n * heldout_fraction)), n - 1)
    return order[k:].sort().values, order[:k].sort().values
