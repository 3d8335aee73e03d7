"""The engine's gate for every dataset plugin, built-in or third-party: load, map labels, fingerprint.

Whatever a plugin returns passes through :func:`load_splits` once per process:

- non-finite values and labels that do not fit the data are refused in one line naming the plugin;
- class labels are mapped to 0..K-1 in sorted order of the values the data has (``Splits.classes`` keeps the
  values), so a dataset labelled {0, 5} has two classes, not six;
- the content is fingerprinted (:func:`aotbench.identity.data_fingerprint`), and the fingerprint becomes part of
  every model trained on it (:func:`bind_data`), so changed data under an unchanged name never serves old results.
"""

from __future__ import annotations

import dataclasses

import torch

from . import identity
from .config import Choice, TrainConfig
from .data import ClassifierFeatures, Splits
from .errors import UserError
from .plugins import Registry

_SPLITS: dict[tuple, Splits] = {}


def _check(splits: Splits, who: str) -> None:
    """Refuse what no plugin may hand the engine: non-finite values, labels that do not match the data."""
    for part in ("train", "heldout"):
        x = getattr(splits, part)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
            raise UserError(f"dataset {who}: {part} must be a non-empty float tensor [N, *S]")
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise UserError(f"dataset {who}: {part} holds {bad} non-finite value(s) (NaN or inf)")
        labels = getattr(splits, f"{part}_labels")
        if labels is not None and (labels.shape != (len(x),) or labels.is_floating_point() or
                                   (len(labels) and int(labels.min()) < 0)):
            raise UserError(f"dataset {who}: {part}_labels must be {len(x)} integer labels >= 0")
    if splits.train.shape[1:] != splits.heldout.shape[1:]:
        raise UserError(f"dataset {who}: train {tuple(splits.train.shape[1:])} and held-out "
                        f"{tuple(splits.heldout.shape[1:])} samples differ in shape")


def _map_labels(splits: Splits) -> Splits:
    """Labels as 0..K-1 over the sorted values present in either split; features rebuilt on the mapped labels."""
    if splits.train_labels is None:
        return dataclasses.replace(splits, classes=())
    both = [t for t in (splits.train_labels, splits.heldout_labels) if t is not None]
    values = torch.unique(torch.cat([t.long().flatten() for t in both]))
    remap = lambda t: None if t is None else torch.searchsorted(values, t.long())  # noqa: E731
    mapped = dataclasses.replace(splits, train_labels=remap(splits.train_labels),
                                 heldout_labels=remap(splits.heldout_labels), num_classes=len(values),
                                 classes=tuple(int(v) for v in values))
    if isinstance(splits.features, ClassifierFeatures):  # the plugin's recipe, on the mapped labels
        mapped.features = splits.features.relabeled(mapped)
    return mapped


def load_splits(registry: Registry, choice: Choice) -> Splits:
    """The dataset of a choice, labels mapped and fingerprinted (cached per process and registry)."""
    key = (id(registry), choice)
    if key not in _SPLITS:
        comp = registry.get("dataset", choice.name)
        try:
            splits = comp.build(**choice.kwargs).load()
        except (OSError, ValueError) as err:
            raise UserError(f"dataset '{choice.name}': {err}") from None
        _check(splits, f"'{choice.name}' (from {comp.distribution})")
        splits = _map_labels(splits)
        splits.fingerprint = identity.data_fingerprint(splits)
        _SPLITS[key] = splits
    return _SPLITS[key]


def bind_data(registry: Registry, train: TrainConfig) -> TrainConfig:
    """``train`` with the fingerprint of its dataset's content filled in (its key then names the data it uses)."""
    return dataclasses.replace(train, data_fingerprint=load_splits(registry, train.dataset).fingerprint)


def check_bound(splits: Splits, train: TrainConfig) -> None:
    """Refuse to train or evaluate a model on data other than the data its key names."""
    if train.data_fingerprint != splits.fingerprint:
        if not train.data_fingerprint:
            raise UserError(f"the configuration of dataset '{train.dataset.name}' names no data fingerprint "
                            f"(build configs with aotbench.grid.expand or aotbench.datasets.bind_data)")
        raise UserError(f"dataset '{train.dataset.label()}' has changed since this configuration was made (data "
                        f"fingerprint {splits.fingerprint}, expected {train.data_fingerprint}); plan it again")


def clear_cache() -> None:
    """Forget the datasets loaded by this process (the next :func:`load_splits` reads and fingerprints anew)."""
    _SPLITS.clear()
