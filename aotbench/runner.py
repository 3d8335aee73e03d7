"""Runs cells: train (or load) each distinct model once, evaluate its cells, write one record per cell.

A cell whose record exists is skipped unless ``force``; a model whose checkpoint is finished is loaded, one that is
unfinished is resumed. So any launcher can run any subset of a grid, in any order, any number of times.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CellConfig
from .evaluate import EvalContext
from .plugins import Registry
from .records import Workspace, environment, write_record
from .storage import atomic_write_bytes, read_json
from .train import TrainOptions, load_ema, load_splits, train_model


@dataclass
class RunOptions:
    device: str = "cpu"
    eval_batch: int = 2000
    force: bool = False
    progress: bool = True
    train: TrainOptions = field(default_factory=TrainOptions)


def group_by_model(cells: list[CellConfig]) -> dict[str, list[CellConfig]]:
    groups: dict[str, list[CellConfig]] = {}
    for c in cells:
        groups.setdefault(c.train.key, []).append(c)
    return groups


def evaluate_cell(registry: Registry, cell: CellConfig, model, ws: Workspace, memo: dict, opts: RunOptions):
    """Compute every metric of one cell; returns (metrics, timings, artifacts)."""
    splits = load_splits(registry, cell.train.dataset)
    ctx = EvalContext(registry, cell, splits, model, device=opts.device, cache_dir=ws.cache, memo=memo,
                      batch=opts.eval_batch, progress=opts.progress)
    t0 = time.perf_counter()
    metrics: dict = {}
    for m in cell.metrics:
        metrics.update(registry.get("metric", m.name).build(**m.kwargs).compute(ctx))
    metrics.update(ctx.costs)
    return metrics, {**ctx.timings, "eval_seconds": time.perf_counter() - t0}, ctx.artifacts


def _save_artifacts(path: Path, artifacts: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in artifacts.items()})
    atomic_write_bytes(path, buf.getvalue())


def run_model(registry: Registry, cells: list[CellConfig], ws: Workspace, experiment: str,
              opts: RunOptions) -> list[dict]:
    """Train/load the model shared by ``cells`` and evaluate those without a record; returns their records."""
    pending = [c for c in cells if opts.force or not ws.record_path(experiment, c).exists()]
    records = {c.key: read_json(ws.record_path(experiment, c)) for c in cells if c not in pending}
    if pending:
        cfg = pending[0].train
        train_opts = opts.train
        train_opts.device, train_opts.progress = opts.device, opts.progress
        ckpt = train_model(registry, cfg, ws.model_path(cfg.key), train_opts)
        model = load_ema(registry, cfg, ckpt, opts.device)
        memo: dict = {}
        env = environment(opts.device)
        for cell in pending:
            metrics, timings, artifacts = evaluate_cell(registry, cell, model, ws, memo, opts)
            timings.update({k: float(v) for k, v in ckpt["timing"].items()})
            if artifacts:
                _save_artifacts(ws.artifact_path(experiment, cell), artifacts)
            records[cell.key] = write_record(ws.record_path(experiment, cell), experiment, cell, metrics, timings, env)
    return [records[c.key] for c in cells]


def run_cells(registry: Registry, cells: list[CellConfig], results: Path, experiment: str,
              opts: RunOptions | None = None, log=print) -> tuple[list[dict], int]:
    """Run a whole grid in this process; returns (records in grid order, number of cells newly evaluated)."""
    opts = opts or RunOptions()
    ws = Workspace(Path(results))
    todo = sum(1 for c in cells if opts.force or not ws.record_path(experiment, c).exists())
    groups = group_by_model(cells)
    out: dict[str, dict] = {}
    for i, (key, group) in enumerate(groups.items()):
        if opts.progress and len(groups) > 1:
            t = group[0].train
            log(f"[model {i + 1}/{len(groups)}] {t.dataset.name} pairing={t.pairing.label()} seed={t.seed} ({key})")
        for rec in run_model(registry, group, ws, experiment, opts):
            out[rec["cell_key"]] = rec
    return [out[c.key] for c in cells], todo
