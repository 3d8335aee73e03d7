"""Planning a sweep: which cells to evaluate, which models to train, as which job arrays.

:func:`make_plan` is pure: the cells, the keys of complete records, the ledger's jobs with their states and the
cached models go in, a :class:`Plan` comes out. The orchestrator gathers those inputs (:mod:`.orchestrate`); tests
hand it fakes. Rules: a cell with a complete record is done (unless ``force``); a cell covered by an active job of an
earlier submission is left to that job, and so is a model being trained; every other model without a finished
checkpoint is trained by one train array per DDP width; each model's cells form one eval array that waits for its
train job (no wait when the model is cached).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import Choice
from ..errors import UserError
from .ledger import JobRecord
from ..snapshots import riders
from .spec import Resources, Spec
from .states import is_active


@dataclass(frozen=True)
class JobSpec:
    """What the sweep asks a launcher to run: one job array of a stage, and the resources of each of its tasks."""

    stage: str                      # "train" or "eval"
    experiment: str
    resources: Resources
    folder: Path                    # the jobs folder: the launcher's files and logs, and the jobs' outcome files
    tasks_per_node: int = 1         # > 1: one DDP rank per task
    after: str | None = None        # a job id this array may start only after, once it completed
    max_requeue: int = 3            # preemptions/timeouts a task may be requeued after

    @property
    def name(self) -> str:
        """The job name: ``aot-<stage>-<experiment>``."""
        return f"aot-{self.stage}-{self.experiment}"

    @property
    def gpus_per_node(self) -> int:
        """GPUs per job: one per DDP rank when DDP runs on GPUs, else the stage's ``gpus_per_node``."""
        res = self.resources
        return self.tasks_per_node if (res.ddp and self.tasks_per_node > 1 and res.gpus_per_node > 0) \
            else res.gpus_per_node

    def submitit_parameters(self) -> dict[str, Any]:
        """The parameters every submitit executor understands (``AutoExecutor.update_parameters``)."""
        res = self.resources
        params: dict[str, Any] = {"name": self.name, "timeout_min": res.time_min,
                                  "tasks_per_node": self.tasks_per_node, "nodes": 1}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if res.cpus_per_task:
            params["cpus_per_task"] = res.cpus_per_task
        if res.mem_gb:
            params["mem_gb"] = res.mem_gb
        return params


@dataclass
class Array:
    """One job array to submit: its stage, its tasks' payloads and what each covers."""

    stage: str
    train_key: str | None                 # eval arrays: the model; train arrays: None
    payloads: list[dict]
    covers: list[tuple[str, list[str]]]   # per task: (train_key, cell keys)
    tasks_per_node: int = 1
    after: str | None = None              # a train key whose train job this array waits for


@dataclass
class Plan:
    """The outcome of planning: the cells and what happens to each, the models, the arrays to submit."""

    spec: Spec
    launcher: str                  # the launcher's registered name
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

    @property
    def jobs_dir(self) -> Path:
        """The spec's jobs folder, ``RESULTS/EXPERIMENT/jobs``."""
        return self.spec.jobs_dir

    def resources(self, stage: str) -> Resources:
        """The resources of ``stage``: the spec's ``train`` resources for "train", else its ``eval``."""
        return self.spec.train if stage == "train" else self.spec.eval

    def job_spec(self, array: Array, after: str | None = None) -> JobSpec:
        """The launcher's view of ``array``; ``after`` is the job id it waits for, if any."""
        return JobSpec(array.stage, self.spec.experiment, self.resources(array.stage), self.jobs_dir,
                       array.tasks_per_node, after, int(self.spec.options.get("max_requeue", 3)))


def check_times(spec: Spec, launcher) -> None:
    """Refuse a time limit that leaves no time before the preemption signal (when the launcher sends one)."""
    default = getattr(launcher, "signal_delay_s", None)
    if default is None:
        return
    for stage, res in (("train", spec.train), ("eval", spec.eval)):
        delay = res.signal_delay_s if res.signal_delay_s is not None else default
        if res.time_min * 60 <= delay:
            raise UserError(f"resources.{stage}: time_min={res.time_min} leaves no time before the preemption "
                            f"signal, sent signal_delay_s={delay} s before the limit; raise time_min or lower "
                            f"signal_delay_s")


def check_gpus(spec: Spec, launcher_name: str, have: int) -> None:
    """Jobs that run on this machine cannot ask for more GPUs than it has (``have``)."""
    for stage, res in (("train", spec.train), ("eval", spec.eval)):
        if res.gpus_per_node > have:
            raise UserError(f"impossible {stage} resources: {res.gpus_per_node} GPU(s) per job requested but this "
                            f"machine has {have} (launcher {launcher_name}); use a cluster launcher (slurm), or "
                            f"lower gpus_per_node")


def _options_for(spec: Spec, stage: str, force: bool, ddp: bool) -> dict:
    res = spec.train if stage == "train" else spec.eval
    opts = {k: v for k, v in spec.options.items() if k != "max_requeue"}
    threads = spec.options.get("threads") or res.cpus_per_task
    if threads:
        opts["threads"] = threads
    if stage == "train":
        opts["ddp"] = ddp
    if force:
        opts["force"] = True
    return opts


def make_plan(spec: Spec, cells: list, *, launcher: str, done: set[str], jobs: list[JobRecord],
              states: dict[str, str], cached: set[str], ddp: bool = True, force: bool = False) -> Plan:
    """Plan a sweep (pure). ``cells``: the grid's CellConfigs (duplicates removed here); ``done``: keys of cells
    with a complete record; ``jobs``/``states``: the ledger's jobs and their current states; ``cached``: train keys
    with a finished checkpoint; ``ddp``: whether the launcher can run a job as several processes (else ranks are
    simulated in one)."""
    cells = list({c.key: c for c in cells}.values())
    in_flight: dict[str, JobRecord] = {}
    training: dict[str, JobRecord] = {}
    for j in jobs:
        if is_active(states.get(j.job_id)):
            if j.stage == "eval":
                in_flight.update({k: j for k in j.cells})
            else:
                training[j.train_key] = j
    to_run = [c for c in cells if (force or c.key not in done) and c.key not in in_flight]
    models = {}
    for c in to_run:
        models.setdefault(c.train.key, c.train)
    cached = {k for k in models if k not in training and k in cached}
    to_train = [k for k in models if k not in cached and k not in training]
    use_ddp = spec.train.ddp and ddp
    notes = []
    if spec.train.ddp and not ddp and any(models[k].ranks > 1 for k in to_train):
        notes.append(f"the {launcher} launcher runs one process per job: ranks are simulated in it, not DDP")

    # Train arrays: one per DDP width (a task of width R is R processes). A model whose shorter snapshots are to be
    # trained writes their checkpoints on the way; they get no train job of their own.
    arrays: list[Array] = []
    train_opts = _options_for(spec, "train", force, use_ddp)
    rides = riders(models, to_train)
    carrier = {k: longest for longest, shorter in rides.items() for k in shorter.values()}
    by_width: dict[int, list[str]] = {}
    for k in rides:
        by_width.setdefault(models[k].ranks if use_ddp else 1, []).append(k)
    for width, keys in sorted(by_width.items()):
        arrays.append(Array("train", None,
                            [{"train": models[k].to_dict(), "train_key": k, "results": str(spec.results),
                              "options": train_opts, "snapshots": {str(s): r for s, r in rides[k].items()}}
                             for k in keys],
                            [(k, []) for k in keys], tasks_per_node=width))

    # Eval arrays: per model, its cells in chunks of cells_per_job, after the train job that writes its checkpoint
    # (its own, or its longest snapshot sibling's) unless it is cached
    eval_opts = _options_for(spec, "eval", force, False)
    n = spec.eval.cells_per_job
    for k in models:
        group = [c for c in to_run if c.train.key == k]
        chunks = [group[i:i + n] for i in range(0, len(group), n)]
        arrays.append(Array("eval", k,
                            [{"cells": [c.to_dict() for c in ch], "keys": [c.key for c in ch],
                              "experiment": spec.experiment, "results": str(spec.results), "options": eval_opts}
                             for ch in chunks],
                            [(k, [c.key for c in ch]) for ch in chunks],
                            after=None if k in cached else carrier.get(k, k)))
    return Plan(spec, launcher, cells, [c for c in cells if c.key in done], in_flight, to_run, models, cached,
                training, to_train, arrays, notes)


def _model_label(registry, cfg) -> str:
    def short(kind, choice):
        try:
            return choice.label(registry.get(kind, choice.name).params)
        except UserError:
            return choice.label()

    shown = ("dataset", "network", "pairing", "seed", "train_steps", "ranks", "data_fingerprint")
    other = [f"{f.name}={short(f.name, getattr(cfg, f.name))}" if isinstance(getattr(cfg, f.name), Choice)
             else f"{f.name}={getattr(cfg, f.name):g}" if isinstance(getattr(cfg, f.name), float)
             else f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
             if f.name not in shown and getattr(cfg, f.name) != f.default]
    return " ".join([f"{short('dataset', cfg.dataset)} {short('network', cfg.network)}",
                     f"pairing={short('pairing', cfg.pairing)} seed={cfg.seed} train_steps={cfg.train_steps} "
                     f"ranks={cfg.ranks}", *other])


def _res_label(job: JobSpec, launcher) -> str:
    res = job.resources
    parts = list(launcher.describe(res)) if hasattr(launcher, "describe") else []
    parts += [f"{job.tasks_per_node} task(s)", f"{res.cpus_per_task or 1} CPU(s)/task", f"{job.gpus_per_node} GPU(s)",
              f"{res.time_min} min"]
    if res.mem_gb:
        parts.append(f"{res.mem_gb:g} GB")
    return ", ".join(parts)


def describe_plan(plan: Plan, registry, launcher) -> list[str]:
    """The plan in lines: counts of cells and models by fate, then each job array with its resources."""
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
        label = _res_label(plan.job_spec(a), launcher)
        if a.stage == "train":
            lines.append(f"  job array train: {len(a.payloads)} model(s) [{label}]")
            lines += [f"    model {k}: {_model_label(registry, plan.models[k])}" for k, _ in a.covers]
            continue
        dep = "model cached" if a.after is None else (
            f"after its train job {plan.training[a.after].job_id}" if a.after in plan.training
            else "after its train job")
        n_cells = sum(len(c) for _, c in a.covers)
        lines.append(f"  job array eval:  {len(a.payloads)} task(s), {n_cells} cell(s) of model {a.train_key}, "
                     f"{dep} [{label}]")
    lines += [f"  note: {n}" for n in plan.notes]
    return lines
