"""``uniform-images``: i.i.d. uniform "images" in [-1, 1], for benchmarks (not for learning anything).

Pairing and training speed depend on the pool's size and dimension, not on what the images show, so benchmarks
use this seeded stand-in for CIFAR-10 (3x32x32 = 3072-d), which cannot ship with the suite.
"""

import torch

from aotbench import hookimpl
from aotbench.data import RawFeatures, Splits
from aotbench.seeds import generator


class UniformImages:
    """Seeded uniform noise images [N, C, S, S] in [-1, 1] with random labels (benchmarks only)."""

    network = "mlp:width=1024:depth=2"
    defaults = {"train_steps": 400, "batch": 256, "pool": 2048, "n_samples": 100, "steps": [9]}

    def __init__(self, *, n: int = 8192, channels: int = 3, size: int = 32, classes: int = 10, data_seed: int = 0):
        if n < 2 or channels < 1 or size < 1 or classes < 1:
            raise ValueError(f"need n >= 2 and positive channels, size, classes; got {n}, {channels}, {size}, "
                             f"{classes}")
        self.n, self.channels, self.size, self.classes, self.data_seed = n, channels, size, classes, data_seed

    def load(self) -> Splits:
        g = generator("uniform-images", self.data_seed)
        x = torch.rand((self.n + 256, self.channels, self.size, self.size), generator=g) * 2 - 1
        y = torch.randint(self.classes, (self.n + 256,), generator=g)
        return Splits("uniform-images", x[: self.n], x[self.n:], y[: self.n], y[self.n:], self.classes,
                      features=RawFeatures(self.channels * self.size * self.size))


@hookimpl
def register_datasets(register):
    register("uniform-images", UniformImages)
