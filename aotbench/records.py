"""Result records: one JSON file per evaluated cell, written atomically.

``<results>/<experiment>/cells/<cell_key>.json`` holds the full config, the metrics, the timings and the
environment. Records are the only interface between running and reporting, so ``report`` reads records written by
any launcher. Trained models live beside them in ``<results>/models/<train_key>.pt``, shared by every experiment.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CellConfig
from .storage import atomic_write_json, read_json


@dataclass(frozen=True)
class Workspace:
    """The results folder: experiments' records, the shared model cache, and other caches (feature nets)."""

    root: Path

    def cells(self, experiment: str) -> Path:
        return self.root / experiment / "cells"

    def record_path(self, experiment: str, cell: CellConfig) -> Path:
        return self.cells(experiment) / f"{cell.key}.json"

    def artifact_path(self, experiment: str, cell: CellConfig) -> Path:
        return self.root / experiment / "artifacts" / f"{cell.key}.npz"

    def model_path(self, train_key: str) -> Path:
        return self.root / "models" / f"{train_key}.pt"

    @property
    def cache(self) -> Path:
        return self.root / "cache"


@functools.lru_cache(maxsize=None)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()} x{torch.get_num_threads()} threads"


def environment(device) -> dict:
    try:
        version = importlib.metadata.version("aotbench")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"
    return {"aotbench": version, "git_commit": _git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device_name(device), "host": platform.node()}


def write_record(path: Path, experiment: str, cell: CellConfig, metrics: dict, timings: dict, env: dict) -> dict:
    record = {"experiment": experiment, "cell_key": cell.key, "train_key": cell.train.key, "config": cell.to_dict(),
              "metrics": metrics, "timings": timings, "environment": env,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(path, record)
    return record


def read_records(folder: Path) -> list[dict]:
    """All records under ``folder`` (an experiment folder or its ``cells`` folder), sorted by cell key."""
    folder = Path(folder)
    cells = folder / "cells" if (folder / "cells").is_dir() else folder
    return [read_json(p) for p in sorted(cells.glob("*.json"))]
