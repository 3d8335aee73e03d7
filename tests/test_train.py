"""The training engine: it learns, it is deterministic, it resumes exactly, and it refuses bad files."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from aotbench.datasets import load_splits
from aotbench.errors import UserError
from aotbench.plugins import Component
from aotbench.train import TrainOptions, TrainState, build_model, read_model_checkpoint, train_model
from conftest import run_cli, state_equal, tiny_train, with_components


def opts(**kw):
    return TrainOptions(progress=False, pair_workers=0, **kw)


def test_a_few_hundred_steps_lower_the_loss(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=300, pairing="aot")
    ckpt = train_model(registry, cfg, tmp_path / "m.pt", opts(log_every=25))
    losses = [loss for _, loss in ckpt["history"]]
    assert losses[-1] < 0.7 * losses[0]
    assert ckpt["done"] and ckpt["step"] == 300


def test_same_seed_gives_identical_weights_and_another_seed_does_not(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=40)
    a = train_model(registry, cfg, tmp_path / "a.pt", opts())
    b = train_model(registry, cfg, tmp_path / "b.pt", TrainOptions(progress=False, pair_workers=1))
    c = train_model(registry, tiny_train(registry, train_steps=40, seed=1), tmp_path / "c.pt", opts())
    assert state_equal(a["ema"], b["ema"]) and state_equal(a["net"], b["net"])
    assert not state_equal(a["net"], c["net"])


def test_the_training_state_round_trips_through_its_checkpoint(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=20)
    ckpt = train_model(registry, cfg, tmp_path / "m.pt", opts(log_every=5))
    state = TrainState.fresh(cfg, build_model(registry, cfg, load_splits(registry, cfg.dataset)))
    state.load(read_model_checkpoint(tmp_path / "m.pt", cfg))
    state.save(tmp_path / "again.pt")
    again = read_model_checkpoint(tmp_path / "again.pt", cfg)
    assert list(again) == ["format", "train_key", "config", "step", "done", "net", "ema", "opt", "timing", "history",
                           "coupling"]
    assert again["step"] == 20 and again["done"] and again["timing"] == ckpt["timing"]
    assert again["coupling"][0]["paired"] == ckpt["coupling"][0]["paired"] > 0
    assert again["history"] == ckpt["history"] and [s for s, _ in again["history"]] == [5, 10, 15, 20]
    assert state_equal(again["net"], ckpt["net"]) and state_equal(again["ema"], ckpt["ema"])
    assert again["opt"]["param_groups"] == ckpt["opt"]["param_groups"]
    assert all(state_equal(again["opt"]["state"][i], ckpt["opt"]["state"][i]) for i in ckpt["opt"]["state"])


class _Kill(Exception):
    pass


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=90, batch=32, pool=96)  # 3 steps per pool; stop mid-pool

    def die(step, loss):
        if step == 47:  # the last checkpoint is step 40, which is mid-pool (40 % 3 == 1)
            raise _Kill

    with pytest.raises(_Kill):
        train_model(registry, cfg, tmp_path / "r.pt", opts(ckpt_every=20, on_step=die))
    assert read_model_checkpoint(tmp_path / "r.pt", cfg)["step"] == 40
    resumed = train_model(registry, cfg, tmp_path / "r.pt", opts(ckpt_every=20))
    straight = train_model(registry, cfg, tmp_path / "s.pt", opts(ckpt_every=1000))
    assert state_equal(resumed["net"], straight["net"]) and state_equal(resumed["ema"], straight["ema"])
    assert state_equal(resumed["opt"]["state"][0], straight["opt"]["state"][0])


def test_sigkill_mid_training_then_rerun_resumes_to_the_same_record(tmp_path):
    args = ["run", "--dataset", "moons", "--network", "mlp:width=64:depth=2", "--pairing", "aot", "--sampler",
            "euler", "--steps", "4", "--train-steps", "1200", "--batch", "64", "--pool", "128", "--n-samples",
            "200", "--ckpt-every", "50", "--metrics", "nfe,w2", "--quiet", "--device", "cpu"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "aotbench", *args, "--results", str(tmp_path / "a")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    models = tmp_path / "a" / "models"
    deadline = time.time() + 120
    while time.time() < deadline and not (models.is_dir() and any(models.glob("*.pt"))):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = next(models.glob("*.pt"))
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < 1200
    # Whether the kill landed mid-write is timing luck, so plant the leftover deterministically: a stray temporary
    # named exactly as storage.atomic_write_bytes names its own (".{name}.XXXXXXXX.tmp" beside the checkpoint),
    # holding garbage. The rerun must never read it: it still succeeds and gives the uninterrupted weights.
    fd, stray = tempfile.mkstemp(dir=models, prefix=f".{ckpt.name}.", suffix=".tmp")
    garbage = b"\x00not a checkpoint\xff" * 64
    with os.fdopen(fd, "wb") as f:
        f.write(garbage)
    # a newer mtime than the checkpoint, so "the newest file wins" recovery would pick the garbage
    os.utime(stray, (time.time() + 60, time.time() + 60))
    again = subprocess.run([sys.executable, "-m", "aotbench", *args, "--results", str(tmp_path / "a")],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    if os.path.exists(stray):  # deleting stale temporaries is allowed; writing into one is not
        with open(stray, "rb") as f:
            assert f.read() == garbage
    straight = subprocess.run([sys.executable, "-m", "aotbench", *args, "--results", str(tmp_path / "b")],
                              env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    wa = torch.load(ckpt, weights_only=True)
    wb = torch.load(next((tmp_path / "b" / "models").glob("*.pt")), weights_only=True)
    assert state_equal(wa["ema"], wb["ema"])
    ra = next((tmp_path / "a" / "run" / "cells").glob("*.json")).read_text()
    rb = next((tmp_path / "b" / "run" / "cells").glob("*.json")).read_text()
    import json
    assert json.loads(ra)["metrics"] == json.loads(rb)["metrics"]


class NaNNet(torch.nn.Module):
    """A network whose output is NaN: training must stop with a clear message."""

    def __init__(self, shape, num_classes=0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        return x * self.w * float("nan")


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(registry, tmp_path):
    reg = with_components(registry, Component("network", "nan", NaNNet, "test", "tests"))
    cfg = tiny_train(reg, network="nan")
    with pytest.raises(UserError, match="loss became nan at step 0"):
        train_model(reg, cfg, tmp_path / "m.pt", opts())
    assert not (tmp_path / "m.pt").exists()


def test_corrupt_checkpoint_is_refused(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=10)
    path = tmp_path / "m.pt"
    train_model(registry, cfg, path, opts())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or unsafe checkpoint"):
        read_model_checkpoint(path, cfg)


def test_foreign_checkpoints_are_refused(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=10)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not an aotbench"):
        read_model_checkpoint(other, cfg)
    mine = tmp_path / "mine.pt"
    train_model(registry, tiny_train(registry, train_steps=10, seed=5), mine, opts())
    with pytest.raises(UserError, match="belongs to another configuration"):
        train_model(registry, cfg, mine, opts())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(registry, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "aotbench-model-v1", "x": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(UserError, match="corrupt or unsafe"):
        read_model_checkpoint(path, tiny_train(registry))


def test_checkpoints_are_written_atomically(registry, tmp_path, monkeypatch):
    from aotbench import storage

    cfg = tiny_train(registry, train_steps=20)
    path = tmp_path / "m.pt"
    train_model(registry, cfg, path, opts(ckpt_every=10))
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(OSError):
        storage.atomic_write_bytes(path, b"partial")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_fp32_training_on_cuda_turns_tf32_off_as_edm_does():
    from aotbench.train import _set_tf32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for precision, want in (("bf16", True), ("fp32", False)):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            _set_tf32(torch.device("cuda"), precision)
            assert torch.backends.cuda.matmul.allow_tf32 is want and torch.backends.cudnn.allow_tf32 is want
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("flags", [["--pair-workers", "-1"], ["--pair-threads", "0"]])
def test_bad_pairing_worker_options_are_one_line_before_training(tmp_path, flags):
    out = run_cli("run", "--dataset", "moons", "--train-steps", "5", "--results", str(tmp_path), *flags)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "pairing" in out.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.json"))
