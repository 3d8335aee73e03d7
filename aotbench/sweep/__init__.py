"""Sweeps: a grid from a TOML spec, trained and evaluated as job arrays by a launcher plugin (docs/sweeps.md).

::

    python -m aotbench sweep SPEC.toml --launcher local|debug|slurm     # plan, run or submit, wait, print the table
    python -m aotbench sweep SPEC.toml --launcher slurm --dry-run       # the plan: models, cells, job arrays
    python -m aotbench sweep SPEC.toml --launcher slurm --status        # done / running / failed cells
    python -m aotbench sweep SPEC.toml --launcher slurm --no-wait       # submit and return

One idea per module: :mod:`.spec` (the TOML schema), :mod:`.plan` (pure planning), :mod:`.jobs` (what runs on a
node), :mod:`.outcome` (how a job ended, as JSON), :mod:`.ledger` (the jobs submitted), :mod:`.states` (job states),
:mod:`.schedule` (running a plan's jobs), :mod:`.status` (``--status``), :mod:`.orchestrate` (the command).
Launchers are plugins (``register_launchers``): ``local``, ``debug`` and ``slurm`` are built in.
"""

from .jobs import EvalJob, TrainJob, eval_job, train_job
from .orchestrate import run_sweep
from .plan import JobSpec, make_plan
from .spec import Options, Resources, Spec, load_spec

__all__ = ["load_spec", "make_plan", "run_sweep", "train_job", "eval_job", "TrainJob", "EvalJob", "JobSpec",
           "Options", "Resources", "Spec"]
