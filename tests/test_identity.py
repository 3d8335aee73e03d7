"""Every number is a pure function of its config and its data: keys, caches, per-sample randomness, labels, tables.

Each test here reproduces a way the earlier code gave a wrong number with no warning.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aotbench import datasets
from aotbench.config import CellConfig, resolve
from aotbench.evaluate import EvalContext, class_labels
from aotbench.grid import expand
from aotbench.plugins import Component
from aotbench.records import read_records
from aotbench.report import report
from aotbench.runner import RunOptions, run_cells
from aotbench.tables import display_table, records_frame, summarize
from aotbench.train import TrainOptions, load_ema, train_model
from conftest import tiny_train, with_components

MOONS = {"dataset": "moons", "network": "mlp:width=32:depth=1", "train_steps": 30, "batch": 32, "pool": 64,
         "n_samples": 100, "pairing": "aot", "sampler": "euler", "steps": 4, "metrics": "nfe,fd,trunc_err"}


def opts(**kw):
    return RunOptions(progress=False, train=TrainOptions(pair_workers=0), **kw)


@pytest.fixture(scope="module")
def moons_model(registry, tmp_path_factory):
    cfg = tiny_train(registry, train_steps=40, conditional=True)
    ckpt = train_model(registry, cfg, tmp_path_factory.mktemp("m") / "m.pt", TrainOptions(progress=False,
                                                                                         pair_workers=0))
    return cfg, load_ema(registry, cfg, ckpt)


# -- keys -----------------------------------------------------------------------------------------------------------

def test_metrics_are_not_part_of_a_cells_key(registry):
    a = expand(registry, {**MOONS, "metrics": "nfe"})[0]
    b = expand(registry, {**MOONS, "metrics": "nfe,fd,w2"})[0]
    assert a.key == b.key and a.train.key == b.train.key


def test_every_sampling_field_changes_the_cell_key_and_none_changes_the_model_key(registry):
    base = expand(registry, MOONS)[0]
    changes = {"steps": 5, "rho": 9.0, "sigma_min": 0.003, "sigma_max": 70.0, "n_samples": 101, "sample_seed": 1,
               "label_sampling": "uniform", "sampler": resolve(registry, "sampler", "heun"),
               "guidance": resolve(registry, "guidance", "none")}
    keys = {base.key}
    for field, value in changes.items():
        cell = base.with_(**{field: value})
        if cell == base:
            continue
        assert cell.train.key == base.train.key
        keys.add(cell.key)
    assert len(keys) == len(changes)  # guidance "none" is the base's own value: all others are new keys


def test_changed_data_under_the_same_name_is_another_model(registry, tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (80, 4, 4, 1), dtype=np.uint8))
    spec = {**MOONS, "dataset": f"npz:path={path}", "network": "mlp:width=16:depth=1", "train_steps": 10,
            "batch": 16, "pool": 16, "n_samples": 20, "metrics": "nfe,w2"}
    first, _ = run_cells(registry, expand(registry, spec), tmp_path / "r", "e", opts())
    np.savez(path, x=rng.integers(0, 64, (80, 4, 4, 1), dtype=np.uint8))  # new content, same name and path
    datasets.clear_cache()
    cells = expand(registry, spec)
    second, todo = run_cells(registry, cells, tmp_path / "r", "e", opts())
    assert todo == 1, "the changed data must not be served the old record"
    assert first[0]["train_key"] != second[0]["train_key"]
    assert first[0]["config"]["train"]["data_fingerprint"] != second[0]["config"]["train"]["data_fingerprint"]
    assert first[0]["metrics"]["w2"] != second[0]["metrics"]["w2"]


def test_a_config_made_for_other_data_is_refused_before_training(registry, tmp_path):
    from aotbench.errors import UserError

    cfg = tiny_train(registry)
    stale = cfg.__class__(**{**cfg.__dict__, "data_fingerprint": "0" * 16})
    with pytest.raises(UserError, match="has changed since"):
        train_model(registry, stale, tmp_path / "m.pt", TrainOptions(progress=False, pair_workers=0))


# -- per-sample randomness ------------------------------------------------------------------------------------------

SAMPLERS = ["euler", "heun", "dpmpp-2m", "edm-stochastic:s_churn=40", "rk45", "ipndm", "deis", "dpmpp-3m", "unipc"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_and_nfe_do_not_depend_on_the_evaluation_batch(registry, moons_model, sampler):
    cfg, model = moons_model
    cell = CellConfig(train=cfg, sampler=resolve(registry, "sampler", sampler),
                      guidance=resolve(registry, "guidance", "none"), steps=8, n_samples=300)
    splits = datasets.load_splits(registry, cfg.dataset)
    runs = []
    for batch in (7, 64, 300):
        ctx = EvalContext(registry, cell, splits, model, batch=batch)
        runs.append((ctx.samples, ctx.nfe))
    for samples, nfe in runs[1:]:
        if sampler == "rk45":  # accept/reject flips on the network's batch-size-dependent float rounding
            assert nfe == pytest.approx(runs[0][1], rel=0.01)
            assert (samples - runs[0][0]).abs().mean() < 1e-3  # a flipped step moves a sample within rk45's tolerance
        else:
            assert nfe == runs[0][1]
            torch.testing.assert_close(samples, runs[0][0], rtol=1e-5, atol=1e-5)


def test_rk45_steps_each_sample_on_its_own(registry):
    """With an exact, row-wise denoiser the adaptive solver's paths and NFE are bit-identical in any batch."""
    from analytic import GaussianDenoiser

    from aotbench.data import Splits

    splits = Splits("g", torch.zeros(4, 3), torch.zeros(4, 3))
    splits.fingerprint = "g"
    cell = CellConfig(train=tiny_train(registry), sampler=resolve(registry, "sampler", "rk45"),
                      guidance=resolve(registry, "guidance", "none"), steps=8, n_samples=64)
    model = GaussianDenoiser(0.3, 0.7)
    runs = [(ctx.samples, ctx.nfe) for ctx in (EvalContext(registry, cell, splits, model, batch=b) for b in (5, 64))]
    assert runs[0][1] == runs[1][1]
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-6, atol=1e-6)


def test_a_samples_noise_and_label_depend_only_on_its_index(registry, moons_model):
    cfg, model = moons_model
    splits = datasets.load_splits(registry, cfg.dataset)
    small = CellConfig(train=cfg, sampler=resolve(registry, "sampler", "euler"),
                       guidance=resolve(registry, "guidance", "none"), steps=4, n_samples=50)
    big = small.with_(n_samples=200)
    a, b = EvalContext(registry, small, splits, model), EvalContext(registry, big, splits, model)
    assert torch.equal(a.noise, b.noise[:50])
    assert torch.equal(class_labels(small, splits, model), class_labels(big, splits, model)[:50])


# -- labels ---------------------------------------------------------------------------------------------------------

def _two_digit_classes(path, labels):
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, [0, 1])
    x = (d.images[keep] / 16 * 255).astype(np.uint8)
    y = np.where(d.target[keep] == 0, labels[0], labels[1])
    np.savez(path, x=x, y=y)


def test_labels_are_mapped_from_the_values_the_data_has(registry, tmp_path):
    _two_digit_classes(tmp_path / "a.npz", (0, 5))
    _two_digit_classes(tmp_path / "b.npz", (0, 1))
    a = datasets.load_splits(registry, resolve(registry, "dataset", f"npz:path={tmp_path / 'a.npz'}"))
    b = datasets.load_splits(registry, resolve(registry, "dataset", f"npz:path={tmp_path / 'b.npz'}"))
    assert a.num_classes == b.num_classes == 2 and a.classes == (0, 5) and b.classes == (0, 1)
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.train, b.train)
    assert a.fingerprint != b.fingerprint  # the label values are part of the data


def test_conditional_results_do_not_depend_on_how_classes_are_numbered(registry, tmp_path):
    _two_digit_classes(tmp_path / "a.npz", (0, 5))
    _two_digit_classes(tmp_path / "b.npz", (0, 1))
    spec = {"network": "unet:channels=8", "train_steps": 20, "batch": 32, "pool": 64, "n_samples": 64,
            "conditional": True, "pairing": "aot", "sampler": "heun", "steps": 3, "metrics": "nfe,fd"}
    recs = [run_cells(registry, expand(registry, {**spec, "dataset": f"npz:path={tmp_path / n}"}), tmp_path / "r",
                      "e", opts())[0][0] for n in ("a.npz", "b.npz")]
    assert recs[0]["metrics"]["fd"] == pytest.approx(recs[1]["metrics"]["fd"], rel=1e-6)
    assert recs[0]["data"]["classes"] == [0, 5] and recs[1]["data"]["classes"] == [0, 1]


def test_a_label_is_given_as_the_data_has_it(registry, tmp_path):
    from aotbench.errors import UserError

    _two_digit_classes(tmp_path / "a.npz", (0, 5))
    spec = {"dataset": f"npz:path={tmp_path / 'a.npz'}", "network": "unet:channels=8", "conditional": True,
            "train_steps": 5, "batch": 32, "pool": 32}
    cell = expand(registry, {**spec, "label": 5})[0]
    splits = datasets.load_splits(registry, cell.train.dataset)
    model = type("M", (), {"num_classes": 2})()
    assert set(class_labels(cell, splits, model).tolist()) == {1}
    with pytest.raises(UserError, match="its labels: 0, 5"):
        expand(registry, {**spec, "label": 1})


def test_sampling_labels_follow_the_train_split_proportions_or_uniform(registry):
    splits = datasets.load_splits(registry, resolve(registry, "dataset", "digits"))
    counts = torch.zeros(10)
    counts[:] = 1.0
    skewed = type("S", (), {"classes": tuple(range(10)), "train_labels": torch.cat([torch.zeros(900, dtype=torch.long),
                                                                                    torch.arange(10).repeat(10)])})()
    cell = expand(registry, {"dataset": "digits", "conditional": True, "train_steps": 1, "n_samples": 4000})[0]
    model = type("M", (), {"num_classes": 10})()
    drawn = torch.bincount(class_labels(cell, skewed, model), minlength=10).double() / 4000
    want = torch.bincount(skewed.train_labels, minlength=10).double() / len(skewed.train_labels)
    assert (drawn - want).abs().max() < 0.03
    uniform = torch.bincount(class_labels(cell.with_(label_sampling="uniform"), skewed, model), minlength=10) / 4000
    assert (uniform - 0.1).abs().max() < 0.03
    assert splits.num_classes == 10


# -- the reference solve is keyed by the label -----------------------------------------------------------------------

def test_each_label_gets_its_own_reference_trajectory(registry, tmp_path):
    spec = {**MOONS, "conditional": True, "label": "0,1", "sampler": "heun", "steps": 64, "rho": 7,
            "metrics": "nfe,curvature,trunc_err", "n_samples": 50}
    records, _ = run_cells(registry, expand(registry, spec), tmp_path, "e", opts())
    # the cells solve exactly the reference ODE (Heun, 64 steps, rho 7): zero truncation error for every label
    assert [r["metrics"]["trunc_err"] for r in records] == [0.0, 0.0]
    assert records[0]["metrics"]["curvature"] != records[1]["metrics"]["curvature"]


# -- FD honesty and W2 ----------------------------------------------------------------------------------------------

def test_fd_with_fewer_samples_than_feature_dimensions_is_flagged(registry, tmp_path, capsys):
    spec = {"dataset": "digits", "network": "unet:channels=8", "train_steps": 5, "batch": 32, "pool": 32,
            "n_samples": 20, "pairing": "none", "sampler": "euler", "steps": 2, "metrics": "fd"}
    records, _ = run_cells(registry, expand(registry, spec), tmp_path, "e", opts(), log=print)
    m = records[0]["metrics"]
    assert m["fd_n"] == 20 and m["fd_dim"] == 32 and m["fd_rank_deficient"] is True
    assert 0.5 < m["fd_extractor_accuracy"] <= 1  # the digits CNN, measured on the held-out split
    assert any("rank-deficient" in w for w in records[0]["warnings"])
    assert "rank-deficient" in capsys.readouterr().out
    enough = run_cells(registry, expand(registry, {**spec, "n_samples": 40}), tmp_path, "e", opts())[0][0]
    assert enough["metrics"]["fd_rank_deficient"] is False and not enough["warnings"]


def test_w2_compares_with_a_random_subset_of_the_heldout_split(registry, tmp_path):
    # mnist5k-like ordering: a held-out split sorted by class; its first rows would all be one class
    from aotbench_plugins.metrics.w2 import W2

    class Ctx:
        cell = type("C", (), {"sample_seed": 0})()
        samples = torch.cat([torch.zeros(50, 2), torch.ones(50, 2)])
        splits = type("S", (), {"heldout": torch.cat([torch.zeros(500, 2), torch.ones(500, 2)])})()

    out = W2(max_n=100).compute(Ctx())
    assert out["w2"] < 0.2  # the first 100 held-out rows (all zeros) would give about 0.71
    assert out["w2_n"] == 100 and out["w2_ref_n"] == 100


# -- metrics are outputs -------------------------------------------------------------------------------------------

class Sharpness:
    """A third party's metric: mean absolute sample value."""

    def compute(self, ctx):
        return {"sharpness": float(ctx.samples.abs().mean())}


def test_a_metric_plugin_added_later_extends_the_existing_records(registry, tmp_path):
    cells = expand(registry, {**MOONS, "steps": "3,4", "metrics": None})
    before, todo = run_cells(registry, cells, tmp_path, "e", opts())
    assert todo == 2
    plugged = with_components(registry, Component("metric", "sharpness", Sharpness, "thirdparty", "thirdparty", default=True))
    cells2 = expand(plugged, {**MOONS, "steps": "3,4", "metrics": None})
    assert [c.key for c in cells2] == [c.key for c in cells]
    after, todo = run_cells(plugged, cells2, tmp_path, "e", opts())
    assert todo == 2 and len(read_records(tmp_path / "e")) == 2
    for b, a in zip(before, after):
        assert a["cell_key"] == b["cell_key"] and "sharpness" in a["metrics"]
        assert {k: a["metrics"][k] for k in b["metrics"]} == b["metrics"]
    again, todo = run_cells(plugged, cells2, tmp_path, "e", opts())
    assert todo == 0
    df = records_frame(read_records(tmp_path / "e"))
    assert "sharpness" in summarize(df).columns and len(summarize(df)) == 2
    done = report(tmp_path / "e")
    assert "sharpness" in done["tables"]["cells"].columns


# -- tables never merge different configurations --------------------------------------------------------------------

def test_report_keeps_a_pool_ablation_apart(registry, tmp_path):
    spec = {**MOONS, "pool": "64,128", "seeds": "0,1", "metrics": "nfe,fd"}
    run_cells(registry, expand(registry, spec), tmp_path, "e", opts())
    df = records_frame(read_records(tmp_path / "e"))
    table = display_table(df)
    assert sorted(table["pool"].tolist()) == [64, 128] and table["seeds"].tolist() == [2, 2]
    cells = report(tmp_path / "e")["tables"]["cells"]
    assert sorted(cells["pool"].tolist()) == [64, 128] and cells["seeds"].tolist() == [2, 2]


@pytest.mark.parametrize("axis,values", [("lr", "0.001,0.002"), ("train_steps", "30,31"),
                                         ("network", "mlp:width=32:depth=1,mlp:width=16:depth=1"),
                                         ("ema_halflife_img", "500,1000"), ("sigma_max", "80,60")])
def test_no_axis_is_pooled_as_if_it_were_a_seed(registry, axis, values):
    cells = expand(registry, {**MOONS, axis: values})
    recs = [{"cell_key": c.key, "train_key": c.train.key, "config": c.to_dict(), "metrics": {"fd": float(i)}}
            for i, c in enumerate(cells)]
    s = summarize(records_frame(recs))
    assert len(s) == 2 and s["seeds"].tolist() == [1, 1]


def test_values_of_different_extractors_are_never_pooled(registry):
    cell = expand(registry, MOONS)[0]
    recs = [{"cell_key": f"k{i}", "train_key": "t", "config": cell.to_dict(),
             "metrics": {"fd": float(i), "fd_extractor": name}} for i, name in enumerate(["a", "b"])]
    s = summarize(records_frame(recs))
    assert sorted(s["fd_extractor"]) == ["a", "b"] and s["seeds"].tolist() == [1, 1]


# -- what any dataset plugin hands the engine is checked --------------------------------------------------------------

class NaNDigits:
    """A third party's dataset with one bad pixel."""

    def __init__(self, *, value: str = "nan"):
        self.value = float(value)

    def load(self):
        from aotbench.data import Splits

        x = torch.zeros(20, 1, 4, 4)
        x[3, 0, 1, 1] = self.value
        return Splits("nan-digits", x[:16], x[16:])


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_data_from_any_plugin_is_refused_in_one_line(registry, value):
    from aotbench.errors import UserError

    plugged = with_components(registry, Component("dataset", "nan-digits", NaNDigits, "thirdparty", "thirdparty"))
    with pytest.raises(UserError, match=r"'nan-digits' \(from thirdparty\): train holds 1 non-finite value"):
        datasets.load_splits(plugged, resolve(plugged, "dataset", f"nan-digits:value={value}"))


def test_one_metric_asked_for_twice_is_refused_instead_of_one_value_silently_replacing_the_other(registry):
    from aotbench.errors import UserError

    with pytest.raises(UserError, match="metric w2 asked for twice"):
        expand(registry, {**MOONS, "metrics": "nfe,w2:max_n=100,w2:max_n=200"})
