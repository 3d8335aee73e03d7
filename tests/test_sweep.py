"""`sweep`: a TOML spec run as submitit job arrays. The tests marked ``slurm`` use a real SLURM cluster (start the
local one with ``bash scripts/slurm-local.sh start``); they skip without one, and fail instead when
``AOTBENCH_REQUIRE_SLURM=1`` (CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aotbench.cli import main
from conftest import REPO

REQUIRE_SLURM = os.environ.get("AOTBENCH_REQUIRE_SLURM", "") not in ("", "0")

GRID = """
[grid]
dataset = "moons"
network = "mlp:width=32:depth=1"
pairing = {pairing}
sampler = "euler"
steps = {steps}
seeds = [0]
train_steps = {train_steps}
batch = 32
pool = 64
n_samples = 100
metrics = ["nfe", "fd", "w2", "curvature", "trunc_err"]
"""


def write_spec(folder: Path, name: str, *, pairing='["none", "aot"]', steps="[2, 4]", train_steps=100,
               cells_per_job=2, ckpt_every=50, extra="", eval_extra="") -> Path:
    """A tiny 2-D sweep: 2 pairings x 1 sampler x 2 step counts x 1 seed (2 models, 4 cells) by default."""
    path = folder / f"{name}.toml"
    path.write_text(f'experiment = "{name}"\n' + GRID.format(pairing=pairing, steps=steps, train_steps=train_steps)
                    + f"""
[resources]
cpus_per_task = 1
time_min = 5
{extra}
[resources.eval]
cells_per_job = {cells_per_job}
{eval_extra}

[options]
device = "cpu"
ckpt_every = {ckpt_every}
""")
    return path


def sweep_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aotbench", "sweep", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def records(results: Path, experiment: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / experiment / "cells").glob("*.json"))}


def comparable(rec: dict) -> dict:
    """A record without what may differ between launchers: timings, environment, creation time."""
    return {k: v for k, v in rec.items() if k not in ("timings", "environment", "created")}


def state(results: Path, experiment: str) -> dict:
    return json.loads((results / experiment / "jobs" / "sweep.json").read_text())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------ without a cluster

@pytest.mark.parametrize("body,expected", [
    ('experiment = "x"\ncolour = 1\n[grid]\npairing = "aot"\n', "unknown key 'colour' in the top level"),
    ('[grid]\npairing = "aot"\nsampler_steps = 3\n', "unknown grid axis 'sampler_steps'"),
    ('[grid]\npairing = "aot"\n[resources]\ngpus = 2\n', "unknown key 'gpus' in resources"),
    ('[grid]\npairing = "aot"\n[resources.train]\ncells_per_job = 2\n',
     "unknown key 'cells_per_job' in resources.train"),
    ('[grid]\npairing = "aot"\n[resources]\ntime_min = "1h"\n', "resources.time_min must be an integer"),
    ('[grid]\npairing = "aot"\n[options]\nckpt_every = 0\n', "options.ckpt_every must be >= 1"),
    ('[grid]\npairing = "aot"\n[resources]\ntime_min = 1\nsignal_delay_s = 60\n', "time_min=1 leaves no time"),
    ('[grid]\npairing = "aot"\n[options]\ndevice = "gpu"\n', "options.device must be cpu, cuda, cuda:N or auto"),
    ('[grid]\npairing = "nope"\n', "unknown pairing 'nope'"),
    ('[resources]\ntime_min = 5\n', "has no [grid] table"),
    ('[grid\n', "cannot read sweep spec"),
])
def test_a_bad_spec_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, body, expected):
    spec = tmp_path / "bad.toml"
    spec.write_text(body)
    assert main(["sweep", str(spec), "--launcher", "local", "--results", str(tmp_path / "r")]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_an_unknown_launcher_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, "s")
    assert main(["sweep", str(spec), "--launcher", "kubernetes", "--results", str(tmp_path / "r")]) == 2
    assert "unknown launcher 'kubernetes' (available: debug, local, slurm)" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_without_slurm_the_error_says_how_to_start_the_local_cluster(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, "s")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo, no sbatch
    assert main(["sweep", str(spec), "--launcher", "slurm", "--results", str(tmp_path / "r")]) == 2
    err = one_error_line(capsys)
    assert "no SLURM reachable" in err and "bash scripts/slurm-local.sh start" in err
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_the_plan_and_submits_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path, "plan", steps="[2, 3, 4]", cells_per_job=2)
    assert main(["sweep", str(spec), "--launcher", "local", "--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "6 cell(s), 2 model(s)" in out and "6 to submit" in out and "2 to train" in out
    assert "job array train: 2 model(s)" in out and "pairing=none" in out and "pairing=aot" in out
    assert out.count("job array eval:  2 task(s), 3 cell(s) of model") == 2 and "after its train job" in out
    assert not (tmp_path / "r").exists()


def test_debug_launcher_writes_the_records_of_run_then_reruns_as_a_no_op(registry, tmp_path, capsys):
    from aotbench.grid import expand
    from aotbench.runner import RunOptions, run_cells
    from aotbench.train import TrainOptions

    spec = write_spec(tmp_path, "dbg", pairing='"aot"', steps="[2, 4]")
    before = torch.get_num_threads()
    assert main(["sweep", str(spec), "--launcher", "debug", "--results", str(tmp_path / "r")]) == 0
    assert torch.get_num_threads() == before  # the in-process jobs gave their thread count back
    out = capsys.readouterr().out
    assert "2 record(s) in" in out and "| aot" in out
    got = records(tmp_path / "r", "dbg")

    grid = {"dataset": "moons", "network": "mlp:width=32:depth=1", "pairing": "aot", "sampler": "euler",
            "steps": [2, 4], "seeds": [0], "train_steps": 100, "batch": 32, "pool": 64, "n_samples": 100,
            "metrics": ["nfe", "fd", "w2", "curvature", "trunc_err"]}
    torch.set_num_threads(1)  # what the sweep's jobs use (cpus_per_task = 1)
    try:
        ref, _ = run_cells(registry, expand(registry, grid), tmp_path / "ref", "dbg",
                           RunOptions(progress=False, train=TrainOptions(pair_workers=0, ckpt_every=50)))
    finally:
        torch.set_num_threads(before)
    assert {r["cell_key"]: comparable(r) for r in ref} == {k: comparable(r) for k, r in got.items()}

    assert main(["sweep", str(spec), "--launcher", "debug", "--results", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "2 done, 0 in flight (earlier jobs), 0 to submit" in err and "none to submit" in err
    assert records(tmp_path / "r", "dbg") == got
    assert main(["sweep", str(spec), "--launcher", "debug", "--status", "--results", str(tmp_path / "r")]) == 0
    status = capsys.readouterr().out
    assert re.search(r"done\s+2\b", status) and re.search(r"failed\s+0\b", status)


# -------------------------------------------------------------------------------------------------- SLURM

def slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo is not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["sinfo failed"])[-1]
    states = set(out.stdout.split())
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no node takes jobs (node states: {', '.join(sorted(states)) or 'none'})"
    acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=20)
    if acct.returncode != 0:
        return "sacct fails (no accounting): submitit could not see jobs that die without a result"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem:
        message = f"no SLURM cluster ({problem}); start the local one with: bash scripts/slurm-local.sh start"
        if REQUIRE_SLURM:
            pytest.fail(f"AOTBENCH_REQUIRE_SLURM is set but {message}")
        pytest.skip(message)


def slurm_jobs_of(results: Path) -> list[str]:
    ids = []
    for path in results.glob("*/jobs/sweep.json"):
        for sub in json.loads(path.read_text())["submissions"]:
            ids += [j["job_id"] for j in sub["jobs"] if j["launcher"] == "slurm"]
    return ids


def active_slurm_jobs(ids: list[str]) -> list[str]:
    from aotbench.sweep.states import is_active
    from aotbench_plugins.launchers.slurm import slurm_states

    states = slurm_states(ids)
    return [i for i in ids if is_active(states.get(i))]


@pytest.fixture
def results(tmp_path):
    """A results folder whose SLURM jobs are cancelled when the test ends, passed or not."""
    folder = tmp_path / "results"
    yield folder
    ids = slurm_jobs_of(folder)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


@pytest.mark.slurm
def test_slurm_sweep_gives_the_records_of_the_local_launcher(slurm, tmp_path, results):
    spec = write_spec(tmp_path, "tiny")
    on_slurm = subprocess.Popen([sys.executable, "-m", "aotbench", "sweep", str(spec), "--launcher", "slurm",
                                 "--results", str(results)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    local = sweep_cli(spec, "--launcher", "local", "--results", tmp_path / "local")
    out, err = on_slurm.communicate(timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    assert on_slurm.returncode == 0, err[-3000:]
    assert "submitted train array" in err and "after job" in err  # evaluations wait for their model
    a, b = records(results, "tiny"), records(tmp_path / "local", "tiny")
    assert len(a) == 4 and a.keys() == b.keys()
    assert {k: comparable(r) for k, r in a.items()} == {k: comparable(r) for k, r in b.items()}
    jobs = state(results, "tiny")["submissions"][0]["jobs"]
    assert [j["stage"] for j in jobs].count("train") == 2 and sorted(len(j["cells"]) for j in jobs) == [0, 0, 2, 2]
    assert all(re.fullmatch(r"\d+(_\d+)?", j["job_id"]) for j in jobs)
    assert "4 record(s) in" in out and "| aot" in out


@pytest.mark.slurm
def test_a_preempted_training_job_requeues_and_resumes_to_the_uninterrupted_record(
        slurm, registry, tmp_path, results):
    from aotbench.grid import expand
    from aotbench.runner import RunOptions, run_cells
    from aotbench.train import TrainOptions

    spec = write_spec(tmp_path, "pre", pairing='"aot"', steps="[3]", train_steps=1200, ckpt_every=50)
    driver = subprocess.Popen([sys.executable, "-m", "aotbench", "sweep", str(spec), "--launcher", "slurm",
                               "--results", str(results)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    models = results / "models"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and not step:  # wait until training runs and has checkpointed
        for path in models.glob("*.pt"):
            try:
                step = torch.load(path, weights_only=True)["step"]
            except Exception:  # noqa: BLE001 - not yet there
                pass
        time.sleep(0.1)
    assert 0 < step < 1200, "the training job never checkpointed"
    train_id = next(j["job_id"] for j in state(results, "pre")["submissions"][0]["jobs"] if j["stage"] == "train")
    subprocess.run(["scancel", "--signal=USR2", train_id], check=True)  # what SLURM sends before a timeout
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]

    log = (results / "pre" / "jobs" / f"{train_id}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in log and f"Requeued job {train_id}" in log
    assert log.count("Starting with JobEnvironment") == 2
    stopped = re.search(r"training stopped by signal 12 at step (\d+)/1200",
                        (results / "pre" / "jobs" / f"{train_id}_0_log.err").read_text())
    assert stopped and 0 < int(stopped.group(1)) < 1200  # it stopped mid-training, then resumed from there

    grid = {"dataset": "moons", "network": "mlp:width=32:depth=1", "pairing": "aot", "sampler": "euler",
            "steps": 3, "train_steps": 1200, "batch": 32, "pool": 64, "n_samples": 100,
            "metrics": ["nfe", "fd", "w2", "curvature", "trunc_err"]}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight, _ = run_cells(registry, expand(registry, grid), tmp_path / "straight", "pre",
                                RunOptions(progress=False, train=TrainOptions(pair_workers=0, ckpt_every=50)))
    finally:
        torch.set_num_threads(before)
    got = records(results, "pre")
    assert {r["cell_key"]: comparable(r) for r in straight} == {k: comparable(r) for k, r in got.items()}
    key = straight[0]["train_key"]
    a = torch.load(models / f"{key}.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "models" / f"{key}.pt", weights_only=True)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in b["ema"])
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in b["net"]) and a["step"] == b["step"] == 1200


@pytest.mark.slurm
def test_killing_the_sweep_halfway_then_rerunning_loses_and_duplicates_nothing(slurm, tmp_path, results, capsys):
    # one evaluation at a time per model, so that the sweep is surely killed halfway through
    spec = write_spec(tmp_path, "kill", cells_per_job=1, eval_extra="array_parallelism = 1")
    cells = results / "kill" / "cells"
    driver = subprocess.Popen([sys.executable, "-m", "aotbench", "sweep", str(spec), "--launcher", "slurm",
                               "--results", str(results)], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    state_file = results / "kill" / "jobs" / "sweep.json"
    def submitted() -> int:
        return len(state(results, "kill")["submissions"][0]["jobs"]) if state_file.exists() else 0

    while time.time() < deadline and submitted() < 6:
        time.sleep(0.2)
    first = state(results, "kill")["submissions"][0]["jobs"]
    assert len(first) == 2 + 4

    # another sweep started now leaves the jobs in flight alone: it would submit nothing
    plan = sweep_cli(spec, "--launcher", "slurm", "--dry-run", "--results", results)
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"cells:\s+\d+ done, \d+ in flight \(earlier jobs\), 0 to submit", plan.stdout), plan.stdout
    assert "none to submit" in plan.stdout

    deadline = time.time() + 180
    while time.time() < deadline and not list(cells.glob("*.json")):
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)  # the sweep dies halfway...
    ids = [j["job_id"] for j in first]
    subprocess.run(["scancel", *ids], capture_output=True)  # ... and so do its jobs
    deadline = time.time() + 60
    while active_slurm_jobs(ids) and time.time() < deadline:
        time.sleep(0.5)
    driver.wait()
    assert not active_slurm_jobs(ids)
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cells.glob("*.json")}
    assert 1 <= len(kept) < 4, "the sweep was not killed halfway"
    assert main(["sweep", str(spec), "--launcher", "slurm", "--status", "--results", str(results)]) == 0
    status = capsys.readouterr().out
    assert re.search(rf"done\s+{len(kept)}\b", status) and re.search(rf"failed\s+{4 - len(kept)}\b", status)
    assert "CANCELLED" in status and "log: " in status

    again = sweep_cli(spec, "--launcher", "slurm", "--results", results)
    assert again.returncode == 0, again.stderr[-3000:]
    final = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cells.glob("*.json")}
    assert len(final) == 4 and len([p for p in cells.iterdir() if not p.name.startswith(".")]) == 4
    assert all(final[name] == kept[name] for name in kept)  # the finished cells were not evaluated again
    second = state(results, "kill")["submissions"][1]["jobs"]
    resubmitted = [c for j in second for c in j["cells"]]
    assert sorted(resubmitted) == sorted(Path(n).stem for n in final if n not in kept)
    assert len(resubmitted) == len(set(resubmitted))


@pytest.mark.slurm
@pytest.mark.parametrize("extra,expected", [
    ("partition = \"nope\"", "SLURM partition 'nope' does not exist (partitions: "),
    ("[resources.train]\ncpus_per_task = 4096", "impossible train resources: 4096 CPUs per node requested"),
    ("gpus_per_node = 64", "impossible train resources: 64 GPUs per node requested"),
    ("mem_gb = 100000", "impossible train resources: mem_gb=100000"),
])
def test_an_impossible_resource_request_is_refused_before_submitting(slurm, tmp_path, capsys, extra, expected):
    spec = write_spec(tmp_path, "res", extra=extra)
    assert main(["sweep", str(spec), "--launcher", "slurm", "--results", str(tmp_path / "r")]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.slurm
def test_ddp_training_under_submitit_on_slurm_matches_the_simulation(slurm, registry, tmp_path):
    import submitit

    from aotbench.sweep import train_job
    from aotbench.train import train_model
    from conftest import tiny_train

    cfg = tiny_train(registry, network="mlp:width=32:depth=1", train_steps=40, batch=64, pool=64, ranks=2)
    ex = submitit.AutoExecutor(tmp_path / "jobs", cluster="slurm")
    ex.update_parameters(timeout_min=5, nodes=1, tasks_per_node=2, cpus_per_task=1, name="aot-ddp-test")
    job = ex.submit(train_job, {"train": cfg.to_dict(), "train_key": cfg.key, "results": str(tmp_path),
                                "options": {"ddp": True, "device": "cpu", "threads": 1, "pair_workers": 0}})
    try:
        out = job.results()
    finally:
        job.cancel(check=False)
    assert [(r["rank"], r["world_size"], r["step"]) for r in out] == [(0, 2, 40), (1, 2, 40)]
    ddp = torch.load(tmp_path / "models" / f"{cfg.key}.pt", weights_only=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from aotbench.train import TrainOptions
        sim = train_model(registry, cfg, tmp_path / "sim.pt", TrainOptions(progress=False, pair_workers=0))
    finally:
        torch.set_num_threads(before)
    assert all(torch.allclose(ddp["ema"][k], sim["ema"][k], rtol=1e-5, atol=1e-6) for k in sim["ema"])
