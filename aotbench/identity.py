"""Identity, in one place: what a trained model, an evaluated cell and every cache are keyed by.

- A **model** is its training config (the objective it was trained with included) plus a fingerprint of its data's
  content (:func:`data_fingerprint`), which the config carries as ``data_fingerprint``: the same name over changed
  files is another model.
- A **cell** is its model plus its sampling config (sampler, schedule, guidance, sample count and seed, labels).
  The metrics computed on a cell are outputs, not identity: asking for another metric adds it to the cell's record.
- Every cache derives its key from these: the model checkpoint (:func:`model_key`), the record (:func:`cell_key`),
  the reference ODE solve shared by the cells of one model (:func:`reference_key`), the noise and labels of a
  sample set (:func:`sample_set_key`), and data-derived caches such as feature nets and FID statistics (which use
  :func:`data_fingerprint` or :func:`tensor_digest`).

Options that cannot change a result (device placement aside, evaluation batch size, worker counts, progress bars)
are never part of a key; they are run options. Randomness is per sample (:mod:`aotbench.seeds`), which is what makes
the evaluation batch size safe to leave out.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .storage import stable_hash

#: the sampling fields of a cell that do not change a sample set's noise and labels
_SAMPLER_ONLY = ("sampler", "steps", "rho", "schedule")


def tensor_digest(*tensors: torch.Tensor | None, length: int = 16) -> str:
    """sha256 over the dtype, shape and bytes of each tensor (None counts as a marker), hex, ``length`` chars."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{a.dtype.str}{list(a.shape)};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def data_fingerprint(splits) -> str:
    """The content of a dataset as the engine sees it: both splits, their labels and the class values (sha256)."""
    classes = torch.as_tensor(list(getattr(splits, "classes", ()) or ()), dtype=torch.long)
    return tensor_digest(splits.train, splits.heldout, splits.train_labels, splits.heldout_labels, classes)


def model_key(train) -> str:
    """Key of a trained model: its training config (dataset choice, data fingerprint, network, pairing, objective,
    budget). Renamed fields hash under their first names (``config.RENAMED``): a name is not a value. A field added
    since models were first trained is left out at the value that reproduces them (``config.TRAIN_ADDED``): existing
    keys stay valid."""
    from .config import RENAMED, TRAIN_ADDED

    d = train.to_dict()
    for old, new in RENAMED.items():
        d[old] = d.pop(new)
    for name, first in TRAIN_ADDED.items():
        if d.get(name) == first:
            d.pop(name)
    return stable_hash({"train": d})


def sampling_dict(cell) -> dict:
    """A cell's sampling config: every field but the model and the metrics. A field added since records were first
    written is left out at the value that reproduces them (``config.ADDED``): existing keys stay valid."""
    from .config import ADDED

    d = cell.to_dict()
    d.pop("train")
    d.pop("metrics", None)
    for name, first in ADDED.items():
        if d.get(name) == first:
            d.pop(name)
    return d


def cell_key(cell) -> str:
    """Key of a cell's record: its model's key plus its sampling config (not the metrics asked for)."""
    return stable_hash({"model": model_key(cell.train), "sampling": sampling_dict(cell)})


def sample_set_key(cell, seed_range: int = 0) -> str:
    """Key of a cell's starting noise and labels: shared by every sampler, step count and schedule of one model."""
    d = {k: v for k, v in sampling_dict(cell).items() if k not in _SAMPLER_ONLY and k != "guidance"}
    return stable_hash({"model": model_key(cell.train), "samples": d, "range": seed_range})


def reference_key(cell) -> str:
    """Key of the fine reference ODE solve: the sample set plus everything that shapes the ODE it follows
    (guidance, the sigma range), but not the cell's own sampler, step count or rho."""
    d = {k: v for k, v in sampling_dict(cell).items() if k not in _SAMPLER_ONLY}
    return stable_hash({"model": model_key(cell.train), "reference": d})
