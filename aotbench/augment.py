"""EDM's non-leaking augmentation pipeline (Karras et al. 2022, Appendix F.2; EDM's ``training/augment.py``).

Each training image is augmented with probability ``p`` (times a per-transform multiplier), and the network is told
what was done through a vector of *augmentation labels*; at sampling time the labels are zero (no augmentation), so
the augmentations do not leak into the generated distribution. The engine applies the pipe to each training pool
*before* pairing; give the network ``augment_dim=9`` (``ddpmpp``/``ncsnpp``) so that it sees
the labels.

The CIFAR-10 configuration of EDM (``--augment=0.12``) is the default: x-flip (multiplier 1e8, i.e. always "tried",
so half the images are flipped whenever p > 0), y-flip, isotropic scaling, arbitrary rotation, anisotropic scaling
and fractional translation, each with multiplier 1. The geometric transforms are composed into one inverse affine
matrix per image and executed exactly as EDM does: reflection padding by the margin the transforms need, 2x
up-sampling with the ``sym6`` wavelet low-pass filter, bilinear ``grid_sample``, and 2x down-sampling with the
same filter. The nine labels are, in EDM's order: xflip (0/1), yflip (0/1), scale (log2 scale / 0.2), rotation
(cos(a) - 1, sin(a)), anisotropy (w cos r, w sin r), translation (tx, ty in units of 0.125 image size).

Differences from EDM's class: EDM's knobs that the CIFAR-10 configuration leaves off (integer rotation and
translation, and the colour transforms: brightness, contrast, luma flip, hue, saturation) are not implemented; the
random numbers come from the ``generator`` argument instead of the global RNG (drawn in EDM's order, so with the
same seed on the CPU they coincide); and ``p == 0`` returns the images untouched (EDM would never build the pipe).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Symlet-6 wavelet low-pass filter (EDM's ``wavelets['sym6']``), used for the 2x up/down-sampling around grid_sample
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633, 0.4910559419267466,
        0.787641141030194, 0.3379294217276218, -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
        0.0017677118642428036, -0.007800708325034148]


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    """Batched 2-D homogeneous matrices [[a, b, c], [d, e, f], [0, 0, 1]] from [N] tensors (or floats); [N, 3, 3]."""
    ref = next(t for t in (a, b, c, d, e, f) if isinstance(t, torch.Tensor))
    rows = [torch.as_tensor(v, dtype=torch.float32, device=ref.device).expand(ref.shape) for v in (a, b, c, d, e, f)]
    zero, one = torch.zeros_like(rows[0]), torch.ones_like(rows[0])
    return torch.stack([*rows, zero, zero, one], dim=-1).reshape(*ref.shape, 3, 3)


def _translate(tx, ty):
    return _affine(1, 0, tx, 0, 1, ty)


def _scale(sx, sy):
    return _affine(sx, 0, 0, 0, sy, 0)


def _rotate(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    return _affine(c, -s, 0, s, c, 0)


class AugmentPipe:
    """EDM's non-leaking geometric augmentation; ``pipe(images [N, C, H, W], generator) -> (images, labels [N, 9])``.

    ``p`` is the overall probability (EDM's CIFAR-10 value 0.12); the other arguments are EDM's probability
    multipliers and strengths (defaults: EDM's CIFAR-10 configuration). A multiplier of 0 removes that transform and
    its labels, so :attr:`dim` (9 by default) counts the labels actually produced.
    """

    dim = 9

    def __init__(self, p: float = 0.12, *, xflip: float = 1e8, yflip: float = 1, scale: float = 1,
                 rotate_frac: float = 1, aniso: float = 1, translate_frac: float = 1, scale_std: float = 0.2,
                 rotate_frac_max: float = 1, aniso_std: float = 0.2, aniso_rotate_prob: float = 0.5,
                 translate_frac_std: float = 0.125):
        if not 0 <= p <= 1:
            raise ValueError(f"augmentation probability p must be in [0, 1], got {p}")
        self.p = float(p)
        self.xflip, self.yflip, self.scale = float(xflip), float(yflip), float(scale)
        self.rotate_frac, self.aniso, self.translate_frac = float(rotate_frac), float(aniso), float(translate_frac)
        self.scale_std, self.rotate_frac_max = float(scale_std), float(rotate_frac_max)
        self.aniso_std, self.aniso_rotate_prob = float(aniso_std), float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        self.dim = ((self.xflip > 0) + (self.yflip > 0) + (self.scale > 0) + 2 * (self.rotate_frac > 0)
                    + 2 * (self.aniso > 0) + 2 * (self.translate_frac > 0))

    def __repr__(self):
        return f"AugmentPipe(p={self.p})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        if images.ndim != 4:
            raise ValueError(f"augmentation needs images [N, C, H, W], got shape {tuple(images.shape)}")
        n, c, h, w = images.shape
        dev = images.device
        if self.p == 0:
            return images, torch.zeros(n, self.dim, dtype=torch.float32, device=dev)
        gdev = generator.device if generator is not None else torch.device("cpu")

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=gdev).to(dev)

        def randn(*shape):
            return torch.randn(shape, generator=generator, device=gdev).to(dev)

        def randint(high, *shape):
            return torch.randint(high, shape, generator=generator, device=gdev).to(dev)

        def gate(mult, value, u):
            """``value`` where the per-image coin u < mult * p, else 0 (EDM's torch.where pattern)."""
            return torch.where(u < mult * self.p, value, torch.zeros_like(value))

        labels = []
        # pixel blitting: flips
        if self.xflip > 0:
            f = randint(2, n, 1, 1, 1)
            f = gate(self.xflip, f, rand(n, 1, 1, 1))
            images = torch.where(f == 1, images.flip(3), images)
            labels.append(f)
        if self.yflip > 0:
            f = randint(2, n, 1, 1, 1)
            f = gate(self.yflip, f, rand(n, 1, 1, 1))
            images = torch.where(f == 1, images.flip(2), images)
            labels.append(f)

        # geometric transformations, composed as one inverse matrix (output pixel -> input pixel) per image
        g_inv = torch.eye(3, device=dev).expand(n, 3, 3)
        geometric = False
        if self.scale > 0:
            s = randn(n)
            s = gate(self.scale, s, rand(n))
            g_inv = g_inv @ _scale(1 / (s * self.scale_std).exp2(), 1 / (s * self.scale_std).exp2())
            labels.append(s)
            geometric = True
        if self.rotate_frac > 0:
            a = (rand(n) * 2 - 1) * (math.pi * self.rotate_frac_max)
            a = gate(self.rotate_frac, a, rand(n))
            g_inv = g_inv @ _rotate(a)  # EDM: rotate2d_inv(-a)
            labels += [a.cos() - 1, a.sin()]
            geometric = True
        if self.aniso > 0:
            s = randn(n)
            r = (rand(n) * 2 - 1) * math.pi
            s = gate(self.aniso, s, rand(n))
            r = torch.where(rand(n) < self.aniso_rotate_prob, r, torch.zeros_like(r))
            k = (s * self.aniso_std).exp2()
            g_inv = g_inv @ _rotate(-r) @ _scale(1 / k, k) @ _rotate(r)
            labels += [s * r.cos(), s * r.sin()]
            geometric = True
        if self.translate_frac > 0:
            t = randn(2, n)
            t = gate(self.translate_frac, t, rand(1, n))
            g_inv = g_inv @ _translate(-t[0] * (w * self.translate_frac_std), -t[1] * (h * self.translate_frac_std))
            labels += [t[0], t[1]]
            geometric = True
        if geometric:
            images = _warp(images, g_inv)

        out = torch.cat([x.to(torch.float32).reshape(n, -1) for x in labels], dim=1) if labels else \
            torch.zeros(n, 0, dtype=torch.float32, device=dev)
        return images, out


def _warp(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` [N, C, H, W] at ``g_inv`` [N, 3, 3] (pixel coordinates centred on the image) as EDM does."""
    n, c, h, w = images.shape
    dev, dtype = images.device, images.dtype
    ones = torch.ones(n, device=dev)

    # reflection-pad by the largest margin any image's transformed corners need (plus the filter's support)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float32, device=dev)
    cp = g_inv @ corners.t()  # [N, xyz, corner]
    hz = torch.tensor(SYM6, dtype=dtype, device=dev)
    hz_pad = len(SYM6) // 4
    xy = cp[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * 4]
    margin = torch.cat([-xy, xy]).max(dim=1).values  # [x0, y0, x1, y1]
    margin = margin + torch.tensor([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2, device=dev)
    margin = margin.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, dtype=margin.dtype, device=dev))
    mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    g_inv = _translate((mx0 - mx1) / 2 * ones, (my0 - my1) / 2 * ones) @ g_inv

    # 2x up-sampling: zero insertion and the (reversed) wavelet filter, separably
    k = hz.flip(0)[None, None].tile(c, 1, 1)  # [C, 1, taps]
    pad = (len(SYM6) + 1) // 2
    images = torch.stack([images, torch.zeros_like(images)], dim=4).reshape(n, c, images.shape[2], -1)[..., :-1]
    images = F.conv2d(images, k.unsqueeze(2), groups=c, padding=[0, pad])
    images = torch.stack([images, torch.zeros_like(images)], dim=3).reshape(n, c, -1, images.shape[3])[:, :, :-1]
    images = F.conv2d(images, k.unsqueeze(3), groups=c, padding=[pad, 0])
    g_inv = _scale(2 * ones, 2 * ones) @ g_inv @ _scale(0.5 * ones, 0.5 * ones)
    g_inv = _translate(-0.5 * ones, -0.5 * ones) @ g_inv @ _translate(0.5 * ones, 0.5 * ones)

    # the transformation, in grid_sample's normalised coordinates, onto a 2x canvas with the filter margin
    shape = [n, c, (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2]
    g_inv = (_scale(2 / images.shape[3] * ones, 2 / images.shape[2] * ones) @ g_inv
             @ _scale(shape[3] / 2 * ones, shape[2] / 2 * ones))
    grid = F.affine_grid(g_inv[:, :2, :].to(dtype), size=shape, align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # 2x down-sampling with the wavelet filter, then crop the margin
    k = hz[None, None].tile(c, 1, 1)
    pad = (len(SYM6) - 1) // 2
    images = F.conv2d(images, k.unsqueeze(2), groups=c, stride=[1, 2], padding=[0, pad])[:, :, :, hz_pad:-hz_pad]
    images = F.conv2d(images, k.unsqueeze(3), groups=c, stride=[2, 1], padding=[pad, 0])[:, :, hz_pad:-hz_pad, :]
    return images
