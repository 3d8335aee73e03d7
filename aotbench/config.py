"""Configurations of a trained model (:class:`TrainConfig`) and of an evaluated cell (:class:`CellConfig`).

A cell is a pure function of its config and its data: the training config (with its data fingerprint) is hashed
into ``train_key`` (the model cache) and the cell's sampling config with it into ``cell_key`` (the record file), as
:mod:`aotbench.identity` defines, so any launcher can run any cell, in any order, twice, with the same record.
Plugin choices are written ``name`` or ``name:key=value:key=value`` on the command line and resolved against the
plugin's signature (defaults filled in) before hashing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from . import identity
from .errors import UserError
from .plugins import Registry

#: TrainConfig fields renamed since records were first written: old name -> new name. Keys hash the old names
#: (:func:`aotbench.identity.model_key`), so a rename alone changes no key and orphans no cached model.
RENAMED = {"steps": "train_steps"}

#: CellConfig fields added since records were first written, and the value that reproduces what records without
#: them computed; at that value they are left out of every key (:func:`aotbench.identity.sampling_dict`)
ADDED = {"schedule": {"name": "karras"}}

#: TrainConfig fields added since models were first trained, and the value that reproduces them; at that value
#: they are left out of the model's key (:func:`aotbench.identity.model_key`), so every existing key stays valid
TRAIN_ADDED = {"objective": {"name": "edm"}, "global_pool": False}

#: the TrainConfig fields that are plugin choices
TRAIN_CHOICES = ("dataset", "network", "pairing", "objective")

#: how a conditional cell without a fixed label draws its classes
LABEL_SAMPLING = ("train", "uniform")


@dataclass(frozen=True)
class Choice:
    """A plugin name plus its fully resolved parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments of the plugin."""
        return dict(self.params)

    def to_dict(self) -> dict:
        """``{"name": ..., param: value, ...}``: the form records and keys hold."""
        return {"name": self.name, **self.kwargs}

    @classmethod
    def from_dict(cls, d: dict) -> Choice:
        """The inverse of :meth:`to_dict` (parameters sorted by name)."""
        d = dict(d)
        return cls(d.pop("name"), tuple(sorted(d.items())))

    def label(self, defaults: dict | None = None) -> str:
        """``name`` plus the parameters that differ from ``defaults`` (for tables)."""
        extra = [f"{k}={v}" for k, v in self.params if defaults is None or defaults.get(k) != v]
        return ":".join([self.name, *extra])


def parse_value(text: str) -> Any:
    """``true``/``false``/numbers as JSON, anything else as the string itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (bool, int, float, str)) or value is None else text


def parse_choice(text: str) -> tuple[str, dict[str, Any]]:
    """``"sinkhorn:reg=0.1"`` -> ``("sinkhorn", {"reg": 0.1})``."""
    name, *rest = [s.strip() for s in text.strip().split(":")]
    params = {}
    for item in rest:
        if "=" not in item:
            raise UserError(f"cannot read '{text}': parameters are written name:key=value:key=value")
        k, v = item.split("=", 1)
        params[k.strip()] = parse_value(v.strip())
    if not name:
        raise UserError(f"cannot read '{text}': missing plugin name")
    return name, params


def resolve(registry: Registry, kind: str, spec: str | dict | Choice) -> Choice:
    """A plugin choice (string, dict with ``name``, or Choice) checked against the registry, defaults filled in."""
    if isinstance(spec, Choice):
        name, params = spec.name, spec.kwargs
    elif isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if not name:
            raise UserError(f"a {kind} table needs a 'name' key, got {spec}")
    else:
        name, params = parse_choice(str(spec))
    comp = registry.get(kind, name)
    return Choice(name, tuple(sorted(comp.resolve(params).items())))


def _check_finite(cfg) -> None:
    """Refuse a NaN or infinite number in a config (it could neither be hashed into a key nor mean anything)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name} must be a finite number, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model. Units: images for EMA/LR ramp, optimizer steps for duration.

    ``batch`` is the global batch over ``ranks``; each rank draws and pairs its own pool of ``pool`` samples (the
    paper's per-GPU pool), so ``pool`` must be a multiple of the per-rank batch ``batch / ranks``. ``ranks`` is part
    of the model's identity because per-rank pairing is a different algorithm than pairing one big pool; a
    single process simulates the ranks exactly, DDP runs them for real.
    """

    dataset: Choice
    network: Choice
    pairing: Choice
    #: the training objective (an objective plugin: noise levels, loss weight, preconditioning; EDM's by default)
    objective: Choice = Choice("edm")
    seed: int = 0
    train_steps: int = 2000
    batch: int = 128
    pool: int = 512
    ranks: int = 1
    #: pair one assignment over all ranks' pools (ranks x pool samples) instead of one per rank
    global_pool: bool = False
    lr: float = 1e-3
    lr_rampup_img: int = 0
    ema_halflife_img: float = 500_000.0
    ema_rampup_ratio: float = 0.05
    conditional: bool = False
    label_dropout: float = 0.0
    augment_p: float = 0.0
    grad_accum: int = 1
    precision: str = "fp32"
    #: sha256 of the dataset's content as loaded (:func:`aotbench.identity.data_fingerprint`); set when a grid is
    #: expanded, checked again when training starts, so changed data under the same name is another model
    data_fingerprint: str = ""

    def __post_init__(self):
        _check_finite(self)
        if self.global_pool and self.ranks == 1:  # one rank's global pool is its own pool: one model, one key
            object.__setattr__(self, "global_pool", False)
        b = self.batch // self.ranks if self.ranks > 0 else 0
        checks = [
            (self.train_steps >= 1, f"train_steps must be >= 1, got {self.train_steps}"),
            (self.ranks >= 1, f"ranks must be >= 1, got {self.ranks}"),
            (self.batch >= 1 and self.batch % self.ranks == 0,
             f"batch {self.batch} must be a positive multiple of ranks {self.ranks}"),
            (self.pool >= b > 0 and self.pool % max(b, 1) == 0,
             f"pool {self.pool} must be >= the per-rank batch {b} and a multiple of it"),
            (self.grad_accum >= 1 and b % self.grad_accum == 0,
             f"per-rank batch {b} must be a multiple of grad_accum {self.grad_accum}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0.0 <= self.label_dropout < 1.0, f"label_dropout must be in [0, 1), got {self.label_dropout}"),
            (0.0 <= self.augment_p <= 1.0, f"augment_p must be in [0, 1], got {self.augment_p}"),
            (self.precision in ("fp32", "bf16", "fp16"), f"precision must be fp32, bf16 or fp16, got {self.precision}"),
            (not self.label_dropout or self.conditional, "label_dropout needs a conditional model"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    @property
    def rank_batch(self) -> int:
        """Samples per optimizer step on one rank: ``batch / ranks``."""
        return self.batch // self.ranks

    @property
    def steps_per_pool(self) -> int:
        """Optimizer steps that consume one rank's pool: ``pool / rank_batch``."""
        return self.pool // self.rank_batch

    def to_dict(self) -> dict:
        """Every field, plugin choices as ``{"name", params...}`` dicts (JSON-able)."""
        d = asdict(self)
        for k in TRAIN_CHOICES:
            d[k] = getattr(self, k).to_dict()
        return d

    @staticmethod
    def upgrade(d: dict) -> dict:
        """A training config dict as this version names its fields: records and checkpoints written before the
        rename of ``steps`` to ``train_steps`` stay readable, and a field added since (``TRAIN_ADDED``) gets the
        value those models were trained with."""
        d = dict(d)
        for old, new in RENAMED.items():
            if old in d and new not in d:
                d[new] = d.pop(old)
        for name, first in TRAIN_ADDED.items():
            d.setdefault(name, first)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Raises TypeError for a field this version does not know."""
        d = cls.upgrade(d)
        for k in TRAIN_CHOICES:
            d[k] = Choice.from_dict(d[k])
        return cls(**d)

    @property
    def key(self) -> str:
        """The model's key (:func:`aotbench.identity.model_key`): its checkpoint is ``RESULTS/models/<key>.pt``."""
        return identity.model_key(self)


@dataclass(frozen=True)
class CellConfig:
    """One evaluated cell: a trained model, a sampler at a schedule, a guidance, and the metrics to compute."""

    train: TrainConfig
    sampler: Choice
    guidance: Choice
    steps: int
    rho: float = 7.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    n_samples: int = 1000
    sample_seed: int = 0
    #: what to compute; outputs, not identity (not in the cell's key: a rerun adds missing metrics to the record)
    metrics: tuple[Choice, ...] = field(default_factory=tuple)
    #: conditional models: sample only this class, as the data labels it (None = draw labels per sample)
    label: int | None = None
    #: conditional models without ``label``: draw classes in the train split's proportions ("train") or uniformly
    label_sampling: str = "train"
    #: the noise levels the sampler steps through (a schedule plugin; EDM's ρ-schedule by default)
    schedule: Choice = Choice("karras")

    def __post_init__(self):
        _check_finite(self)
        if self.steps < 1:
            raise UserError(f"sampling steps must be >= 1, got {self.steps}")
        if not self.rho > 0:
            raise UserError(f"rho must be > 0, got {self.rho}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise UserError(f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                            f"sigma_max={self.sigma_max}")
        if self.n_samples < 2:
            raise UserError(f"n_samples must be >= 2, got {self.n_samples}")
        if self.label_sampling not in LABEL_SAMPLING:
            raise UserError(f"label_sampling must be one of {', '.join(LABEL_SAMPLING)}, got {self.label_sampling!r}")

    def to_dict(self) -> dict:
        """Every field, the model's config and plugin choices as dicts (JSON-able)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["train"] = self.train.to_dict()
        d["sampler"], d["guidance"] = self.sampler.to_dict(), self.guidance.to_dict()
        d["schedule"] = self.schedule.to_dict()
        d["metrics"] = [m.to_dict() for m in self.metrics]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CellConfig:
        """The inverse of :meth:`to_dict`; a record written before a field existed gets that field's first value
        (``ADDED``), and its training config is upgraded (:meth:`TrainConfig.upgrade`)."""
        d = dict(d)
        d["train"] = TrainConfig.from_dict(d["train"])
        d["sampler"], d["guidance"] = Choice.from_dict(d["sampler"]), Choice.from_dict(d["guidance"])
        d["schedule"] = Choice.from_dict(d.get("schedule", ADDED["schedule"]))
        d["metrics"] = tuple(Choice.from_dict(m) for m in d.get("metrics", ()))
        return cls(**d)

    @property
    def key(self) -> str:
        """The cell's key (:func:`aotbench.identity.cell_key`): its record is ``RESULTS/EXP/cells/<key>.json``."""
        return identity.cell_key(self)

    def with_(self, **changes) -> CellConfig:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)
