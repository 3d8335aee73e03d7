"""Planning a sweep is a pure function (cells, records, ledger jobs and their states, cached models in; a plan
out), tested here with fakes; and ``--status``/``--dry-run`` of a planned sweep read no dataset and build no
network."""

from __future__ import annotations

import dataclasses

import pytest

from aotbench.cli import main
from aotbench.config import CellConfig, resolve
from aotbench.sweep import load_spec, make_plan
from aotbench.sweep.ledger import JobRecord
from conftest import tiny_train

SPEC = """experiment = "p"
[grid]
dataset = "moons"
network = "mlp:width=32:depth=1"
pairing = "none"
sampler = "euler"
steps = [2, 4, 6]
seeds = [0]
train_steps = 10
batch = 32
pool = 64
n_samples = 50
metrics = ["nfe"]
[resources.eval]
cells_per_job = 2
[options]
device = "cpu"
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(SPEC)
    return load_spec(path, results=str(tmp_path / "r"))


def cells_of(registry, *, seeds=(0,), ranks=1, steps=(2, 4, 6)):
    out = []
    for seed in seeds:
        train = tiny_train(registry, seed=seed, ranks=ranks, batch=32, pool=64)
        out += [CellConfig(train=train, sampler=resolve(registry, "sampler", "euler"),
                           guidance=resolve(registry, "guidance", "none"), steps=s, n_samples=50) for s in steps]
    return out


def plan(spec, cells, **kw):
    args = dict(launcher="local", done=set(), jobs=[], states={}, cached=set())
    return make_plan(spec, cells, **{**args, **kw})


def test_a_fresh_sweep_trains_each_model_once_and_evaluates_its_cells_after_it(registry, spec):
    cells = cells_of(registry, seeds=(0, 1))
    p = plan(spec, cells + cells[:2])  # a cell twice (overlapping grids) is planned once
    assert len(p.cells) == 6 and len(p.to_run) == 6 and len(p.to_train) == 2
    train = [a for a in p.arrays if a.stage == "train"]
    evals = [a for a in p.arrays if a.stage == "eval"]
    assert len(train) == 1 and [k for k, _ in train[0].covers] == p.to_train
    assert [a.after for a in evals] == p.to_train  # each model's cells wait for its own train job
    assert [len(a.payloads) for a in evals] == [2, 2]  # 3 cells, cells_per_job = 2
    assert sorted(k for a in evals for _, ks in a.covers for k in ks) == sorted(c.key for c in p.cells)


def test_done_cells_are_skipped_unless_forced(registry, spec):
    cells = cells_of(registry)
    p = plan(spec, cells, done={cells[0].key, cells[1].key})
    assert [c.key for c in p.done] == [cells[0].key, cells[1].key] and [c.key for c in p.to_run] == [cells[2].key]
    assert len(plan(spec, cells, done={c.key for c in cells}).arrays) == 0
    assert len(plan(spec, cells, done={c.key for c in cells}, force=True).to_run) == 3


def test_a_cached_model_is_not_trained_and_its_cells_do_not_wait(registry, spec):
    cells = cells_of(registry)
    p = plan(spec, cells, cached={cells[0].train.key})
    assert p.to_train == [] and p.cached == {cells[0].train.key}
    assert [(a.stage, a.after, len(a.payloads)) for a in p.arrays] == [("eval", None, 2)]


def test_cells_and_models_of_active_earlier_jobs_are_left_to_them_and_failed_ones_are_replanned(registry, spec):
    cells = cells_of(registry)
    key = cells[0].train.key
    jobs = [JobRecord("slurm", "train", "7_0", key), JobRecord("slurm", "eval", "8_0", key, [cells[0].key]),
            JobRecord("slurm", "eval", "9_0", key, [cells[1].key])]
    p = plan(spec, cells, jobs=jobs, states={"7_0": "RUNNING", "8_0": "PENDING", "9_0": "FAILED"})
    assert set(p.in_flight) == {cells[0].key} and p.training == {key: jobs[0]}
    assert [c.key for c in p.to_run] == [cells[1].key, cells[2].key] and p.to_train == []
    assert [a.after for a in p.arrays] == [key]  # waits for the earlier train job


def test_ddp_width_follows_the_launcher(registry, tmp_path, spec):
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, ddp=True))
    cells = cells_of(registry, ranks=2)
    p = plan(spec, cells, ddp=True)
    assert [a.tasks_per_node for a in p.arrays if a.stage == "train"] == [2]
    assert p.arrays[0].payloads[0]["options"]["ddp"] is True
    p = plan(spec, cells, launcher="debug", ddp=False)
    assert [a.tasks_per_node for a in p.arrays if a.stage == "train"] == [1]
    assert p.arrays[0].payloads[0]["options"]["ddp"] is False and "simulated" in p.notes[0]


def test_status_and_dry_run_of_a_planned_sweep_read_no_dataset_and_build_no_network(tmp_path, capsys, monkeypatch):
    path = tmp_path / "p.toml"
    path.write_text(SPEC)
    args = ["sweep", str(path), "--launcher", "debug", "--results", str(tmp_path / "r")]
    assert main(args) == 0
    capsys.readouterr()

    import aotbench.datasets
    import aotbench.grid
    import aotbench.train

    def touched(*a, **k):
        raise AssertionError("a dataset was read or a network built")

    aotbench.datasets.clear_cache()
    monkeypatch.setattr(aotbench.datasets, "load_splits", touched)
    monkeypatch.setattr(aotbench.train, "build_model", touched)
    monkeypatch.setattr(aotbench.grid, "load_splits", touched)
    assert main([*args, "--status"]) == 0
    assert "done     3" in capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 done, 0 in flight" in out and "jobs:   none to submit" in out
