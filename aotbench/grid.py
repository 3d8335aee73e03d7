"""Grids of cells: the axes ``run`` and ``sweep`` accept, and their expansion into validated :class:`CellConfig`s.

Every axis takes a list; the cross product is the grid. Everything is validated here, before any training or
sampling starts: unknown plugins or parameters, impossible combinations (CFG on an unconditional model), a class
label outside the dataset's range, a network that cannot take the dataset's shape.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from .axes import AXES_BY_NAME, axes
from .config import CellConfig, TrainConfig, resolve
from .datasets import load_splits
from .errors import UserError
from .plugins import Registry
from .snapshots import snapshot_config, snapshot_steps

#: grid axis -> (TrainConfig/CellConfig field, type), from the one table of axes (:mod:`aotbench.axes`)
TRAIN_AXES = {name: (name, a.type) for name, a in axes("train").items()}
CELL_AXES = {name: (name, a.type) for name, a in axes("cell").items()}
CHOICE_AXES = {name: name for name in axes("choice")}
AXES = set(AXES_BY_NAME)

#: the rho recorded for cells whose schedule does not read it (CellConfig's default)
CELL_RHO = CellConfig.__dataclass_fields__["rho"].default

#: used when neither the user nor the dataset plugin says otherwise
FALLBACK = {"steps": [3, 5, 9, 18], "seeds": [0], "n_samples": [1000]}


def typed_value(axis: str, typ, value):
    """``value`` as the axis's type (a string from the command line is parsed; 3.0 is an int axis's 3). Raises
    :class:`UserError` for a value of another type."""
    if isinstance(value, str) and typ is not str:
        from .config import parse_value
        value = parse_value(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"axis '{axis}' takes {typ.__name__} values, got {value!r}")
    return value


def as_list(value) -> list:
    """An axis value as a list: a list or tuple as it is, a string split on commas (items stripped, empty ones dropped),
    anything else as a list of one."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v for v in _split_top(value) if v]
    return [value]


def _split_top(text: str) -> list[str]:
    return [s.strip() for s in text.split(",")]


def dataset_train_defaults(registry: Registry, dataset) -> dict[str, Any]:
    """The training fields a grid fills in for ``dataset`` (a Choice) when the user gives none: its default network
    and every single-valued training axis of its ``defaults``."""
    dcls = registry.get("dataset", dataset.name).obj
    out = {"network": getattr(dcls, "network", None)}
    for axis, value in getattr(dcls, "defaults", {}).items():
        if axis in TRAIN_AXES and len(as_list(value)) == 1:
            out[TRAIN_AXES[axis][0]] = typed_value(axis, TRAIN_AXES[axis][1], as_list(value)[0])
    return out


def steps_for_mimg(mimg: float, batch: int) -> int:
    """Optimizer steps for a duration in millions of training images (EDM's unit): the first step count that has
    shown at least that many images, e.g. 200 Mimg at batch 256 = 781,250 steps."""
    if not mimg > 0:
        raise UserError(f"train_mimg must be > 0, got {mimg}")
    return math.ceil(round(mimg * 1e6 / batch, 6))


def expand(registry: Registry, spec: dict[str, Any], *, fingerprints: dict[str, str] | None = None,
           check: bool = True) -> list[CellConfig]:
    """All cells of a grid spec (axis -> value or list of values), validated (:func:`validate`) unless ``check`` is
    false. ``fingerprints`` (dataset label -> data fingerprint, e.g. from a sweep's ledger) spares reading a dataset
    just to name its cells; any dataset it lacks is read. Raises :class:`UserError` (one line) for an unknown axis
    or plugin, a bad value, or an impossible combination."""
    unknown = sorted(set(spec) - AXES)
    if unknown:
        raise UserError(f"unknown grid axis {', '.join(unknown)} (axes: {', '.join(sorted(AXES))})")
    spec = {k: as_list(v) for k, v in spec.items() if v is not None}
    for axis, values in spec.items():
        if not values:
            raise UserError(f"axis '{axis}' is empty: the grid has no cells")
    if "train_mimg" in spec and "train_steps" in spec:
        raise UserError("give the training duration once: train_steps or train_mimg, not both")
    datasets = [resolve(registry, "dataset", d) for d in spec.get("dataset") or registry.defaults("dataset")]
    metrics = tuple(resolve(registry, "metric", m) for m in spec.get("metrics") or registry.defaults("metric"))
    twice = sorted({m.name for m in metrics if sum(n.name == m.name for n in metrics) > 1})
    if twice:  # one record per cell holds one value per metric name: the second would silently replace the first
        raise UserError(f"metric {', '.join(twice)} asked for twice in one grid; a cell records one value per metric "
                        f"name, so compare its settings in separate --experiment folders")
    cells: list[CellConfig] = []
    for dataset in datasets:
        fingerprint = (fingerprints or {}).get(dataset.label()) or load_splits(registry, dataset).fingerprint
        dcls = registry.get("dataset", dataset.name).obj
        local = {**FALLBACK, **{k: as_list(v) for k, v in getattr(dcls, "defaults", {}).items()}, **spec}
        if "train_mimg" in spec:  # the user's duration in images replaces the dataset's default step count
            local.pop("train_steps", None)
        mimgs = [typed_value("train_mimg", float, v) for v in local["train_mimg"]] if "train_mimg" in local else [None]
        networks = local.get("network") or [getattr(dcls, "network", None)]
        if networks == [None]:
            raise UserError(f"dataset '{dataset.name}' names no default network; give --network")
        choice_lists = {kind: [resolve(registry, kind, v) for v in (local.get(kind) or registry.defaults(kind))]
                        for kind in ("pairing", "objective", "sampler", "guidance", "schedule")}
        choice_lists["network"] = [resolve(registry, "network", n) for n in networks]
        for kind, values in choice_lists.items():
            if not values:
                raise UserError(f"no {kind} given and none is registered as a default")
        train_axes = {a: [typed_value(a, t, v) for v in local[a]] for a, (_, t) in TRAIN_AXES.items() if a in local}
        cell_axes = {a: [typed_value(a, t, v) for v in local[a]] for a, (_, t) in CELL_AXES.items() if a in local}
        seeds = [typed_value("seeds", int, s) for s in local["seeds"]]
        n_snapshots = [typed_value("snapshots", int, v) for v in local.get("snapshots", [1])]
        if any(n < 1 for n in n_snapshots):
            raise UserError(f"snapshots must be >= 1, got {min(n_snapshots)}")
        t_names, t_values = list(train_axes), list(train_axes.values())
        c_names, c_values = list(cell_axes), list(cell_axes.values())
        for network, pairing, objective, seed, mimg, *tv in itertools.product(
                choice_lists["network"], choice_lists["pairing"], choice_lists["objective"], seeds, mimgs, *t_values):
            tkw = {TRAIN_AXES[a][0]: v for a, v in zip(t_names, tv)}
            train = TrainConfig(dataset=dataset, network=network, pairing=pairing, objective=objective, seed=seed,
                                data_fingerprint=fingerprint, **tkw)
            if mimg is not None:  # a model is identified by its step count: 200 Mimg and 781,250 steps are one
                train = dataclasses.replace(train, train_steps=steps_for_mimg(mimg, train.batch))
            trains = [snapshot_config(train, s) for n in n_snapshots for s in snapshot_steps(train.train_steps, n)]
            for train, sampler, guidance, schedule, *cv in itertools.product(
                    list(dict.fromkeys(trains)), choice_lists["sampler"], choice_lists["guidance"],
                    choice_lists["schedule"], *c_values):
                ckw = {CELL_AXES[a][0]: v for a, v in zip(c_names, cv)}
                if not getattr(registry.get("schedule", schedule.name).obj, "uses_rho", False):
                    ckw["rho"] = CELL_RHO  # a rho this schedule ignores must not split identical cells
                cells.append(CellConfig(train=train, sampler=sampler, guidance=guidance, schedule=schedule,
                                        sample_seed=seed, metrics=metrics, **ckw))
    cells = list({c.key: c for c in cells}.values())
    if not cells:
        raise UserError("the grid has no cells")
    if check:
        validate(registry, cells)
    return cells


def validate(registry: Registry, cells: list[CellConfig]) -> None:
    """Refuse impossible combinations before any work starts."""
    from .pool import is_stateful
    from .train import build_model

    checked_models = set()
    for cell in cells:
        t = cell.train
        splits = load_splits(registry, t.dataset)
        if t.augment_p > 0 and not t.network.kwargs.get("augment_dim"):
            raise UserError(f"augment_p={t.augment_p} needs a network conditioned on the augmentation labels (e.g. "
                            f"{t.network.name}:augment_dim=9); without them the model learns the augmented "
                            f"distribution (EDM's augmentation is non-leaking only with the labels)")
        if (t.dataset, t.network, t.conditional) not in checked_models:
            build_model(registry, t, splits)  # wrong shapes, missing labels
            checked_models.add((t.dataset, t.network, t.conditional))
        pairing = registry.get("pairing", t.pairing.name).build(**t.pairing.kwargs)
        if t.global_pool and is_stateful(pairing):
            raise UserError(f"pairing '{t.pairing.name}' keeps per-item state on each rank; it cannot pair global "
                            f"pools (set global_pool false)")
        if hasattr(pairing, "check_pool"):
            pool = t.pool * (t.ranks if t.global_pool else 1)  # a global pool is solved as one
            try:
                pairing.check_pool(pool, splits.shape)
            except ValueError as err:
                where = f" (a global pool of {t.ranks} ranks x {t.pool})" if t.global_pool else ""
                raise UserError(f"pairing '{t.pairing.name}'{where}: {err}") from None
        guidance = registry.get("guidance", cell.guidance.name).build(**cell.guidance.kwargs)
        needs = set(getattr(guidance, "needs", ()))
        if "conditional" in needs and not t.conditional:
            raise UserError(f"guidance '{cell.guidance.name}' needs a class-conditional model (set conditional=true)")
        if "label_dropout" in needs and not t.label_dropout > 0:
            raise UserError(f"guidance '{cell.guidance.name}' needs a model trained with label dropout "
                            f"(set label_dropout, e.g. 0.1)")
        if cell.label is not None:
            if not t.conditional:
                raise UserError(f"label={cell.label} given but the model is unconditional")
            if cell.label not in splits.classes:
                raise UserError(f"class label {cell.label} is not in dataset '{t.dataset.name}' "
                                f"(its labels: {', '.join(map(str, splits.classes))})")
