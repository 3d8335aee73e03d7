"""``digits``: scikit-learn's 1,797 real handwritten digits, 8x8, 10 classes (ships with scikit-learn).

The default dataset: real images that ship with the install and train on a laptop CPU in a minute. Pixel values
0..16 map to [-1, 1]; the held-out split is a fixed, stratified 20%.
"""

import torch

from aotbench import hookimpl
from aotbench.data import Splits, stratified_split


class Digits:
    """scikit-learn digits: 1797 x 1x8x8 in [-1, 1], 10 classes; stratified 80/20 train/held-out split."""

    network = "unet:channels=16"
    defaults = {"train_steps": 3000, "batch": 128, "pool": 512, "n_samples": 1000, "steps": [2, 3, 5, 9, 18]}

    def __init__(self, *, heldout_fraction: float = 0.2):
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.heldout_fraction = heldout_fraction

    def load(self) -> Splits:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
        y = torch.as_tensor(d.target, dtype=torch.long)
        tr, ho = stratified_split(y, self.heldout_fraction)
        return Splits("digits", x[tr], x[ho], y[tr], y[ho], 10)


@hookimpl
def register_datasets(register):
    register("digits", Digits, default=True)
