"""How a job ended, as a small JSON file beside submitit's files: written on the node, read by the sweep.

The sweep never reads submitit's result pickles: a results folder is shared, and unpickling a file anyone can write
there runs their code as whoever asks for the status. Everything read back is reduced to one printable line.
"""

from __future__ import annotations

import datetime
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from ..errors import UserError

#: the states a job function writes to its outcome file
OUTCOME_STATES = ("COMPLETED", "FAILED", "CANCELLED")
FORMAT = "aotbench-job-outcome-v1"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def plain_id(job_id) -> bool:
    """Whether a job id from the ledger can name files in the jobs folder (and no file outside it)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(job_id)))


def outcome_path(folder: Path, job_id: str, task: int = 0) -> Path:
    """Where a job function writes its outcome, next to submitit's files of that job and task."""
    return Path(folder) / f"{job_id}_{task}_outcome.json"


def printable(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` printable characters: what a job (or a file in a shared folder) reports is
    shown in a terminal, where control characters would be interpreted."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(text).split()))[:limit]


def last_error_line(text: str) -> str:
    """The last ``SomethingError: ...`` line of a traceback or log, else its last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("-" * 5)]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Interrupted)\b", ln):
            return ln
    return lines[-1] if lines else ""


def error_line(err: BaseException) -> str:
    """An exception as one printable line."""
    return printable(last_error_line("".join(traceback.format_exception_only(type(err), err))))


def write_outcome(path: Path | None, stage: str, state: str, error: str, t0: float, started: str) -> None:
    """Write one job's outcome atomically; ``path`` None (no jobs folder) writes nothing. A full disk is reported on
    stderr rather than raised, so it cannot mask the job's own result."""
    from ..storage import atomic_write_json

    if path is None:
        return
    try:
        atomic_write_json(path, {"format": FORMAT, "stage": stage, "state": state, "error": error,
                                 "started": started, "ended": now(), "seconds": round(time.time() - t0, 3)})
    except OSError as err:
        print(f"aotbench: cannot write the job outcome {path}: {err}", file=sys.stderr, flush=True)


def with_outcome(path: Path | None, stage: str, fn: Callable[[dict], dict], payload: dict) -> dict:
    """Run a job function and write how it ended (state, one error line, timings) to ``path``.

    An exception is recorded and re-raised, so that the launcher still sees the failure. A SystemExit is the
    preemption path (the job is requeued and exits): it has not ended, so nothing is written."""
    t0, started = time.time(), now()
    try:
        out = fn(payload)
    except SystemExit:
        raise
    except BaseException as err:
        state = "CANCELLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        write_outcome(path, stage, state, error_line(err), t0, started)
        raise
    write_outcome(path, stage, "COMPLETED", "", t0, started)
    return out


def read_outcome(folder: Path, job_id: str, task: int = 0) -> dict | None:
    """The outcome a job wrote (``{"state", "error", ...}``), or None when there is none, it is unreadable, too
    large or not a regular file. Only JSON is read, and its error is reduced to one printable line."""
    from ..storage import read_json

    if not plain_id(job_id):
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
    return {**d, "error": printable(d.get("error") or "")}


def log_error(log: Path | None) -> str:
    """The last error line of a job's log file (its last 20 kB), one printable line; "" when there is none."""
    if log is None:
        return ""
    try:
        if not log.is_file():  # not a FIFO to block on
            return ""
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 20000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    found = [ln for ln in text.splitlines() if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", ln.strip())]
    return printable(found[-1]) if found else ""
