"""Small layers shared by network plugins: noise-level and class embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """[B] c_noise (= ln(sigma)/4, about -1.5..1.2) -> [B, dim] sin/cos features at geometric frequencies 1..100."""

    def __init__(self, dim: int, max_freq: float = 100.0):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(max_freq), half)), persistent=False)

    def forward(self, c_noise):
        """[B] c_noise (EDM's ln(sigma)/4, Karras et al. 2022, Table 1) -> [B, 2 * (dim // 2)]: the sines of every
        frequency, then the cosines."""
        a = c_noise.float()[:, None] * self.freqs[None]
        return torch.cat([a.sin(), a.cos()], 1)


class ConditionEmbedding(nn.Module):
    """Noise level (+ optional class, + optional augmentation labels) -> [B, dim] conditioning vector.

    Classes use ``num_classes + 1`` embeddings; index ``num_classes`` is the learned "no label" used for label
    dropout and unconditional evaluation (classifier-free guidance).
    """

    def __init__(self, dim: int, num_classes: int = 0, augment_dim: int = 0):
        super().__init__()
        self.sin = SinusoidalEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.cls = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.aug = nn.Linear(augment_dim, dim, bias=False) if augment_dim else None

    def forward(self, c_noise, class_labels=None, augment_labels=None):
        """c_noise [B], class_labels [B] long or None, augment_labels [B, augment_dim] (the labels of
        :mod:`aotbench.augment`, EDM's training/augment.py) or None -> [B, dim].

        A conditional model given no labels uses the "no label" index ``num_classes`` for every row; augmentation labels
        are ignored by a model built without ``augment_dim``."""
        e = self.mlp(self.sin(c_noise))
        if self.cls is not None:
            if class_labels is None:
                class_labels = torch.full((c_noise.shape[0],), self.cls.num_embeddings - 1, device=c_noise.device)
            e = e + self.cls(class_labels)
        if self.aug is not None and augment_labels is not None:
            e = e + self.aug(augment_labels.float())
        return e
