"""``ddpmpp`` and ``ncsnpp``: EDM's SongUNet (Karras et al. 2022), the CIFAR-10 networks of EDM and of the AOT paper.

A re-implementation of the DDPM++ / NCSN++ U-Net as EDM configures it for 32x32 images (EDM's ``training/networks.py``
``SongUNet`` with the ``--arch=ddpmpp`` / ``--arch=ncsnpp`` settings of its ``train.py``):

- ``model_channels=128``, ``channel_mult=2,2,2``, ``num_blocks=4`` residual blocks per resolution, self-attention at
  resolution 16 (and always in the first decoder block at the lowest resolution), ``channel_mult_emb=4``,
  ``dropout=0.13``;
- residual blocks without adaptive scale (the embedding is added before the second GroupNorm), ``skip_scale`` =
  sqrt(1/2), GroupNorm with min(32, C/4) groups and eps 1e-6, 1x1 projections on resampling skips;
- EDM's initialisation: xavier-uniform weights and zero biases everywhere, the last convolution of every block, of
  every attention projection and of the output scaled by 1e-5 (EDM's ``init_zero`` for these two networks), the
  attention ``qkv`` by sqrt(0.2);
- **DDPM++**: positional noise embedding (10000 max positions, ``endpoint=True``), ``channel_mult_noise=1``,
  standard encoder and decoder, box resampling filter [1, 1] (nearest up / average-pool down);
- **NCSN++**: random Fourier noise embedding (scale 16), ``channel_mult_noise=2``, *residual* encoder (a strided
  3x3 convolution of the input pyramid is added at every down-sampling, divided by sqrt 2), standard decoder, FIR
  resampling filter [1, 3, 3, 1].

Conditioning: ``c_noise`` (= ln(sigma)/4 from the engine), class labels through a linear map of the one-hot label
times sqrt(num_classes) (EDM's ``map_label``; the "no label" index ``num_classes`` is the all-zero vector, exactly
as EDM's label dropout zeroes the one-hot, so unconditional evaluation uses the map's bias only), and, when
``augment_dim > 0`` and the engine passes them, EDM's augmentation labels through a bias-free linear map
(use ``augment_dim=9`` with :class:`aotbench.augment.AugmentPipe`). Label dropout is done by the engine.

Module and parameter names mirror EDM's (``map_noise``, ``map_layer0``, ``enc.32x32_block0.conv0``, ...).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn.functional import silu

from aotbench import hookimpl


def _ints(text, what: str) -> list[int]:
    """``"2,2,2"`` (or ``"2-2-2"``, which survives the CLI's comma-separated grids) -> [2, 2, 2]."""
    parts = [p for p in re.split(r"[,\s\-]+", str(text).strip()) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} must be a comma list of integers, got {text!r}") from None
    return values


def _xavier_(w: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> torch.Tensor:
    """EDM's 'xavier_uniform': U(-1, 1) * sqrt(6 / (fan_in + fan_out)), times ``gain``; in place (meta-safe)."""
    with torch.no_grad():
        return w.uniform_(-1, 1).mul_(gain * math.sqrt(6 / (fan_in + fan_out)))


class Linear(nn.Linear):
    """Fully connected layer with EDM's xavier-uniform init (scaled by ``init_weight``) and zero bias."""

    def __init__(self, cin: int, cout: int, bias: bool = True, init_weight: float = 1.0):
        super().__init__(cin, cout, bias=bias)
        _xavier_(self.weight, cin, cout, init_weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Conv2d(nn.Module):
    """k x k convolution with optional 2x up- or down-sampling by a separable FIR ``resample_filter``.

    Up-sampling is a transposed depthwise convolution with the filter (x4 gain), down-sampling a strided depthwise
    convolution with it; both happen before the convolution, or, ``fused``, fold the stride into it (NCSN++'s
    residual encoder). ``kernel=0`` is a pure resampling. Init as :class:`Linear` (fans include the kernel area).
    """

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True, up: bool = False, down: bool = False,
                 resample_filter=(1, 1), fused: bool = False, init_weight: float = 1.0):
        super().__init__()
        assert not (up and down)
        self.in_channels, self.out_channels, self.up, self.down, self.fused = cin, cout, up, down, fused
        self.weight = self.bias = None
        if kernel:
            self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
            _xavier_(self.weight, cin * kernel * kernel, cout * kernel * kernel, init_weight)
            if bias:
                self.bias = nn.Parameter(torch.zeros(cout))
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum() ** 2
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x):
        w, f = self.weight, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        fn = nn.functional
        if self.fused and self.up and w is not None:
            x = fn.conv_transpose2d(x, (f * 4).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                    padding=w_pad + f_pad)
            x = fn.conv2d(x, w)
        elif self.fused and self.down and w is not None:
            x = fn.conv2d(x, w, padding=w_pad + f_pad)
            x = fn.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = fn.conv_transpose2d(x, (f * 4).tile(self.in_channels, 1, 1, 1), groups=self.in_channels,
                                        stride=2, padding=f_pad)
            if self.down:
                x = fn.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = fn.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1).to(x.dtype)
        return x


def GroupNorm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """EDM's group norm: min(32, C/4) groups."""
    groups = max(1, min(32, channels // 4))
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} GroupNorm groups (EDM uses min(32, C/4) "
                         f"groups); pick model_channels so that every level's width is divisible")
    return nn.GroupNorm(groups, channels, eps=eps)


class UNetBlock(nn.Module):
    """Residual block (optionally resampling) with an optional single-head self-attention after it.

    x -> conv0(silu(norm0 x)) -> + affine(emb) (or, ``adaptive_scale``, scale/shift) -> silu(norm1) -> dropout ->
    conv1, plus the (projected, resampled) input, times ``skip_scale``; attention likewise residual and rescaled.
    """

    def __init__(self, cin: int, cout: int, emb: int, *, up=False, down=False, attention=False, num_heads=1,
                 dropout=0.0, skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=(1, 1), resample_proj=True,
                 adaptive_scale=False, init_zero=1e-5, init_attn=math.sqrt(0.2)):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.num_heads = num_heads if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = GroupNorm(cin, eps)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb, cout * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(cout, eps)
        self.conv1 = Conv2d(cout, cout, 3, init_weight=init_zero)
        self.skip = None
        if cout != cin or up or down:
            kernel = 1 if resample_proj or cout != cin else 0
            self.skip = Conv2d(cin, cout, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(cout, eps)
            self.qkv = Conv2d(cout, cout * 3, 1, init_weight=init_attn)
            self.proj = Conv2d(cout, cout, 1, init_weight=init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            b, c, hh, ww = h.shape
            # channel layout as EDM's: qkv channels grouped per head as (c/heads, 3)
            q, k, v = self.qkv(self.norm2(h)).reshape(b * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            with torch.autocast(h.device.type, enabled=False):  # softmax(q^T k / sqrt c) in fp32, as EDM
                w = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1])).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", w.to(v.dtype), v)
            h = (self.proj(a.reshape(b, c, hh, ww)) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """DDPM++ noise embedding: [sin, cos](c_noise * f_i), f_i = (1/max_positions)^(i/(n/2 - 1)) (``endpoint``)."""

    def __init__(self, channels: int, max_positions: int = 10000, endpoint: bool = True):
        super().__init__()
        self.channels, self.max_positions, self.endpoint = channels, max_positions, endpoint

    def forward(self, x):
        half = self.channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        a = torch.outer(x.float(), (1 / self.max_positions) ** freqs)
        return torch.cat([a.sin(), a.cos()], dim=1)  # EDM computes [cos, sin] and then swaps the halves


class FourierEmbedding(nn.Module):
    """NCSN++ noise embedding: [sin, cos](2 pi f_i c_noise) with fixed random f_i ~ N(0, scale^2) (a saved buffer)."""

    def __init__(self, channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(channels // 2) * scale)

    def forward(self, x):
        a = torch.outer(x.float(), 2 * math.pi * self.freqs)
        return torch.cat([a.sin(), a.cos()], dim=1)


class SongUNet(nn.Module):
    """EDM's DDPM++/NCSN++ U-Net (use the ``ddpmpp`` / ``ncsnpp`` subclasses)."""

    #: ``python -m aotbench list`` reports the parameter count at this shape (built on the meta device)
    list_shape = (3, 32, 32)
    _name = "songunet"

    def __init__(self, shape, num_classes=0, *, model_channels=128, channel_mult="2,2,2", num_blocks=4,
                 attn_resolutions="16", dropout=0.13, augment_dim=0, channel_mult_noise=1, channel_mult_emb=4,
                 embedding_type="positional", encoder_type="standard", resample_filter=(1, 1)):
        super().__init__()
        mult = _ints(channel_mult, "channel_mult")
        attn = set(_ints(attn_resolutions, "attn_resolutions"))
        if not mult or min(mult) < 1:
            raise ValueError(f"channel_mult must list positive integers, got {channel_mult!r}")
        if model_channels < 1 or num_blocks < 1 or augment_dim < 0 or channel_mult_noise < 1:
            raise ValueError(f"need model_channels, num_blocks, channel_mult_noise >= 1 and augment_dim >= 0, got "
                             f"{model_channels}, {num_blocks}, {channel_mult_noise}, {augment_dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        f = 2 ** (len(mult) - 1)
        shape = tuple(shape)
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] % f:
            raise ValueError(f"{self._name} needs square images [C, H, W] with H == W divisible by {f} "
                             f"(channel_mult {channel_mult}), got per-sample shape {shape}")
        noise_ch, emb_ch = model_channels * channel_mult_noise, model_channels * channel_mult_emb
        if noise_ch % 2 or noise_ch < 4:
            raise ValueError(f"the noise embedding needs an even width >= 4, got {noise_ch}")
        assert embedding_type in ("positional", "fourier") and encoder_type in ("standard", "residual")
        channels, res0 = shape[0], shape[1]
        self.num_classes = num_classes
        block = dict(emb=emb_ch, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)

        # mapping network: noise (+ class + augmentation) embedding -> two SiLU layers
        self.map_noise = (PositionalEmbedding(noise_ch, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_ch))
        self.map_label = Linear(num_classes, noise_ch) if num_classes else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        # encoder
        self.enc = nn.ModuleDict()
        cout = caux = channels
        for level, m in enumerate(mult):
            res = res0 >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, fused=True,
                                                                   resample_filter=resample_filter)
                    caux = cout
            for i in range(num_blocks):
                cin, cout = cout, model_channels * m
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn, **block)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        # decoder
        self.dec = nn.ModuleDict()
        for level, m in reversed(list(enumerate(mult))):
            res = res0 >> level
            if level == len(mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * m
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=i == num_blocks and res in attn,
                                                              **block)
        self.dec[f"{res0}x{res0}_aux_norm"] = GroupNorm(cout, eps=1e-6)
        self.dec[f"{res0}x{res0}_aux_conv"] = Conv2d(cout, channels, 3, init_weight=1e-5)

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        emb = self.map_noise(c_noise.reshape(-1).to(torch.float32))
        if self.map_label is not None:
            n = self.num_classes
            if class_labels is None:  # no label: the all-zero one-hot
                onehot = torch.zeros(x.shape[0], n, device=x.device)
            elif class_labels.ndim == 2:  # already one-hot (EDM's own convention)
                onehot = class_labels.to(torch.float32)
            else:  # index n = "no label" -> zero row
                onehot = nn.functional.one_hot(class_labels.long(), n + 1)[:, :n].to(torch.float32)
            emb = emb + self.map_label(onehot * math.sqrt(n))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips, aux, h = [], x, x
        for name, block in self.enc.items():
            if "aux_residual" in name:
                h = skips[-1] = aux = (h + block(aux)) / math.sqrt(2)
            else:
                h = block(h, emb) if isinstance(block, UNetBlock) else block(h)
                skips.append(h)
        out = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                out = block(h)
            elif name.endswith("aux_conv"):
                out = block(silu(out))
            else:
                if "_block" in name:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = block(h, emb)
        return out


class DDPMpp(SongUNet):
    """EDM's DDPM++ (SongUNet: positional embedding, box resampling) at its CIFAR-10 settings."""

    _name = "ddpmpp"

    def __init__(self, shape, num_classes=0, *, model_channels: int = 128, channel_mult: str = "2,2,2",
                 num_blocks: int = 4, attn_resolutions: str = "16", dropout: float = 0.13, augment_dim: int = 0,
                 channel_mult_noise: int = 1):
        super().__init__(shape, num_classes, model_channels=model_channels, channel_mult=channel_mult,
                         num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                         augment_dim=augment_dim, channel_mult_noise=channel_mult_noise,
                         embedding_type="positional", encoder_type="standard", resample_filter=(1, 1))


class NCSNpp(SongUNet):
    """EDM's NCSN++ (SongUNet: Fourier embedding, residual encoder, FIR resampling) at its CIFAR-10 settings."""

    _name = "ncsnpp"

    def __init__(self, shape, num_classes=0, *, model_channels: int = 128, channel_mult: str = "2,2,2",
                 num_blocks: int = 4, attn_resolutions: str = "16", dropout: float = 0.13, augment_dim: int = 0,
                 channel_mult_noise: int = 2):
        super().__init__(shape, num_classes, model_channels=model_channels, channel_mult=channel_mult,
                         num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                         augment_dim=augment_dim, channel_mult_noise=channel_mult_noise,
                         embedding_type="fourier", encoder_type="residual", resample_filter=(1, 3, 3, 1))


@hookimpl
def register_networks(register):
    register("ddpmpp", DDPMpp)
    register("ncsnpp", NCSNpp)
