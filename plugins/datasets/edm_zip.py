"""``edm-zip``: a dataset zip as written by EDM's ``dataset_tool.py``, read from local disk.

The zip holds PNG files (``00000/img00000000.png``, ...; 1-channel L or 3-channel RGB, one size for all) and an
optional ``dataset.json`` ``{"labels": [["00000/img00000000.png", 6], ...]}`` (``"labels": null`` when unlabeled).
Images are taken in sorted name order, as EDM's own loader does. EDM zips have no held-out split, so a fixed seeded
one is cut off (stratified by class when labeled).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aotbench import hookimpl
from aotbench.data import Splits

from ._disk import IMAGE_DEFAULTS, check_fraction, check_path, heldout_split, to_signed

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, zipfile.BadZipFile, zlib.error)


def _decode(zf: zipfile.ZipFile, zpath: Path, name: str) -> np.ndarray:
    """One PNG member -> uint8 [C, H, W], C = 1 (L) or 3 (RGB)."""
    try:
        with zf.open(name) as f, Image.open(f) as img:
            mode, a = img.mode, np.array(img)
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot decode {name} in {zpath}: {err}") from None
    if mode not in ("L", "RGB"):
        raise ValueError(f"{name} in {zpath} has PNG mode {mode}; expected L (1 channel) or RGB (3 channels)")
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _labels(zf: zipfile.ZipFile, zpath: Path, names: list[str]) -> torch.Tensor | None:
    """Labels [N] long in the order of ``names``, from dataset.json; None when there is none or it says null."""
    if "dataset.json" not in zf.namelist():
        return None
    try:
        meta = json.loads(zf.read("dataset.json"))
    except (ValueError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"cannot read dataset.json in {zpath}: {err}") from None
    pairs = meta.get("labels") if isinstance(meta, dict) else []
    if pairs is None:
        return None
    if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                            and isinstance(p[1], int) and not isinstance(p[1], bool) and p[1] >= 0
                                            for p in pairs)):
        raise ValueError(f"dataset.json in {zpath}: 'labels' must be null or a list of [file name, class >= 0]")
    table = {name.replace("\\", "/"): label for name, label in pairs}
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"dataset.json in {zpath} has no label for {missing[0]} ({len(missing)} images unlabeled)")
    return torch.tensor([table[n] for n in names], dtype=torch.long)


class EDMZip:
    """A zip of PNGs from EDM's dataset_tool.py (+ optional dataset.json labels) -> [N, C, H, W] in [-1, 1]."""

    network = "unet"  # small enough for a CPU; EDM's networks are `--network ddpmpp` or `ncsnpp`
    defaults = IMAGE_DEFAULTS

    def __init__(self, *, path: str = "", heldout_fraction: float = 0.02):
        check_path(path, "the zip file written by EDM's dataset_tool.py")
        check_fraction(heldout_fraction)
        self.path, self.heldout_fraction = path, heldout_fraction

    def load(self) -> Splits:
        zpath = Path(self.path).expanduser()
        if not zpath.is_file():
            raise FileNotFoundError(f"expected the zip file written by EDM's dataset_tool.py at {zpath}")
        try:
            with zipfile.ZipFile(zpath) as zf:
                names = sorted(n for n in zf.namelist() if n.lower().endswith(".png"))
                if not names:
                    raise ValueError(f"{zpath} holds no PNG images")
                images = [_decode(zf, zpath, n) for n in names]
                labels = _labels(zf, zpath, names)
        except zipfile.BadZipFile as err:
            raise ValueError(f"cannot read {zpath} as a zip file: {err}") from None
        for name, a in zip(names, images):
            if a.shape != images[0].shape:
                raise ValueError(f"{name} in {zpath} is {'x'.join(map(str, a.shape))} (CxHxW) but {names[0]} is "
                                 f"{'x'.join(map(str, images[0].shape))}: all images must share one size")
        x = to_signed(np.stack(images))
        train, held = heldout_split(len(x), labels, self.heldout_fraction, zpath)
        if labels is None:
            return Splits("edm-zip", x[train], x[held])
        return Splits("edm-zip", x[train], x[held], labels[train], labels[held], int(labels.max()) + 1)


@hookimpl
def register_datasets(register):
    register("edm-zip", EDMZip)
