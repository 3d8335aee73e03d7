"""2-D toy sets: ``moons``, ``8gaussians``, ``checkerboard``, ``swissroll``.

Generated deterministically from ``data_seed`` and scaled to per-coordinate std 0.5 (EDM's sigma_data), so the same
EDM preconditioning fits them as it fits images in [-1, 1]. ``moons`` and ``8gaussians`` carry labels (which moon,
which mode) so that conditional training and per-class pairing can be tested on them too.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.data import Splits


def _moons(n, rng):
    from sklearn.datasets import make_moons
    x, y = make_moons(n, noise=0.06, random_state=int(rng.integers(2**31)))
    return x, y, 2


def _gaussians8(n, rng):
    k = rng.integers(8, size=n)
    centers = np.stack([np.cos(2 * math.pi * k / 8), np.sin(2 * math.pi * k / 8)], 1) * 2.0
    return centers + 0.1 * rng.standard_normal((n, 2)), k, 8


def _checkerboard(n, rng):
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1), None, 0


def _swissroll(n, rng):
    from sklearn.datasets import make_swiss_roll
    x, _ = make_swiss_roll(n, noise=0.3, random_state=int(rng.integers(2**31)))
    return x[:, [0, 2]], None, 0


class Toy2D:
    """A 2-D toy set (train / held-out), scaled to std 0.5 per coordinate."""

    network = "mlp"
    defaults = {"train_steps": 3000, "batch": 256, "pool": 1024, "n_samples": 2000, "steps": [2, 3, 5, 9, 18]}
    make = None
    title = ""

    def __init__(self, *, n_train: int = 8000, n_heldout: int = 2000, data_seed: int = 0):
        if n_train < 2 or n_heldout < 2:
            raise ValueError(f"need n_train, n_heldout >= 2, got {n_train}, {n_heldout}")
        self.n_train, self.n_heldout, self.data_seed = n_train, n_heldout, data_seed

    def load(self) -> Splits:
        rng = np.random.default_rng(self.data_seed)
        x, y, classes = type(self).make(self.n_train + self.n_heldout, rng)
        x = (x - x.mean(0)) / x.std(0) * 0.5
        x = torch.as_tensor(x, dtype=torch.float32)
        y = None if y is None else torch.as_tensor(y, dtype=torch.long)
        n = self.n_train
        return Splits(self.title, x[:n], x[n:], None if y is None else y[:n], None if y is None else y[n:], classes)


def _toy(name, fn):
    return type(name, (Toy2D,), {"make": staticmethod(fn), "title": name,
                                 "__doc__": f"2-D '{name}' toy set (train / held-out), scaled to std 0.5."})


SETS = {"moons": _moons, "8gaussians": _gaussians8, "checkerboard": _checkerboard, "swissroll": _swissroll}


@hookimpl
def register_datasets(register):
    for name, fn in SETS.items():
        register(name, _toy(name, fn))
