"""``slurm``: job arrays on a SLURM cluster (submitit's SlurmExecutor), with dependencies between stages.

Each stage is one ``sbatch --array``; a model's eval array waits for its train job (``afterok``,
``kill-on-invalid-dep``), so a failed model cancels only its own cells. Job states come from ``squeue`` (what the
controller knows now) and ``sacct`` (what has ended). Before anything is submitted the request is checked against
``sinfo``: an unknown partition, or more CPUs, GPUs, memory or time than the partition's nodes have, is refused in
one line. ``bash scripts/slurm-local.sh start`` starts a one-node cluster on this machine (docs/sweeps.md).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from pathlib import Path

import submitit

from aotbench import hookimpl
from aotbench.errors import UserError

START_SLURM = "bash scripts/slurm-local.sh start"


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ parsing SLURM's output

def matching_ids(job_id: str, wanted: set[str]) -> list[str]:
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


def _parse_states(text: str, wanted: set[str], blank: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        jid, sep, st = line.partition("|")
        if not sep:
            continue
        for j in matching_ids(jid.strip(), wanted):
            states[j] = st.split()[0] if st.split() else blank
    return states


def parse_sacct(text: str, wanted: set[str]) -> dict[str, str]:
    """``sacct -X -n -P -o JobID,State`` lines -> state of each wanted id; ``CANCELLED by 0`` is CANCELLED, a blank
    or garbled line is skipped."""
    return _parse_states(text, wanted, "UNKNOWN")


def parse_squeue(text: str, wanted: set[str]) -> dict[str, str]:
    """``squeue -h -r -o %i|%T`` lines -> state of each wanted id (a job squeue lists without a state is PENDING)."""
    return _parse_states(text, wanted, "PENDING")


def parse_minutes(text: str) -> float | None:
    """sinfo time limits: infinite, MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]] -> minutes (None = unlimited). Raises
    ValueError for anything else."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        h, m, s = ([int(p) for p in text.split(":")] + [0, 0])[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[:3]
    return days * 1440 + h * 60 + m + s / 60


def gres_gpus(gres: str) -> int:
    """GPUs in a node's ``%G`` (gres) field: ``gpu:a100:4(S:0-1),gpu:2`` -> 6."""
    total = 0
    for item in gres.split(","):
        fields = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if fields[0] == "gpu" and len(fields) >= 2:
            total += int(fields[-1]) if fields[-1].isdigit() else 1
    return total


def parse_sinfo(text: str) -> dict:
    """``sinfo -h -N -o %P|%N|%c|%m|%G|%l`` lines (one per node and partition) -> partition name -> {default, cpus,
    mem_mb, gpus, time_min}, the per-node maxima. A blank or garbled line is skipped: the check is a convenience."""
    parts: dict[str, dict] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 6 or not fields[0].strip().rstrip("*"):
            continue
        name, _node, cpus, mem, gres, limit = (f.strip() for f in fields[:6])
        try:
            limit_min = parse_minutes(limit)
        except ValueError:
            continue
        default = name.endswith("*")
        p = parts.setdefault(name.rstrip("*"), {"default": default, "cpus": 0, "mem_mb": 0, "gpus": 0,
                                                "time_min": limit_min})
        p["cpus"] = max(p["cpus"], int(re.sub(r"\D", "", cpus) or 0))
        p["mem_mb"] = max(p["mem_mb"], int(re.sub(r"\D", "", mem) or 0))
        p["gpus"] = max(p["gpus"], gres_gpus(gres))
    return parts


# --------------------------------------------------------------------------------------------- asking the cluster

def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """State of each SLURM job id (``123`` or ``123_4``): finished ones from sacct, then active ones from squeue
    (which wins). Ids neither lists are left out; so is everything when the commands fail or time out."""
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


def slurm_cluster() -> dict:
    """The partitions of the reachable cluster (see :func:`parse_sinfo`). Raises :class:`UserError` (one line, with
    how to start the local cluster) when none is reachable."""
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


def check_resources(plan, cluster: dict) -> None:
    """Refuse, in one line, a job array no node of its partition can run."""
    for a in plan.arrays:
        job = plan.job_spec(a)
        res = job.resources
        name = res.partition or next((n for n, p in cluster.items() if p["default"]), None)
        if name is None:
            raise UserError("the SLURM cluster has no default partition; set resources.partition")
        if name not in cluster:
            raise UserError(f"SLURM partition {name!r} does not exist (partitions: {', '.join(sorted(cluster))})")
        p, tasks, where = cluster[name], job.tasks_per_node, f"the nodes of partition {name!r}"
        cpus = (res.cpus_per_task or 1) * tasks
        if cpus > p["cpus"]:
            how = f" (cpus_per_task={res.cpus_per_task or 1} x {tasks} DDP tasks)" if tasks > 1 else ""
            raise UserError(f"impossible {a.stage} resources: {cpus} CPUs per node requested{how} but {where} have "
                            f"at most {p['cpus']}")
        if job.gpus_per_node > p["gpus"]:
            have = f"at most {p['gpus']}" if p["gpus"] else "none"
            raise UserError(f"impossible {a.stage} resources: {job.gpus_per_node} GPUs per node requested but "
                            f"{where} have {have}")
        if res.mem_gb and p["mem_mb"] and res.mem_gb * 1024 > p["mem_mb"]:
            raise UserError(f"impossible {a.stage} resources: mem_gb={res.mem_gb:g} but {where} have at most "
                            f"{p['mem_mb'] / 1024:.1f} GB")
        if p["time_min"] is not None and res.time_min > p["time_min"]:
            raise UserError(f"impossible {a.stage} resources: time_min={res.time_min} exceeds the time limit of "
                            f"partition {name!r} ({p['time_min']:g} min)")


# ---------------------------------------------------------------------------------------------------- the launcher

class Slurm:
    """Job arrays on a SLURM cluster, checked against sinfo first.

    Preemption signal (USR2) 90 s before the time limit unless ``signal_delay_s`` says otherwise; a preempted or
    timed-out task is requeued up to ``max_requeue`` times and resumes from its checkpoint."""

    on_this_machine = False
    own_processes = True
    signal_delay_s = 90
    unlisted = None  # a job just submitted may not be listed yet

    def check(self, plan, *, dry_run: bool = False) -> list[str]:
        """Check the plan against ``sinfo``. An unreachable cluster is an error, except for a dry run, which gets
        a note instead."""
        try:
            cluster = slurm_cluster()
        except UserError as err:
            if not dry_run:
                raise
            return [f"resources not checked: {err}"]
        check_resources(plan, cluster)
        return []

    def describe(self, resources) -> list[str]:
        return [f"partition {resources.partition or '(default)'}"]

    def _executor(self, job, after: str | None):
        res = job.resources
        ex = submitit.AutoExecutor(job.folder, cluster="slurm", slurm_max_num_timeout=job.max_requeue)
        params = job.submitit_parameters()
        extra = dict(res.sbatch)
        if after:
            params["slurm_dependency"] = f"afterok:{after}"
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
        ex.update_parameters(**params)
        return ex

    def submit(self, fn, payloads: list[dict], job) -> list:
        """One ``sbatch --array`` for ``payloads``, after job ``job.after`` when given. When that job has ended
        and been purged meanwhile (SLURM refuses the dependency), the array is submitted without it."""
        job.folder.mkdir(parents=True, exist_ok=True)
        try:
            return self._executor(job, job.after).map_array(fn, payloads)
        except submitit.core.utils.FailedJobError as err:
            if not (job.after and "dependency" in str(err).lower()):
                raise
            return self._executor(job, None).map_array(fn, payloads)

    def states(self, job_ids: list[str]) -> dict[str, str]:
        return slurm_states(job_ids)

    def log_path(self, folder: Path, job_id: str) -> Path:
        return submitit.core.utils.JobPaths(folder, job_id, 0).stderr


@hookimpl
def register_launchers(register):
    register("slurm", Slurm)
