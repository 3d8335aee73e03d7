"""The sweep spec: a TOML file naming a grid, the resources of its jobs and how they run (docs/sweeps.md).

Every key a spec may hold is a field of one of the dataclasses below, with its type, unit and lower bound, so the
validation, the defaults and the documentation come from one place (as hydra's launcher configs do). An unknown key,
an unknown axis or a value of the wrong type is refused in one line before anything is planned.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _f(default, help: str, minimum=None, stage: str | None = None):
    """A spec field: its default, one line of help (with the unit), its lower bound, and the one stage it belongs to."""
    return field(default=default, metadata={"help": help, "min": minimum, "stage": stage})


@dataclass(frozen=True)
class Resources:
    """The resources of one stage's jobs: ``[resources]`` merged with ``[resources.train]`` or ``[resources.eval]``."""

    partition: str | None = _f(None, "SLURM partition (default: the cluster's default partition)")
    gpus_per_node: int = _f(0, "GPUs per job", 0)
    cpus_per_task: int | None = _f(None, "CPUs per task; also a job's torch thread count unless options.threads", 1)
    mem_gb: float | None = _f(None, "memory per job, GB", 0.001)
    time_min: int = _f(60, "time limit per job, minutes", 1)
    array_parallelism: int | None = _f(None, "tasks of one array running at once (local: jobs at once)", 1)
    signal_delay_s: int | None = _f(None, "the preemption signal (USR2) comes this many seconds before the time "
                                          "limit (default: the launcher's)", 0)
    setup: tuple = _f((), "shell lines run before each job (e.g. 'module load cuda')")
    sbatch: tuple = _f((), "extra sbatch parameters, verbatim (a table)")
    ddp: bool = _f(False, "a model with ranks=R trains as R DDP processes of one node (default: ranks simulated "
                          "in one process)", stage="train")
    cells_per_job: int = _f(1, "cells one eval task evaluates (they share the model and the noise)", 1, stage="eval")


@dataclass(frozen=True)
class Options:
    """``[options]``: how jobs run. Never part of a result's identity (docs/identity.md)."""

    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    ckpt_every: int = _f(500, "training checkpoint interval, optimizer steps", 1)
    eval_batch: int = _f(2000, "samples per sampling batch (results do not depend on it)", 1)
    pair_workers: int | None = _f(None, "background pairing processes per training rank (default: auto)", 0)
    pair_threads: int = _f(1, "torch threads of each pairing worker", 1)
    threads: int | None = _f(None, "torch threads per task (default: cpus_per_task, else torch's default)", 1)
    max_requeue: int = _f(3, "preemptions/timeouts a job may be requeued after", 0)


@dataclass(frozen=True)
class Spec:
    """A checked sweep spec; ``options`` holds only the keys the file sets (jobs fill in the defaults of
    :class:`Options`)."""

    path: Path
    experiment: str
    results: Path
    grids: tuple[dict, ...]
    train: Resources
    eval: Resources
    options: dict

    @property
    def jobs_dir(self) -> Path:
        """Where submitit's files, the job outcomes and the ledger go: ``RESULTS/EXPERIMENT/jobs``."""
        return self.results / self.experiment / "jobs"


_TYPES = {"str | None": str, "int | None": int, "float | None": float, "int": int, "str": str, "bool": bool,
          "float": float, "tuple": None}
_TOP = {"experiment": str, "results": str, "grid": (dict, list), "resources": dict, "options": dict}


def _schema(cls, stage: str | None = None) -> dict:
    """key -> (type, minimum) of a dataclass's fields; for Resources, the common ones or one stage's."""
    out = {}
    for f in fields(cls):
        if f.metadata.get("stage") not in (None, stage):
            continue
        typ = {"setup": list, "sbatch": dict}.get(f.name) or _TYPES[str(f.type)]
        out[f.name] = (typ, f.metadata.get("min"))
    return out


def _check_value(where: str, key: str, typ, minimum, value):
    if isinstance(typ, tuple):  # one of several shapes ([grid] or [[grid]])
        if not isinstance(value, typ):
            raise UserError(f"{where}{key} must be a table or a list of tables, got {value!r}")
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        name = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
                dict: "a table"}[typ]
        raise UserError(f"{where}{key} must be {name}, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{where}{key} must be >= {minimum:g}, got {value!r}")
    if key == "setup" and not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}setup must be a list of shell lines (strings), got {value!r}")
    if key == "sbatch":
        for k, v in value.items():
            if not isinstance(v, (str, int, float, bool)):
                raise UserError(f"{where}sbatch.{k} must be a string, number or boolean, got {v!r}")
    return value


def _check_table(where: str, table: dict, allowed: dict) -> dict:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"unknown key {', '.join(repr(k) for k in unknown)} in {where or 'the top level'} "
                        f"(keys: {', '.join(sorted(allowed))})")
    prefix = f"{where}." if where else ""
    return {k: _check_value(prefix, k, *allowed[k], v) for k, v in table.items()}


def load_spec(path: str | Path, *, results: str | None = None, experiment: str | None = None,
              partition: str | None = None) -> Spec:
    """Read and check a sweep spec; the command line's ``results``, ``experiment`` and ``partition`` win over the
    file. Raises :class:`UserError` (one line) for a missing or unreadable file, an unknown key or axis, a value
    of the wrong type or below its bound, or a bad experiment name."""
    from ..grid import AXES

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read sweep spec {path}: {err}") from None
    raw = _check_table("", raw, {k: (t, None) for k, t in _TOP.items()})
    if "grid" not in raw:
        raise UserError(f"sweep spec {path} has no [grid] table (the axes of `run`)")
    grids = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
    for grid in grids:
        if not isinstance(grid, dict):
            raise UserError(f"[[grid]] entries of {path} must be tables, got {grid!r}")
        unknown = sorted(set(grid) - AXES)
        if unknown:
            raise UserError(f"unknown grid axis {', '.join(repr(a) for a in unknown)} in [grid] of {path} "
                            f"(axes: {', '.join(sorted(AXES))})")
    res = dict(raw.get("resources", {}))
    stages = {s: res.pop(s, {}) for s in ("train", "eval")}
    common = _check_table("resources", res, _schema(Resources))
    merged = {}
    for stage, table in stages.items():
        if not isinstance(table, dict):
            raise UserError(f"resources.{stage} must be a table, got {table!r}")
        values = {**common, **_check_table(f"resources.{stage}", table, _schema(Resources, stage))}
        if partition:
            values["partition"] = partition
        values["setup"] = tuple(values.get("setup", ()))
        values["sbatch"] = tuple(sorted(values.get("sbatch", {}).items()))
        merged[stage] = Resources(**values)
    options = _check_table("options", raw.get("options", {}), _schema(Options))
    if "device" in options and not re.fullmatch(r"cpu|cuda|auto|cuda:\d+", options["device"]):
        raise UserError(f"options.device must be cpu, cuda, cuda:N or auto, got {options['device']!r}")
    name = experiment or raw.get("experiment") or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"experiment name {name!r} must be letters, digits, '.', '_' or '-'")
    return Spec(path=path, experiment=name, results=Path(results or raw.get("results") or "results").absolute(),
                grids=tuple(dict(g) for g in grids), train=merged["train"], eval=merged["eval"], options=options)
