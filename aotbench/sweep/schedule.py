"""The two ways a plan's jobs are run: as arrays handed to a cluster's scheduler (:func:`submit_arrays`, then
:func:`wait_jobs`), or one job at a time on this machine in a few slots (:func:`run_in_slots`). A launcher says which
through its ``on_this_machine`` flag; both call only its ``submit``."""

from __future__ import annotations

import os
import time
from typing import Callable

from .jobs import eval_job, train_job
from .ledger import JobRecord, Ledger
from .outcome import read_outcome
from .plan import Array, Plan
from .states import active_ids, failure_reason, is_active, job_states

Log = Callable[[str], None]


def submit_arrays(plan: Plan, launcher, ledger: Ledger, log: Log) -> list[JobRecord]:
    """Submit every array of the plan: the train arrays first, then per model an eval array that waits for its
    train job (``JobSpec.after``). Each job is in the ledger as soon as it is submitted."""
    ledger.begin(plan.launcher, plan.spec.experiment)
    submitted: list[JobRecord] = []
    train_job_of = {k: j.job_id for k, j in plan.training.items() if j.launcher == plan.launcher}
    for a in [a for a in plan.arrays if a.stage == "train"]:
        jobs = launcher.submit(train_job, a.payloads, plan.job_spec(a))
        recs = [JobRecord(plan.launcher, "train", str(j.job_id), k) for j, (k, _) in zip(jobs, a.covers)]
        train_job_of.update({r.train_key: r.job_id for r in recs})
        ledger.add(recs)
        submitted += recs
        log(f"submitted train array {recs[0].job_id.split('_')[0]}: {len(recs)} model(s)")
    for a in [a for a in plan.arrays if a.stage == "eval"]:
        after = train_job_of.get(a.after) if a.after else None
        jobs = launcher.submit(eval_job, a.payloads, plan.job_spec(a, after))
        recs = [JobRecord(plan.launcher, "eval", str(j.job_id), k, cells) for j, (k, cells) in zip(jobs, a.covers)]
        ledger.add(recs)
        submitted += recs
        log(f"submitted eval array {recs[0].job_id.split('_')[0]}: {len(recs)} task(s) for model {a.train_key}"
            + (f", after job {after}" if after else ""))
    return submitted


def wait_jobs(plan: Plan, launchers: dict, jobs: list[JobRecord], count_done: Callable[[], int], log: Log
              ) -> dict[str, str]:
    """Poll until none of ``jobs`` is pending or running; log each change of (cells done, jobs running, pending).
    Returns the jobs' last states."""
    t0 = time.time()
    last = None
    ids = [j.job_id for j in jobs]
    while True:
        states = job_states(launchers, jobs, plan.jobs_dir)
        # a job just submitted may not be listed yet: for a few seconds an unlisted job counts as pending
        active = active_ids(ids, states, grace=time.time() - t0 < 10)
        running = sum(1 for i in active if states.get(i, "").startswith("RUNNING"))
        summary = (count_done(), len(active), running)
        if summary != last:
            log(f"[{time.time() - t0:5.0f} s] {summary[0]}/{len(plan.cells)} cells done; "
                f"{running} job(s) running, {len(active) - running} pending")
            last = summary
        if not active:
            return states
        time.sleep(min(30.0, max(1.0, (time.time() - t0) / 20)))


def run_in_slots(plan: Plan, launcher, launchers: dict, ledger: Ledger, model_done: Callable[[str], bool],
                 log: Log) -> dict[str, str]:
    """Run the plan's jobs on this machine, at most ``array_parallelism`` at once (default: the CPUs over a job's
    ``cpus_per_task``). A model's cells start once it is trained (at once when it is cached or trained by an earlier,
    still running job); when its training fails they are skipped. Returns ``job_id -> COMPLETED | FAILED``."""
    spec = plan.spec
    if plan.arrays:
        ledger.begin(plan.launcher, spec.experiment)

    # Queue: every task whose model is ready; the rest wait for their model's train job
    queue: list[tuple[Array, int]] = []
    waiting: dict[str, list[tuple[Array, int]]] = {}
    for a in plan.arrays:
        for i in range(len(a.payloads)):
            if a.stage == "eval" and a.after is not None:
                waiting.setdefault(a.after, []).append((a, i))
            else:
                queue.append((a, i))
    slots = spec.train.array_parallelism or spec.eval.array_parallelism or \
        max(1, (os.cpu_count() or 1) // (spec.eval.cpus_per_task or 1))
    running: dict[str, tuple[object, Array, int]] = {}
    adopted = {j.job_id: j for j in plan.training.values()}
    final: dict[str, str] = {}

    def model_finished(key: str, ok: bool):
        followers = waiting.pop(key, [])
        if ok and model_done(key):
            queue.extend(followers)
        elif followers:
            log(f"model {key} was not trained: its {sum(len(a.covers[i][1]) for a, i in followers)} cell(s) "
                f"are skipped")

    t0 = time.time()
    while queue or running or adopted:
        # Start: fill the free slots
        while queue and len(running) < slots:
            a, i = queue.pop(0)
            fn = train_job if a.stage == "train" else eval_job
            (job,) = launcher.submit(fn, [a.payloads[i]], plan.job_spec(a))
            key, cells = a.covers[i]
            rec = JobRecord(plan.launcher, a.stage, str(job.job_id), key, cells)
            ledger.add([rec])
            running[rec.job_id] = (job, a, i)
            what = f"model {key}" if a.stage == "train" else f"{len(cells)} cell(s) of model {key}"
            log(f"[{time.time() - t0:5.0f} s] started {a.stage} job {rec.job_id}: {what}")

        # Reap: a job whose process ended is judged by its outcome file alone
        for job_id, (job, a, i) in list(running.items()):
            if not job.done():
                continue
            outcome = read_outcome(plan.jobs_dir, job_id)
            failure = None
            if outcome is None or outcome["state"] != "COMPLETED":
                failure = (outcome or {}).get("error") or failure_reason(launcher, plan.jobs_dir, job_id) or \
                    "the job ended without an outcome (killed?)"
            del running[job_id]
            final[job_id] = "FAILED" if failure is not None else "COMPLETED"
            if failure is not None:
                log(f"[{time.time() - t0:5.0f} s] {a.stage} job {job_id} failed: {failure}")
            if a.stage == "train":
                model_finished(a.covers[i][0], failure is None)

        # Adopted: train jobs of an earlier submission that still ran when this one was planned
        if adopted:
            states = job_states(launchers, list(adopted.values()), plan.jobs_dir)
            for job_id, rec in list(adopted.items()):
                if not is_active(states.get(job_id)):
                    del adopted[job_id]
                    model_finished(rec.train_key, True)
        if running or adopted:
            time.sleep(0.5)
    for key in list(waiting):
        model_finished(key, False)
    return final
