"""fashion-mnist: IDX files read exactly (gzipped or not), seeded subsets, one-line refusals, its own FD network.

Every test writes tiny IDX files in the real format (a few 28x28 images); nothing is downloaded, and the FD network is
never trained on the real 70,000 images here. Each image carries its own index in its first pixel, so a loaded image
can be matched to the one written.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from aotbench.config import Choice
from aotbench.datasets import clear_cache, load_splits
from aotbench_plugins.datasets import fashion_mnist
from aotbench_plugins.datasets.fashion_mnist import FashionMNIST, read_idx
from conftest import run_cli

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(a: np.ndarray) -> bytes:
    """uint8 array -> IDX: magic 0x0000080<ndim>, one big-endian uint32 per dimension, then the bytes."""
    head = (0x800 + a.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
    return head + np.ascontiguousarray(a, dtype=np.uint8).tobytes()


def fake_set(n_train: int = 12, n_heldout: int = 6, seed: int = 0):
    """(train images [n, 28, 28], train labels, held-out images, held-out labels): random uint8, first pixel = index
    (the held-out ones from 100), labels cycling 0..9, and 0 and 255 in every image."""
    rng = np.random.default_rng(seed)
    out = []
    for n, first in ((n_train, 0), (n_heldout, 100)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(first, first + n)
        x[:, -1, -1], x[:, -1, -2] = 0, 255
        out += [x, (np.arange(n) % 10).astype(np.uint8)]
    return out


def write_set(folder, arrays=None, gz: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fake_set() if arrays is None else arrays
    for name, a in zip(NAMES, arrays):
        data = idx_bytes(a)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def index_of(x: torch.Tensor) -> list[int]:
    return [int(v) for v in ((x[:, 0, 0, 0] + 1) * 127.5).round()]


@pytest.mark.parametrize("gz", [True, False])
def test_reads_train_and_t10k_idx_files_exactly(tmp_path, gz):
    xt, yt, xh, yh = write_set(tmp_path, gz=gz)
    s = FashionMNIST(path=str(tmp_path)).load()
    assert s.name == "fashion-mnist" and s.num_classes == 10
    for x, y, images, labels in ((s.train, s.train_labels, xt, yt), (s.heldout, s.heldout_labels, xh, yh)):
        assert x.dtype == torch.float32 and x.shape == (len(images), 1, 28, 28)
        assert torch.equal(x, torch.from_numpy(images).float().unsqueeze(1) / 127.5 - 1)
        assert y.dtype == torch.long and y.tolist() == labels.tolist()
    assert float(s.train.min()) == -1.0 and float(s.train.max()) == 1.0


def test_subsets_are_seeded_fixed_and_follow_the_split(tmp_path):
    write_set(tmp_path, fake_set(n_train=30, n_heldout=20))
    a = FashionMNIST(path=str(tmp_path), n_train=10, n_heldout=5).load()
    b = FashionMNIST(path=str(tmp_path), n_train=10, n_heldout=5).load()
    assert len(a.train) == 10 and len(a.heldout) == 5
    assert index_of(a.train) == index_of(b.train) and index_of(a.heldout) == index_of(b.heldout)
    assert index_of(a.train) == sorted(index_of(a.train)) and set(index_of(a.heldout)) <= set(range(100, 120))
    assert a.train_labels.tolist() == [i % 10 for i in index_of(a.train)]  # labels travel with their images
    assert index_of(a.train) != list(range(10))  # a random subset, not the first ten
    with pytest.raises(ValueError, match="n_train=31 exceeds the 30 train images"):
        FashionMNIST(path=str(tmp_path), n_train=31).load()


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_subset_sizes_must_be_counts(bad):
    with pytest.raises(ValueError, match="n_heldout must be an integer >= 0"):
        FashionMNIST(n_heldout=bad)


def test_a_missing_folder_names_the_debian_package_and_the_path_option(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        FashionMNIST(path=str(tmp_path / "nowhere")).load()
    assert str(err.value) == (f"no Fashion-MNIST folder at {tmp_path / 'nowhere'}: install it with `apt-get install "
                              f"dataset-fashion-mnist` (to /usr/share/datasets/fashion-mnist), or set path=... to a "
                              f"folder holding the four IDX files")
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no t10k-labels-idx1-ubyte\(.gz\) at .*dataset-fashion-mnist"):
        FashionMNIST(path=str(tmp_path)).load()


def test_the_default_folder_is_debians(monkeypatch, tmp_path):
    write_set(tmp_path)
    monkeypatch.setattr(fashion_mnist, "DEBIAN", str(tmp_path))
    assert len(FashionMNIST().load().train) == 12


def corruptions(good: bytes):
    """(what, bytes, message) for ways an IDX image file goes wrong, raw and gzipped."""
    wrong_magic = (0x801).to_bytes(4, "big") + good[4:]
    return [("wrong magic", wrong_magic, r"is not an IDX image file \(magic 0x00000803 expected, got 0x00000801\)"),
            ("truncated", good[:-1], r"the header says 12x28x28 bytes of data, the file holds 9407"),
            ("too long", good + b"\0", r"the header says 12x28x28 bytes of data, the file holds 9409"),
            ("header cut short", good[:6], r": 6 bytes, shorter than its IDX header \(16 bytes; truncated\)"),
            ("empty", b"", r"is not an IDX image file \(magic 0x00000803 expected, got 0 bytes\)"),
            ("gz wrong magic", gzip.compress(wrong_magic), r"got 0x00000801"),
            ("gz truncated data", gzip.compress(good[:-100]), r"the file holds 9308"),
            ("gz stream cut short", gzip.compress(good)[:-20], r"is not a readable gzip file \(EOFError"),
            ("gz stream damaged", gzip.compress(good)[:10] + b"\xff" * 50, r"is not a readable gzip file"),
            ("zero count", good[:4] + (0).to_bytes(4, "big") + good[8:16], r"the header gives a zero dimension \(0x28x28\)")]


@pytest.mark.parametrize("case", range(10))
def test_a_corrupt_idx_file_is_refused_in_one_line(tmp_path, case):
    xt = write_set(tmp_path, gz=False)[0]
    what, data, message = corruptions(idx_bytes(xt))[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as err:
        FashionMNIST(path=str(tmp_path)).load()
    assert str(path) in str(err.value) and "\n" not in str(err.value), what


def test_labels_must_match_the_images(tmp_path):
    xt, yt, xh, yh = fake_set()
    write_set(tmp_path, [xt, yt[:-1], xh, yh])
    with pytest.raises(ValueError, match="holds 11 labels for the 12 images"):
        FashionMNIST(path=str(tmp_path)).load()
    write_set(tmp_path, [xt, yt, xh, yh + 9])
    with pytest.raises(ValueError, match="labels must be 0..9, found 14"):
        FashionMNIST(path=str(tmp_path)).load()
    with pytest.raises(ValueError, match="is not an IDX label file"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz", fashion_mnist.LABELS)


def test_missing_or_corrupt_data_through_the_cli_is_one_line_exit_2(tmp_path):
    out = run_cli("run", "--dataset", f"fashion-mnist:path={tmp_path / 'nowhere'}", "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and not (tmp_path / "r").exists()
    assert out.stderr.strip().splitlines() == [
        f"aotbench: error: dataset 'fashion-mnist': no Fashion-MNIST folder at {tmp_path / 'nowhere'}: install it "
        f"with `apt-get install dataset-fashion-mnist` (to /usr/share/datasets/fashion-mnist), or set path=... to a "
        f"folder holding the four IDX files"]
    write_set(tmp_path / "data")
    (tmp_path / "data" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    out = run_cli("run", "--dataset", f"fashion-mnist:path={tmp_path / 'data'}", "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and not (tmp_path / "r").exists()
    assert len(out.stderr.strip().splitlines()) == 1 and "is not a readable gzip file" in out.stderr


def test_changed_data_under_the_same_name_changes_the_fingerprint_and_the_fd_network(registry, tmp_path):
    xt, yt, xh, yh = write_set(tmp_path)
    choice = Choice("fashion-mnist", (("path", str(tmp_path)),))
    clear_cache()
    before = load_splits(registry, choice)
    xt[3, 5, 5] ^= 1
    write_set(tmp_path, [xt, yt, xh, yh])
    clear_cache()
    after = load_splits(registry, choice)
    clear_cache()
    assert after.fingerprint != before.fingerprint
    assert after.features.name != before.features.name and after.features.name.startswith("fashion-mnist-cnn32-")
    # the plugin's own recipe survives the engine's label mapping
    assert (after.features.epochs, after.features.max_train) == (fashion_mnist.FEATURE_EPOCHS,
                                                                 fashion_mnist.FEATURE_MAX_TRAIN)


def test_the_fd_network_is_trained_once_cached_with_its_heldout_accuracy(registry, tmp_path, monkeypatch):
    write_set(tmp_path / "data", fake_set(n_train=40, n_heldout=20))
    s = FashionMNIST(path=str(tmp_path / "data")).load()
    s.features.prepare(tmp_path / "cache")
    accuracy = s.features.heldout_accuracy
    assert 0 <= accuracy <= 1 and accuracy * 20 == round(accuracy * 20)
    saved = torch.load(tmp_path / "cache" / "features" / f"{s.features.name}.pt", weights_only=True)
    assert saved["heldout_accuracy"] == accuracy

    again = FashionMNIST(path=str(tmp_path / "data")).load().features
    monkeypatch.setattr(type(again), "_fit", lambda *a: pytest.fail("retrained a cached FD network"))
    again.prepare(tmp_path / "cache")
    assert again.heldout_accuracy == accuracy
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), s.features.net.state_dict().values()))

    # another held-out split, the same network: its accuracy is measured anew, not read from the file
    other = FashionMNIST(path=str(tmp_path / "data"), n_heldout=7).load().features
    other.prepare(tmp_path / "cache")
    correct = int((other.net(other.heldout).argmax(1) == other.heldout_labels).sum())
    assert other.name == s.features.name and other.heldout_accuracy == correct / 7


def test_a_feature_recipe_without_a_subset_keeps_the_name_it_had_before_subsets_existed():
    from aotbench.data import ClassifierFeatures
    from aotbench.identity import tensor_digest
    from aotbench.storage import stable_hash

    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 2
    before = stable_hash(dict(v=1, width=32, epochs=30, batch=128, classes=2, data=tensor_digest(x, y)), 10)
    assert ClassifierFeatures("d", x, y, 2).name == f"d-cnn32-{before[:6]}"  # cached extractors stay valid
    assert ClassifierFeatures("d", x, y, 2, max_train=3).name != f"d-cnn32-{before[:6]}"


def test_a_network_cached_before_accuracies_were_recorded_gets_its_accuracy_measured(tmp_path):
    from aotbench.storage import atomic_torch_save, load_checkpoint

    write_set(tmp_path / "data", fake_set(n_train=20, n_heldout=10))
    first = FashionMNIST(path=str(tmp_path / "data")).load().features
    first.prepare(tmp_path / "cache")
    path = tmp_path / "cache" / "features" / f"{first.name}.pt"
    old = load_checkpoint(path, "aotbench-features-v1")
    atomic_torch_save(path, {k: old[k] for k in ("format", "name", "state")})  # as written before this change
    again = FashionMNIST(path=str(tmp_path / "data")).load().features
    again.prepare(tmp_path / "cache")
    assert again.heldout_accuracy == first.heldout_accuracy
