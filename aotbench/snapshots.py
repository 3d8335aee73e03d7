"""Training-efficiency curves: snapshots of one training run, each the model of a shorter run.

Step ``s`` of a run of ``T`` steps is *exactly* the model a run of ``s`` steps ends with: every draw is seeded by
its coordinates (seed, rank, pool, step), the learning-rate and EMA ramps count images seen, never the run's length
(:mod:`aotbench.train`). So a snapshot needs no identity of its own: it is the model whose config is the long run's
with ``train_steps = s``, and its record is the record of that plain run (a test holds the weights equal). The
``snapshots`` axis asks for N of them, evenly spaced, the last one the run itself; the runner and the sweep planner
train each family of such models once, its longest member writing the others' checkpoints on the way.
"""

from __future__ import annotations

import dataclasses

from .config import TrainConfig
from .storage import stable_hash


def snapshot_steps(train_steps: int, n: int) -> list[int]:
    """The step counts of ``n`` evenly spaced snapshots of a ``train_steps`` run, the last being ``train_steps``:
    ``floor(T i / n)`` for i = 1..n, distinct and >= 1 (fewer than n when T < n)."""
    if n < 1:
        raise ValueError(f"snapshots must be >= 1, got {n}")
    return sorted({max(1, train_steps * i // n) for i in range(1, n + 1)})


def family(cfg: TrainConfig) -> str:
    """What a model shares with its snapshots: its training config but the step count."""
    d = cfg.to_dict()
    d.pop("train_steps")
    return stable_hash({"family": d})


def riders(models: dict[str, TrainConfig], to_train: list[str]) -> dict[str, dict[int, str]]:
    """For each model of ``to_train`` that is the longest of its family among them, the shorter ones it writes on
    the way: {its key: {step: key}}. A model in ``to_train`` that is a value here is not trained on its own."""
    by_family: dict[str, list[str]] = {}
    for k in to_train:
        by_family.setdefault(family(models[k]), []).append(k)
    out = {}
    for keys in by_family.values():
        keys = sorted(keys, key=lambda k: models[k].train_steps)
        out[keys[-1]] = {models[k].train_steps: k for k in keys[:-1]}
    return out


def snapshot_config(cfg: TrainConfig, step: int) -> TrainConfig:
    """The config of ``cfg``'s snapshot at ``step``: the same run, ``step`` steps long."""
    return dataclasses.replace(cfg, train_steps=step)
