"""One table of axes (aotbench/axes.py) feeds every interface: each axis is a `run` flag, a sweep [grid] key, a
config field the grid sets, and a table column; and every config field a grid can vary is an axis."""

from __future__ import annotations

import dataclasses
import json

import pytest

from aotbench.axes import AXES_TABLE, axes
from aotbench.cli import build_parser, grid_spec, main
from aotbench.config import CellConfig, TrainConfig
from aotbench.grid import expand
from aotbench.plugins import KINDS
from aotbench.sweep import load_spec
from aotbench.tables import records_frame

#: a second value for every train and cell axis (none of them a default)
SECOND = {"train_steps": 7, "batch": 32, "pool": 64, "ranks": 2, "global_pool": True, "lr": 0.002, "lr_rampup_img": 100,
          "ema_halflife_img": 1000.0, "ema_rampup_ratio": 0.1, "conditional": True, "label_dropout": 0.1,
          "augment_p": 0.5, "grad_accum": 2, "precision": "bf16", "steps": 3, "rho": 5.0, "sigma_min": 0.01,
          "sigma_max": 40.0, "n_samples": 10, "label": 1, "label_sampling": "uniform"}
CHOICES = {"dataset": "moons", "network": "mlp:width=16:depth=1", "pairing": "aot", "sampler": "heun",
           "guidance": "cfg", "schedule": "karras", "objective": "rectified-flow"}


def test_every_config_field_a_grid_can_vary_is_an_axis():
    train = {f.name for f in dataclasses.fields(TrainConfig)} - {"dataset", "network", "pairing", "objective",
                                                                   "seed", "data_fingerprint"}
    cell = {f.name for f in dataclasses.fields(CellConfig)} - {"train", "sampler", "guidance", "schedule",
                                                                 "sample_seed", "metrics"}
    assert set(axes("train")) == train and set(axes("cell")) == cell
    assert set(axes("choice")) == set(KINDS) - {"metric", "launcher"}
    assert set(SECOND) == train | cell


def test_every_axis_is_a_run_flag_that_reaches_the_grid():
    values = {**{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in SECOND.items()}, **CHOICES,
              "seeds": "0,1", "metrics": "nfe", "train_mimg": "0.001", "snapshots": "2"}
    argv = ["run"] + [x for a in AXES_TABLE for x in (a.flag, values[a.name])]
    grid = grid_spec(build_parser().parse_args(argv))
    assert grid == {a.name: values[a.name] for a in AXES_TABLE}


def test_every_axis_is_a_sweep_grid_key(tmp_path):
    body = "\n".join(f"{a.name} = {_toml(a)}" for a in AXES_TABLE)
    path = tmp_path / "all.toml"
    path.write_text(f"[grid]\n{body}\n")
    assert set(load_spec(path).grids[0]) == {a.name for a in AXES_TABLE}


def _toml(axis) -> str:
    value = {**SECOND, **CHOICES, "seeds": 0, "metrics": "nfe", "train_mimg": 0.001, "snapshots": 2}[axis.name]
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def test_a_second_value_on_every_axis_reaches_the_config_and_the_table(registry):
    grid = {**SECOND, **CHOICES, "metrics": "nfe"}
    (cell,) = expand(registry, grid, check=False)
    for name, value in SECOND.items():
        got = getattr(cell.train, name) if name in axes("train") else getattr(cell, name)
        assert got == value, name
    record = {"config": cell.to_dict(), "cell_key": cell.key, "train_key": cell.train.key, "metrics": {"nfe": 5}}
    row = records_frame([record], registry).iloc[0]
    for name, value in SECOND.items():
        assert row[name] == value, name
    for name, label in CHOICES.items():
        assert row[name].split(":")[0] == label.split(":")[0], name


@pytest.mark.parametrize("flag, value", [("--sigma-max", "Infinity"), ("--lr", "NaN"), ("--rho=-Infinity", None)])
def test_a_non_finite_number_is_one_line_before_any_work(tmp_path, capsys, flag, value):
    code = main(["run", "--dataset", "moons", flag, *([value] if value else []), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "must be a finite number" in err, err


def test_train_config_fields_are_typed_as_the_grid_types_them(registry, tmp_path):
    from aotbench.errors import UserError
    from aotbench.train_command import resolve_train_config

    def key(**changes):
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps({"dataset": "moons", "network": "mlp:width=16:depth=1", "pairing": "none",
                                    "train_steps": 100, "batch": 64, "pool": 64, **changes}))
        return resolve_train_config(registry, str(path), tmp_path).key

    assert key(train_steps=100.0) == key(batch=64.0) == key(train_steps="100") == key()
    for bad in ({"train_steps": 10.7}, {"train_steps": True}, {"batch": "many"}):
        with pytest.raises(UserError, match="takes int values"):
            key(**bad)
