"""``npz``: images (and optional labels) from a numpy ``.npz`` file on local disk.

Arrays, by name:

- ``x`` (or ``images``): uint8 pixel values 0..255, mapped to [-1, 1] as x / 127.5 - 1, or floats already in [-1, 1];
  shaped [N, H, W, C] or [N, C, H, W] with C = 1 or 3 (channels-last when the last axis is 1 or 3), or [N, H, W]
  (grayscale);
- ``y`` (or ``labels``): optional integer class labels [N], >= 0;
- ``x_heldout`` / ``y_heldout``: an optional held-out split in the same form; without it a fixed seeded split of
  ``heldout_fraction`` is cut off (stratified by class when labeled).

Read with ``allow_pickle=False``: an object array (which only a pickle can hold) is refused, never unpickled.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.data import Splits

from ._disk import IMAGE_DEFAULTS, check_fraction, check_path, heldout_split, to_signed

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_NAMES = ("x", "images", "y", "labels", "x_heldout", "y_heldout")


def _read(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` this loader knows (by name), fully read."""
    try:
        with open(path, "rb") as f:
            if not f.read(6).startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):  # numpy: "pickled data"
                raise ValueError("it is not an .npz archive (a zip of .npy arrays, as numpy.savez writes): it does "
                                 "not start as a zip file does")
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive of named arrays")
        with npz:
            return {k: npz[k] for k in npz.files if k in _NAMES}
    except _READ_ERRORS as err:
        raise ValueError(f"cannot read {path} as an .npz file: {err}") from None


def _images(a: np.ndarray, where: str) -> torch.Tensor:
    """An image array -> float32 [N, C, H, W] in [-1, 1]."""
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif not (a.ndim == 4 and a.shape[1] in (1, 3)):
        raise ValueError(f"{where} has shape {list(a.shape)}; expected [N, H, W, C] or [N, C, H, W] with C = 1 or 3, "
                         f"or [N, H, W]")
    if len(a) == 0:
        raise ValueError(f"{where} holds no images")
    if a.dtype == np.uint8:
        return to_signed(a)
    if a.dtype.kind != "f":
        raise ValueError(f"{where} has dtype {a.dtype}; expected uint8 (0..255) or float in [-1, 1]")
    if not (np.isfinite(a).all() and a.min() >= -1 and a.max() <= 1):
        raise ValueError(f"{where} is float but not within [-1, 1] (min {a.min()}, max {a.max()})")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _labels(a: np.ndarray, n: int, where: str) -> torch.Tensor:
    if a.shape != (n,) or a.dtype.kind not in "iu" or (n and a.min() < 0):
        raise ValueError(f"{where} must be {n} integer class labels >= 0, got {a.dtype} {list(a.shape)}")
    return torch.from_numpy(a.astype(np.int64))


class NPZ:
    """Images from an .npz file (x or images, optional y or labels, optional x_heldout/y_heldout) -> [-1, 1]."""

    network = "unet"  # small enough for a CPU; EDM's networks are `--network ddpmpp` or `ncsnpp`
    defaults = IMAGE_DEFAULTS

    def __init__(self, *, path: str = "", heldout_fraction: float = 0.02):
        check_path(path, "an .npz file with an array x (or images)")
        check_fraction(heldout_fraction)
        self.path, self.heldout_fraction = path, heldout_fraction

    def load(self) -> Splits:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"expected an .npz file with an array x (or images) at {path}")
        arrays = _read(path)
        xkey = next((k for k in ("x", "images") if k in arrays), None)
        if xkey is None:
            raise ValueError(f"{path} has no array x or images")
        ykey = next((k for k in ("y", "labels") if k in arrays), None)
        x = _images(arrays[xkey], f"{xkey} in {path}")
        y = None if ykey is None else _labels(arrays[ykey], len(x), f"{ykey} in {path}")
        if "x_heldout" in arrays:
            if (y is None) == ("y_heldout" in arrays):
                raise ValueError(f"{path}: y_heldout must be given exactly when train labels (y or labels) are")
            x_held = _images(arrays["x_heldout"], f"x_heldout in {path}")
            if x_held.shape[1:] != x.shape[1:]:
                raise ValueError(f"x_heldout in {path} holds {list(x_held.shape[1:])} images but {xkey} holds "
                                 f"{list(x.shape[1:])}")
            y_held = None if y is None else _labels(arrays["y_heldout"], len(x_held), f"y_heldout in {path}")
            x_train, y_train = x, y
        elif "y_heldout" in arrays:
            raise ValueError(f"{path} has y_heldout but no x_heldout")
        else:
            train, held = heldout_split(len(x), y, self.heldout_fraction, path)
            x_train, x_held = x[train], x[held]
            y_train, y_held = (None, None) if y is None else (y[train], y[held])
        if y is None:
            return Splits("npz", x_train, x_held)
        return Splits("npz", x_train, x_held, y_train, y_held, int(max(y_train.max(), y_held.max())) + 1)


@hookimpl
def register_datasets(register):
    register("npz", NPZ)
