"""The sweep's ledger, ``RESULTS/EXPERIMENT/jobs/sweep.json``: every job submitted, and the data fingerprints used.

A rerun reads it to adopt jobs that still run instead of submitting their cells twice; ``--status`` reads it to say
which jobs ran which cells. It also keeps each dataset's content fingerprint as last planned, so ``--status`` and
``--dry-run`` can name cells without reading any dataset (on a login node that has none of the data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .outcome import now

STATE_FILE = "sweep.json"


@dataclass
class JobRecord:
    """One submitted job (one array task): which launcher holds it, its stage, id, model and cells."""

    launcher: str
    stage: str
    job_id: str
    train_key: str
    cells: list = field(default_factory=list)
    submission: int = 0

    def to_dict(self) -> dict:
        """The job as the ledger stores it; ``submission`` is left out (it is the index of the submission that holds the
        job)."""
        return {"launcher": self.launcher, "stage": self.stage, "job_id": self.job_id, "train_key": self.train_key,
                "cells": list(self.cells)}


def _check_state(state) -> None:
    """Raise ValueError unless ``state`` has the ledger's shape: a list of submissions, each a list of jobs whose
    fields are strings (cells: a list of strings), and fingerprints mapping strings to strings."""
    if not isinstance(state, dict) or not isinstance(state.get("submissions", []), list):
        raise ValueError("not a sweep ledger")
    for sub in state.get("submissions", []):
        if not isinstance(sub, dict) or not isinstance(sub.get("jobs", []), list):
            raise ValueError("a submission is not a table with a list of jobs")
        for j in sub.get("jobs", []):
            if not isinstance(j, dict) or not all(isinstance(j.get(k), str) for k in
                                                  ("launcher", "stage", "job_id", "train_key")):
                raise ValueError("a job lacks its launcher, stage, job_id or train_key")
            if not isinstance(j.get("cells", []), list) or not all(isinstance(c, str) for c in j.get("cells", [])):
                raise ValueError("a job's cells are not a list of keys")
    prints = state.get("fingerprints", {})
    if not isinstance(prints, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prints.items()):
        raise ValueError("fingerprints are not a table of strings")


class Ledger:
    """The ledger of one sweep's jobs folder. :meth:`begin` opens a submission; :meth:`add` appends jobs to it and
    saves at once (atomically), so a sweep killed mid-submission still knows every job it submitted."""

    def __init__(self, jobs_dir: Path):
        self.dir = Path(jobs_dir)
        self.path = self.dir / STATE_FILE
        if not self.path.exists() and not self.path.is_symlink():
            self.state: dict = {"submissions": []}
            return
        try:
            if not self.path.is_file() or self.path.stat().st_size > 64 << 20:  # not a FIFO to block on
                raise ValueError("not a regular file of at most 64 MiB")
            self.state = json.loads(self.path.read_text())
            _check_state(self.state)
        except (OSError, ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise UserError(f"corrupt sweep state {self.path}: {err}; delete it to forget earlier submissions") \
                from None

    def jobs(self) -> list[JobRecord]:
        """Every job of every submission, oldest first."""
        out = []
        for i, sub in enumerate(self.state.get("submissions", [])):
            for j in sub.get("jobs", []):
                out.append(JobRecord(j["launcher"], j["stage"], j["job_id"], j["train_key"], j.get("cells", []), i))
        return out

    def fingerprints(self) -> dict[str, str]:
        """Dataset label -> content fingerprint, as last planned."""
        return dict(self.state.get("fingerprints", {}))

    def remember(self, fingerprints: dict[str, str]) -> None:
        """Keep the fingerprints a plan used (saved with the next submission)."""
        self.state.setdefault("fingerprints", {}).update(fingerprints)

    def begin(self, launcher: str, experiment: str) -> None:
        """Open a new submission."""
        self.state.setdefault("submissions", []).append({"time": now(), "launcher": launcher, "jobs": []})
        self.state["experiment"] = experiment
        self.save()

    def add(self, jobs: list[JobRecord]) -> None:
        """Append jobs to the open submission and save."""
        self.state["submissions"][-1]["jobs"].extend(j.to_dict() for j in jobs)
        self.save()

    def save(self) -> None:
        """Write the ledger (``jobs/sweep.json``) atomically, creating the jobs folder."""
        from ..storage import atomic_write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.state)
