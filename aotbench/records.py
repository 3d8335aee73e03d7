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
        """``<root>/<experiment>/cells``: the experiment's records."""
        return self.root / experiment / "cells"

    def record_path(self, experiment: str, cell: CellConfig) -> Path:
        """``<root>/<experiment>/cells/<cell_key>.json``: the record of ``cell``."""
        return self.cells(experiment) / f"{cell.key}.json"

    def artifact_path(self, experiment: str, cell: CellConfig) -> Path:
        """``<root>/<experiment>/artifacts/<cell_key>.npz``: the arrays a cell keeps for figures (samples, reference
        trajectories)."""
        return self.root / experiment / "artifacts" / f"{cell.key}.npz"

    def model_path(self, train_key: str) -> Path:
        """``<root>/models/<train_key>.pt``: a trained model, shared by every experiment."""
        return self.root / "models" / f"{train_key}.pt"

    @property
    def cache(self) -> Path:
        """``<root>/cache``: FD feature nets, FID reference statistics and other derived files."""
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
    """``device`` as records name it: ``cuda:<GPU name>``, or ``cpu:<machine> x<N> threads``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()} x{torch.get_num_threads()} threads"


def environment(device) -> dict:
    """Where a record was computed: aotbench version (``dev`` when not installed), git commit, torch and Python
    versions, device name (:func:`device_name`) and host."""
    try:
        version = importlib.metadata.version("aotbench")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"
    return {"aotbench": version, "git_commit": _git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device_name(device), "host": platform.node()}


def write_record(path: Path, experiment: str, cell: CellConfig, metrics: dict, timings: dict, env: dict,
                 warnings: list[str] = (), computed: tuple = (), old: dict | None = None,
                 classes: tuple[int, ...] = ()) -> dict:
    """Write (or, given the ``old`` record of the same cell, extend) one cell's record atomically.

    ``computed`` are the metric choices just evaluated: their parameters go to ``metric_params``, their outputs
    replace any older outputs of the same name; everything else of ``old`` is kept. ``classes`` are the data's
    label values in the order of the model's classes 0..K-1 (the engine's label mapping)."""
    old = old or {}
    record = {"experiment": experiment, "cell_key": cell.key, "train_key": cell.train.key,
              "train_img": cell.train.train_steps * cell.train.batch, "config": cell.to_dict(), "metrics": {**old.get("metrics", {}), **metrics},
              "metric_params": {**old.get("metric_params", {}), **{m.name: m.kwargs for m in computed}},
              "timings": {**old.get("timings", {}), **timings},
              "warnings": sorted({*old.get("warnings", []), *warnings}), "environment": env,
              "data": {"fingerprint": cell.train.data_fingerprint, "classes": list(classes)},
              "created": old.get("created") or _now()}
    record["config"].pop("metrics", None)
    if old:
        record["updated"] = _now()
    atomic_write_json(path, record)
    return record


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


#: what every record holds, and the type of each (a stray JSON file in a results folder is refused, not read)
RECORD_SHAPE = {"cell_key": str, "train_key": str, "config": dict, "metrics": dict}


def read_records(folder: Path) -> list[dict]:
    """All records under ``folder`` (an experiment folder or its ``cells`` folder), sorted by cell key.

    Raises UserError (one line, naming the file) for a file that is not JSON or not shaped like a record."""
    from .errors import UserError

    folder = Path(folder)
    cells = folder / "cells" if (folder / "cells").is_dir() else folder
    out = []
    for p in sorted(cells.glob("*.json")):
        r = read_json(p)
        if not isinstance(r, dict) or any(not isinstance(r.get(k), t) for k, t in RECORD_SHAPE.items()) \
                or not isinstance(r["config"].get("train"), dict):
            raise UserError(f"not a record: {p} (a record holds cell_key, train_key, config with its train config, "
                            f"and metrics); move the file out of the results folder")
        out.append(r)
    return out
