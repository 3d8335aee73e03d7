"""DDP with gloo on the CPU: every rank pairs its own pool, and two processes train the weights that the
single-process simulation of ``ranks=2`` trains (allclose; the gradient all-reduce rounds differently)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aotbench.plugins import Component
from aotbench.pool import PoolSource
from aotbench.datasets import load_splits
from aotbench.train import Interrupted, TrainOptions, coupling_diagnostics, train_model
from conftest import REPO, tiny_train, with_components

SMALL = dict(network="mlp:width=32:depth=1", train_steps=60, batch=64, pool=64, ranks=2)  # per-rank batch 32, 2 per pool


class RecordingAOT:
    """The exact assignment, recording every pool it pairs (to check which data each rank paired)."""

    seen: list = []

    def __init__(self):
        from aotbench_plugins.pairings.aot import AOT
        self.inner = AOT()

    def pair(self, data, noise, labels=None):
        RecordingAOT.seen.append(data.clone())
        return self.inner.pair(data, noise, labels)


def _registry():
    from aotbench.plugins import get_registry
    return with_components(get_registry(), Component("pairing", "recording-aot", RecordingAOT, "test", "tests"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str, interrupt_at: int | None = None, extra: dict | None = None) -> None:
    """One DDP rank (spawned): join the gloo group as torchrun would, train, save the pools it paired. With
    ``interrupt_at``, rank 1 alone receives SIGUSR2 after that step; ``extra`` overrides the config."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from aotbench import distributed

    world = distributed.init("cpu", timeout_s=60)  # ranks out of step fail in a minute instead of hanging
    assert world.distributed and world.backend == "gloo" and world.rank == rank
    registry = _registry()
    cfg = tiny_train(registry, **{"pairing": "recording-aot", **SMALL, **(extra or {})})
    def on_step(step, loss):
        if rank == 1 and step == interrupt_at:
            os.kill(os.getpid(), signal.SIGUSR2)

    try:
        train_model(registry, cfg, os.path.join(out, "ddp.pt"),
                    TrainOptions(progress=False, pair_workers=0, world_rank=rank, world_size=2,
                                 handle_signals=True, on_step=on_step))
    except Interrupted as err:
        Path(out, f"interrupted-rank{rank}").write_text(str(err))
    finally:
        distributed.shutdown(world)
    torch.save(RecordingAOT.seen, os.path.join(out, f"pools-rank{rank}.pt"))


@pytest.fixture
def one_thread():
    """Train with one torch thread, as the DDP ranks do (on a busy 2-core machine two threads are slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def _spawn(out: Path, interrupt_at: int | None = None, extra: dict | None = None) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(_free_port(), str(out), interrupt_at, extra), nprocs=2, join=True)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """An uninterrupted two-process DDP run (gloo); its folder."""
    out = tmp_path_factory.mktemp("ddp")
    _spawn(out)
    return out


def test_ddp_ranks_pair_their_own_pools_and_match_the_simulation(ddp_run, tmp_path, one_thread):
    ddp = torch.load(ddp_run / "ddp.pt", weights_only=True)
    registry = _registry()
    cfg = tiny_train(registry, pairing="recording-aot", **SMALL)
    RecordingAOT.seen = []
    sim = train_model(registry, cfg, tmp_path / "sim.pt", TrainOptions(progress=False, pair_workers=0))
    assert ddp["done"] and ddp["step"] == sim["step"] == 60
    assert _close(ddp["net"], sim["net"]) and _close(ddp["ema"], sim["ema"])
    assert ddp["history"][-1][1] == pytest.approx(sim["history"][-1][1], rel=1e-5)  # the loss is the ranks' mean

    n_pools = 60 // cfg.steps_per_pool
    splits = load_splits(registry, cfg.dataset)
    pools = {r: torch.load(ddp_run / f"pools-rank{r}.pt", weights_only=True) for r in (0, 1)}
    for r in (0, 1):
        assert len(pools[r]) == n_pools  # one pairing per pool, on each rank
        src = PoolSource(splits.train, None, cfg.pool, cfg.seed, r, None, "recording-aot")
        for k, data in enumerate(pools[r]):
            assert torch.equal(data, splits.train[src.indices(k)])  # rank r paired its own pool k
            assert torch.equal(data, RecordingAOT.seen[2 * k + r])  # ... which the simulation pairs for rank r
    assert not torch.equal(pools[0][0], pools[1][0])


def test_a_signal_on_one_rank_stops_all_ranks_at_one_step_and_resuming_is_exact(ddp_run, tmp_path):
    _spawn(tmp_path, interrupt_at=30)  # rank 1 alone is signalled after step 30
    messages = [(tmp_path / f"interrupted-rank{r}").read_text() for r in (0, 1)]
    assert all("training stopped by signal 12 at step 31/60" in m for m in messages), messages
    assert torch.load(tmp_path / "ddp.pt", weights_only=True)["step"] == 31
    _spawn(tmp_path)  # resume
    resumed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    straight = torch.load(ddp_run / "ddp.pt", weights_only=True)
    assert resumed["done"] and all(torch.equal(resumed[p][k], straight[p][k]) for p in ("net", "ema")
                                   for k in straight[p])


@pytest.mark.parametrize("extra", [{"pairing": "aot", "global_pool": True}, {"pairing": "loom"}],
                         ids=["global-pool", "loom"])
def test_ddp_global_pools_and_stateful_pairings_match_the_simulation(extra, tmp_path, one_thread):
    """Under DDP each rank draws every rank's pool and takes its part of one assignment, and a stateful pairing's
    per-rank states and the coupling statistics are gathered into the checkpoint: the same as the simulation."""
    _spawn(tmp_path, extra=extra)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    registry = _registry()
    cfg = tiny_train(registry, **{**SMALL, **extra})
    sim = train_model(registry, cfg, tmp_path / "sim.pt", TrainOptions(progress=False, pair_workers=0))
    assert _close(ddp["net"], sim["net"]) and _close(ddp["ema"], sim["ema"])
    assert coupling_diagnostics(registry, cfg, ddp) == coupling_diagnostics(registry, cfg, sim)
    if "pairing_state" in sim:
        assert sorted(ddp["pairing_state"]) == [0, 1]
        assert all(torch.equal(ddp["pairing_state"][r]["seeds"], sim["pairing_state"][r]["seeds"]) for r in (0, 1))


def test_torchrun_train_command_is_ddp_and_matches_the_simulation(registry, tmp_path, one_thread):
    cfg = tiny_train(registry, pairing="aot", **SMALL)
    spec = tmp_path / "cfg.json"
    spec.write_text(json.dumps({"dataset": "moons", "network": SMALL["network"], "pairing": "aot", "seed": 0,
                                "steps": 60, "batch": 64, "pool": 64, "ranks": 2}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "aotbench", "train", "--config", str(spec), "--results", str(tmp_path / "r"),
                          "--device", "cpu", "--quiet", "--ckpt-every", "20"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"model {cfg.key}: step 60/60, DDP over 2 processes (gloo)" in out.stderr
    ddp = torch.load(tmp_path / "r" / "models" / f"{cfg.key}.pt", weights_only=True)
    sim = train_model(registry, cfg, tmp_path / "sim.pt", TrainOptions(progress=False, pair_workers=0))
    assert _close(ddp["net"], sim["net"]) and _close(ddp["ema"], sim["ema"])


def test_train_command_refuses_bad_configs_in_one_line(tmp_path, capsys):
    from aotbench.cli import main

    spec = tmp_path / "cfg.json"
    spec.write_text(json.dumps({"dataset": "moons", "network": "mlp:width=32:depth=1", "pairing": "aot",
                                "steps": 5, "batch": 32, "pool": 32, "colour": "red"}))
    for config, expected in [(str(spec), "unknown training field colour"),
                             ("0123456789abcdef", "no model"), ("nope.json", "neither a JSON file nor")]:
        assert main(["train", "--config", config, "--results", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r").exists()
