"""``cifar10``: CIFAR-10 (the paper's dataset) from a local ``cifar-10-batches-py`` folder; nothing is downloaded.

The folder is the extracted "CIFAR-10 python version" archive: pickles ``data_batch_1..5`` (train, 50,000 images) and
``test_batch`` (held-out, 10,000), each a dict ``{b"data": uint8 [n, 3072] (row-major 3x32x32), b"labels": [n ints],
b"batch_label", b"filenames"}`` written by Python 2 with protocol 2.

Unpickling a file can run any code it names, so the batches are read by an unpickler that admits only the globals
that format holds, numpy's array reconstruction, and refuses anything else (``os.system``, ...) before it runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from aotbench import hookimpl
from aotbench.data import Splits

from ._disk import IMAGE_DEFAULTS, to_signed

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

FOLDER = "cifar-10-batches-py"
ENV = "AOTBENCH_CIFAR10"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
HELDOUT = "test_batch"
EXPECTED = f"the folder {FOLDER} with data_batch_1..5 and test_batch"

#: (module, name) -> object: everything a CIFAR-10 batch may import. Files from numpy < 2 name numpy.core.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, dicts, lists and strings, and import nothing else."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to import {module}.{name}, which a CIFAR-10 batch never holds "
                                         f"(only numpy arrays are allowed; nothing was executed)") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 [n, 3, 32, 32], labels int64 [n] in 0..9)."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as err:  # a corrupt or hostile pickle can fail in any way; name the file, keep one line
        raise ValueError(f"cannot read {path} as a CIFAR-10 batch: {type(err).__name__}: {err}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected a dict with keys b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and len(data) > 0):
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array [n, 3072] with n >= 1, got {got}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def find_folder(path: str) -> Path:
    """The batches folder: ``path`` (or $AOTBENCH_CIFAR10) itself when it holds batch files, else its child
    ``cifar-10-batches-py``. Raises FileNotFoundError naming what was expected where."""
    given = path or os.environ.get(ENV, "")
    if not given:
        raise FileNotFoundError(f"expected {EXPECTED}, but no location is given (set path=... or {ENV})")
    root = Path(given).expanduser()
    folder = root if any((root / name).is_file() for name in [*TRAIN, HELDOUT]) else root / FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"expected {EXPECTED} at {root} (set path=... or {ENV})")
    missing = [name for name in [*TRAIN, HELDOUT] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} (expected {EXPECTED})")
    return folder


class CIFAR10:
    """CIFAR-10 from a local cifar-10-batches-py folder: 50000 train / 10000 held-out x 3x32x32 in [-1, 1], 10 classes."""

    network = "unet"  # small enough for a CPU; the recipes name the paper's network (`ncsnpp`)
    defaults = IMAGE_DEFAULTS

    def __init__(self, *, path: str = ""):
        self.path = path

    def load(self) -> Splits:
        folder = find_folder(self.path)
        train = [_read_batch(folder / name) for name in TRAIN]
        x_held, y_held = _read_batch(folder / HELDOUT)
        x = to_signed(np.concatenate([b[0] for b in train]))
        y = torch.from_numpy(np.concatenate([b[1] for b in train]))
        return Splits("cifar10", x, to_signed(x_held), y, torch.from_numpy(y_held), 10)


@hookimpl
def register_datasets(register):
    register("cifar10", CIFAR10)
