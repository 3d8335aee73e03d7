"""``local``: each job a subprocess of this machine (submitit's LocalExecutor), a few at a time.

The sweep schedules the jobs itself (``on_this_machine``): at most ``array_parallelism`` at once, a model's cells as
soon as it is trained. Jobs ignore the terminal's Ctrl-C, so stopping the sweep leaves them running; a rerun adopts
them (a job is alive while its process is).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import submitit

from aotbench import hookimpl


@contextmanager
def _sigint_ignored():
    """Start jobs with SIGINT ignored (the disposition is inherited by submitit's controller and its tasks): a
    Ctrl-C at the terminal reaches the whole foreground process group, and should stop the sweep, not its jobs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _pid_alive(pid: str) -> bool:
    """Whether ``pid`` is a live (not zombie) submitit process; a local job's id is its controller's pid."""
    try:
        status = Path(f"/proc/{int(pid)}/status").read_text()
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return "zombie" not in status.split("State:", 1)[-1].splitlines()[0] and b"submitit" in cmdline


class Local:
    """Jobs as subprocesses of this machine, a few at a time.

    Preemption signal (USR2) 30 s before a job's time limit unless ``signal_delay_s`` says otherwise; a job
    requeues itself up to ``max_requeue`` times."""

    on_this_machine = True
    own_processes = True
    signal_delay_s = 30
    unlisted = "LOST"

    def submit(self, fn, payloads: list[dict], job) -> list:
        """Start one subprocess per payload; returns submitit jobs (``job_id`` is the controller's pid)."""
        # submitit's LocalExecutor itself: its AutoExecutor does not pass signal_delay_s on
        ex = submitit.LocalExecutor(job.folder, max_num_timeout=job.max_requeue)
        params = job.submitit_parameters()
        params["signal_delay_s"] = job.resources.signal_delay_s if job.resources.signal_delay_s is not None \
            else self.signal_delay_s
        if job.resources.setup:
            params["setup"] = list(job.resources.setup)
        ex.update_parameters(**params)
        job.folder.mkdir(parents=True, exist_ok=True)
        with _sigint_ignored():
            return [ex.submit(fn, p) for p in payloads]

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """RUNNING for the jobs whose process lives; the others are judged by their outcome files."""
        return {j: "RUNNING" for j in job_ids if _pid_alive(j)}

    def log_path(self, folder: Path, job_id: str) -> Path:
        return submitit.core.utils.JobPaths(folder, job_id, 0).stderr


@hookimpl
def register_launchers(register):
    register("local", Local, default=True)
