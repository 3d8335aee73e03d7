"""``unet``: a small U-Net for small images (8x8 digits, 28x28 MNIST), trainable on a laptop CPU."""

import torch
from torch import nn

from aotbench import hookimpl
from aotbench.layers import ConditionEmbedding


def _norm(ch):
    return nn.GroupNorm(min(8, ch // 4) or 1, ch)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, dropout):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.c1(nn.functional.silu(self.n1(x))) + self.emb(e)[:, :, None, None]
        h = self.c2(self.drop(nn.functional.silu(self.n2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """U-Net with `channel_mult` levels ("1,2" or "1-2"), `blocks` residual blocks per level, 2x resampling."""

    def __init__(self, shape, num_classes=0, *, channels: int = 32, channel_mult: str = "1,2", blocks: int = 1,
                 dropout: float = 0.0, augment_dim: int = 0):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"unet needs images [C, H, W], got per-sample shape {tuple(shape)}")
        mult = [int(m) for m in str(channel_mult).replace("-", ",").split(",") if m.strip()]
        c, h, w = shape
        f = 2 ** (len(mult) - 1)
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} must be divisible by {f} for channel_mult {channel_mult}")
        emb = 4 * channels
        self.embed = ConditionEmbedding(emb, num_classes, augment_dim)
        self.inp = nn.Conv2d(c, channels, 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, ch = [channels], channels
        for level, m in enumerate(mult):
            for _ in range(blocks):
                self.down.append(_ResBlock(ch, channels * m, emb, dropout))
                ch = channels * m
                skips.append(ch)
            if level < len(mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, emb, dropout), _ResBlock(ch, ch, emb, dropout)])
        for level, m in reversed(list(enumerate(mult))):
            for _ in range(blocks + 1):
                self.up.append(_ResBlock(ch + skips.pop(), channels * m, emb, dropout))
                ch = channels * m
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, c, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        e = self.embed(c_noise, class_labels, augment_labels)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, e) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, e)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, hs.pop()], 1), e)
            else:
                h = layer(h)
        return self.out(h)


@hookimpl
def register_networks(register):
    register("unet", UNet)
