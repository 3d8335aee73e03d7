"""Training-efficiency curves: a snapshot at step s of a T-step run is the model of the s-step run, trained once."""

from __future__ import annotations

import pytest
import torch

from aotbench import runner as runner_module
from aotbench.grid import expand
from aotbench.records import read_records
from aotbench.report import report
from aotbench.runner import RunOptions, run_cells
from aotbench.snapshots import riders, snapshot_config, snapshot_steps
from aotbench.sweep import load_spec, make_plan
from aotbench.train import TrainOptions, train_model
from conftest import state_equal, tiny_train

GRID = {"dataset": "moons", "network": "mlp:width=32:depth=1", "pairing": "none,aot", "sampler": "euler",
        "steps": "2,6", "train_steps": 60, "batch": 64, "pool": 128, "n_samples": 64, "snapshots": 3,
        "metrics": "nfe,fd"}


def test_snapshot_steps_are_evenly_spaced_and_end_at_the_run():
    assert snapshot_steps(1500, 3) == [500, 1000, 1500]
    assert snapshot_steps(10, 4) == [2, 5, 7, 10]
    assert snapshot_steps(2, 5) == [1, 2]  # fewer steps than snapshots: each step once
    with pytest.raises(ValueError):
        snapshot_steps(10, 0)


@pytest.mark.parametrize("pairing", ["aot", "loom"])
def test_a_snapshot_is_bit_identical_to_the_shorter_run(registry, tmp_path, pairing):
    cfg = tiny_train(registry, pairing=pairing, train_steps=50, batch=32, pool=96)  # 20 ends mid-pool
    snaps = {20: tmp_path / "s20.pt", 48: tmp_path / "s48.pt"}
    train_model(registry, cfg, tmp_path / "long.pt", TrainOptions(progress=False, pair_workers=0, snapshots=snaps))
    for step, path in snaps.items():
        snap = torch.load(path, weights_only=True)
        short_cfg = snapshot_config(cfg, step)
        plain = train_model(registry, short_cfg, tmp_path / f"plain{step}.pt",
                            TrainOptions(progress=False, pair_workers=0))
        assert snap["done"] and snap["step"] == step and snap["train_key"] == short_cfg.key
        assert state_equal(snap["net"], plain["net"]) and state_equal(snap["ema"], plain["ema"])
        assert all(state_equal(snap["opt"]["state"][i], plain["opt"]["state"][i]) for i in plain["opt"]["state"])
        assert snap["coupling"][0]["paired"] == plain["coupling"][0]["paired"]
        assert snap["timing"]["train_seconds"] > 0  # its share of the long run's time, not zero


def test_snapshots_train_each_run_once_and_the_last_is_the_plain_runs_record(registry, tmp_path, monkeypatch):
    fresh = []
    real = runner_module.train_model

    def counting(reg, cfg, path, opts):
        if not path.exists():
            fresh.append(cfg.train_steps)
        return real(reg, cfg, path, opts)

    monkeypatch.setattr(runner_module, "train_model", counting)
    cells = expand(registry, GRID)
    assert sorted({c.train.train_steps for c in cells}) == [20, 40, 60]
    run_cells(registry, cells, tmp_path / "a", "exp", RunOptions(progress=False))
    assert sorted(fresh) == [60, 60]  # one training per pairing: 20 and 40 were written on the way
    recs = read_records(tmp_path / "a" / "exp")
    assert len(recs) == 2 * 3 * 2 and {r["train_img"] for r in recs} == {20 * 64, 40 * 64, 60 * 64}

    plain = expand(registry, {**GRID, "snapshots": 1})
    run_cells(registry, plain, tmp_path / "b", "exp", RunOptions(progress=False))
    by_key = {r["cell_key"]: r for r in recs}
    for r in read_records(tmp_path / "b" / "exp"):
        assert r["metrics"] == by_key[r["cell_key"]]["metrics"]  # same key, same numbers


def test_report_draws_fd_against_training_images_and_counts_images_to_reach_an_fd(registry, tmp_path):
    """The coupling metric's counts grow with training length; they are measurements, so a run's snapshots still
    share one panel and one line."""
    cells = expand(registry, {**GRID, "metrics": "nfe,fd,coupling"})
    run_cells(registry, cells, tmp_path, "exp", RunOptions(progress=False))
    done = report(tmp_path / "exp", nfe=[6])
    assert any(p.name == "fd_vs_train_img_moons.png" for p in done["figures"])
    reach = done["tables"]["efficiency"]
    assert set(reach["line"]) == {"none", "aot"} and set(reach["nfe"]) == {6}
    assert "_series" not in reach and reach["fd_target"].nunique() == 1  # one panel: both lines, one target
    assert reach["fd_target"].iloc[0] == reach[reach.line == "none"]["final_fd"].iloc[0]
    none = reach[reach.line == "none"].iloc[0]
    assert none["images"] <= none["max_images"] == 60 * 64  # the baseline reaches its own final FD
    assert "Training efficiency" in (tmp_path / "exp" / "table.md").read_text()
    cells = done["tables"]["cells"]
    for _, g in cells.groupby(["pairing", "steps"], sort=False):
        assert list(g["train_steps"]) == [20, 40, 60]  # a run's snapshots in training order
    assert done["nfe_missing"] == {}
    assert report(tmp_path / "exp", nfe=[6, 7])["nfe_missing"] == {"moons": ([7], [2.0, 6.0])}  # named, not dropped
    target = report(tmp_path / "exp", nfe=[6], fd_target=1e-9)["tables"]["efficiency"]
    assert target["images"].isna().all()  # an FD nobody reaches is "not reached", not a number


def test_a_sweep_trains_only_the_longest_snapshot_and_its_siblings_wait_for_it(registry, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('experiment = "e"\n[grid]\ndataset = "moons"\nsnapshots = 3\n')
    spec = load_spec(path, results=str(tmp_path / "r"))
    cells = expand(registry, GRID)
    plan = make_plan(spec, cells, launcher="local", done=set(), jobs=[], states={}, cached=set())
    train_tasks = [t for a in plan.arrays if a.stage == "train" for t in a.payloads]
    assert sorted(cfg["train"]["train_steps"] for cfg in train_tasks) == [60, 60]
    models = {c.train.key: c.train for c in cells}
    rides = riders(models, list(models))
    for t in train_tasks:
        assert {int(s) for s in t["snapshots"]} == {20, 40} and t["snapshots"] == {
            str(s): k for s, k in rides[t["train_key"]].items()}
    carriers = {k for k in rides}
    for a in plan.arrays:
        if a.stage == "eval":
            assert a.after in carriers
