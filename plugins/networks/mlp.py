"""``mlp``: a residual MLP for flat data (2-D toy sets), conditioned on noise level and class."""

import math

from torch import nn

from aotbench import hookimpl
from aotbench.layers import ConditionEmbedding


class _Block(nn.Module):
    def __init__(self, width, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, e):
        z = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(e)
        return h + self.fc2(self.drop(nn.functional.silu(z)))


class MLP(nn.Module):
    """Residual MLP: width x depth blocks, noise/class embedding added in every block."""

    def __init__(self, shape, num_classes=0, *, width: int = 256, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        if width < 1 or depth < 1 or not 0 <= dropout < 1:
            raise ValueError(f"need width, depth >= 1 and 0 <= dropout < 1, got {width}, {depth}, {dropout}")
        self.shape = tuple(shape)
        d = math.prod(self.shape)
        self.embed = ConditionEmbedding(width, num_classes)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(_Block(width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        e = self.embed(c_noise, class_labels)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, e)
        return self.out(h).reshape(x.shape)


@hookimpl
def register_networks(register):
    register("mlp", MLP)
