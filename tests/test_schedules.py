"""Schedules are plugins: each is monotone, ends in 0 and hits sigma_max and sigma_min; the default reproduces EDM's
rho-schedule bit for bit and every existing key; a rho a schedule ignores does not split cells; bad input is one
line before any work."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aotbench.cli import main
from aotbench.config import CellConfig, resolve
from aotbench.edm import karras_sigmas
from aotbench.grid import expand

RANGES = [(0.002, 80.0), (0.0447, 152.0), (0.01, 1.0)]
SCHEDULES = ["karras", "logsnr", "time-uniform", "time-uniform:power=2"]


def build(registry, text):
    choice = resolve(registry, "schedule", text)
    return registry.get("schedule", choice.name).build(**choice.kwargs)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 18, 64])
def test_each_schedule_is_monotone_ends_in_zero_and_hits_its_range(registry, name, steps):
    schedule = build(registry, name)
    for lo, hi in RANGES:
        s = schedule.sigmas(steps, lo, hi, 7.0)
        assert s.dtype == torch.float64 and s.shape == (steps + 1,) and float(s[-1]) == 0.0
        assert bool((s[:-1] > s[1:]).all())
        exact = name != "karras"  # karras is EDM's formula bit for bit: its end points are off by float rounding
        for got, want in ((float(s[0]), hi), (float(s[steps - 1]), lo if steps > 1 else hi)):
            assert got == want if exact else math.isclose(got, want, rel_tol=1e-14), (name, steps, got, want)


def test_karras_is_edms_rho_schedule_bit_for_bit(registry):
    for rho in (7.0, 72.0, 90.0):
        assert torch.equal(build(registry, "karras").sigmas(18, 0.002, 80.0, rho), karras_sigmas(18, 0.002, 80.0, rho))


def test_logsnr_is_uniform_in_log_sigma_and_time_uniform_in_vp_time(registry):
    s = build(registry, "logsnr").sigmas(9, 0.002, 80.0, 7.0)[:-1]
    steps = torch.diff(torch.log(s))
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-12)
    s = build(registry, "time-uniform").sigmas(9, 0.002, 80.0, 7.0)[:-1]
    b_d, b_min = 19.9, 0.1
    t = (torch.sqrt(b_min ** 2 + 2 * b_d * torch.log1p(s ** 2)) - b_min) / b_d  # EDM Table 1's VP time of sigma
    assert torch.allclose(torch.diff(t), torch.diff(t)[0].expand(8), rtol=1e-9)


def test_the_default_schedule_keeps_every_existing_key(registry):
    """Records written before schedules were plugins have no `schedule` field: their keys must not move."""
    from conftest import tiny_train

    cell = CellConfig(train=tiny_train(registry), sampler=resolve(registry, "sampler", "heun"),
                      guidance=resolve(registry, "guidance", "none"), steps=5)
    d = cell.to_dict()
    assert d["schedule"] == {"name": "karras"}
    del d["schedule"]
    old = CellConfig.from_dict(d)
    assert old.schedule.name == "karras" and old.key == cell.key
    other = cell.with_(schedule=resolve(registry, "schedule", "logsnr"))
    assert other.key != cell.key


def test_a_rho_the_schedule_ignores_does_not_split_cells(registry):
    grid = {"dataset": "moons", "network": "mlp:width=16:depth=1", "pairing": "none", "schedule": "karras,logsnr",
            "rho": "7,90", "steps": "4", "seeds": "0", "metrics": "nfe"}
    cells = expand(registry, grid, check=False)
    assert sorted((c.schedule.name, c.rho) for c in cells) == [("karras", 7.0), ("karras", 90.0), ("logsnr", 7.0)]


@pytest.mark.parametrize("schedule, expected", [("linear", "unknown schedule 'linear'"),
                                                ("time-uniform:power=0.5", "power must be >= 1")])
def test_a_bad_schedule_is_one_line_before_any_work(tmp_path, capsys, schedule, expected):
    code = main(["run", "--dataset", "moons", "--network", "mlp:width=16:depth=1", "--schedule", schedule,
                 "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r").exists()


def test_a_run_records_its_schedule_and_samples_on_it(tmp_path, capsys):
    args = ["run", "--dataset", "moons", "--network", "mlp:width=16:depth=1", "--train-steps", "20", "--batch", "32",
            "--pool", "64", "--n-samples", "50", "--sampler", "euler", "--steps", "4", "--metrics", "nfe,fd",
            "--schedule", "karras,logsnr", "--results", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "run" / "cells").glob("*.json")]
    by = {r["config"]["schedule"]["name"]: r for r in records}
    assert set(by) == {"karras", "logsnr"}
    assert by["karras"]["metrics"]["nfe"] == by["logsnr"]["metrics"]["nfe"] == 4
    assert by["karras"]["metrics"]["fd"] != by["logsnr"]["metrics"]["fd"]
    assert "schedule" in capsys.readouterr().out  # the table shows the axis
