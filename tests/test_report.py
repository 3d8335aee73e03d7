"""`report` on a synthetic folder of records: the tables compute mean and sd right, the figures are written."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from aotbench.config import CellConfig, resolve
from aotbench.errors import UserError
from aotbench.records import Workspace, write_record
from aotbench.report import _series, report
from aotbench.tables import _choice_labels, _defaults_of
from aotbench.storage import atomic_write_bytes
from conftest import run_cli, tiny_train

FD = {("none", 3): [10.0, 12.0, 14.0], ("none", 9): [4.0, 5.0, 6.0],
      ("aot", 3): [6.0, 6.0, 9.0], ("aot", 9): [2.0, 3.0, 4.0]}
CURV = {"none": [0.3, 0.5, 0.4], "aot": [0.1, 0.1, 0.4]}


def synthetic(registry, root):
    ws = Workspace(root)
    for (pairing, steps), fds in FD.items():
        for seed, fd in enumerate(fds):
            train = tiny_train(registry, dataset="digits", network="unet:channels=8", pairing=pairing, seed=seed)
            cell = CellConfig(train=train, sampler=resolve(registry, "sampler", "heun"),
                              guidance=resolve(registry, "guidance", "none"), steps=steps, sample_seed=seed)
            metrics = {"nfe": 2 * steps - 1, "fd": fd, "fd_extractor": "digits-cnn32-test", "w2": fd / 10,
                       "curvature": CURV[pairing][seed], "trunc_err": 1.0 / steps + seed}
            if seed:  # seed 0 was evaluated before records carried the feature net's accuracy
                metrics["fd_extractor_accuracy"] = 0.9
            timings = {"train_seconds": 100.0 + seed, "pair_seconds": 10.0 if pairing == "aot" else 0.0,
                       "pair_wait_seconds": 0.0, "sample_seconds": 1.0}
            write_record(ws.record_path("exp", cell), "exp", cell, metrics, timings, {"device": "cpu"})
            rng = np.random.default_rng(seed)
            buf = io.BytesIO()
            np.savez(buf, samples=rng.uniform(-1, 1, (16, 1, 8, 8)),
                     trajectory_denoised=rng.uniform(-1, 1, (64, 2, 1, 8, 8)),
                     trajectory_sigmas=np.linspace(80, 0, 65), trajectory_x=rng.normal(size=(65, 2, 1, 8, 8)))
            atomic_write_bytes(ws.artifact_path("exp", cell), buf.getvalue())
    return root / "exp"


def test_report_tables_have_the_right_mean_and_sd(registry, tmp_path):
    done = report(synthetic(registry, tmp_path))
    cells = pd.read_csv(tmp_path / "exp" / "table.csv")
    for (pairing, steps), fds in FD.items():
        row = cells[(cells.pairing == pairing) & (cells.steps == steps)].iloc[0]
        assert row.fd == pytest.approx(np.mean(fds)) and row.fd_sd == pytest.approx(np.std(fds, ddof=1))
        assert row.seeds == 3 and row.fd_extractor_accuracy == 0.9  # an instrument's number never splits seeds
        assert row.nfe == 2 * steps - 1 and row.seeds == 3
        assert row.trunc_err == pytest.approx(1.0 / steps + 1.0) and row.trunc_err_sd == pytest.approx(1.0)
    models = pd.read_csv(tmp_path / "exp" / "models.csv")
    for pairing, curv in CURV.items():
        row = models[models.pairing == pairing].iloc[0]
        assert row.curvature == pytest.approx(np.mean(curv)) and row.curvature_sd == pytest.approx(
            np.std(curv, ddof=1))
        assert row.seeds == 3  # one row per model, not per cell
    assert models.set_index("pairing").pair_share["aot"] == pytest.approx(np.mean([10 / 100, 10 / 101, 10 / 102]))
    md = (tmp_path / "exp" / "table.md").read_text()
    assert "12 ± 2" in md and "digits-cnn32-test" in md
    assert (tmp_path / "exp" / "table.tex").read_text().startswith("\\begin{tabular}")
    names = {p.name for p in done["figures"]}
    assert {"fd_vs_nfe_digits.png", "trunc_err_vs_nfe_digits.png", "curvature.png", "tangent_strip_digits.png",
            "samples_digits_none.png", "samples_digits_aot.png"} <= names
    for p in done["figures"]:
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content", ['{"a": 1}', "[]", '{"cell_key": "k", "train_key": "t", "config": {}, "metrics": {}}'])
def test_report_refuses_a_stray_json_file_in_one_line(tmp_path, content):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "x.json").write_text(content)
    out = run_cli("report", str(tmp_path))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "not a record" in out.stderr


def test_report_refuses_a_folder_without_records(tmp_path):
    with pytest.raises(UserError, match="no records"):
        report(tmp_path)
    out = run_cli("report", str(tmp_path / "nope"))
    assert out.returncode == 2 and "results folder not found" in out.stderr


def test_guided_cells_name_only_non_default_parameters_and_leave_model_curvature_alone(registry, tmp_path):
    synthetic(registry, tmp_path)
    ws = Workspace(tmp_path)
    for guidance, curvature in (("dg", 9.0), ("dg:w=0.5", 7.0)):  # guidance bends the ODE: not the model's curvature
        for seed in range(3):
            train = tiny_train(registry, dataset="digits", network="unet:channels=8", pairing="aot", seed=seed)
            cell = CellConfig(train=train, sampler=resolve(registry, "sampler", "heun"),
                              guidance=resolve(registry, "guidance", guidance), steps=9, sample_seed=seed)
            write_record(ws.record_path("exp", cell), "exp", cell, {"nfe": 17, "fd": 50.0, "curvature": curvature},
                         {"train_seconds": 100.0 + seed, "pair_seconds": 10.0}, {"device": "cpu"})
    report(tmp_path / "exp")
    cells = pd.read_csv(tmp_path / "exp" / "table.csv")
    assert list(dict.fromkeys(cells.guidance)) == ["none", "dg", "dg:w=0.5"]  # unguided first; defaults not named
    models = pd.read_csv(tmp_path / "exp" / "models.csv")
    assert models.set_index("pairing").curvature["aot"] == pytest.approx(np.mean(CURV["aot"]))


def test_two_objectives_of_one_pairing_never_share_a_line_a_bar_or_a_sample_grid():
    """Figures label a model by its pairing plus whatever model setting varies within its dataset; a setting that
    varies only between datasets (their networks) labels nothing."""
    df = pd.DataFrame({"dataset": ["moons"] * 4 + ["digits"] * 2, "pairing": ["none", "none", "aot", "aot"]
                       + ["none", "aot"], "objective": ["edm", "rectified-flow"] * 2 + ["edm", "edm"],
                       "network": ["mlp"] * 4 + ["unet"] * 2, "conditional": False})
    assert list(_series(df)) == ["none objective=edm", "none objective=rectified-flow", "aot objective=edm",
                                 "aot objective=rectified-flow", "none", "aot"]


def test_a_plugin_set_away_from_its_default_is_named_even_when_every_record_shares_it(registry):
    """A sweep of one variant (knn:k=2 only) must not read as the default knn (k=4); a plugin no longer installed
    names what varies."""
    knn = [{"name": "knn", "k": 2}] * 3
    assert _choice_labels(knn, _defaults_of(registry, "pairing")) == ["knn:k=2"] * 3
    assert _choice_labels([{"name": "knn", "k": 4}], _defaults_of(registry, "pairing")) == ["knn"]
    gone = [{"name": "gone", "w": 1}, {"name": "gone", "w": 2}, {"name": "gone", "w": 2, "x": 0}]
    assert _choice_labels(gone, _defaults_of(registry, "pairing")) == ["gone:w=1", "gone:w=2", "gone:w=2:x=0"]
    assert _choice_labels(knn) == ["knn"] * 3  # no registry: only what varies
