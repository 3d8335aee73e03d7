"""What a dataset plugin returns, and the feature extractors used for the domain Frechet distance (FD).

FD numbers from different extractors are never comparable, so every extractor has a ``name`` that goes into the
record beside the number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .identity import tensor_digest
from .seeds import generator
from .storage import atomic_torch_save, load_checkpoint, stable_hash


class RawFeatures:
    """Features = the flattened coordinates themselves (the natural choice for 2-D sets)."""

    def __init__(self, dim: int):
        self.name = f"raw-{dim}d"

    def prepare(self, cache_dir: Path, progress: bool = False) -> None:
        """Nothing to prepare (raw coordinates need no trained extractor); here for the interface."""
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double()


class _FeatureCNN(nn.Module):
    """A small classifier whose penultimate layer (``width`` units) gives the FD features."""

    def __init__(self, channels: int, num_classes: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, width), nn.SiLU())
        self.head = nn.Linear(width, max(num_classes, 1))

    def forward(self, x):
        return self.head(self.body(x))


class ClassifierFeatures:
    """FD features from a small CNN trained (once, deterministically, then cached) to classify the dataset.

    Trained on the train split only, with seed 0 and a fixed budget, so the extractor is a pure function of the data:
    its ``name`` carries a hash of the data's content (sha256 of its bytes and labels) and the recipe (``width``,
    ``epochs``, ``batch``, ``max_train``). Inputs are clamped to [-1, 1] like images are.

    ``max_train`` > 0 trains on a fixed seeded subset of that many train images (a large set, e.g. Fashion-MNIST's
    60,000, would take most of an hour on a CPU for a few points of accuracy); the FD reference is still the whole
    train split. When the held-out split has labels, the extractor's accuracy on it is measured once after training,
    stored with the cached weights and kept as ``heldout_accuracy`` (a fraction in [0, 1]; None without labels):
    an FD computed in the features of a network that cannot tell the classes apart says little.
    """

    version = 1

    def __init__(self, dataset: str, train: torch.Tensor, labels: torch.Tensor | None, num_classes: int,
                 width: int = 32, epochs: int = 30, batch: int = 128, max_train: int = 0,
                 heldout: torch.Tensor | None = None, heldout_labels: torch.Tensor | None = None):
        self.dataset, self.train, self.labels, self.num_classes = dataset, train, labels, num_classes
        self.width, self.epochs, self.batch, self.max_train = width, epochs, batch, max_train
        self.heldout, self.heldout_labels = heldout, heldout_labels
        self.heldout_accuracy: float | None = None
        self.net: _FeatureCNN | None = None

    @functools.cached_property
    def key(self) -> str:
        """Hash of the recipe and the train data's content (computed once, on first use: hashing 60,000 images
        takes a moment). ``max_train`` enters only when set, so the keys of extractors made before it existed, and
        the ``fd_extractor`` names recorded with them, stay valid."""
        recipe = dict(v=self.version, width=self.width, epochs=self.epochs, batch=self.batch,
                      classes=self.num_classes, data=tensor_digest(self.train, self.labels))
        if self.max_train:
            recipe["max_train"] = self.max_train
        return stable_hash(recipe, 10)

    @property
    def name(self) -> str:
        kind = "cnn" if self.labels is not None else "randcnn"
        return f"{self.dataset}-{kind}{self.width}-{self.key[:6]}"

    def relabeled(self, splits: Splits) -> ClassifierFeatures:
        """The same recipe on ``splits`` (used by the engine's dataset gate once it has mapped the labels)."""
        return ClassifierFeatures(splits.name, splits.train, splits.train_labels, splits.num_classes, self.width,
                                  self.epochs, self.batch, self.max_train, splits.heldout, splits.heldout_labels)

    def prepare(self, cache_dir: Path, progress: bool = False) -> None:
        """Load the extractor from ``cache_dir/features/<name>.pt``, or build it (trained on labelled data, seed 0;
        unlabeled data keep the seeded random init) and save it there, sealed, with its held-out accuracy; a no-op
        once loaded.

        Raises :class:`UserError` for a corrupt cached file (:func:`aotbench.storage.load_checkpoint`)."""
        if self.net is not None:
            return
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = _FeatureCNN(self.train.shape[1], self.num_classes, self.width)
        path = Path(cache_dir) / "features" / f"{self.name}.pt"
        if path.is_file():
            saved = load_checkpoint(path, "aotbench-features-v1")
            net.load_state_dict(saved["state"])
            self.net = net.eval()
            # the name does not depend on the held-out split: a stored accuracy counts only for the same one
            same = "heldout_accuracy" in saved and saved.get("heldout_digest") == self._heldout_digest()
            self.heldout_accuracy = saved["heldout_accuracy"] if same else self._accuracy()
            return
        if self.labels is not None:  # unlabeled data: the fixed random network is the (weaker) extractor
            self._fit(net, progress)
        self.net = net.eval()
        self.heldout_accuracy = self._accuracy()
        atomic_torch_save(path, {"format": "aotbench-features-v1", "name": self.name, "state": net.state_dict(),
                                 "heldout_accuracy": self.heldout_accuracy, "heldout_digest": self._heldout_digest()})

    def _heldout_digest(self) -> str | None:
        return None if self.heldout is None else tensor_digest(self.heldout, self.heldout_labels)

    @torch.no_grad()
    def _accuracy(self) -> float | None:
        """The fraction of the held-out split the classifier labels correctly (None without held-out labels)."""
        if self.labels is None or self.heldout is None or self.heldout_labels is None or not len(self.heldout):
            return None
        correct = sum(int((self.net(self.heldout[i:i + 512].clamp(-1, 1).float()).argmax(1)
                           == self.heldout_labels[i:i + 512]).sum()) for i in range(0, len(self.heldout), 512))
        return correct / len(self.heldout)

    def _fit(self, net: _FeatureCNN, progress: bool) -> None:
        from .progress import bar

        train, labels = self.train, self.labels
        if 0 < self.max_train < len(train):
            subset = torch.randperm(len(train), generator=generator("features-subset", 0))[:self.max_train]
            train, labels = train[subset.sort().values], labels[subset.sort().values]
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        n = train.shape[0]
        with bar(total=self.epochs, desc="FD feature net", disable=not progress) as pb:
            for epoch in range(self.epochs):
                order = torch.randperm(n, generator=generator("features", epoch))
                for start in range(0, n, self.batch):
                    idx = order[start:start + self.batch]
                    x = train[idx]
                    x = x + 0.05 * torch.randn(x.shape, generator=generator("features-noise", epoch, start))
                    loss = F.cross_entropy(net(x), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                pb.update()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert self.net is not None, "call prepare() first"
        feats = [self.net.body(x[i:i + 512].clamp(-1, 1).float()) for i in range(0, x.shape[0], 512)]
        return torch.cat(feats).double()


@dataclass
class Splits:
    """A dataset as tensors: ``train`` [N, *S] and ``heldout`` [M, *S] in [-1, 1], labels [N] / [M] long or None.

    Plugins may label classes with any non-negative integers; the engine maps them to 0..K-1 on load."""

    name: str
    train: torch.Tensor
    heldout: torch.Tensor
    train_labels: torch.Tensor | None = None
    heldout_labels: torch.Tensor | None = None
    num_classes: int = 0
    features: object = field(default=None, repr=False)
    #: the label values of the data, in the order of the mapped labels 0..K-1 (set by the engine's dataset gate)
    classes: tuple[int, ...] = ()
    #: sha256 of the content (set by :func:`aotbench.datasets.load_splits`)
    fingerprint: str = ""

    def __post_init__(self):
        if self.features is None:
            self.features = (RawFeatures(self.train[0].numel()) if self.train.ndim == 2 else
                             ClassifierFeatures(self.name, self.train, self.train_labels, self.num_classes,
                                                heldout=self.heldout, heldout_labels=self.heldout_labels))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape S of one sample: (C, H, W) for images, (D,) for point sets."""
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        """True for image data, ``train`` of shape [N, C, H, W]."""
        return self.train.ndim == 4


def stratified_split(labels: torch.Tensor, heldout_fraction: float, seed: int = 0):
    """Indices (train, heldout) with the same class proportions in both; deterministic in ``seed``."""
    train, held = [], []
    for k, c in enumerate(torch.unique(labels).tolist()):  # seeded by the class's rank: label values don't matter
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator("split", seed, k))]
        k = int(round(len(idx) * heldout_fraction))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values
