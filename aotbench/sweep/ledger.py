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


class Ledger:
    """The ledger of one sweep's jobs folder. :meth:`begin` opens a submission; :meth:`add` appends jobs to it and
    saves at once (atomically), so a sweep killed mid-submission still knows every job it submitted."""

    def __init__(self, jobs_dir: Path):
        self.dir = Path(jobs_dir)
        self.path = self.dir / STATE_FILE
        if not self.path.exists():
            self.state: dict = {"submissions": []}
            return
        try:
            self.state = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"corrupt sweep state {self.path}: {err}; delete it to forget earlier submissions") \
                from None
        if not isinstance(self.state, dict) or not isinstance(self.state.get("submissions", []), list):
            raise UserError(f"corrupt sweep state {self.path}: not a sweep ledger; delete it to forget earlier "
                            f"submissions")

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
