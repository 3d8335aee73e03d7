"""``folder``: a folder of image files on local disk, unlabeled or with one subfolder per class.

Either every image sits directly in the folder (unlabeled), or every image sits in a class subfolder (searched
recursively; class index = position of the subfolder's name in sorted order, as torchvision's ImageFolder does).
Files are read in sorted path order. Images become RGB, or 1-channel grayscale when every file is grayscale (8-bit,
PIL mode L, or 16-bit, PIL modes I;16, I;16B and I). Pixel values map to [-1, 1] from their true range: 0..255 for
8-bit files, 0..65535 for 16-bit ones (an 8-bit file in a folder with 16-bit ones counts v as v * 257); an image mode
with no known range (float F, 32-bit I) is refused in one line naming the file. With ``resolution`` = 0 all images
must share one size; otherwise each is center-cropped to a square and resized to ``resolution`` x ``resolution``
pixels (PIL bicubic). The held-out split is a fixed seeded one (stratified by class when labeled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aotbench import hookimpl
from aotbench.data import Splits

from ._disk import IMAGE_DEFAULTS, check_fraction, check_path, heldout_split, to_signed

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: 8-bit PIL modes, read as RGB by PIL's own conversion (palette expanded, alpha dropped); L stays 1-channel
_EIGHT_BIT = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
#: 16-bit grayscale PIL modes; I (32-bit) is how older Pillow opens a 16-bit PNG (python-pillow/Pillow#3041), read
#: when its values lie within 0..65535
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in EXTENSIONS and p.is_file()


def _files(root: Path) -> tuple[list[Path], torch.Tensor | None]:
    """Image paths in read order, and their class labels [N] long (None for a flat, unlabeled folder)."""
    top = sorted(p for p in root.iterdir() if _is_image(p))
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if top and classes:
        raise ValueError(f"{root} has images both at its top level and in subfolders ({classes[0].name}, ...): "
                         f"put every image in a class subfolder, or none")
    if not classes:
        if not top:
            raise FileNotFoundError(f"expected image files ({', '.join(EXTENSIONS)}) or class subfolders in {root}")
        return top, None
    files, labels = [], []
    for k, d in enumerate(classes):
        found = sorted(p for p in d.rglob("*") if _is_image(p))
        if not found:
            raise ValueError(f"class folder {d} holds no image files ({', '.join(EXTENSIONS)})")
        files += found
        labels += [k] * len(found)
    return files, torch.tensor(labels, dtype=torch.long)


def _read(path: Path, resolution: int) -> np.ndarray:
    """One image file -> uint8 [H, W] (mode L), uint16 [H, W] (16-bit grayscale) or uint8 [H, W, 3] (other 8-bit
    modes, converted to RGB by PIL).

    Why 16-bit files are read apart: PIL's I;16 -> RGB (and -> L) conversion clips every value above 255 to 255, so a
    16-bit image came out almost white. They are read as PIL mode I (int32, exact) and kept as uint16 0..65535; the
    bicubic resize may overshoot the range and is clipped back. Modes with no known range (F floats, I holding values
    outside 0..65535, anything else) are refused in one line naming the file and its mode.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode == "L":
                img = img.copy()
            elif mode in _SIXTEEN_BIT:
                img = img.convert("I")
            elif mode in _EIGHT_BIT:
                img = img.convert("RGB")
            else:
                img = None
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    if img is None:
        raise ValueError(f"{path} has PIL mode {mode}, which has no known pixel range: expected 8-bit "
                         f"({', '.join(_EIGHT_BIT)}) or 16-bit grayscale ({', '.join(_SIXTEEN_BIT)})")
    if img.mode == "I":
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{path} has PIL mode {mode} with values {a.min()}..{a.max()}, outside the 16-bit range "
                             f"0..65535: only 8-bit and 16-bit images are read")
    if resolution:
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.Resampling.BICUBIC)
    if img.mode == "I":
        return np.asarray(img).clip(0, 65535).astype(np.uint16)
    return np.asarray(img)


class Folder:
    """A folder of png/jpg/jpeg/bmp/webp images (optionally one subfolder per class) -> [N, C, H, W] in [-1, 1]."""

    network = "unet"  # small enough for a CPU; EDM's networks are `--network ddpmpp` or `ncsnpp`
    defaults = IMAGE_DEFAULTS

    def __init__(self, *, path: str = "", heldout_fraction: float = 0.02, resolution: int = 0):
        check_path(path, "a folder of images (or of class subfolders of images)")
        check_fraction(heldout_fraction)
        if resolution < 0:
            raise ValueError(f"resolution must be >= 0 (0 keeps the files' size), got {resolution}")
        self.path, self.heldout_fraction, self.resolution = path, heldout_fraction, resolution

    def load(self) -> Splits:
        root = Path(self.path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"expected a folder of images (or of class subfolders of images) at {root}")
        files, labels = _files(root)
        images = [_read(p, self.resolution) for p in files]
        for p, a in zip(files, images):
            if a.shape[:2] != images[0].shape[:2]:
                raise ValueError(f"{p} is {a.shape[1]}x{a.shape[0]} but {files[0]} is {images[0].shape[1]}x"
                                 f"{images[0].shape[0]}: all images must share one size (or set resolution=...)")
        if any(a.dtype == np.uint16 for a in images):  # 8-bit files join 16-bit ones at 16 bits: 255 * 257 = 65535
            images = [a.astype(np.uint16) * np.uint16(257) if a.dtype == np.uint8 else a for a in images]
        if all(a.ndim == 2 for a in images):
            x = np.stack(images)[:, None]
        else:  # gray files join the RGB ones with the gray value in all three channels (PIL's L -> RGB)
            x = np.stack([a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images])
            x = x.transpose(0, 3, 1, 2)
        x = to_signed(x)
        train, held = heldout_split(len(x), labels, self.heldout_fraction, root)
        if labels is None:
            return Splits("folder", x[train], x[held])
        return Splits("folder", x[train], x[held], labels[train], labels[held], int(labels.max()) + 1)


@hookimpl
def register_datasets(register):
    register("folder", Folder)
