"""The ``sweep`` command: gather what exists, plan, check, submit or run, wait, print the table.

Everything that reads the disk or asks a scheduler happens here; :func:`.plan.make_plan` only decides.
``--status`` and ``--dry-run`` build no network, and read no dataset whose fingerprint the ledger already holds.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

from ..errors import UserError
from .ledger import Ledger
from .plan import Plan, check_gpus, check_times, describe_plan, make_plan
from .schedule import run_in_slots, submit_arrays, wait_jobs
from .spec import Spec
from .states import is_active, job_states
from .status import status_lines

Log = Callable[[str], None]


def launchers_of(registry) -> dict:
    """Every registered launcher, built with its defaults: the ledger's jobs are asked about by their own."""
    return {name: registry.get("launcher", name).build() for name in registry.names("launcher")}


def model_done(path, key: str) -> bool:
    """Whether ``path`` is a finished checkpoint of model ``key`` (read lazily: mmap, no tensor data)."""
    import torch

    if not path.is_file():
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is retrained (train_model then says what is wrong)
        return False
    return isinstance(ckpt, dict) and ckpt.get("train_key") == key and bool(ckpt.get("done"))


def read_record(path) -> dict | None:
    """The record at ``path``, or None when there is none or it is not a readable JSON object (a FIFO is not read,
    nor a directory or a huge file): such a cell is evaluated again and its record replaced."""
    from ..storage import read_json

    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return None
        record = read_json(path)
    except (OSError, UnicodeDecodeError, UserError):
        return None
    return record if isinstance(record, dict) else None


def complete(ws, experiment: str, cell) -> bool:
    """A cell is done when its record holds every metric it asks for (a missing metric is added by a rerun)."""
    from ..runner import missing_metrics

    record = read_record(ws.record_path(experiment, cell))
    return record is not None and not missing_metrics(cell, record)


def grid_cells(registry, spec: Spec, ledger: Ledger, *, light: bool) -> list:
    """The cells of every [[grid]] of ``spec``. ``light`` (status, dry run): fingerprints come from the ledger where
    it has them, and nothing is validated by building networks."""
    from ..grid import expand

    known = ledger.fingerprints() if light else None
    cells = []
    for i, grid in enumerate(spec.grids):
        try:
            cells += expand(registry, grid, fingerprints=known, check=not light)
        except UserError as err:
            where = "[grid]" if len(spec.grids) == 1 else f"[[grid]] #{i + 1}"
            raise UserError(f"{where} of {spec.path}: {err}") from None
    return cells


def gather_plan(registry, spec: Spec, launcher_name: str, launcher, launchers: dict, *, light: bool = False,
                force: bool = False) -> tuple[Plan, Ledger]:
    """Read what exists (records, ledger, job states, checkpoints) and plan from it."""
    from ..records import Workspace
    from ..runner import refuse_stateful_workers

    ledger = Ledger(spec.jobs_dir)
    cells = grid_cells(registry, spec, ledger, light=light)
    refuse_stateful_workers(registry, list({c.train.key: c.train for c in cells}.values()),
                            int(spec.options.get("pair_workers") or 0))
    if not light:
        ledger.remember({c.train.dataset.label(): c.train.data_fingerprint for c in cells})
    ws = Workspace(spec.results)
    done = {c.key for c in cells if complete(ws, spec.experiment, c)}
    jobs = ledger.jobs()
    states = job_states(launchers, jobs, spec.jobs_dir) if jobs else {}
    models = {c.train.key for c in cells if force or c.key not in done}
    cached = {k for k in models if model_done(ws.model_path(k), k)}
    plan = make_plan(spec, cells, launcher=launcher_name, done=done, jobs=jobs, states=states, cached=cached,
                     ddp=bool(getattr(launcher, "own_processes", True)), force=force)
    return plan, ledger


def run_sweep(spec: Spec, launcher_text: str, *, dry_run: bool = False, status: bool = False, wait: bool = True,
              force: bool = False, log: Log | None = None, out: Log = print) -> int:
    """The ``sweep`` command; returns the exit status. Raises :class:`UserError` (one line) for an unknown launcher,
    an impossible request, or a grid that does not expand."""
    from ..config import resolve
    from ..plugins import get_registry

    log = log or (lambda m: print(f"aotbench sweep: {m}", file=sys.stderr, flush=True))
    registry = get_registry()
    choice = resolve(registry, "launcher", launcher_text)
    launcher = registry.get("launcher", choice.name).build(**choice.kwargs)
    launchers = {**launchers_of(registry), choice.name: launcher}
    check_times(spec, launcher)
    if getattr(launcher, "on_this_machine", False):  # this machine runs the jobs: it must have what they ask for
        import torch

        from ..devices import resolve_device

        check_gpus(spec, choice.name, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        try:
            resolve_device(spec.options.get("device", "auto"))
        except UserError as err:
            raise UserError(f"options.device: {err} (launcher {choice.name} runs the jobs on this machine)") from None
    plan, ledger = gather_plan(registry, spec, choice.name, launcher, launchers, light=dry_run or status,
                               force=force)
    if status:
        for line in status_lines(plan, launchers)[0]:
            out(line)
        return 0
    if hasattr(launcher, "check"):
        plan.notes += launcher.check(plan, dry_run=dry_run) or []
    if dry_run:
        for line in describe_plan(plan, registry, launcher):
            out(line)
        return 0
    for line in describe_plan(plan, registry, launcher):
        log(line.strip())

    # Run: on this machine in slots, or as arrays handed to a scheduler
    try:
        if getattr(launcher, "on_this_machine", False):
            if not wait:
                log(f"--no-wait applies to cluster launchers only; {choice.name} jobs run under this process")
            from ..records import Workspace

            ws = Workspace(spec.results)
            run_in_slots(plan, launcher, launchers, ledger, lambda k: model_done(ws.model_path(k), k), log)
            earlier = list({j.job_id: j for j in plan.in_flight.values()}.values())
        else:
            jobs = submit_arrays(plan, launcher, ledger, log) if plan.arrays else []
            if not wait:
                log(f"submitted {len(jobs)} job(s); follow them with: python -m aotbench sweep {spec.path} "
                    f"--launcher {launcher_text} --status")
                return 0
            earlier = jobs + list({j.job_id: j for j in [*plan.in_flight.values(), *plan.training.values()]}
                                  .values())
        if earlier:
            wait_jobs(plan, launchers, earlier, lambda: _count_done(plan), log)
    except KeyboardInterrupt:
        return _interrupted(plan, launchers, log)
    return _finish(registry, plan, launchers, out, log)


def _count_done(plan: Plan) -> int:
    from ..records import Workspace

    ws = Workspace(plan.spec.results)
    return sum(1 for c in plan.cells if complete(ws, plan.spec.experiment, c))


def _interrupted(plan: Plan, launchers: dict, log: Log) -> int:
    """Ctrl-C while submitting or waiting: the submitted jobs run on (a cluster's, and local ones, which ignore the
    terminal's SIGINT), and a rerun adopts them. Say so in one line, exit status 130."""
    try:
        jobs = Ledger(plan.jobs_dir).jobs()
        states = job_states(launchers, jobs, plan.jobs_dir) if jobs else {}
        active = list({j.job_id: j for j in jobs if is_active(states.get(j.job_id))}.values())
        by: dict[str, int] = {}
        for j in active:
            by[j.launcher] = by.get(j.launcher, 0) + 1
        running = " and ".join(f"{n} {name} job(s) still running" for name, n in sorted(by.items()))
    except (KeyboardInterrupt, UserError):  # a second Ctrl-C, or an unreadable ledger: say what is known
        running = "jobs may still be running"
    if running:
        log(f"interrupted: {running}; rerun the same command to pick them up, or --status")
    else:
        log("interrupted: no job is still running; rerun the same command to resume (finished cells are kept), "
            "or --status")
    return 130


def _finish(registry, plan: Plan, launchers: dict, out: Log, log: Log) -> int:
    """Print the table of the sweep's records; exit status 1 (with the status lines) when cells lack a record."""
    from ..records import Workspace
    from ..tables import display_table, records_frame

    ws = Workspace(plan.spec.results)
    records = [r for c in plan.cells if (r := read_record(ws.record_path(plan.spec.experiment, c))) is not None]
    if records:
        out(display_table(records_frame(records, registry)).to_markdown(index=False))
    missing = len(plan.cells) - len(records)
    where = plan.spec.results / plan.spec.experiment / "cells"
    if missing:
        now = dataclasses.replace(plan, done=[c for c in plan.cells if complete(ws, plan.spec.experiment, c)])
        lines, _ = status_lines(now, launchers)
        for line in lines[1:]:
            log(line.strip())
        log(f"{missing} of {len(plan.cells)} cell(s) have no record in {where}; fix the cause and rerun the sweep "
            f"(finished cells are kept)")
        return 1
    out(f"\n{len(records)} record(s) in {where}")
    return 0
