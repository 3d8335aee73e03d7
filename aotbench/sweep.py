"""Sweeps: a grid from a TOML spec, trained and evaluated as job arrays by submitit, on this machine or on SLURM.

::

    python -m aotbench sweep SPEC.toml --launcher local|slurm|debug     # plan, submit, wait, print the table
    python -m aotbench sweep SPEC.toml --launcher slurm --dry-run       # the plan: models, cells, job arrays
    python -m aotbench sweep SPEC.toml --launcher slurm --status        # done / running / failed cells
    python -m aotbench sweep SPEC.toml --launcher slurm --no-wait       # submit and return

Launchers: ``local`` runs each job as a subprocess (submitit's LocalExecutor), ``debug`` runs them one after the
other in this process (submitit's DebugExecutor; an error opens pdb when stdin is a terminal), ``slurm`` submits
job arrays (submitit's SlurmExecutor). The records are the ones ``run`` writes, whatever the launcher:
``RESULTS/EXPERIMENT/cells/<cell_key>.json``; models go to the shared cache ``RESULTS/models/<train_key>.pt``;
submitit's job files and logs go to ``RESULTS/EXPERIMENT/jobs/``.

Spec format (TOML)
------------------
::

    experiment = "example"        # records go to RESULTS/EXPERIMENT/cells (default: the spec's file name)
    results = "results"           # the results folder (default "results", relative to the current directory)

    [grid]                        # the axes of `run`; each takes a value or a list (a "a,b" string works too);
                                  # several [[grid]] tables instead: the union of their cells
    dataset = "moons"
    network = "mlp:width=32:depth=1"
    pairing = ["none", "aot"]
    sampler = "heun"
    steps = [3, 5, 9]
    seeds = [0]
    train_steps = 2000

    [resources]                   # job resources, for both stages (every key is optional)
    partition = "gpu"             # SLURM partition (default: the cluster's default partition)
    gpus_per_node = 1             # GPUs per job (default 0)
    cpus_per_task = 4             # CPUs per task; also the torch thread count of a job (see [options] threads)
    mem_gb = 16                   # memory per job, GB
    time_min = 60                 # time limit per job, minutes (default 60)
    array_parallelism = 32        # at most this many tasks of one array run at once (local: jobs at once)
    signal_delay_s = 90           # SLURM sends the preemption signal (USR2) this long before the time limit
    setup = ["module load cuda"]  # shell lines run before each SLURM job
    sbatch = { account = "lab", qos = "normal" }   # extra sbatch parameters, verbatim

    [resources.train]             # overrides for the training stage, plus:
    time_min = 240
    ddp = true                    # a model with ranks=R trains as R DDP processes (tasks) of one node,
                                  # each pairing its own pool; with GPUs, one GPU per rank (gpus_per_node = R).
                                  # Default false: the R ranks are simulated in one process.
    [resources.eval]              # overrides for the evaluation stage, plus:
    cells_per_job = 4             # cells evaluated by one array task (default 1; they share the model and noise)

    [options]                     # how jobs run; never part of a result's identity
    device = "auto"               # cpu, cuda, auto
    ckpt_every = 500              # training checkpoint interval, steps
    eval_batch = 2000             # samples per sampling batch
    pair_workers = 0              # background pairing processes per training rank (default: auto)
    threads = 4                   # torch threads per task (default: cpus_per_task, else torch's default)
    max_requeue = 3               # preemptions/timeouts a job may be requeued after (submitit's max_num_timeout)

An unknown key, an unknown axis or a value of the wrong type is refused before anything is submitted.

Stages and dependencies
-----------------------
Only cells without a record are planned (``--force``: all of them); a cell already covered by a pending or running
job of an earlier submission of this sweep is left to that job, so rerunning a sweep (say after killing it) submits
only what is missing and evaluates nothing twice. Then:

1. **train**: one job array trains every distinct model that has no finished checkpoint (one array per DDP width).
   Train jobs are ``submitit.helpers.Checkpointable``: on the preemption/timeout signal (USR2) the training loop
   finishes its step, writes an atomic checkpoint, and submitit requeues the job, which resumes from that
   checkpoint; the final weights and records are those of an uninterrupted run.
2. **eval**: per model, one job array evaluates its cells (``cells_per_job`` per task). On SLURM it depends
   (``afterok``, ``kill-on-invalid-dep``) on that model's train job, so a failed model cancels only its own cells;
   a model already cached has no dependency. Locally, a model's cells start as soon as it is trained.

The submitted job ids are kept in ``RESULTS/EXPERIMENT/jobs/sweep.json``; ``--status`` reads it and asks the
launcher (``squeue``/``sacct``) which jobs still run and which failed, with the failed job's error and log. Each
job writes how it ended (state, error line, timings) to ``jobs/<job id>_<task>_outcome.json``; the sweep reads
only these JSON files, never submitit's result pickles (unpickling a file of a shared folder runs its code).
Ctrl-C stops the sweep, not its jobs (local jobs ignore the terminal's SIGINT): it says how many still run, and
rerunning the same command adopts them.
Before submitting to SLURM, the request is checked against ``sinfo``: an unknown partition, or more CPUs, GPUs,
memory or time than the partition's nodes have, is refused in one line.

Multi-GPU training (DDP)
------------------------
A config's ``ranks`` is the number of data-parallel ranks, each drawing and pairing its own pool (the paper's
per-GPU pool) and part of the model's identity. By default one process simulates the ranks exactly. With
``[resources.train] ddp = true`` a model with ``ranks = R`` trains as R processes (submitit tasks on one node,
``submitit.helpers.TorchDistributedEnvironment``) in a torch DDP group: NCCL on GPUs, gloo on the CPU. Outside a
sweep, ``torchrun`` does the same::

    torchrun --nproc_per_node 2 -m aotbench train --config cfg.json --results results

(``cfg.json``: a TrainConfig, e.g. ``{"dataset": "moons", "pairing": "aot", "batch": 256, "ranks": 2}``, or a
cell config, a record, or a train/cell key). DDP and the simulation agree to float rounding (``allclose``), not
bit for bit: the gradient all-reduce adds in another order. A DDP run stopped by a signal and resumed is bit-exact
to an uninterrupted DDP run.

A SLURM cluster on this machine
-------------------------------
``bash scripts/slurm-local.sh start`` (as root; Debian/Ubuntu) installs and starts a single-node cluster with
accounting; ``stop`` and ``status`` do what they say. The SLURM tests (``pytest -m slurm``) need it, and skip
without it unless ``AOTBENCH_REQUIRE_SLURM=1``.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import submitit

LAUNCHERS = ("local", "slurm", "debug")
STATE_FILE = "sweep.json"
START_SLURM = "bash scripts/slurm-local.sh start"

_COMMON = {"partition": str, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": float, "time_min": int,
           "array_parallelism": int, "signal_delay_s": int, "setup": list, "sbatch": dict}
_STAGE_ONLY = {"train": {"ddp": bool}, "eval": {"cells_per_job": int}}
_OPTIONS = {"device": str, "ckpt_every": int, "eval_batch": int, "pair_workers": int, "pair_threads": int,
            "threads": int, "max_requeue": int}
_MINIMUM = {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 0.001, "time_min": 1, "array_parallelism": 1,
            "signal_delay_s": 0, "cells_per_job": 1, "ckpt_every": 1, "eval_batch": 1, "pair_workers": 0,
            "pair_threads": 1, "threads": 1, "max_requeue": 0}
_TOP = {"experiment": str, "results": str, "grid": (dict, list), "resources": dict, "options": dict}

#: SLURM states of a job that may still run
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


# ----------------------------------------------------------------------------------------------------------- spec

@dataclass(frozen=True)
class Resources:
    """The resources of one stage's jobs (merged from [resources] and [resources.<stage>])."""

    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    array_parallelism: int | None = None
    signal_delay_s: int | None = None
    setup: tuple = ()
    sbatch: tuple = ()
    ddp: bool = False
    cells_per_job: int = 1


@dataclass(frozen=True)
class Spec:
    path: Path
    experiment: str
    results: Path
    grids: tuple[dict, ...]
    train: Resources
    eval: Resources
    options: dict


def _check_value(where: str, key: str, typ, value):
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
    low = _MINIMUM.get(key)
    if low is not None and value < low:
        raise UserError(f"{where}{key} must be >= {low:g}, got {value!r}")
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
    return {k: _check_value(prefix, k, allowed[k], v) for k, v in table.items()}


def load_spec(path: str | Path, *, results: str | None = None, experiment: str | None = None,
              partition: str | None = None) -> Spec:
    """Read and check a sweep spec; command-line overrides win over the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read sweep spec {path}: {err}") from None
    raw = _check_table("", raw, _TOP)
    if "grid" not in raw:
        raise UserError(f"sweep spec {path} has no [grid] table (the axes of `run`)")
    from .grid import AXES
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
    common = _check_table("resources", res, _COMMON)
    merged = {}
    for stage, table in stages.items():
        if not isinstance(table, dict):
            raise UserError(f"resources.{stage} must be a table, got {table!r}")
        own = _check_table(f"resources.{stage}", table, {**_COMMON, **_STAGE_ONLY[stage]})
        values = {**common, **own}
        if partition:
            values["partition"] = partition
        values["setup"] = tuple(values.get("setup", ()))
        values["sbatch"] = tuple(sorted(values.get("sbatch", {}).items()))
        merged[stage] = Resources(**values)
    options = _check_table("options", raw.get("options", {}), _OPTIONS)
    if "device" in options and not re.fullmatch(r"cpu|cuda|auto|cuda:\d+", options["device"]):
        raise UserError(f"options.device must be cpu, cuda, cuda:N or auto, got {options['device']!r}")
    name = experiment or raw.get("experiment") or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"experiment name {name!r} must be letters, digits, '.', '_' or '-'")
    return Spec(path=path, experiment=name, results=Path(results or raw.get("results") or "results").absolute(),
                grids=tuple(dict(g) for g in grids), train=merged["train"], eval=merged["eval"], options=options)


# ------------------------------------------------------------------------------------------------- the job functions

def _threads_of(res: Resources, options: dict) -> int | None:
    return options.get("threads") or res.cpus_per_task


@dataclass
class _JobSetup:
    threads_before: int


def _enter_job(options: dict) -> _JobSetup:
    import torch

    before = torch.get_num_threads()
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    return _JobSetup(before)


def _leave_job(setup: _JobSetup) -> None:
    import torch

    torch.set_num_threads(setup.threads_before)  # matters for the debug launcher, which runs jobs in-process


def _train_options(options: dict, device: str, world=None):
    from .train import TrainOptions

    usr = submitit.JobEnvironment._usr_sig()
    return TrainOptions(device=device, ckpt_every=int(options.get("ckpt_every", 500)),
                        pair_workers=options.get("pair_workers"), pair_threads=int(options.get("pair_threads", 1)),
                        progress=True, handle_signals=True, stop_signals=(usr,),
                        world_rank=world.rank if world else 0, world_size=world.world_size if world else 1)


def _hand_over_to_submitit(err: Exception) -> None:
    """Training stopped on the preemption signal after writing its checkpoint: now let submitit's own handler
    requeue the job (its checkpoint protocol), which exits this process. Without a submitit handler (debug
    launcher, plain call) the interruption is re-raised."""
    print(f"aotbench: {err}", file=sys.stderr, flush=True)
    usr = submitit.JobEnvironment._usr_sig()
    handler = signal.getsignal(usr)
    if isinstance(getattr(handler, "__self__", None), submitit.core.job_environment.SignalHandler):
        handler(usr, None)  # leader: checkpoint() + requeue + sys.exit; other ranks: returns
        raise SystemExit(-1)  # not the leader: exit without a result; the leader's requeue restarts every task
    raise err


#: the states a job function writes to its outcome file
OUTCOME_STATES = ("COMPLETED", "FAILED", "CANCELLED")


def outcome_path(folder: Path, job_id: str, task: int = 0) -> Path:
    """Where a job function writes its outcome, next to submitit's files of that job and task."""
    return Path(folder) / f"{job_id}_{task}_outcome.json"


def _outcome_target() -> Path | None:
    """This job's outcome file, or None outside a submitit job that has a folder (a plain call; the debug launcher,
    whose jobs run in the sweep's own process and report there)."""
    folder = os.environ.get("SUBMITIT_FOLDER")
    if not folder:
        return None
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # no submitit environment is active
        return None
    if env.cluster == "debug":
        return None
    return outcome_path(Path(folder), env.job_id, env.global_rank)


def _write_outcome(path: Path | None, stage: str, state: str, error: str, t0: float, started: str) -> None:
    from .storage import atomic_write_json

    if path is None:
        return
    try:
        atomic_write_json(path, {"format": "aotbench-job-outcome-v1", "stage": stage, "state": state,
                                 "error": error, "started": started, "ended": _now(),
                                 "seconds": round(time.time() - t0, 3)})
    except OSError as err:  # the job's own outcome must not be masked by a full disk
        print(f"aotbench: cannot write the job outcome {path}: {err}", file=sys.stderr, flush=True)


def _with_outcome(stage: str, fn: Callable[[dict], dict], payload: dict) -> dict:
    """Run a job function and write how it ended as JSON (state, one error line, timings) next to submitit's files.

    The orchestrator reads only this file, never submitit's result pickle: a results folder is shared, and
    unpickling a file anyone can write there runs their code as whoever asks for the status. An exception is
    recorded and re-raised, so that submitit still sees the failure. A SystemExit is the preemption path (submitit
    requeues the job and exits): the job has not ended, so nothing is written."""
    path, t0, started = _outcome_target(), time.time(), _now()
    try:
        out = fn(payload)
    except SystemExit:
        raise
    except BaseException as err:
        state = "CANCELLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        _write_outcome(path, stage, state, _error_line(err), t0, started)
        raise
    _write_outcome(path, stage, "COMPLETED", "", t0, started)
    return out


def _error_line(err: BaseException) -> str:
    import traceback

    return _printable(_last_error_line("".join(traceback.format_exception_only(type(err), err))))


def _printable(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` printable characters: what a job (or a file in a shared folder) reports is
    shown in a terminal, where control characters would be interpreted."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(text).split()))[:limit]


class TrainJob(submitit.helpers.Checkpointable):
    """Job function of the train stage: ``train_job({"train": TrainConfig dict, "results": dir, "options": {}})``.

    Checkpointable: submitit's ``checkpoint`` resubmits the same payload, and the model's checkpoint file is the
    state, so a requeued job resumes where the interrupted one stopped. With ``options["ddp"]`` and several tasks
    it joins a DDP process group (one task per rank).
    """

    def __call__(self, payload: dict) -> dict:
        return _with_outcome("train", self._train, payload)

    def _train(self, payload: dict) -> dict:
        from . import distributed
        from .config import TrainConfig
        from .plugins import get_registry
        from .records import Workspace
        from .train import Interrupted, train_model

        options = payload.get("options", {})
        cfg = TrainConfig.from_dict(payload["train"])
        if payload.get("train_key") and cfg.key != payload["train_key"]:
            raise RuntimeError(f"train key mismatch: payload {payload['train_key']}, rebuilt {cfg.key} "
                               f"(was aotbench upgraded between submission and run?)")
        setup = _enter_job(options)
        world = distributed.init(options.get("device", "auto"), submitit_tasks=bool(options.get("ddp")))
        try:
            device = world.device(options.get("device", "auto"))
            ws = Workspace(Path(payload["results"]))
            try:
                ckpt = train_model(get_registry(), cfg, ws.model_path(cfg.key), _train_options(options, device, world))
            except Interrupted as err:
                _hand_over_to_submitit(err)
            return {"train_key": cfg.key, "step": int(ckpt["step"]), "rank": world.rank,
                    "world_size": world.world_size}
        finally:
            distributed.shutdown(world)
            _leave_job(setup)


class EvalJob(submitit.helpers.Checkpointable):
    """Job function of the eval stage: ``eval_job({"cells": [CellConfig dicts], "experiment", "results",
    "options"})``. It writes exactly the records ``run`` writes (``runner.run_model``); a cell with a record is
    skipped, so a requeued job continues with the cells it had not finished."""

    def __call__(self, payload: dict) -> dict:
        return _with_outcome("eval", self._eval, payload)

    def _eval(self, payload: dict) -> dict:
        from .config import CellConfig
        from .plugins import get_registry
        from .records import Workspace
        from .runner import RunOptions, group_by_model, run_model
        from .train import Interrupted

        options = payload.get("options", {})
        cells = [CellConfig.from_dict(d) for d in payload["cells"]]
        keys = payload.get("keys")
        if keys and [c.key for c in cells] != list(keys):
            raise RuntimeError("cell key mismatch between submission and job (was aotbench upgraded in between?)")
        setup = _enter_job(options)
        try:
            device = options.get("device", "auto")
            if device == "auto":
                import torch
                device = "cuda" if torch.cuda.is_available() else "cpu"
            opts = RunOptions(device=device, eval_batch=int(options.get("eval_batch", 2000)),
                              force=bool(options.get("force")), progress=True,
                              train=_train_options(options, device))
            ws = Workspace(Path(payload["results"]))
            written = []
            try:
                for group in group_by_model(cells).values():
                    run_model(get_registry(), group, ws, payload["experiment"], opts)
                    written += [c.key for c in group]
            except Interrupted as err:
                _hand_over_to_submitit(err)
            return {"cells": written}
        finally:
            _leave_job(setup)


#: the job functions (importable top-level callables taking one JSON-able dict)
train_job = TrainJob()
eval_job = EvalJob()


# ------------------------------------------------------------------------------------------------------------- state

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_state(jobs_dir: Path) -> dict:
    path = jobs_dir / STATE_FILE
    if not path.exists():
        return {"submissions": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"corrupt sweep state {path}: {err}; delete it to forget earlier submissions") from None


def _save_state(jobs_dir: Path, state: dict) -> None:
    from .storage import atomic_write_json

    atomic_write_json(jobs_dir / STATE_FILE, state)


@dataclass
class JobRecord:
    """One submitted job (one array task): what it does, and where."""

    launcher: str
    stage: str
    job_id: str
    train_key: str
    cells: list = field(default_factory=list)
    submission: int = 0

    def to_dict(self) -> dict:
        return {"launcher": self.launcher, "stage": self.stage, "job_id": self.job_id, "train_key": self.train_key,
                "cells": list(self.cells)}


def _all_jobs(state: dict) -> list[JobRecord]:
    out = []
    for i, sub in enumerate(state.get("submissions", [])):
        for j in sub.get("jobs", []):
            out.append(JobRecord(j["launcher"], j["stage"], j["job_id"], j["train_key"], j.get("cells", []), i))
    return out


# ---------------------------------------------------------------------------------------------------- job states

def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _matching_ids(job_id: str, wanted: set[str]) -> list[str]:
    """The ids of ``wanted`` that ``job_id`` names: ``12_[0-2,5%2]`` names 12_0 12_1 12_2 12_5, a plain id itself.
    A range costs at most one pass over ``wanted``, however large it is."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(%\d+)?\]", job_id)
    if not m:
        return [job_id] if job_id in wanted else []
    base, out = m.group(1), []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or not (hi.isdigit() or not hi):
            continue
        lo, hi = int(lo), int(hi or lo)
        if hi - lo < len(wanted):
            out += [j for i in range(lo, hi + 1) if (j := f"{base}_{i}") in wanted]
        else:
            out += [j for j in wanted if j.partition("_")[0] == base and j.partition("_")[2].isdigit()
                    and lo <= int(j.partition("_")[2]) <= hi]
    return out


def parse_sacct(text: str, wanted: set[str]) -> dict[str, str]:
    """``sacct -X -n -P -o JobID,State`` lines -> state of each wanted id; ``CANCELLED by 0`` is CANCELLED, a blank
    or garbled line is skipped."""
    states = {}
    for line in text.splitlines():
        jid, sep, st = line.partition("|")
        if not sep:
            continue
        for j in _matching_ids(jid.strip(), wanted):
            states[j] = st.split()[0] if st.split() else "UNKNOWN"
    return states


def parse_squeue(text: str, wanted: set[str]) -> dict[str, str]:
    """``squeue -h -r -o %i|%T`` lines -> state of each wanted id (a job squeue lists without a state is PENDING)."""
    states = {}
    for line in text.splitlines():
        jid, sep, st = line.partition("|")
        if not sep:
            continue
        for j in _matching_ids(jid.strip(), wanted):
            states[j] = st.split()[0] if st.split() else "PENDING"
    return states


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """State of each SLURM job id (``123`` or ``123_4``): active ones from squeue (what the controller knows now),
    finished ones from sacct. Unknown ids are left out."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    wanted = set(job_ids)
    states: dict[str, str] = {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(bases)])
        if out.returncode == 0:
            states.update(parse_sacct(out.stdout, wanted))
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-u", getpass.getuser()])
        if out.returncode == 0:
            states.update(parse_squeue(out.stdout, wanted))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return states


def _pid_alive(pid: str) -> bool:
    try:
        status = Path(f"/proc/{int(pid)}/status").read_text()
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return "zombie" not in status.split("State:", 1)[-1].splitlines()[0] and b"submitit" in cmdline


def _plain_id(job_id) -> bool:
    """Whether a job id from sweep.json can name files in the jobs folder (and no file outside it)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(job_id)))


def read_outcome(folder: Path, job_id: str, task: int = 0) -> dict | None:
    """The outcome a job function wrote (``{"state", "error", ...}``, see ``_with_outcome``), or None when there
    is none or it is unreadable. Only JSON is read: submitit's result pickles are never loaded, since anyone who
    can write to a shared results folder could plant one that runs code when unpickled."""
    from .storage import read_json

    if not _plain_id(job_id):
        return None
    path = outcome_path(folder, job_id, task)
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:  # not a FIFO to block on, nor a huge file
            return None
        d = read_json(path)
    except (OSError, UnicodeDecodeError, UserError):
        return None
    if not isinstance(d, dict) or d.get("state") not in OUTCOME_STATES:
        return None
    return {**d, "error": _printable(d.get("error") or "")}


def job_states(jobs: list[JobRecord], folder: Path) -> dict[str, str]:
    """``job_id -> state`` for recorded jobs: SLURM's state names (from squeue/sacct; a job they do not know, from
    its outcome file); local jobs RUNNING while their process lives, else the state of their outcome file, LOST
    without one."""
    states = slurm_states([j.job_id for j in jobs if j.launcher == "slurm"])
    for j in jobs:
        if j.launcher == "slurm" and j.job_id in states:
            continue
        if j.launcher == "local" and _pid_alive(j.job_id):
            states[j.job_id] = "RUNNING"
            continue
        outcome = read_outcome(folder, j.job_id)
        if outcome is not None:
            states[j.job_id] = outcome["state"]
        elif j.launcher != "slurm":
            states[j.job_id] = "LOST"
    return states


def is_active(state: str | None) -> bool:
    return state is not None and state.split()[0].rstrip("+") in ACTIVE_STATES


# -------------------------------------------------------------------------------------------------------- plan

@dataclass
class Array:
    """One job array to submit: its stage, its tasks' payloads and what each covers."""

    stage: str
    train_key: str | None          # eval arrays: the model; train arrays: None
    payloads: list[dict]
    covers: list[tuple[str, list[str]]]   # per task: (train_key, cell keys)
    tasks_per_node: int = 1
    after: str | None = None       # a train key whose train job this array waits for


@dataclass
class Plan:
    spec: Spec
    launcher: str
    cells: list
    done: list
    in_flight: dict                # cell key -> the JobRecord of the earlier, still active job evaluating it
    to_run: list                   # cells to submit
    models: dict                   # train key -> TrainConfig (models of cells to run)
    cached: set
    training: dict                 # train key -> the JobRecord of the earlier, still active job training it
    to_train: list                 # train keys needing a new train job
    arrays: list
    notes: list
    registry: Any = None

    @property
    def jobs_dir(self) -> Path:
        return self.spec.results / self.spec.experiment / "jobs"


def _model_done(path: Path, key: str) -> bool:
    """Whether ``path`` is a finished checkpoint of model ``key`` (read lazily: mmap, no tensor data)."""
    import torch

    if not path.is_file():
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is retrained (train_model then says what is wrong)
        return False
    return isinstance(ckpt, dict) and ckpt.get("train_key") == key and bool(ckpt.get("done"))


def _options_for(spec: Spec, stage: str, force: bool) -> dict:
    res = spec.train if stage == "train" else spec.eval
    opts = {k: v for k, v in spec.options.items() if k != "max_requeue"}
    threads = _threads_of(res, spec.options)
    if threads:
        opts["threads"] = threads
    if stage == "train":
        opts["ddp"] = res.ddp
    if force:
        opts["force"] = True
    return opts


def _complete(ws, experiment: str, cell) -> bool:
    """A cell is done when its record holds every metric it asks for (a missing metric is added by a rerun)."""
    from .runner import missing_metrics
    from .storage import read_json

    path = ws.record_path(experiment, cell)
    return path.exists() and not missing_metrics(cell, read_json(path))


def make_plan(registry, spec: Spec, launcher: str, *, force: bool = False) -> Plan:
    from .grid import expand
    from .records import Workspace

    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r} (launchers: {', '.join(LAUNCHERS)})")
    cells = []
    for i, grid in enumerate(spec.grids):
        try:
            cells += expand(registry, grid)
        except UserError as err:
            where = "[grid]" if len(spec.grids) == 1 else f"[[grid]] #{i + 1}"
            raise UserError(f"{where} of {spec.path}: {err}") from None
    cells = list({c.key: c for c in cells}.values())  # grids may overlap: each cell once
    if launcher != "debug":
        for stage, res in (("train", spec.train), ("eval", spec.eval)):
            delay = res.signal_delay_s if res.signal_delay_s is not None else (90 if launcher == "slurm" else 30)
            if res.time_min * 60 <= delay:
                raise UserError(f"resources.{stage}: time_min={res.time_min} leaves no time before the preemption "
                                f"signal, sent signal_delay_s={delay} s before the limit; raise time_min or lower "
                                f"signal_delay_s")
    if launcher != "slurm":  # this machine runs the jobs: it must have the GPUs they ask for
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for stage, res in (("train", spec.train), ("eval", spec.eval)):
            if res.gpus_per_node > have:
                raise UserError(f"impossible {stage} resources: {res.gpus_per_node} GPU(s) per job requested but "
                                f"this machine has {have} (launcher {launcher}); use --launcher slurm, or lower "
                                f"gpus_per_node")
    ws = Workspace(spec.results)
    jobs_dir = spec.results / spec.experiment / "jobs"
    done = [c for c in cells if _complete(ws, spec.experiment, c)]
    done_keys = {c.key for c in done}
    recorded = _all_jobs(load_state(jobs_dir))
    states = job_states(recorded, jobs_dir) if recorded else {}
    in_flight: dict[str, JobRecord] = {}
    training: dict[str, JobRecord] = {}
    for j in recorded:
        if is_active(states.get(j.job_id)):
            if j.stage == "eval":
                for k in j.cells:
                    in_flight[k] = j
            else:
                training[j.train_key] = j
    to_run = [c for c in cells if (force or c.key not in done_keys) and c.key not in in_flight]
    models = {}
    for c in to_run:
        models.setdefault(c.train.key, c.train)
    cached = {k for k in models if k not in training and _model_done(ws.model_path(k), k)}
    to_train = [k for k in models if k not in cached and k not in training]
    notes = []
    ddp = spec.train.ddp and launcher != "debug"
    if spec.train.ddp and launcher == "debug" and any(models[k].ranks > 1 for k in to_train):
        notes.append("the debug launcher runs one process per job: ranks are simulated in it, not DDP")

    arrays: list[Array] = []
    train_opts = _options_for(spec, "train", force)
    train_opts["ddp"] = ddp
    by_width: dict[int, list[str]] = {}
    for k in to_train:
        by_width.setdefault(models[k].ranks if ddp else 1, []).append(k)
    for width, keys in sorted(by_width.items()):
        arrays.append(Array("train", None,
                            [{"train": models[k].to_dict(), "train_key": k, "results": str(spec.results),
                              "options": train_opts} for k in keys],
                            [(k, []) for k in keys], tasks_per_node=width))
    eval_opts = _options_for(spec, "eval", force)
    n = spec.eval.cells_per_job
    for k in models:
        group = [c for c in to_run if c.train.key == k]
        chunks = [group[i:i + n] for i in range(0, len(group), n)]
        arrays.append(Array("eval", k,
                            [{"cells": [c.to_dict() for c in ch], "keys": [c.key for c in ch],
                              "experiment": spec.experiment, "results": str(spec.results), "options": eval_opts}
                             for ch in chunks],
                            [(k, [c.key for c in ch]) for ch in chunks],
                            after=None if k in cached else k))
    return Plan(spec, launcher, cells, done, in_flight, to_run, models, cached, training, to_train, arrays, notes,
                registry)


def _model_label(registry, cfg) -> str:
    def short(kind, choice):
        try:
            return choice.label(registry.get(kind, choice.name).params)
        except UserError:
            return choice.label()
    from dataclasses import fields

    shown = ("dataset", "network", "pairing", "seed", "steps", "ranks")
    other = [f"{f.name}={getattr(cfg, f.name):g}" if isinstance(getattr(cfg, f.name), float)
             else f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
             if f.name not in shown and getattr(cfg, f.name) != f.default]
    return " ".join([f"{short('dataset', cfg.dataset)} {short('network', cfg.network)}",
                     f"pairing={short('pairing', cfg.pairing)} seed={cfg.seed} steps={cfg.steps} ranks={cfg.ranks}",
                     *other])


def _res_label(res: Resources, tasks: int, launcher: str) -> str:
    parts = []
    if launcher == "slurm":
        parts.append(f"partition {res.partition or '(default)'}")
    gpus = _gpus(res, tasks)
    parts += [f"{tasks} task(s)", f"{res.cpus_per_task or 1} CPU(s)/task", f"{gpus} GPU(s)", f"{res.time_min} min"]
    if res.mem_gb:
        parts.append(f"{res.mem_gb:g} GB")
    return ", ".join(parts)


def _gpus(res: Resources, tasks: int) -> int:
    return tasks if (res.ddp and tasks > 1 and res.gpus_per_node > 0) else res.gpus_per_node


def describe_plan(plan: Plan) -> list[str]:
    spec = plan.spec
    n_models = len({c.train.key for c in plan.cells})
    lines = [f"sweep {spec.experiment} ({spec.path}), launcher {plan.launcher}: {len(plan.cells)} cell(s), "
             f"{n_models} model(s); results in {spec.results / spec.experiment}",
             f"  cells:  {len(plan.done)} done, {len(plan.in_flight)} in flight (earlier jobs), "
             f"{len(plan.to_run)} to submit",
             f"  models: {len(plan.cached)} cached, {len(plan.training)} training (earlier jobs), "
             f"{len(plan.to_train)} to train"]
    if not plan.arrays:
        lines.append("  jobs:   none to submit")
    for a in plan.arrays:
        res = spec.train if a.stage == "train" else spec.eval
        if a.stage == "train":
            lines.append(f"  job array train: {len(a.payloads)} model(s) "
                         f"[{_res_label(res, a.tasks_per_node, plan.launcher)}]")
            lines += [f"    model {k}: {_model_label(plan.registry, plan.models[k])}" for k, _ in a.covers]
        else:
            dep = "model cached" if a.after is None else (
                f"after its train job {plan.training[a.after].job_id}" if a.after in plan.training
                else "after its train job")
            n_cells = sum(len(c) for _, c in a.covers)
            lines.append(f"  job array eval:  {len(a.payloads)} task(s), {n_cells} cell(s) of model {a.train_key}, "
                         f"{dep} [{_res_label(res, 1, plan.launcher)}]")
    lines += [f"  note: {n}" for n in plan.notes]
    return lines


# ------------------------------------------------------------------------------------------------ SLURM checks

def _parse_minutes(text: str) -> float | None:
    """sinfo time limits: infinite, MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]] -> minutes (None = unlimited)."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")] + [0, 0]
        h, m, s = parts[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[:3]
    return days * 1440 + h * 60 + m + s / 60


def _gres_gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        item = re.sub(r"\(.*?\)", "", item).strip()
        fields = item.split(":")
        if fields[0] == "gpu" and len(fields) >= 2:
            try:
                total += int(fields[-1])
            except ValueError:
                total += 1
    return total


def slurm_cluster() -> dict:
    """The partitions of the reachable SLURM cluster: name -> {default, cpus, mem_mb, gpus, time_min} (per-node
    maxima). A one-line UserError, with how to start the local cluster, when none is reachable."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise UserError(f"no SLURM reachable: sinfo/sbatch are not installed here; start the local one with: "
                        f"{START_SLURM}")
    try:
        out = _run(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%l"], timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError(f"no SLURM reachable: sinfo timed out; start the local one with: {START_SLURM}") from None
    if out.returncode != 0 or not out.stdout.strip():
        why = (out.stderr.strip().splitlines() or ["no partitions"])[-1]
        raise UserError(f"no SLURM reachable ({why}); start the local one with: {START_SLURM}")
    return parse_sinfo(out.stdout)


def parse_sinfo(text: str) -> dict:
    """``sinfo -h -N -o %P|%N|%c|%m|%G|%l`` lines (one per node and partition) -> the partitions' per-node maxima
    (see ``slurm_cluster``). A blank or garbled line is skipped rather than refused: the check is a convenience."""
    parts: dict[str, dict] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 6 or not fields[0].strip().rstrip("*"):
            continue
        name, _node, cpus, mem, gres, limit = (f.strip() for f in fields[:6])
        try:
            limit_min = _parse_minutes(limit)
        except ValueError:
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, {"default": default, "cpus": 0, "mem_mb": 0, "gpus": 0, "time_min": limit_min})
        p["cpus"] = max(p["cpus"], int(re.sub(r"\D", "", cpus) or 0))
        p["mem_mb"] = max(p["mem_mb"], int(re.sub(r"\D", "", mem) or 0))
        p["gpus"] = max(p["gpus"], _gres_gpus(gres))
    return parts


def check_resources(plan: Plan, cluster: dict) -> None:
    """Refuse a request no node of the partition can satisfy, before anything is submitted."""
    for a in plan.arrays:
        res = plan.spec.train if a.stage == "train" else plan.spec.eval
        name = res.partition or next((n for n, p in cluster.items() if p["default"]), None)
        if name is None:
            raise UserError("the SLURM cluster has no default partition; set resources.partition")
        if name not in cluster:
            raise UserError(f"SLURM partition {name!r} does not exist (partitions: {', '.join(sorted(cluster))})")
        p = cluster[name]
        tasks = a.tasks_per_node
        cpus = (res.cpus_per_task or 1) * tasks
        where = f"the nodes of partition {name!r}"
        if cpus > p["cpus"]:
            how = f" (cpus_per_task={res.cpus_per_task or 1} x {tasks} DDP tasks)" if tasks > 1 else ""
            raise UserError(f"impossible {a.stage} resources: {cpus} CPUs per node requested{how} but {where} have "
                            f"at most {p['cpus']}")
        gpus = _gpus(res, tasks)
        if gpus > p["gpus"]:
            have = f"at most {p['gpus']}" if p["gpus"] else "none"
            raise UserError(f"impossible {a.stage} resources: {gpus} GPUs per node requested but {where} have {have}")
        if res.mem_gb and p["mem_mb"] and res.mem_gb * 1024 > p["mem_mb"]:
            raise UserError(f"impossible {a.stage} resources: mem_gb={res.mem_gb:g} but {where} have at most "
                            f"{p['mem_mb'] / 1024:.1f} GB")
        if p["time_min"] is not None and res.time_min > p["time_min"]:
            raise UserError(f"impossible {a.stage} resources: time_min={res.time_min} exceeds the time limit of "
                            f"partition {name!r} ({p['time_min']:g} min)")


# ----------------------------------------------------------------------------------------------------- executors

def _executor(plan: Plan, stage: str, tasks: int, after_job: str | None = None):
    spec = plan.spec
    res = spec.train if stage == "train" else spec.eval
    folder = plan.jobs_dir
    folder.mkdir(parents=True, exist_ok=True)
    max_requeue = spec.options.get("max_requeue", 3)
    if plan.launcher == "slurm":
        ex = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=max_requeue)
    elif plan.launcher == "local":
        ex = submitit.AutoExecutor(folder, cluster="local", local_max_num_timeout=max_requeue)
    else:
        ex = submitit.AutoExecutor(folder, cluster="debug")
    params: dict[str, Any] = {"name": f"aot-{stage}-{spec.experiment}", "timeout_min": res.time_min,
                              "tasks_per_node": tasks, "nodes": 1}
    gpus = _gpus(res, tasks)
    if gpus:
        params["gpus_per_node"] = gpus
    if res.cpus_per_task:
        params["cpus_per_task"] = res.cpus_per_task
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    if plan.launcher == "slurm":
        extra = {k: v for k, v in res.sbatch}
        if after_job:
            params["slurm_dependency"] = f"afterok:{after_job}"
            extra.setdefault("kill-on-invalid-dep", "yes")
        if extra:
            params["slurm_additional_parameters"] = extra
        if res.partition:
            params["slurm_partition"] = res.partition
        if res.array_parallelism:
            params["slurm_array_parallelism"] = res.array_parallelism
        if res.signal_delay_s is not None:
            params["slurm_signal_delay_s"] = res.signal_delay_s
        if res.setup:
            params["slurm_setup"] = list(res.setup)
    elif plan.launcher == "local":
        if res.signal_delay_s is not None:
            params["local_signal_delay_s"] = res.signal_delay_s
        if res.setup:
            params["local_setup"] = list(res.setup)
    ex.update_parameters(**params)
    return ex


def _record(plan: Plan, state: dict, jobs: list[JobRecord]) -> None:
    state["submissions"][-1]["jobs"].extend(j.to_dict() for j in jobs)
    _save_state(plan.jobs_dir, state)


def _new_submission(plan: Plan) -> dict:
    state = load_state(plan.jobs_dir)
    state.setdefault("submissions", []).append({"time": _now(), "launcher": plan.launcher, "jobs": []})
    state["experiment"] = plan.spec.experiment
    return state


def submit_slurm(plan: Plan, log: Callable[[str], None]) -> list[JobRecord]:
    """Submit every array of the plan: train arrays first, then per model an eval array after its train job."""
    state = _new_submission(plan)
    submitted: list[JobRecord] = []
    train_job_of = {k: j.job_id for k, j in plan.training.items() if j.launcher == "slurm"}
    for a in plan.arrays:
        if a.stage != "train":
            continue
        jobs = _executor(plan, "train", a.tasks_per_node).map_array(train_job, a.payloads)
        recs = [JobRecord("slurm", "train", j.job_id, k) for j, (k, _) in zip(jobs, a.covers)]
        train_job_of.update({r.train_key: r.job_id for r in recs})
        _record(plan, state, recs)
        submitted += recs
        log(f"submitted train array {jobs[0].job_id.split('_')[0]}: {len(jobs)} model(s)")
    for a in plan.arrays:
        if a.stage != "eval":
            continue
        after = train_job_of.get(a.after) if a.after else None
        try:
            jobs = _executor(plan, "eval", 1, after).map_array(eval_job, a.payloads)
        except submitit.core.utils.FailedJobError as err:
            if after and "dependency" in str(err).lower():  # the train job finished and was purged meanwhile
                jobs = _executor(plan, "eval", 1, None).map_array(eval_job, a.payloads)
            else:
                raise
        recs = [JobRecord("slurm", "eval", j.job_id, k, cells) for j, (k, cells) in zip(jobs, a.covers)]
        _record(plan, state, recs)
        submitted += recs
        log(f"submitted eval array {jobs[0].job_id.split('_')[0]}: {len(jobs)} task(s) for model {a.train_key}"
            + (f", after job {after}" if after else ""))
    return submitted


# -------------------------------------------------------------------------------------------------------- waiting

def _count_records(plan: Plan) -> int:
    from .records import Workspace

    ws = Workspace(plan.spec.results)
    return sum(1 for c in plan.cells if _complete(ws, plan.spec.experiment, c))


def _active_ids(ids: list[str], states: dict[str, str], grace: bool) -> list[str]:
    """The ids that may still run: active in ``states``; an id missing from them (squeue/sacct timed out, or a job
    just submitted and not listed yet) counts as active only during the ``grace`` period."""
    return [i for i in ids if (is_active(states[i]) if i in states else grace)]


def wait_jobs(plan: Plan, jobs: list[JobRecord], log: Callable[[str], None]) -> dict[str, str]:
    """Poll until none of ``jobs`` is pending or running (any launcher's records); returns their last states."""
    t0 = time.time()
    last = None
    ids = [j.job_id for j in jobs]
    states: dict[str, str] = {}
    while True:
        states = job_states(jobs, plan.jobs_dir)
        # a job just submitted may not be listed yet: for a few seconds an unlisted job counts as pending
        grace = time.time() - t0 < 10
        active = _active_ids(ids, states, grace)
        running = sum(1 for i in active if states.get(i, "").startswith("RUNNING"))
        summary = (_count_records(plan), len(active), running)
        if summary != last:
            log(f"[{time.time() - t0:5.0f} s] {summary[0]}/{len(plan.cells)} cells done; "
                f"{running} job(s) running, {len(active) - running} pending")
            last = summary
        if not active:
            return states
        time.sleep(min(30.0, max(1.0, (time.time() - t0) / 20)))


def run_local(plan: Plan, log: Callable[[str], None]) -> dict[str, str]:
    """Local and debug launchers: at most ``array_parallelism`` jobs at once; a model's cells start once it is
    trained (or at once when it is cached or trained by an earlier, still running job)."""
    state = _new_submission(plan) if plan.arrays else None
    spec = plan.spec
    queue: list[tuple[Array, int]] = []
    waiting: dict[str, list[tuple[Array, int]]] = {}
    for a in plan.arrays:
        for i in range(len(a.payloads)):
            if a.stage == "eval" and a.after is not None:
                waiting.setdefault(a.after, []).append((a, i))
            else:
                queue.append((a, i))
    cpus = spec.eval.cpus_per_task or 1
    slots = spec.train.array_parallelism or spec.eval.array_parallelism or max(1, (os.cpu_count() or 1) // cpus)
    running: dict[str, tuple[Any, Array, int]] = {}
    adopted = {j.job_id: j for j in plan.training.values()}
    final: dict[str, str] = {}
    from .records import Workspace
    ws = Workspace(spec.results)

    def model_finished(key: str, ok: bool):
        followers = waiting.pop(key, [])
        if ok and _model_done(ws.model_path(key), key):
            queue.extend(followers)
        elif followers:
            log(f"model {key} was not trained: its {sum(len(a.covers[i][1]) for a, i in followers)} cell(s) "
                f"are skipped")

    t0 = time.time()
    while queue or running or adopted:
        while queue and len(running) < slots:
            a, i = queue.pop(0)
            ex = _executor(plan, a.stage, a.tasks_per_node)
            with _sigint_ignored(plan.launcher == "local"):
                job = ex.submit(train_job if a.stage == "train" else eval_job, a.payloads[i])
            key, cells = a.covers[i]
            rec = JobRecord(plan.launcher, a.stage, str(job.job_id), key, cells)
            _record(plan, state, [rec])
            running[rec.job_id] = (job, a, i)
            what = f"model {key}" if a.stage == "train" else f"{len(cells)} cell(s) of model {key}"
            log(f"[{time.time() - t0:5.0f} s] started {a.stage} job {rec.job_id}: {what}")
            if plan.launcher == "debug":
                break  # debug jobs run when asked for their result, one at a time
        for job_id, (job, a, i) in list(running.items()):
            failure = None
            if plan.launcher == "debug":  # stop at the first error: at a terminal in pdb, else raise it
                # (the job runs in this process: neither call reads a file back)
                if sys.stdin.isatty():
                    job.result()
                elif (err := job.exception()) is not None:
                    raise err
            elif not job.done():  # the job's process has ended (a poll: no file is read)
                continue
            else:  # its outcome file, never submitit's result pickle (see read_outcome)
                outcome = read_outcome(plan.jobs_dir, job_id)
                if outcome is None or outcome["state"] != "COMPLETED":
                    failure = (outcome or {}).get("error") or _failure_reason(plan.jobs_dir, job_id) or \
                        "the job ended without an outcome (killed?)"
            del running[job_id]
            final[job_id] = "FAILED" if failure is not None else "COMPLETED"
            if failure is not None:
                log(f"[{time.time() - t0:5.0f} s] {a.stage} job {job_id} failed: {failure}")
            if a.stage == "train":
                model_finished(a.covers[i][0], failure is None)
        if adopted:
            states = job_states(list(adopted.values()), plan.jobs_dir)
            for job_id, rec in list(adopted.items()):
                if not is_active(states.get(job_id)):
                    del adopted[job_id]
                    model_finished(rec.train_key, True)
        if running or adopted:
            time.sleep(0.5)
    for key in list(waiting):
        model_finished(key, False)
    return final


@contextmanager
def _sigint_ignored(enabled: bool = True):
    """Start local jobs with SIGINT ignored (the disposition is inherited by submitit's controller and its tasks).
    A Ctrl-C at the terminal reaches the whole foreground process group: without this, every local job's
    controller printed a traceback to the terminal and died, although the sweep says its running jobs are picked
    up by a rerun. Like SLURM jobs, local jobs now run on; the sweep says how many (see ``_interrupted``)."""
    import threading

    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _failure_reason(folder: Path, job_id: str) -> str:
    """The error a failed job reported (its outcome file, else the last error line of its log), in one line.
    Submitit's result pickle is not read (see read_outcome)."""
    outcome = read_outcome(folder, job_id)
    if outcome is not None and outcome["error"]:
        return outcome["error"]
    if not _plain_id(job_id):
        return ""
    log = submitit.core.utils.JobPaths(folder, job_id, 0).stderr
    try:
        if not log.is_file():  # not a FIFO to block on
            return ""
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 20000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    found = [ln for ln in text.splitlines() if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", ln.strip())]
    return _printable(found[-1]) if found else ""


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("-" * 5)]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Interrupted)\b", ln):
            return ln
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------------------- status

def status_lines(plan: Plan) -> tuple[list[str], int]:
    """What is done, running and failed, from the records and the recorded jobs. Returns (lines, n_failed)."""
    spec = plan.spec
    jobs = _all_jobs(load_state(plan.jobs_dir))
    states = job_states(jobs, plan.jobs_dir) if jobs else {}
    done = {c.key for c in plan.done}
    latest: dict[str, JobRecord] = {}
    latest_train: dict[str, JobRecord] = {}
    for j in jobs:
        for k in j.cells:
            latest[k] = j
        if j.stage == "train":
            latest_train[j.train_key] = j
    running, failed, missing = [], [], []
    blame: dict[str, JobRecord] = {}  # failed cell -> the job it failed with
    for c in plan.cells:
        if c.key in done:
            continue
        j = latest.get(c.key)
        tj = latest_train.get(c.train.key)
        if j is None and tj is not None and c.train.key not in plan.cached and _ended_badly(states.get(tj.job_id)):
            # its model's training failed, so its evaluation was never submitted (the local launcher skips it)
            failed.append(c)
            blame[c.key] = tj
        elif j is None:
            missing.append(c)
        elif is_active(states.get(j.job_id)):
            running.append(c)
        else:
            failed.append(c)
            blame[c.key] = j
    lines = [f"sweep {spec.experiment}: {len(plan.cells)} cell(s) in {spec.results / spec.experiment}",
             f"  done     {len(done)}",
             f"  running  {len(running)}  (pending or running jobs)",
             f"  failed   {len(failed)}  (their job ended without a record)",
             f"  missing  {len(missing)}  (never submitted; rerun the sweep)"]
    train_active = [j for j in latest_train.values() if is_active(states.get(j.job_id))]
    if train_active:
        lines.append(f"  training {len(train_active)} model(s): jobs {', '.join(j.job_id for j in train_active)}")
    shown = set()
    for c in failed:
        j = culprit = blame[c.key]
        if j.job_id in shown:
            continue
        shown.add(j.job_id)
        tj = latest_train.get(j.train_key)
        why = states.get(j.job_id, "UNKNOWN")
        if j.stage == "eval" and tj is not None and not is_active(states.get(tj.job_id)) \
                and states.get(tj.job_id) != "COMPLETED":
            why += f"; its model's train job {tj.job_id} ended {states.get(tj.job_id, 'UNKNOWN')}"
            culprit = tj
        reason = _failure_reason(plan.jobs_dir, culprit.job_id)
        log = submitit.core.utils.JobPaths(plan.jobs_dir, culprit.job_id, 0).stderr
        lines.append(f"  failed {j.stage} job {_printable(j.job_id)} ({_printable(why)})"
                     f"{': ' + reason if reason else ''}; log: {_printable(str(log), 1000)}")
    return lines, len(failed)


def _ended_badly(state: str | None) -> bool:
    """A known state of a job that ended without completing (FAILED, CANCELLED, TIMEOUT, LOST, ...)."""
    return state is not None and not is_active(state) and state != "COMPLETED"


# ----------------------------------------------------------------------------------------------------------- main

def run_sweep(spec: Spec, launcher: str, *, dry_run: bool = False, status: bool = False, wait: bool = True,
              force: bool = False, log: Callable[[str], None] | None = None, out: Callable[[str], None] = print
              ) -> int:
    """The ``sweep`` command; returns the exit status."""
    from .plugins import get_registry

    log = log or (lambda m: print(f"aotbench sweep: {m}", file=sys.stderr, flush=True))
    registry = get_registry()
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r} (launchers: {', '.join(LAUNCHERS)})")
    cluster, unchecked = None, None
    if launcher == "slurm" and not status:
        try:
            cluster = slurm_cluster()
        except UserError as err:
            if not dry_run:
                raise
            unchecked = str(err)
    plan = make_plan(registry, spec, launcher, force=force)
    if status:
        lines, _ = status_lines(plan)
        for line in lines:
            out(line)
        return 0
    if cluster is not None:
        check_resources(plan, cluster)
    if unchecked:
        plan.notes.append(f"resources not checked: {unchecked}")
    if dry_run:
        for line in describe_plan(plan):
            out(line)
        return 0
    for line in describe_plan(plan):
        log(line.strip())
    try:
        if launcher == "slurm":
            jobs = submit_slurm(plan, log) if plan.arrays else []
            if not wait:
                log(f"submitted {len(jobs)} job(s); follow them with: python -m aotbench sweep {spec.path} "
                    f"--launcher slurm --status")
                return 0
            adopted = list({j.job_id: j for j in [*plan.in_flight.values(), *plan.training.values()]}.values())
            if jobs or adopted:
                wait_jobs(plan, jobs + adopted, log)
        else:
            if not wait:
                log("--no-wait applies to --launcher slurm only; local jobs run under this process")
            run_local(plan, log)
            in_flight = list({j.job_id: j for j in plan.in_flight.values()}.values())
            if in_flight:
                wait_jobs(plan, in_flight, log)
    except KeyboardInterrupt:
        return _interrupted(plan, log)
    return _finish(registry, plan, out, log)


def _interrupted(plan: Plan, log: Callable[[str], None]) -> int:
    """Ctrl-C while submitting or waiting: the submitted jobs run on (SLURM's, and local ones, which ignore the
    terminal's SIGINT: see ``_sigint_ignored``), and a rerun adopts them. Say so in one line, exit status 130."""
    try:
        jobs = _all_jobs(load_state(plan.jobs_dir))
        states = job_states(jobs, plan.jobs_dir) if jobs else {}
        active = list({j.job_id: j for j in jobs if is_active(states.get(j.job_id))}.values())
        where = {"under SLURM": sum(j.launcher == "slurm" for j in active),
                 "locally": sum(j.launcher != "slurm" for j in active)}
        running = " and ".join(f"{n} job(s) still running {w}" for w, n in where.items() if n)
    except (KeyboardInterrupt, UserError):  # a second Ctrl-C, or an unreadable sweep.json: say what is known
        running = "jobs may still be running"
    if running:
        log(f"interrupted: {running}; rerun the same command to pick them up, or --status")
    else:
        log("interrupted: no job is still running; rerun the same command to resume (finished cells are kept), "
            "or --status")
    return 130


def _finish(registry, plan: Plan, out, log) -> int:
    from .records import Workspace
    from .storage import read_json
    from .tables import display_table, records_frame

    ws = Workspace(plan.spec.results)
    records = [read_json(p) for c in plan.cells if (p := ws.record_path(plan.spec.experiment, c)).exists()]
    if records:
        out(display_table(records_frame(records, registry)).to_markdown(index=False))
    missing = len(plan.cells) - len(records)
    where = plan.spec.results / plan.spec.experiment / "cells"
    if missing:
        lines, _ = status_lines(make_plan(registry, plan.spec, plan.launcher))
        for line in lines[1:]:
            log(line.strip())
        log(f"{missing} of {len(plan.cells)} cell(s) have no record in {where}; fix the cause and rerun the sweep "
            f"(finished cells are kept)")
        return 1
    out(f"\n{len(records)} record(s) in {where}")
    return 0


# ---------------------------------------------------------------------------------------------- the train command

def resolve_train_config(registry, text: str, results: Path):
    """A TrainConfig from ``--config``: a JSON file holding a TrainConfig (plugin choices as ``"name:k=v"`` strings
    or tables, defaults filled in), a cell config (its ``train``) or a record (its ``config.train``); or a key: a
    train key with a checkpoint in RESULTS/models, or a cell key with a record in RESULTS/*/cells."""
    from .config import TrainConfig, resolve
    from .storage import load_checkpoint, read_json

    path = Path(text)
    if path.is_file():
        d = read_json(path)
    elif re.fullmatch(r"[0-9a-f]{16}", text):
        model = Path(results) / "models" / f"{text}.pt"
        records = sorted(Path(results).glob(f"*/cells/{text}.json"))
        if model.is_file():
            d = load_checkpoint(model, "aotbench-model-v1")["config"]
        elif records:
            d = read_json(records[0])
        else:
            raise UserError(f"no model {model} and no record of cell {text} under {results}")
    else:
        raise UserError(f"--config {text!r} is neither a JSON file nor a train/cell key")
    if not isinstance(d, dict):
        raise UserError(f"--config {text}: expected a JSON object, got {type(d).__name__}")
    if "config" in d and isinstance(d["config"], dict):
        d = d["config"]
    if "train" in d and isinstance(d["train"], dict):
        d = d["train"]
    d = dict(d)
    if "dataset" in d:  # what a grid would fill in: the dataset's own network and training defaults
        from .grid import TRAIN_AXES, _typed, as_list

        dcls = registry.get("dataset", resolve(registry, "dataset", d["dataset"]).name).obj
        d.setdefault("network", getattr(dcls, "network", None))
        for axis, value in getattr(dcls, "defaults", {}).items():
            if axis in TRAIN_AXES and TRAIN_AXES[axis][0] not in d and len(as_list(value)) == 1:
                d[TRAIN_AXES[axis][0]] = _typed(axis, TRAIN_AXES[axis][1], as_list(value)[0])
    for kind in ("dataset", "network", "pairing"):
        if d.get(kind) is None:
            raise UserError(f"--config {text}: the training config has no {kind!r}")
        d[kind] = resolve(registry, kind, d[kind]).to_dict()
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"--config {text}: unknown training field {', '.join(unknown)} "
                        f"(fields: {', '.join(sorted(known))})")
    try:
        cfg = TrainConfig.from_dict(d)
    except TypeError as err:
        raise UserError(f"--config {text}: {err}") from None
    from .datasets import bind_data

    return cfg if cfg.data_fingerprint else bind_data(registry, cfg)


def train_command(config: str, *, results: str = "results", device: str = "auto", ckpt_every: int = 500,
                  pair_workers: int | None = None, progress: bool = True, log=None) -> int:
    """Train one model into RESULTS/models/<train_key>.pt. Under torchrun (``--nproc_per_node R`` for a config with
    ``ranks=R``) every process is one DDP rank pairing its own pool; rank 0 writes the checkpoints."""
    from . import distributed
    from .plugins import get_registry
    from .records import Workspace
    from .train import TrainOptions, train_model

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if ckpt_every < 1:
        raise UserError("--ckpt-every must be >= 1")
    registry = get_registry()
    cfg = resolve_train_config(registry, config, Path(results))
    world = distributed.init(device)
    try:
        if world.world_size != cfg.ranks and world.distributed:
            raise UserError(f"launched with {world.world_size} processes but the config has ranks={cfg.ranks}")
        dev = world.device(device)
        path = Workspace(Path(results)).model_path(cfg.key)
        t0 = time.perf_counter()
        ckpt = train_model(registry, cfg, path, TrainOptions(
            device=dev, ckpt_every=ckpt_every, pair_workers=pair_workers, progress=progress and world.leader,
            handle_signals=True, world_rank=world.rank, world_size=world.world_size))
        if world.leader:
            how = f"DDP over {world.world_size} processes ({world.backend})" if world.distributed else \
                f"{cfg.ranks} rank(s) simulated in one process"
            log(f"model {cfg.key}: step {ckpt['step']}/{cfg.steps}, {how}, {time.perf_counter() - t0:.1f} s -> {path}")
        return 0
    finally:
        distributed.shutdown(world)


__all__ = ["load_spec", "make_plan", "run_sweep", "train_job", "eval_job", "TrainJob", "EvalJob", "LAUNCHERS",
           "train_command"]
