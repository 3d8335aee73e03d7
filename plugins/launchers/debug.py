"""``debug``: every job in the sweep's own process, one after the other (submitit's DebugExecutor).

For stepping through a job: an error stops the sweep, and at a terminal it opens pdb at the failing line. Ranks are
simulated in one process (no DDP) and there is no preemption signal.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import submitit

from aotbench import hookimpl
from aotbench.sweep.outcome import now, outcome_path, write_outcome


class Debug:
    """Jobs in this process, one after the other; the first error stops the sweep (pdb at a terminal)."""

    on_this_machine = True
    own_processes = False
    signal_delay_s = None
    unlisted = "LOST"

    def submit(self, fn, payloads: list[dict], job) -> list:
        """Run each payload now, in order; write its outcome (the job itself cannot: it shares this process)."""
        ex = submitit.AutoExecutor(job.folder, cluster="debug")
        ex.update_parameters(**job.submitit_parameters())
        out = []
        for payload in payloads:
            t0, started = time.time(), now()
            handle = ex.submit(fn, payload)
            if sys.stdin.isatty():
                handle.result()  # an error opens pdb, then is raised
            elif (err := handle.exception()) is not None:
                raise err
            write_outcome(outcome_path(job.folder, handle.job_id), job.stage, "COMPLETED", "", t0, started)
            out.append(handle)
        return out

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """None runs once ``submit`` has returned: every job is judged by its outcome file."""
        return {}

    def log_path(self, folder: Path, job_id: str) -> Path:
        return submitit.core.utils.JobPaths(folder, job_id, 0).stderr


@hookimpl
def register_launchers(register):
    register("debug", Debug)
