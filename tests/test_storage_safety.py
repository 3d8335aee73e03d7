"""File handling: checksummed checkpoints and caches, messages in aotbench's own words, an unwritable results folder
refused before any work, stale temporaries of killed writers removed (live ones kept), and modes that follow the
umask.

The tests run as root in CI, which passes permission bits: an unwritable folder is made by a path under a regular
file, or by ``chattr +i`` (immutable, which binds root too) where the filesystem has it.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aotbench import storage
from aotbench.cli import main
from aotbench.errors import UserError
from aotbench.plugins import Component
from aotbench.storage import (atomic_torch_save, atomic_write_bytes, load_checkpoint, read_verified_bytes,
                              write_verified_bytes)
from aotbench.train import TrainOptions, read_model_checkpoint, train_model
from conftest import run_cli, tiny_train, with_components

RUN = ["run", "--dataset", "moons", "--network", "mlp:width=32:depth=1", "--pairing", "aot", "--sampler", "euler",
       "--steps", "2", "--train-steps", "30", "--batch", "32", "--pool", "64", "--n-samples", "100",
       "--metrics", "nfe,w2", "--quiet", "--device", "cpu"]


def opts(**kw):
    return TrainOptions(progress=False, pair_workers=0, **kw)


def flip(path: Path, start: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)


def one_line(err) -> str:
    text = str(err)
    assert "\n" not in text and "\x1b" not in text, repr(text)
    return text


# -- 1. checksums -------------------------------------------------------------------------------------------------

def test_64_flipped_bytes_in_a_checkpoint_are_refused_in_one_line(registry, tmp_path):
    cfg = tiny_train(registry, train_steps=20)
    path = tmp_path / "m.pt"
    good = train_model(registry, cfg, path, opts())
    flip(path, path.stat().st_size // 2, 64)
    # the user's case: torch itself loads the damaged weights without a word (it does not check zip CRCs)
    damaged = torch.load(path, weights_only=True)
    assert not all(torch.equal(a, b) for a, b in zip(tensors(damaged), tensors(good), strict=True))
    with pytest.raises(UserError) as err:
        read_model_checkpoint(path, cfg)
    msg = one_line(err.value)
    assert f"corrupt checkpoint {path}:" in msg and "sha256" in msg and "deleting it makes the next run rebuild" in msg
    with pytest.raises(UserError, match="corrupt checkpoint"):  # and training does not go on from it either
        train_model(registry, cfg, path, opts())


def test_a_flipped_byte_in_the_checksum_itself_is_refused(registry, tmp_path):
    path = tmp_path / "f.pt"
    atomic_torch_save(path, {"format": "aotbench-features-v1", "state": {"w": torch.arange(4.0)}})
    assert load_checkpoint(path, "aotbench-features-v1")["state"]["w"].tolist() == [0, 1, 2, 3]
    intact = path.read_bytes()
    flip(path, len(intact) - 1, 1)  # the last hex digit of the digest
    with pytest.raises(UserError, match=f"corrupt checkpoint {path}: its content does not match"):
        load_checkpoint(path, "aotbench-features-v1")
    path.write_bytes(intact)
    flip(path, len(intact) - 82, 1)  # the zip comment's length: no checksum to be found any more
    with pytest.raises(UserError) as err:
        load_checkpoint(path, "aotbench-features-v1")
    assert f"corrupt or unsafe checkpoint {path}: not an aotbench file with a sha256 checksum" in one_line(err.value)


def test_a_file_without_a_checksum_is_not_used(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"format": "aotbench-model-v1", "step": 1}, path)  # what torch.save (or an older aotbench) wrote
    with pytest.raises(UserError) as err:
        load_checkpoint(path, "aotbench-model-v1")
    assert "not an aotbench file with a sha256 checksum" in one_line(err.value)


def test_the_cli_refuses_a_corrupted_model_with_one_line_and_exit_2(tmp_path):
    first = run_cli(*RUN, "--results", str(tmp_path))
    assert first.returncode == 0, first.stderr
    (model,) = (tmp_path / "models").glob("*.pt")
    flip(model, model.stat().st_size // 2, 64)
    again = run_cli(*RUN, "--force", "--results", str(tmp_path))
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert lines[-1].startswith(f"aotbench: error: corrupt checkpoint {model}:"), again.stderr
    assert [ln for ln in lines if "error" in ln or "Traceback" in ln] == lines[-1:], again.stderr


def test_verified_npz_round_trips_and_refuses_damage(tmp_path):
    from aotbench.runner import _save_artifacts

    path = tmp_path / "a.npz"
    _save_artifacts(path, {"x": np.arange(6.0)})  # the runner's artifacts carry the checksum
    assert np.load(io.BytesIO(read_verified_bytes(path)))["x"].tolist() == list(range(6))
    assert np.load(path)["x"].tolist() == list(range(6))  # still a plain npz to any other reader
    flip(path, path.stat().st_size // 2, 1)
    with pytest.raises(UserError, match=f"corrupt file {path}: its content does not match"):
        read_verified_bytes(path)
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(3))
    path.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="not an aotbench file with a sha256 checksum"):
        read_verified_bytes(path)
    with pytest.raises(ValueError, match="zip archive"):
        write_verified_bytes(path, b"not a zip")


# -- 2. messages --------------------------------------------------------------------------------------------------

class _Custom:
    """Not a tensor nor plain data: torch refuses it under weights_only=True."""


def test_a_file_torch_refuses_is_explained_without_torchs_advice(tmp_path):
    path = tmp_path / "m.pt"
    atomic_torch_save(path, {"format": "aotbench-model-v1", "x": _Custom()})  # a valid checksum: torch refuses it
    with pytest.raises(UserError) as err:
        load_checkpoint(path, "aotbench-model-v1")
    msg = one_line(err.value)
    assert str(path) in msg and "_Custom" in msg
    for advice in ("weights_only", "trust", "can still be loaded", "safe_globals", "\x1b"):
        assert advice not in msg, msg


def test_other_torch_errors_lose_colour_codes_and_advice(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    atomic_torch_save(path, {"format": "aotbench-model-v1"})

    def loud(*a, **k):
        raise RuntimeError("\x1b[1mRe-run torch.load with weights_only=False\x1b[0m if you trust it\n"
                           "\x1b[31mPytorchStreamReader failed reading file data/0\x1b[0m")

    monkeypatch.setattr(storage.torch, "load", loud)
    with pytest.raises(UserError) as err:
        load_checkpoint(path, "aotbench-model-v1")
    assert f"checkpoint {path}: PytorchStreamReader failed reading file data/0;" in one_line(err.value)
    assert "weights_only" not in str(err.value)


def test_a_text_file_given_as_npz_is_called_what_it_is(tmp_path):
    from plugins.datasets.npz import NPZ

    path = tmp_path / "d.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError) as err:
        NPZ(path=str(path)).load()
    assert f"cannot read {path} as an .npz file: it is not an .npz archive" in str(err.value)
    assert "pickle" not in str(err.value)


class _NaNAfter(torch.nn.Module):
    """Finite output for the first ``after`` forward passes (one per step here), NaN from then on."""

    def __init__(self, shape, num_classes=0, after=0):
        super().__init__()
        self.w, self.calls, self.after = torch.nn.Parameter(torch.zeros(1)), 0, after

    def forward(self, x, c_noise, class_labels=None, augment_labels=None):
        self.calls += 1
        return x * self.w * (float("nan") if self.calls > self.after else 1.0)


def test_the_nan_message_cites_a_checkpoint_only_if_there_is_one(registry, tmp_path):
    reg = with_components(registry, Component("network", "nan-after", _NaNAfter, "test", "tests"))
    path = tmp_path / "m.pt"
    with pytest.raises(UserError) as err:
        train_model(reg, tiny_train(reg, network="nan-after"), path, opts())
    assert "at step 0" in str(err.value) and "no checkpoint was written yet" in str(err.value)
    assert str(path) not in str(err.value) and not path.exists()
    with pytest.raises(UserError) as err:
        train_model(reg, tiny_train(reg, network="nan-after:after=7"), path, opts(ckpt_every=5))
    assert "at step 7" in str(err.value) and f"the last checkpoint {path} is kept" in str(err.value)
    assert path.exists()


# -- 3a. an unwritable results folder -----------------------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """The functions that start the work of run, sweep and report: any call means the check came too late."""
    import aotbench.report
    import aotbench.runner
    import aotbench.sweep

    def started(*a, **k):
        raise AssertionError("work started before the results folder was checked")

    for mod, name in ((aotbench.runner, "run_cells"), (aotbench.sweep, "run_sweep"), (aotbench.report, "report")):
        monkeypatch.setattr(mod, name, started)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_run_sweep_and_report_refuse_a_results_path_under_a_file_before_any_work(tmp_path, capsys, no_work):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    assert main([*RUN, "--results", str(blocker / "results")]) == 2
    assert f"cannot write into {blocker / 'results'}: {blocker} is a file, not a folder" in error_line(capsys)

    spec = tmp_path / "s.toml"
    spec.write_text('experiment = "s"\n[grid]\ndataset = "moons"\npairing = "aot"\n')
    assert main(["sweep", str(spec), "--results", str(blocker / "results")]) == 2
    assert "is a file, not a folder" in error_line(capsys)

    (tmp_path / "exp" / "cells").mkdir(parents=True)
    assert main(["report", str(tmp_path / "exp"), "--out", str(blocker / "out")]) == 2
    assert "is a file, not a folder" in error_line(capsys) and not (tmp_path / "exp" / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "file", "s.toml"]  # nothing created


@pytest.fixture
def immutable(tmp_path):
    """``chattr +i`` on folders (binds root too), undone afterwards; skips where the filesystem lacks it."""
    done = []

    def make(folder: Path) -> None:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
        done.append(folder)

    yield make
    for folder in done:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_immutable_models_folder_is_found_before_training(tmp_path, capsys, no_work, immutable):
    (tmp_path / "models").mkdir()
    immutable(tmp_path / "models")
    assert main([*RUN, "--results", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert f"cannot write into {tmp_path / 'models'}: Operation not permitted" in line and "--results" in line
    (tmp_path / "exp").mkdir()
    immutable(tmp_path / "exp")
    assert main(["report", str(tmp_path / "exp")]) == 2
    assert f"cannot write into {tmp_path / 'exp'}" in error_line(capsys)


def enospc(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_exit_2_before_the_run_or_during_it(tmp_path, capsys, monkeypatch, no_work):
    import aotbench.runner

    with monkeypatch.context() as m:  # full from the start: the probe finds it
        m.setattr(storage.os, "fsync", enospc)
        assert main([*RUN, "--results", str(tmp_path)]) == 2
    assert f"cannot write into {tmp_path}: No space left on device" in error_line(capsys)
    assert not any(tmp_path.iterdir())

    def fills_up(*a, **k):  # full once the run has started: the checkpoint write fails
        monkeypatch.setattr(storage.os, "fsync", enospc)
        atomic_write_bytes(tmp_path / "models" / "m.pt", b"x")

    monkeypatch.setattr(aotbench.runner, "run_cells", fills_up)
    assert main([*RUN, "--results", str(tmp_path)]) == 2
    header, err = capsys.readouterr().err.strip().splitlines()  # the run's header line, then the error
    assert err == f"aotbench: error: cannot write {tmp_path / 'models' / 'm.pt'}: No space left on device"
    assert not [p for p in (tmp_path / "models").iterdir()]  # and the temporary went with it


# -- 3b. temporaries of killed writers ----------------------------------------------------------------------------

def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    target = tmp_path / "m.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(dead.pid, 0)
    host, old = storage._host(), time.time() - 2 * storage.STALE_TMP_SECONDS
    planted = {
        f".m.pt.{host}.{dead.pid}.abcd1234.tmp": False,      # killed writer, long ago: stale
        f".m.pt.{host}.{os.getpid()}.efgh5678.tmp": True,    # a live writer (this process): kept
        f".m.pt.otherhost.{dead.pid}.ijkl9012.tmp": True,    # another host's pid means nothing here: kept
        f".m.pt.{host}.{dead.pid}.fresh000.tmp": True,       # dead pid but just written (a pid namespace?): kept
        ".m.pt.mnop3456.tmp": True,                          # the old name form, no writer known: kept
        f".other.pt.{host}.{dead.pid}.qrst7890.tmp": True,   # another target's: not this write's business
    }
    for name in planted:
        (tmp_path / name).write_bytes(b"half a checkpoint")
        if "fresh" not in name:
            os.utime(tmp_path / name, (old, old))
    seen = []
    replace = os.replace
    monkeypatch.setattr(storage.os, "replace", lambda src, dst: (seen.append(Path(src).name), replace(src, dst)))
    atomic_write_bytes(target, b"new")
    assert seen[0].startswith(f".m.pt.{host}.{os.getpid()}.")  # a writer names itself, so it is never removed live
    assert {n: (tmp_path / n).exists() for n in planted} == planted
    assert target.read_bytes() == b"new"


# -- 3c. modes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask,mode", [(0o002, 0o664), (0o077, 0o600), (0o022, 0o644)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "r.json", b"{}")
        atomic_torch_save(tmp_path / "m.pt", {"format": "x"})
    finally:
        os.umask(old)
    assert oct((tmp_path / "r.json").stat().st_mode & 0o777) == oct(mode)
    assert oct((tmp_path / "m.pt").stat().st_mode & 0o777) == oct(mode)


def test_the_umask_is_read_without_proc_too(monkeypatch):
    def no_proc(*a, **k):
        raise OSError(errno.ENOENT, "no /proc")

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(storage, "open", no_proc, raising=False)
        assert storage._umask() == 0o027 and os.umask(0o027) == 0o027  # read, and left as it was
    finally:
        os.umask(old)
