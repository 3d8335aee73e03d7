"""The paper-scale recipes parse, expand into cells, and match the paper's numbers one to one."""

from __future__ import annotations

from pathlib import Path

import pytest

from aotbench.errors import UserError
from aotbench.cli import main
from aotbench.sweep import load_spec
from aotbench.sweep.orchestrate import gather_plan, launchers_of
from conftest import REPO
from test_datasets_disk import write_cifar

RECIPES = sorted((REPO / "recipes").glob("cifar10-*.toml"))
# the paper's training (pool per GPU, batch over 4 GPUs) and the low-NFE sampling settings it reports
PAPER = {"cifar10-uncond-aot": dict(pairing="aot", pool=512, rho_steps={(90, 14)}, conditional=False),
         "cifar10-uncond-none": dict(pairing="none", pool=512, rho_steps={(7, 18)}, conditional=False),
         "cifar10-cond-aot": dict(pairing="aot", pool=2048, rho_steps={(72, 15)}, conditional=True),
         "cifar10-cond-none": dict(pairing="none", pool=2048, rho_steps={(7, 18)}, conditional=True)}


def test_there_is_a_recipe_for_each_paper_setting_and_its_baseline():
    assert [p.stem for p in RECIPES] == sorted(PAPER)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_matches_the_paper(path, registry, tmp_path, monkeypatch, capsys):
    want = PAPER[path.stem]
    spec = load_spec(path, results=str(tmp_path))
    for grid in spec.grids:
        assert grid["pairing"] == want["pairing"] and grid["pool"] == want["pool"]
        assert grid["batch"] == 256 and grid["ranks"] == 4 and grid["conditional"] == want["conditional"]
        assert grid["train_mimg"] == 200 and "train_steps" not in grid  # EDM's duration, in its own unit
        assert grid["augment_p"] == 0.12 and grid["network"].startswith("ncsnpp")  # EDM-AOT: --arch ncsnpp
        assert "resize=edm" in " ".join(grid["metrics"])  # FID as EDM's fid.py computes it
        assert grid["n_samples"] == 50000 and "seed_ranges=3" in " ".join(grid["metrics"])
    assert want["rho_steps"] <= {(g["rho"], g["steps"]) for g in spec.grids}
    assert spec.train.gpus_per_node == 4 and spec.train.ddp
    # the cells a cluster would run: CIFAR-10 from a tiny local copy in the real format
    write_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("AOTBENCH_CIFAR10", str(tmp_path / "cifar-10-batches-py"))
    for launcher in ("local", "debug"):  # this machine has no GPU: refused before anything runs
        assert main(["sweep", str(path), "--launcher", launcher, "--results", str(tmp_path / "r")]) == 2
        assert "4 GPU(s) per job requested" in capsys.readouterr().err
        assert not (tmp_path / "r" / spec.experiment / "jobs" / "sweep.json").exists()
    launchers = launchers_of(registry)  # planning contacts no cluster: nothing is submitted yet
    plan, _ = gather_plan(registry, spec, "slurm", launchers["slurm"], launchers)
    nfe = {(c.rho, c.steps): 2 * c.steps - 1 for c in plan.cells}
    for rho_steps in want["rho_steps"]:
        assert nfe[rho_steps] == {(90, 14): 27, (72, 15): 29, (7, 18): 35}[rho_steps]
    assert len({c.train.key for c in plan.cells}) == 1  # one model serves every sampling setting
    t = plan.cells[0].train
    assert t.train_steps == 781250 and t.rank_batch == 64 and t.steps_per_pool == want["pool"] // 64


def test_a_recipe_key_that_does_not_exist_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(RECIPES[0]).read_text().replace("[resources.train]", "[resources.train]\ngpu_count = 4"))
    with pytest.raises(UserError, match="unknown key 'gpu_count'"):
        load_spec(bad)
