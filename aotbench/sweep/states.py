"""Job states: what each launcher says of its jobs, completed by the jobs' own outcome files.

States use SLURM's names (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...), whatever the launcher;
``LOST`` is a job of this machine that ended without writing its outcome (killed).
"""

from __future__ import annotations

from pathlib import Path

from .ledger import JobRecord
from .outcome import log_error, plain_id, read_outcome

#: states of a job that may still run
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


def is_active(state: str | None) -> bool:
    """Whether a job in ``state`` may still run (``CANCELLED by 0`` and ``RUNNING+`` forms included)."""
    return state is not None and state.split()[0].rstrip("+") in ACTIVE_STATES


def ended_badly(state: str | None) -> bool:
    """A known state of a job that ended without completing (FAILED, CANCELLED, TIMEOUT, LOST, ...)."""
    return state is not None and not is_active(state) and state != "COMPLETED"


def active_ids(ids: list[str], states: dict[str, str], grace: bool) -> list[str]:
    """The ids that may still run: active in ``states``; an id missing from them (the scheduler timed out, or a job
    just submitted is not listed yet) counts as active only during the ``grace`` period."""
    return [i for i in ids if (is_active(states[i]) if i in states else grace)]


def job_states(launchers: dict, jobs: list[JobRecord], folder: Path) -> dict[str, str]:
    """``job_id -> state`` for the ledger's ``jobs``. Each job's launcher (``launchers``: name -> instance) is asked
    first; a job it does not list gets the state of its outcome file; without one, the launcher's ``unlisted``
    state (``LOST`` on this machine; a cluster's jobs stay unknown, as a scheduler may not list a job yet). Jobs of
    a launcher that is no longer installed are known by their outcome only."""
    states: dict[str, str] = {}
    by_launcher: dict[str, list[JobRecord]] = {}
    for j in jobs:
        by_launcher.setdefault(j.launcher, []).append(j)
    for name, own in by_launcher.items():
        launcher = launchers.get(name)
        listed = launcher.states([j.job_id for j in own]) if launcher is not None else {}
        for j in own:
            if j.job_id in listed:
                states[j.job_id] = listed[j.job_id]
            elif (outcome := read_outcome(folder, j.job_id)) is not None:
                states[j.job_id] = outcome["state"]
            elif launcher is not None and getattr(launcher, "unlisted", None):
                states[j.job_id] = launcher.unlisted
    return states


def failure_reason(launcher, folder: Path, job_id: str) -> str:
    """The error a failed job reported (its outcome file, else the last error line of its launcher's log), in one
    printable line; "" when nothing says."""
    outcome = read_outcome(folder, job_id)
    if outcome is not None and outcome["error"]:
        return outcome["error"]
    if launcher is None or not plain_id(job_id):
        return ""
    return log_error(launcher.log_path(folder, job_id))
