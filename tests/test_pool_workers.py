"""Pairing workers fail in one line: a pairing that cannot be pickled is refused before a worker starts, and a
worker's UserError (a non-bijection, a non-finite cost) reaches the user as its own message, not a traceback."""

from __future__ import annotations

import pytest
import torch

from aotbench.errors import UserError
from aotbench.pool import PoolSource, iter_pools
from conftest import run_cli
from test_plugins import TINY_RUN, make_plugin


class HoldsALambda:
    """A pairing with a lambda attribute: fine in-process, impossible to send to a spawned worker."""

    def __init__(self):
        self.key = lambda i: -i

    def pair(self, data, noise, labels=None):
        return torch.argsort(self.key(torch.arange(data.shape[0])))


class Broken:
    def pair(self, data, noise, labels=None):
        return torch.zeros(data.shape[0], dtype=torch.long)


def source(pairing, name):
    return PoolSource(torch.randn(64, 3), None, 32, 0, 0, pairing, name)


@pytest.mark.parametrize("context", [None, "spawn"])  # forked or spawned: refused the same way, before any worker
def test_an_unpicklable_pairing_is_refused_before_a_worker_starts(context):
    src = source(HoldsALambda(), "holds-lambda")
    with pytest.raises(UserError) as err:
        next(iter_pools(src, 0, 2, workers=1, threads=1, context=context))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    assert msg.startswith("pairing 'holds-lambda' (test_pool_workers.HoldsALambda) cannot be sent to a pairing "
                          "worker process: pickle fails with")
    assert "lambda" in msg and "--pair-workers 0" in msg
    assert [p.k for p in iter_pools(src, 0, 2, workers=0)] == [0, 1]  # in-process it still pairs


def test_a_worker_user_error_reaches_the_user_as_its_own_line():
    with pytest.raises(UserError) as err:
        next(iter_pools(source(Broken(), "broken"), 0, 2, workers=1, threads=1))
    assert str(err.value) == "pairing 'broken' returned a non-bijection (31 duplicated noise indices out of 32)"


def test_the_cli_names_an_unpicklable_third_party_pairing(tmp_path):
    env = make_plugin(tmp_path, extra='''
        class LambdaPairing(ReversePairing):
            """Keeps a lambda."""

            def __init__(self, *, shift: int = 0):
                super().__init__(shift=shift)
                self.key = lambda i: -i


        @hookimpl
        def register_pairings(register):
            register("lam", LambdaPairing)
        ''')
    out = run_cli(*TINY_RUN, "--pairing", "lam", "--pair-workers", "1", "--pair-threads", "2",
                  "--results", str(tmp_path / "res"), env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]  # after the run's banner line
    assert line.startswith("aotbench: error: pairing 'lam' (thirdparty_pairing.LambdaPairing) cannot be sent")
    assert "--pair-workers 0" in line


SPIKY = '''
    from aotbench.data import Splits


    class Spiky:
        """2-D points in [-1, 1] but one coordinate of 1e20 (finite in float32; its square is not)."""

        network = "mlp:width=32:depth=1"

        def __init__(self, *, n: int = 128):
            self.n = n

        def load(self):
            g = torch.Generator().manual_seed(0)
            x = torch.rand(self.n + 32, 2, generator=g) * 2 - 1
            x[5, 1] = 1e20
            return Splits("spiky", x[: self.n], x[self.n:])


    @hookimpl
    def register_datasets(register):
        register("spiky", Spiky)
    '''


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_dataset_whose_cost_overflows_fails_in_one_line_not_a_crash(tmp_path, workers):
    # the user's report: one pixel of 1e20 with --pairing aot killed the process inside lapjv (exit 134)
    env = make_plugin(tmp_path, extra=SPIKY)
    out = run_cli("run", "--dataset", "spiky", "--pairing", "aot:solver=lapjv", "--sampler", "euler", "--steps",
                  "3", "--train-steps", "8", "--batch", "32", "--pool", "128", "--n-samples", "20", "--metrics",
                  "nfe", "--quiet", "--pair-workers", workers, "--results", str(tmp_path / "res"), env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]  # after the run's banner line
    assert line.startswith("aotbench: error: pairing 'aot': the cost matrix overflows float32 (largest |value|: "
                           "1e+20 in the data")


def test_several_workers_pair_consecutive_pools_exactly_as_in_line(registry):
    pairing = registry.get("pairing", "aot").build()
    src = PoolSource(torch.randn(300, 4), None, 64, 5, 0, pairing, "aot")
    inline = list(iter_pools(src, 1, 8, workers=0))
    parallel = list(iter_pools(src, 1, 8, workers=2, threads=1))
    assert [p.k for p in parallel] == list(range(1, 8))
    assert all(torch.equal(a.perm, b.perm) and torch.equal(a.noise, b.noise) and torch.equal(a.index, b.index)
               for a, b in zip(inline, parallel))


def test_pools_whose_pairing_workers_would_not_fit_in_memory_are_refused_before_training(registry, tmp_path,
                                                                                         monkeypatch):
    import aotbench.pool as pool_module
    from aotbench.pool import check_memory
    from aotbench.train import TrainOptions, train_model
    from conftest import tiny_train

    src = PoolSource(torch.randn(300, 4), None, 1024, 5, 0, registry.get("pairing", "aot").build(), "aot")
    check_memory(src, 2, available=2 * 12 * 1024**2)  # exactly fits
    with pytest.raises(UserError, match=r"pools of 1024 with 3 pairing process\(es\) needs .* use fewer"):
        check_memory(src, 3, available=2 * 12 * 1024**2)
    monkeypatch.setattr(pool_module, "available_memory", lambda: 12 * 256**2 - 1)
    cfg = tiny_train(registry, pool=256, train_steps=8)
    with pytest.raises(UserError, match="pool"):
        train_model(registry, cfg, tmp_path / "m.pt", TrainOptions(progress=False, pair_workers=0))
    assert not (tmp_path / "m.pt").exists()


def test_bench_training_measures_each_pool_against_the_first_pairing(registry):
    from aotbench.bench import bench_training

    df = bench_training(registry, {"dataset": "moons", "network": "mlp:width=16:depth=1", "batch": 64,
                                   "pool": [128, 256]}, ["none", "aot"], 4, 1, 1, 0, progress=lambda m: None)
    assert list(zip(df.pool, df.pairing)) == [(128, "none"), (128, "aot"), (256, "none"), (256, "aot")]
    assert (df[df.pairing == "none"].throughput_vs_first == 1).all() and (df.pair_seconds[df.pairing == "aot"] > 0).all()
