"""Runs cells: train (or load) each distinct model once, evaluate its cells, write one record per cell.

A cell whose record holds every metric asked for is skipped unless ``force``; a record that lacks some gets just
those added (metrics are outputs, not identity). A model whose checkpoint is finished is loaded, one that is
unfinished is resumed. So any launcher can run any subset of a grid, in any order, any number of times.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CellConfig
from .evaluate import EvalContext
from .plugins import Registry
from .records import Workspace, environment, write_record
from .storage import read_json, write_verified_bytes
from .datasets import load_splits
from .snapshots import riders
from .train import TrainOptions, load_ema, train_model


@dataclass
class RunOptions:
    """How to run cells; nothing here changes a number (each sample's randomness is its own, whatever
    ``eval_batch``), so none of it is part of a key."""

    device: str = "cpu"
    eval_batch: int = 2000
    force: bool = False
    progress: bool = True
    train: TrainOptions = field(default_factory=TrainOptions)


def group_by_model(cells: list[CellConfig]) -> dict[str, list[CellConfig]]:
    """Cells by their model's train key, in first-seen order, so each model is trained or loaded once."""
    groups: dict[str, list[CellConfig]] = {}
    for c in cells:
        groups.setdefault(c.train.key, []).append(c)
    return groups


def evaluate_cell(registry: Registry, cell: CellConfig, model, ws: Workspace, memo: dict, opts: RunOptions,
                  metrics: tuple | None = None, checkpoint: dict | None = None):
    """Compute ``metrics`` (default: all of the cell's) on one cell; returns (metrics, timings, artifacts, warnings).
    ``checkpoint``: the model's training checkpoint, for metrics of its training (coupling diagnostics)."""
    splits = load_splits(registry, cell.train.dataset)
    ctx = EvalContext(registry, cell, splits, model, device=opts.device, cache_dir=ws.cache, memo=memo,
                      batch=opts.eval_batch, progress=opts.progress, checkpoint=checkpoint)
    t0 = time.perf_counter()
    values: dict = {}
    for m in cell.metrics if metrics is None else metrics:
        values.update(registry.get("metric", m.name).build(**m.kwargs).compute(ctx))
    values.update(ctx.costs)
    return values, {**ctx.timings, "eval_seconds": time.perf_counter() - t0}, ctx.artifacts, ctx.warnings


def _save_artifacts(path: Path, artifacts: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in artifacts.items()})
    write_verified_bytes(path, buf.getvalue())  # its sha256 inside: a reader can tell it is intact


def missing_metrics(cell: CellConfig, record: dict | None, force: bool = False) -> tuple:
    """The metrics of ``cell`` its record lacks (all of them without a record, or with ``force``): a metric counts
    as present when the record holds it with the same parameters."""
    if record is None or force:
        return cell.metrics
    have = record.get("metric_params", {})
    return tuple(m for m in cell.metrics if have.get(m.name) != m.kwargs)


def _read_record(ws: Workspace, experiment: str, cell: CellConfig) -> dict | None:
    path = ws.record_path(experiment, cell)
    return read_json(path) if path.exists() else None


def run_model(registry: Registry, cells: list[CellConfig], ws: Workspace, experiment: str,
              opts: RunOptions, log=print, snapshots: dict[int, str] | None = None) -> list[dict]:
    """Train/load the model shared by ``cells``, evaluate the metrics their records lack; returns their records.
    ``snapshots`` ({step: train key}): shorter models of the same run, whose checkpoints training writes on the way
    (:mod:`aotbench.snapshots`)."""
    records = {c.key: _read_record(ws, experiment, c) for c in cells}
    pending = [(c, missing_metrics(c, records[c.key], opts.force)) for c in cells]
    pending = [(c, ms) for c, ms in pending if ms]
    if pending:
        cfg = pending[0][0].train
        train_opts = dataclasses.replace(opts.train, device=opts.device, progress=opts.progress,
                                         snapshots={s: ws.model_path(k) for s, k in (snapshots or {}).items()})
        ckpt = train_model(registry, cfg, ws.model_path(cfg.key), train_opts)
        model = load_ema(registry, cfg, ckpt, opts.device)
        memo: dict = {}
        env = environment(opts.device)
        for cell, metrics in pending:
            values, timings, artifacts, warnings = evaluate_cell(registry, cell, model, ws, memo, opts, metrics,
                                                                 ckpt)
            for w in warnings:
                log(f"warning: {w}")
            timings.update({k: float(v) for k, v in ckpt["timing"].items()})
            if artifacts:
                _save_artifacts(ws.artifact_path(experiment, cell), artifacts)
            old = None if opts.force else records[cell.key]
            records[cell.key] = write_record(ws.record_path(experiment, cell), experiment, cell, values, timings,
                                             env, warnings, metrics, old, load_splits(registry, cfg.dataset).classes)
    return [records[c.key] for c in cells]


def _check_workers(registry: Registry, trains: list, opts: RunOptions) -> None:
    """Refuse, before any model of the grid trains, more than one pairing worker for a stateful pairing."""
    import torch

    from .train import resolve_workers

    refuse_stateful_workers(registry, trains, resolve_workers(opts.train, torch.device(opts.device)))


def refuse_stateful_workers(registry: Registry, trains: list, workers: int) -> None:
    """UserError (one line) when ``workers`` > 1 pairing processes would serve a stateful pairing of ``trains``
    (TrainConfigs): its pools are paired in order by one process (:func:`aotbench.pool.check_workers` says the same
    at training time; ``run`` and ``sweep`` say it before anything trains or is submitted)."""
    from .errors import UserError
    from .pool import is_stateful

    if workers <= 1:
        return
    for t in trains:
        if is_stateful(registry.get("pairing", t.pairing.name).build(**t.pairing.kwargs)):
            raise UserError(f"pairing '{t.pairing.name}' keeps state from pool to pool, so its pools are paired in "
                            f"order by one process: use 0 or 1 pairing workers (--pair-workers, or pair_workers in a "
                            f"sweep's [options]), not {workers}")


def run_cells(registry: Registry, cells: list[CellConfig], results: Path, experiment: str,
              opts: RunOptions | None = None, log=print) -> tuple[list[dict], int]:
    """Run a whole grid in this process; returns (records in grid order, number of cells newly evaluated)."""
    opts = opts or RunOptions()
    ws = Workspace(Path(results))
    todo = sum(1 for c in cells if missing_metrics(c, _read_record(ws, experiment, c), opts.force))
    groups = group_by_model(cells)
    _check_workers(registry, [g[0].train for g in groups.values()], opts)
    # A model whose shorter snapshots are in the grid trains first and writes their checkpoints on the way (only
    # a speed-up: a snapshot it did not write, e.g. one before the step it resumed from, trains on its own).
    pending = [k for k, g in groups.items() if any(missing_metrics(c, _read_record(ws, experiment, c), opts.force)
                                                    for c in g)]
    rides = riders({k: g[0].train for k, g in groups.items()}, pending)
    order = sorted(groups, key=lambda k: k not in rides)
    out: dict[str, dict] = {}
    for i, key in enumerate(order):
        group = groups[key]
        if opts.progress and len(groups) > 1:
            t = group[0].train
            log(f"[model {i + 1}/{len(groups)}] {t.dataset.name} pairing={t.pairing.label()} "
                f"objective={t.objective.label()} seed={t.seed} train_steps={t.train_steps} ({key})")
        for rec in run_model(registry, group, ws, experiment, opts, log, rides.get(key)):
            out[rec["cell_key"]] = rec
    return [out[c.key] for c in cells], todo
