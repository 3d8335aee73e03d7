"""``sweep --status``: which cells are done, running, failed or missing, and why a job failed."""

from __future__ import annotations

from .ledger import JobRecord, Ledger
from .outcome import printable
from .plan import Plan
from .states import ended_badly, failure_reason, is_active, job_states


def status_lines(plan: Plan, launchers: dict) -> tuple[list[str], int]:
    """What is done, running and failed, from the records and the ledger's jobs. Returns (lines, n_failed)."""
    spec = plan.spec
    jobs = Ledger(plan.jobs_dir).jobs()
    states = job_states(launchers, jobs, plan.jobs_dir) if jobs else {}
    done = {c.key for c in plan.done}
    latest: dict[str, JobRecord] = {}
    latest_train: dict[str, JobRecord] = {}
    for j in jobs:
        latest.update({k: j for k in j.cells})
        if j.stage == "train":
            latest_train[j.train_key] = j

    # Each cell not done: running, failed (with the job to blame) or never submitted
    running, failed, missing = [], [], []
    blame: dict[str, JobRecord] = {}
    for c in plan.cells:
        if c.key in done:
            continue
        j = latest.get(c.key)
        tj = latest_train.get(c.train.key)
        if j is None and tj is not None and c.train.key not in plan.cached and ended_badly(states.get(tj.job_id)):
            failed.append(c)  # its model's training failed, so its evaluation was never submitted
            blame[c.key] = tj
        elif j is None:
            missing.append(c)
        elif is_active(states.get(j.job_id)):
            running.append(c)
        else:
            failed.append(c)
            blame[c.key] = j
    lines = [f"sweep {spec.experiment}: {len(plan.cells)} cell(s) in {spec.results / spec.experiment}",
             f"  done     {len(done)}",
             f"  running  {len(running)}  (pending or running jobs)",
             f"  failed   {len(failed)}  (their job ended without a record)",
             f"  missing  {len(missing)}  (never submitted; rerun the sweep)"]
    train_active = [j for j in latest_train.values() if is_active(states.get(j.job_id))]
    if train_active:
        lines.append(f"  training {len(train_active)} model(s): jobs {', '.join(j.job_id for j in train_active)}")

    # One line per failed job: its state, its error, its log
    shown = set()
    for c in failed:
        j = culprit = blame[c.key]
        if j.job_id in shown:
            continue
        shown.add(j.job_id)
        tj = latest_train.get(j.train_key)
        why = states.get(j.job_id, "UNKNOWN")
        if j.stage == "eval" and tj is not None and not is_active(states.get(tj.job_id)) \
                and states.get(tj.job_id) != "COMPLETED":
            why += f"; its model's train job {tj.job_id} ended {states.get(tj.job_id, 'UNKNOWN')}"
            culprit = tj
        launcher = launchers.get(culprit.launcher)
        reason = failure_reason(launcher, plan.jobs_dir, culprit.job_id)
        log = launcher.log_path(plan.jobs_dir, culprit.job_id) if launcher is not None else None
        lines.append(f"  failed {j.stage} job {printable(j.job_id)} ({printable(why)})"
                     f"{': ' + reason if reason else ''}" + (f"; log: {printable(str(log), 1000)}" if log else ""))
    return lines, len(failed)
