"""`sweep` safety: job outcomes are read from JSON only (never a pickle from the shared results folder), the
state logic tolerates jobs squeue/sacct do not list, failed models show as failed with their error, Ctrl-C is one
line, and the SLURM output parsers on recorded outputs. No cluster and (but one test) no job process needed."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import aotbench.sweep.jobs as jobs_mod
import aotbench.sweep.orchestrate as orchestrate
import aotbench.sweep.schedule as schedule
import aotbench_plugins.launchers.local as local_launcher
import aotbench_plugins.launchers.slurm as slurm_launcher
from aotbench.cli import main
from aotbench.sweep import eval_job, load_spec, train_job
from aotbench.sweep.ledger import JobRecord, Ledger
from aotbench.sweep.outcome import read_outcome
from aotbench.sweep.states import active_ids, ended_badly, failure_reason, is_active

SPEC = """experiment = "{name}"
[grid]
dataset = "moons"
network = "mlp:width=32:depth=1"
pairing = "none"
sampler = "euler"
steps = [2, 4]
seeds = [0]
train_steps = {train_steps}
batch = 32
pool = 64
n_samples = 100
metrics = ["nfe", "fd"]

[resources]
cpus_per_task = 1
time_min = 5
signal_delay_s = 40

[resources.eval]
cells_per_job = 2

[options]
device = "{device}"
ckpt_every = 50
"""


def write_spec(folder: Path, name: str = "safe", *, train_steps: int = 20, device: str = "cpu") -> Path:
    """A tiny sweep: 1 model, 2 cells."""
    path = folder / f"{name}.toml"
    path.write_text(SPEC.format(name=name, train_steps=train_steps, device=device))
    return path


def plan_of(registry, spec: Path, results: Path, launcher: str = "local"):
    launchers = orchestrate.launchers_of(registry)
    spec = load_spec(spec, results=str(results))
    return orchestrate.gather_plan(registry, spec, launcher, launchers[launcher], launchers)[0]


def record_jobs(plan, jobs: list[JobRecord]) -> None:
    """List jobs in RESULTS/EXPERIMENT/jobs/sweep.json the way the sweep does."""
    ledger = Ledger(plan.jobs_dir)
    ledger.begin(plan.launcher, plan.spec.experiment)
    ledger.add(jobs)


def dead_pid() -> str:
    """The id of a local job whose process has ended (a pid nobody uses now)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return str(p.pid)


class Planted:
    """A result pickle an attacker could write to a shared results folder: unpickling it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(jobs_dir: Path, job_id: str, marker: Path) -> None:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    (jobs_dir / f"{job_id}_0_result.pkl").write_bytes(pickle.dumps(("error", Planted(marker))))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------- 1. no pickle is ever loaded

@pytest.mark.parametrize("command", ["--status", "--dry-run", "rerun"])
def test_status_plan_and_rerun_never_unpickle_a_planted_result(registry, tmp_path, monkeypatch, capsys, command):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    plan = plan_of(registry, spec, results)
    train_id, eval_id = dead_pid(), dead_pid()
    record_jobs(plan, [JobRecord("local", "train", train_id, plan.cells[0].train.key),
                       JobRecord("local", "eval", eval_id, plan.cells[0].train.key, [c.key for c in plan.cells])])
    marker = tmp_path / "pwned"
    plant(plan.jobs_dir, train_id, marker)
    plant(plan.jobs_dir, eval_id, marker)
    (plan.jobs_dir / f"{eval_id}_0_outcome.json").write_text("{not json")  # a corrupt outcome is no outcome
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Planted(control)))
    assert control.exists()  # the planted payload is live: unpickling it would run it

    args = ["sweep", str(spec), "--launcher", "local", "--results", str(results)]
    if command == "rerun":  # plan, (no job runs), then the closing status of the cells without a record
        monkeypatch.setattr(orchestrate, "run_in_slots", lambda *a, **k: {})
        assert main(args) == 1
    else:
        assert main([*args, command]) == 0
    out, err = capsys.readouterr()
    assert not marker.exists(), "a result pickle from the results folder was unpickled"
    if command != "--dry-run":
        assert "failed   2" in out + err and f"its model's train job {train_id} ended LOST" in out + err


def test_the_local_launcher_learns_how_its_jobs_ended_from_their_outcome_not_from_submitit(
        registry, tmp_path, monkeypatch):
    """submitit's Job.exception()/result() unpickle the result file from the (shared) jobs folder: the sweep must
    not call them for jobs of this machine, but read the outcome JSON the job wrote."""
    plan = plan_of(registry, write_spec(tmp_path), tmp_path / "r")
    job_id = dead_pid()
    marker = tmp_path / "pwned"

    class Job:
        def __init__(self):
            self.job_id = job_id
            plant(plan.jobs_dir, job_id, marker)
            (plan.jobs_dir / f"{job_id}_0_outcome.json").write_text(json.dumps(
                {"state": "FAILED", "stage": "train", "error": "ValueError: boom"}))

        def done(self):
            return True

        def result(self):
            raise AssertionError("Job.result() unpickles the result file")

        exception = results = outcome = result

    class Launcher(local_launcher.Local):
        def submit(self, fn, payloads, job):
            assert fn is train_job  # the model first; its cells are skipped when it fails
            return [Job()]

    logged = []
    got = schedule.run_in_slots(plan, Launcher(), {"local": Launcher()}, Ledger(plan.jobs_dir), lambda k: False,
                                logged.append)
    assert got == {job_id: "FAILED"}
    assert any(f"train job {job_id} failed: ValueError: boom" in m for m in logged), logged
    assert any("its 2 cell(s) are skipped" in m for m in logged), logged
    assert not marker.exists()


def test_the_orchestrator_has_no_call_that_unpickles_submitits_files():
    import inspect

    import aotbench.sweep
    import aotbench_plugins.launchers.debug as debug_launcher

    modules = [getattr(aotbench.sweep, m) for m in ("jobs", "orchestrate", "schedule", "states", "status", "plan",
                                                    "ledger", "outcome")]
    for module in (*modules, local_launcher, slurm_launcher, debug_launcher):
        source = inspect.getsource(module)
        assert "pickle_load" not in source and "result_pickle" not in source and "pickle.load" not in source
        if module is not debug_launcher:  # a debug job's result is in memory: it ran in this very process
            assert ".result()" not in source and ".exception()" not in source, module.__name__


# -------------------------------------------------------------------------- 1. the job functions' own outcome

@pytest.fixture
def in_local_job(tmp_path, monkeypatch):
    """This process seen as task 0 of local submitit job 4242 whose folder is tmp_path/jobs."""
    folder = tmp_path / "jobs"
    for k, v in {"SUBMITIT_FOLDER": str(folder), "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242",
                 "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0", "SUBMITIT_LOCAL_NTASKS": "1"}.items():
        monkeypatch.setenv(k, v)
    return folder


def test_a_failing_job_function_writes_its_error_as_json_and_still_raises(registry, tmp_path, in_local_job):
    from conftest import tiny_train

    cfg = tiny_train(registry, network="mlp:width=32:depth=1", train_steps=5, batch=32, pool=64)
    bad = {"train": cfg.to_dict(), "train_key": "0" * 16, "results": str(tmp_path), "options": {"device": "cpu"}}
    with pytest.raises(RuntimeError, match="train key mismatch"):
        train_job(bad)
    out = json.loads((in_local_job / "4242_0_outcome.json").read_text())
    assert out["state"] == "FAILED" and out["stage"] == "train" and out["seconds"] >= 0 and out["ended"]
    assert out["error"].startswith("RuntimeError: train key mismatch") and "\n" not in out["error"]
    assert read_outcome(in_local_job, "4242")["state"] == "FAILED"
    assert failure_reason(None, in_local_job, "4242").startswith("RuntimeError: train key mismatch")

    spec = write_spec(tmp_path)
    cell = plan_of(registry, spec, tmp_path / "r").cells[0]
    with pytest.raises(RuntimeError, match="cell key mismatch"):
        eval_job({"cells": [cell.to_dict()], "keys": ["f" * 16], "experiment": "safe",
                        "results": str(tmp_path), "options": {"device": "cpu"}})
    out = json.loads((in_local_job / "4242_0_outcome.json").read_text())
    assert out["state"] == "FAILED" and out["stage"] == "eval" and out["error"].startswith("RuntimeError: cell key")


def test_a_successful_job_function_writes_completed(registry, tmp_path, in_local_job):
    from conftest import tiny_train

    cfg = tiny_train(registry, network="mlp:width=32:depth=1", train_steps=5, batch=32, pool=64)
    got = train_job({"train": cfg.to_dict(), "train_key": cfg.key, "results": str(tmp_path),
                           "options": {"device": "cpu", "threads": 1, "pair_workers": 0}})
    assert got["step"] == 5
    out = json.loads((in_local_job / "4242_0_outcome.json").read_text())
    assert out["state"] == "COMPLETED" and out["error"] == "" and out["stage"] == "train"


def test_a_preempted_job_writes_no_outcome_and_exits_for_submitit(registry, tmp_path, in_local_job, monkeypatch):
    """On the preemption signal submitit checkpoints, requeues and exits (SystemExit): the job has not ended."""
    import aotbench.train
    from conftest import tiny_train

    def stopped(*a, **k):
        raise aotbench.train.Interrupted("training stopped by signal 12 at step 3/5")

    def requeue(err):
        raise SystemExit(-1)

    monkeypatch.setattr(aotbench.train, "train_model", stopped)
    monkeypatch.setattr(jobs_mod, "_hand_over_to_submitit", requeue)
    cfg = tiny_train(registry, network="mlp:width=32:depth=1", train_steps=5, batch=32, pool=64)
    with pytest.raises(SystemExit):
        train_job({"train": cfg.to_dict(), "train_key": cfg.key, "results": str(tmp_path),
                         "options": {"device": "cpu"}})
    assert not (in_local_job / "4242_0_outcome.json").exists()


def test_read_outcome_refuses_what_is_not_a_plain_outcome(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "7_0_outcome.json").write_text('{"state": "rm -rf", "error": ""}')
    (jobs / "8_0_outcome.json").write_text('["COMPLETED"]')
    (jobs / "9_0_outcome.json").write_text('{"state": "FAILED", "error": "ValueError: x\\u001b[2J\\nmore"}')
    (tmp_path / "5_0_outcome.json").write_text('{"state": "COMPLETED", "error": ""}')
    os.mkfifo(jobs / "4_0_outcome.json")  # reading it would block
    assert read_outcome(jobs, "7") is None and read_outcome(jobs, "8") is None
    assert read_outcome(jobs, "6") is None  # missing
    assert read_outcome(jobs, "4") is None
    assert read_outcome(tmp_path, "5")["state"] == "COMPLETED"
    assert read_outcome(jobs, "../5") is None  # a job id names no file outside the jobs folder
    assert read_outcome(jobs, "9")["error"] == "ValueError: x?[2J more"  # one printable line


# -------------------------------------------------------------------------------------- 2. wait_jobs' state logic

def test_active_ids_tolerate_a_job_missing_from_the_states():
    states = {"1": "RUNNING", "3": "COMPLETED", "4": "CANCELLED by 0"}
    assert active_ids(["1", "2", "3", "4"], states, grace=False) == ["1"]
    assert active_ids(["1", "2", "3", "4"], states, grace=True) == ["1", "2"]


def test_wait_jobs_survives_a_job_squeue_and_sacct_do_not_list(tmp_path, monkeypatch):
    answers = iter([{"10_0": "RUNNING"},                                   # 10_1 unlisted (a timeout does it)
                    {"10_0": "COMPLETED", "10_1": "COMPLETED"}])
    monkeypatch.setattr(schedule, "job_states", lambda launchers, jobs, folder: next(answers))
    monkeypatch.setattr(schedule.time, "sleep", lambda s: None)
    plan = SimpleNamespace(jobs_dir=tmp_path, cells=[])
    jobs = [JobRecord("slurm", "eval", "10_0", "k"), JobRecord("slurm", "eval", "10_1", "k")]
    logged = []
    assert schedule.wait_jobs(plan, {}, jobs, lambda: 0, logged.append) == {"10_0": "COMPLETED", "10_1": "COMPLETED"}
    assert "1 job(s) running, 1 pending" in logged[0]  # the unlisted job counted as pending (grace)


# ----------------------------------------------------------------------------- 3. a failed model shows as failed

def test_status_shows_a_failed_local_training_job_as_failed_with_its_error(registry, tmp_path, capsys):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    plan = plan_of(registry, spec, results)
    train_id = dead_pid()
    # what run_in_slots leaves when training fails: the train job, and no eval job (its cells were skipped)
    record_jobs(plan, [JobRecord("local", "train", train_id, plan.cells[0].train.key)])
    (plan.jobs_dir / f"{train_id}_0_outcome.json").write_text(json.dumps(
        {"state": "FAILED", "stage": "train", "error": "ValueError: boom\x1b[31m"}))
    assert main(["sweep", str(spec), "--launcher", "local", "--status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "failed   2" in out and "missing  0" in out, out
    assert f"failed train job {train_id} (FAILED): ValueError: boom?[31m; log: " in out
    assert "\x1b" not in out


def test_status_shows_sacct_state_of_a_failed_slurm_training_job_without_outcome(registry, tmp_path, capsys,
                                                                                monkeypatch):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    plan = plan_of(registry, spec, results, "slurm")
    record_jobs(plan, [JobRecord("slurm", "train", "77_0", plan.cells[0].train.key)])  # the sweep died then
    monkeypatch.setattr(slurm_launcher, "slurm_states", lambda ids: {"77_0": "OUT_OF_MEMORY"})
    assert main(["sweep", str(spec), "--launcher", "slurm", "--status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "failed   2" in out and "failed train job 77_0 (OUT_OF_MEMORY); log: " in out, out


def test_a_training_job_failing_under_the_local_launcher_is_reported_with_its_error(registry, tmp_path, capsys):
    """End to end, one real submitit job: its function writes the outcome, the sweep reads it (not the pickle)."""
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("pool = 64\n", "pool = 64\nlr = 1e30\n"))  # diverges in the job
    results = tmp_path / "r"
    assert main(["sweep", str(spec), "--launcher", "local", "--results", str(results)]) == 1
    err = capsys.readouterr().err
    jobs = json.loads((results / "safe" / "jobs" / "sweep.json").read_text())["submissions"][0]["jobs"]
    assert [j["stage"] for j in jobs] == ["train"]
    train_id = jobs[0]["job_id"]
    outcome = json.loads((results / "safe" / "jobs" / f"{train_id}_0_outcome.json").read_text())
    assert outcome["state"] == "FAILED" and outcome["error"]
    assert f"train job {train_id} failed: {outcome['error']}" in err
    assert "failed   2" in err and "missing  0" in err and f"failed train job {train_id} (FAILED): " in err, err


# --------------------------------------------------------------------------------------------------- 4. Ctrl-C

def test_ctrl_c_while_local_jobs_run_is_one_line_and_exit_130(registry, tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    alive = dead_pid()

    def interrupted_wait(plan, *args):
        record_jobs(plan, [JobRecord("local", "train", alive, plan.cells[0].train.key)])
        raise KeyboardInterrupt

    monkeypatch.setattr(orchestrate, "run_in_slots", interrupted_wait)
    monkeypatch.setattr(local_launcher, "_pid_alive", lambda pid: pid == alive)
    assert main(["sweep", str(spec), "--launcher", "local", "--results", str(results)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert last == ["aotbench sweep: interrupted: 1 local job(s) still running; rerun the same command to pick "
                    "them up, or --status"], err


def test_ctrl_c_while_waiting_for_slurm_is_one_line_and_exit_130(registry, tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"

    def submit(plan, launcher, ledger, log):
        jobs = [JobRecord("slurm", "train", "50_0", plan.cells[0].train.key),
                JobRecord("slurm", "eval", "51_0", plan.cells[0].train.key, [c.key for c in plan.cells])]
        record_jobs(plan, jobs)
        return jobs

    def wait(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(slurm_launcher, "slurm_cluster", lambda: {"debug": {"default": True, "cpus": 8, "mem_mb": 8000,
                                                                    "gpus": 0, "time_min": None}})
    monkeypatch.setattr(orchestrate, "submit_arrays", submit)
    monkeypatch.setattr(orchestrate, "wait_jobs", wait)
    monkeypatch.setattr(slurm_launcher, "slurm_states", lambda ids: {"50_0": "RUNNING", "51_0": "PENDING"})
    assert main(["sweep", str(spec), "--launcher", "slurm", "--results", str(results)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if "interrupted" in ln] == [
        "aotbench sweep: interrupted: 2 slurm job(s) still running; rerun the same command to pick them up, "
        "or --status"], err


def test_local_jobs_start_with_sigint_ignored_so_ctrl_c_does_not_reach_them(registry, tmp_path, monkeypatch):
    """A Ctrl-C at the terminal goes to the whole process group: local jobs (submitit's controller and tasks,
    which inherit the disposition) must ignore it instead of dying with a traceback on the terminal."""
    seen = []

    class Stop(Exception):
        pass

    class Executor:
        def __init__(self, *a, **k):
            pass

        def update_parameters(self, **params):
            pass

        def submit(self, fn, payload):
            seen.append(signal.getsignal(signal.SIGINT))
            raise Stop

    plan = plan_of(registry, write_spec(tmp_path), tmp_path / "r")
    monkeypatch.setattr(local_launcher.submitit, "LocalExecutor", Executor)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Stop):
        schedule.run_in_slots(plan, local_launcher.Local(), {}, Ledger(plan.jobs_dir), lambda k: True,
                              lambda m: None)
    assert seen == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is before  # the sweep itself still gets its KeyboardInterrupt


# ------------------------------------------------------------------------------------------ 5. the SLURM parsers

SACCT = """\
1234_[0-3]|PENDING
1234_4|RUNNING
1234_5|CANCELLED by 0
1234_6|TIMEOUT
1235_0|OUT_OF_MEMORY
1235_1|NODE_FAIL
1236|COMPLETED
1237_2|

sacct: error: Problem talking to the database: Connection refused
1238_[x-y]|RUNNING
1239_[0-4999%4]|PENDING
"""

SQUEUE = """\
1234_4|RUNNING
1234_[5-6]|PENDING
1240_1|COMPLETING
1241|

squeue: error: garbled
"""

SINFO = """\
debug*|node1|4|7800|(null)|infinite
gpu|gnode1|64|515000|gpu:a100:8(S:0-1)|2-00:00:00
gpu|gnode2|32+|256000+|gpu:4|2-00:00:00
short|node1|4|7800|(null)|30:00

garbled
long|node3|8|16000|(null)|not-a-time
"""


def test_parse_sacct_on_recorded_output():
    wanted = {f"1234_{i}" for i in range(7)} | {"1235_0", "1235_1", "1236", "1237_2", "1238_0", "1239_7", "1299_0"}
    got = slurm_launcher.parse_sacct(SACCT, wanted)
    assert got == {"1234_0": "PENDING", "1234_1": "PENDING", "1234_2": "PENDING", "1234_3": "PENDING",
                   "1234_4": "RUNNING", "1234_5": "CANCELLED", "1234_6": "TIMEOUT", "1235_0": "OUT_OF_MEMORY",
                   "1235_1": "NODE_FAIL", "1236": "COMPLETED", "1237_2": "UNKNOWN", "1239_7": "PENDING"}
    assert [i for i in sorted(got) if is_active(got[i])] == ["1234_0", "1234_1", "1234_2", "1234_3", "1234_4",
                                                             "1239_7"]
    assert all(ended_badly(got[i]) for i in ("1234_5", "1234_6", "1235_0", "1235_1", "1237_2"))


def test_parse_squeue_on_recorded_output():
    wanted = {"1234_4", "1234_5", "1234_6", "1234_7", "1240_1", "1241"}
    assert slurm_launcher.parse_squeue(SQUEUE, wanted) == {
        "1234_4": "RUNNING", "1234_5": "PENDING", "1234_6": "PENDING", "1240_1": "COMPLETING", "1241": "PENDING"}


def test_slurm_states_prefers_squeue_over_sacct(monkeypatch):
    outputs = {"sacct": SACCT, "squeue": SQUEUE}
    monkeypatch.setattr(slurm_launcher.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm_launcher, "_run",
                        lambda cmd, timeout=60: subprocess.CompletedProcess(cmd, 0, outputs[cmd[0]], ""))
    got = slurm_launcher.slurm_states(["1234_3", "1234_5", "1236", "1240_1", "1299_0"])
    assert got == {"1234_3": "PENDING", "1234_5": "PENDING", "1236": "COMPLETED", "1240_1": "COMPLETING"}


def test_parse_sinfo_on_recorded_output():
    assert slurm_launcher.parse_sinfo(SINFO) == {
        "debug": {"default": True, "cpus": 4, "mem_mb": 7800, "gpus": 0, "time_min": None},
        "gpu": {"default": False, "cpus": 64, "mem_mb": 515000, "gpus": 8, "time_min": 2880},
        "short": {"default": False, "cpus": 4, "mem_mb": 7800, "gpus": 0, "time_min": 30},
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# ------------------------------------------------------------------------- 6. malformed files in the results folder

@pytest.mark.parametrize("content", ["fifo", "dir", '{"submissions": [1]}',
                                     '{"submissions": [{"jobs": [{"job_id": "1"}]}]}',
                                     '{"submissions": [], "fingerprints": [1]}', '{"fingerprints": {"moons": 5}}'])
def test_a_malformed_ledger_is_one_line_exit_2(tmp_path, capsys, content):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    ledger = results / "safe" / "jobs" / "sweep.json"
    ledger.parent.mkdir(parents=True)
    if content == "fifo":
        os.mkfifo(ledger)  # reading it would block forever
    elif content == "dir":
        ledger.mkdir()
    else:
        ledger.write_text(content)
    assert main(["sweep", str(spec), "--launcher", "local", "--status", "--results", str(results)]) == 2
    assert "corrupt sweep state" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", ["fifo", "dir", "[1, 2]", "{not json"])
def test_a_malformed_record_counts_as_not_done(registry, tmp_path, capsys, content):
    spec = write_spec(tmp_path)
    results = tmp_path / "r"
    plan = plan_of(registry, spec, results)
    path = results / "safe" / "cells" / f"{plan.cells[0].key}.json"
    path.parent.mkdir(parents=True)
    if content == "fifo":
        os.mkfifo(path)
    elif content == "dir":
        path.mkdir()
    else:
        path.write_text(content)
    assert main(["sweep", str(spec), "--launcher", "local", "--status", "--results", str(results)]) == 0
    assert "done     0" in capsys.readouterr().out


def test_a_device_this_machine_lacks_is_refused_before_local_jobs_start(tmp_path, capsys):
    if torch_has_cuda():
        pytest.skip("this machine has a GPU")
    spec = write_spec(tmp_path, device="cuda")
    assert main(["sweep", str(spec), "--launcher", "local", "--results", str(tmp_path / "r")]) == 2
    assert "options.device" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "r" / "safe" / "jobs" / "sweep.json").exists()


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("command", ["--dry-run", "submit"])
def test_a_stateful_pairing_with_several_pairing_workers_is_refused_before_anything_is_submitted(tmp_path, capsys,
                                                                                                  command):
    spec = tmp_path / "loom.toml"
    spec.write_text('experiment = "loom"\n[grid]\ndataset = "moons"\npairing = ["none", "loom"]\ntrain_steps = 5\n'
                    '[options]\npair_workers = 2\n')
    results = tmp_path / "r"
    extra = ["--dry-run"] if command == "--dry-run" else []
    assert main(["sweep", str(spec), "--launcher", "local", "--results", str(results), *extra]) == 2
    assert "keeps state from pool to pool" in one_line(capsys.readouterr().err)
    assert not (results / "loom" / "jobs").exists() or not any((results / "loom" / "jobs").iterdir())
