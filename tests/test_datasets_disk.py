"""Datasets read from local disk (cifar10, edm-zip, folder, npz): each test writes a tiny file in the real format.

Every image carries its own index in its first pixel, so a loaded image can be matched to the one written and
compared exactly (uint8 v -> v / 127.5 - 1 in float32), whatever the held-out split picked.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from aotbench_plugins.datasets.cifar10 import CIFAR10
from aotbench_plugins.datasets.edm_zip import EDMZip
from aotbench_plugins.datasets.folder import Folder
from aotbench_plugins.datasets.npz import NPZ
from conftest import run_cli

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


def fake_images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, c, h, w]: random, first pixel = index, and every image holds the extremes 0 and 255."""
    a = np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)
    a[:, 0, 0, 0] = np.arange(n)
    a[:, -1, -1, -1], a[:, -1, -1, -2] = 0, 255
    return a


def assert_round_trip(splits, images: np.ndarray, labels: list[int] | None):
    """Every loaded image (train and held-out) is exactly one written image, mapped to [-1, 1], with its label."""
    seen = []
    for x, y in ((splits.train, splits.train_labels), (splits.heldout, splits.heldout_labels)):
        assert x.dtype == torch.float32 and x.shape[1:] == images.shape[1:]
        assert (y is None) == (labels is None)
        for i in range(len(x)):
            idx = int(((x[i, 0, 0, 0] + 1) * 127.5).round())
            assert torch.equal(x[i], torch.from_numpy(images[idx]).float() / 127.5 - 1)
            if labels is not None:
                assert y.dtype == torch.long and int(y[i]) == labels[idx]
            seen.append(idx)
    assert sorted(seen) == list(range(len(images)))
    assert float(splits.train.min()) == -1.0 and float(splits.train.max()) == 1.0


# ---------------------------------------------------------------- cifar10

class Py2Pickler(pickle._Pickler):
    """Writes what Python 2 wrote for CIFAR-10: str and bytes as BINSTRING, numpy's reconstructor under numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        head = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else pickle.BINSTRING + struct.pack(
            "<i", len(obj))
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    def save_global(self, obj, name=None):
        if obj is not _reconstruct:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def write_cifar(folder, n: int = 4) -> tuple[np.ndarray, list[int]]:
    """The six batch files of n images each; returns all images (train batches then test) and labels."""
    folder.mkdir(parents=True)
    images = fake_images(6 * n, 3, 32, 32)
    labels = [(7 * i) % 10 for i in range(6 * n)]
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        part = slice(b * n, (b + 1) * n)
        batch = {"batch_label": f"batch {b}", "labels": labels[part], "data": images[part].reshape(n, 3072),
                 "filenames": [f"img_{i}.png" for i in range(b * n, (b + 1) * n)]}
        with open(folder / name, "wb") as f:
            Py2Pickler(f, protocol=2).dump(batch)
    return images, labels


def test_cifar10_reads_python2_batches_exactly(tmp_path):
    images, labels = write_cifar(tmp_path / "cifar-10-batches-py")
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw  # really the Python 2 form
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the folder or its parent
        s = CIFAR10(path=str(where)).load()
        assert s.train.shape == (20, 3, 32, 32) and s.heldout.shape == (4, 3, 32, 32) and s.num_classes == 10
        assert s.train_labels.tolist() == labels[:20] and s.heldout_labels.tolist() == labels[20:]
        assert torch.equal(s.train, torch.from_numpy(images[:20]).float() / 127.5 - 1)
        assert_round_trip(s, images, labels)


def test_cifar10_path_from_the_environment(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar-10-batches-py", n=1)
    monkeypatch.setenv("AOTBENCH_CIFAR10", str(tmp_path))
    assert CIFAR10().load().train.shape == (5, 3, 32, 32)


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_refuses_a_hostile_pickle_without_running_it(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, n=1)
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Hostile(marker)}, protocol=2))
    with pytest.raises(ValueError) as err:
        CIFAR10(path=str(folder)).load()
    msg = str(err.value)
    assert str(folder / "data_batch_1") in msg and f"{os.system.__module__}.system" in msg and "refused" in msg
    assert "\n" not in msg and not marker.exists()


def test_cifar10_corrupt_or_missing_files_name_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, n=1)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated
    with pytest.raises(ValueError, match=f"cannot read {folder / 'test_batch'} as a CIFAR-10 batch"):
        CIFAR10(path=str(folder)).load()
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_3 \(expected the folder"):
        CIFAR10(path=str(folder)).load()
    with pytest.raises(FileNotFoundError) as err:
        CIFAR10(path=str(tmp_path / "nowhere")).load()
    assert str(err.value) == (f"expected the folder cifar-10-batches-py with data_batch_1..5 and test_batch at "
                              f"{tmp_path / 'nowhere'} (set path=... or AOTBENCH_CIFAR10)")


def test_cifar10_missing_folder_through_the_cli(tmp_path):
    env = {"AOTBENCH_CIFAR10": ""}
    out = run_cli("run", "--dataset", "cifar10:path=/nonexistent", "--results", str(tmp_path / "res"), env=env)
    assert out.returncode == 2
    assert out.stderr.strip() == ("aotbench: error: dataset 'cifar10': expected the folder cifar-10-batches-py with "
                                  "data_batch_1..5 and test_batch at /nonexistent (set path=... or AOTBENCH_CIFAR10)")
    assert not (tmp_path / "res").exists()


# ---------------------------------------------------------------- edm-zip

def png_bytes(a: np.ndarray) -> bytes:
    """uint8 [C, H, W] -> PNG (mode L for C = 1, RGB for C = 3)."""
    buf = io.BytesIO()
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_edm_zip(path, images: np.ndarray, labels: list[int] | None):
    """As EDM's dataset_tool.py writes it: stored (uncompressed) PNGs in 1000-image folders, plus dataset.json."""
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in zip(names, images):
            zf.writestr(name, png_bytes(a))
        meta = {"labels": None if labels is None else [[n, y] for n, y in zip(names, labels)]}
        zf.writestr("dataset.json", json.dumps(meta))


def test_edm_zip_labeled_rgb_with_a_stratified_heldout_split(tmp_path):
    images, labels = fake_images(10, 3, 8, 8), [2 * (i % 2) for i in range(10)]  # classes 0 and 2
    write_edm_zip(tmp_path / "d.zip", images, labels)
    s = EDMZip(path=str(tmp_path / "d.zip"), heldout_fraction=0.2).load()
    assert s.train.shape == (8, 3, 8, 8) and s.heldout.shape == (2, 3, 8, 8)
    assert s.num_classes == 3 and sorted(s.heldout_labels.tolist()) == [0, 2]
    assert_round_trip(s, images, labels)


def test_edm_zip_unlabeled_grayscale_holds_out_at_least_one(tmp_path):
    images = fake_images(5, 1, 4, 4)
    write_edm_zip(tmp_path / "d.zip", images, None)
    s = EDMZip(path=str(tmp_path / "d.zip")).load()
    assert s.train.shape == (4, 1, 4, 4) and s.heldout.shape == (1, 1, 4, 4) and s.num_classes == 0
    assert_round_trip(s, images, None)


def test_edm_zip_bad_input_names_the_cause(tmp_path):
    images = fake_images(3, 3, 4, 4)
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("00000/img00000000.png", png_bytes(images[0]))
        zf.writestr("00000/img00000001.png", png_bytes(fake_images(1, 3, 4, 6)[0]))
    with pytest.raises(ValueError, match=r"00000/img00000001.png in .*d.zip is 3x4x6 \(CxHxW\) but "
                                         r"00000/img00000000.png is 3x4x4: all images must share one size"):
        EDMZip(path=str(path)).load()
    write_edm_zip(path, images, [0, 1])  # three images, two labels
    with pytest.raises(ValueError, match="has no label for 00000/img00000002.png"):
        EDMZip(path=str(path)).load()
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"cannot read {path} as a zip file"):
        EDMZip(path=str(path)).load()
    with pytest.raises(FileNotFoundError, match="expected the zip file written by EDM's dataset_tool.py at /nope.zip"):
        EDMZip(path="/nope.zip").load()
    with pytest.raises(ValueError, match="no path given"):
        EDMZip()
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
        EDMZip(path="x.zip", heldout_fraction=1.0)


# ---------------------------------------------------------------- folder

def save_image(path, a: np.ndarray, **params):
    """uint8 [C, H, W] -> an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path, **params)


def test_folder_with_class_subfolders(tmp_path):
    images = fake_images(6, 3, 5, 5)
    files = ["cat/a.png", "cat/deeper/b.BMP", "dog/c.png", "dog/d.png", "dog/e.webp", "emu/f.png"]
    for f, a in zip(files, images):
        save_image(tmp_path / f, a, **({"lossless": True} if f.endswith(".webp") else {}))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    s = Folder(path=str(tmp_path), heldout_fraction=0.4).load()
    assert s.num_classes == 3 and s.train.shape == (4, 3, 5, 5) and s.heldout.shape == (2, 3, 5, 5)
    assert_round_trip(s, images, [0, 0, 1, 1, 1, 2])


def test_folder_grayscale_mixed_and_resized(tmp_path):
    gray = fake_images(3, 1, 4, 4)
    for i, a in enumerate(gray):
        save_image(tmp_path / "gray" / f"{i}.png", a)
    s = Folder(path=str(tmp_path / "gray")).load()
    assert s.train.shape == (2, 1, 4, 4) and s.train_labels is None and s.num_classes == 0
    assert_round_trip(s, gray, None)

    rgb = fake_images(1, 3, 4, 4, seed=1)
    rgb[0, 0, 0, 0] = 3
    save_image(tmp_path / "gray" / "3.png", rgb[0])  # one RGB file: all become RGB, gray in all three channels
    s = Folder(path=str(tmp_path / "gray")).load()
    assert_round_trip(s, np.concatenate([gray.repeat(3, axis=1), rgb]), None)

    wide = fake_images(1, 3, 4, 8)[0]  # 8 wide, 4 high: the center square is columns 2..5
    save_image(tmp_path / "wide" / "w.png", wide)
    save_image(tmp_path / "wide" / "v.png", wide)
    s = Folder(path=str(tmp_path / "wide"), resolution=4).load()
    assert torch.equal(s.train[0], torch.from_numpy(wide[:, :, 2:6]).float() / 127.5 - 1)
    assert Folder(path=str(tmp_path / "wide"), resolution=2).load().train.shape == (1, 3, 2, 2)


def test_folder_bad_input_names_the_cause(tmp_path):
    save_image(tmp_path / "a.png", fake_images(1, 3, 4, 4)[0])
    save_image(tmp_path / "b.png", fake_images(1, 3, 6, 4)[0])
    with pytest.raises(ValueError, match=f"{tmp_path / 'b.png'} is 4x6 but {tmp_path / 'a.png'} is 4x4: all images "
                                         r"must share one size \(or set resolution=...\)"):
        Folder(path=str(tmp_path)).load()
    (tmp_path / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"cannot read image {tmp_path / 'b.png'}"):
        Folder(path=str(tmp_path)).load()
    with pytest.raises(FileNotFoundError, match="expected a folder of images .* at /no/such/dir"):
        Folder(path="/no/such/dir").load()
    with pytest.raises(ValueError, match="resolution must be >= 0"):
        Folder(path="x", resolution=-1)


def test_folder_reads_16_bit_grayscale_from_its_true_range(tmp_path):
    # PIL's I;16 -> RGB conversion clips above 255: a 16-bit file used to load as an almost white 3-channel image
    ramp = np.linspace(0, 65535, 4 * 16).round().astype(np.uint16).reshape(4, 16)
    Image.fromarray(ramp).save(tmp_path / "a.png")
    Image.fromarray(ramp[::-1, ::-1].copy()).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    s = Folder(path=str(tmp_path), heldout_fraction=0.5).load()
    both = torch.cat([s.train, s.heldout])
    assert both.shape == (2, 1, 4, 16) and both.dtype == torch.float32
    assert float(both.min()) == -1.0 and float(both.max()) == 1.0
    for img in both:
        flat = img.flatten()
        if flat[0] > flat[-1]:  # the reversed file
            flat = flat.flip(0)
        assert bool((flat[1:] > flat[:-1]).all())  # strictly monotone, as written
        assert torch.allclose(flat.double(), torch.from_numpy(ramp.flatten() / 32767.5 - 1), atol=1e-6)

    # resized: bicubic on the 16-bit values, clipped to the range
    r = Folder(path=str(tmp_path), resolution=4, heldout_fraction=0.5).load()
    assert r.train.shape == (1, 1, 4, 4) and -1.0 <= float(r.train.min()) and float(r.train.max()) <= 1.0

    # an 8-bit file beside them counts v as v * 257: 8-bit 255 and 16-bit 65535 are both 1.0
    save_image(tmp_path / "c.png", np.full((1, 4, 16), 255, dtype=np.uint8))
    mixed = Folder(path=str(tmp_path), heldout_fraction=0.4).load()
    assert mixed.train.shape[1:] == (1, 4, 16)
    assert any(bool((x == 1.0).all()) for x in torch.cat([mixed.train, mixed.heldout]))


def test_folder_8_bit_and_palette_images_load_as_before(tmp_path):
    gray = fake_images(1, 1, 4, 4)[0]
    save_image(tmp_path / "g.png", gray)
    rgb = fake_images(1, 3, 4, 4, seed=2)[0]
    pal = Image.fromarray(rgb.transpose(1, 2, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = {  # the mapping the loader always had: v / 127.5 - 1 of PIL's RGB conversion
        "g": torch.from_numpy(gray.repeat(3, axis=0)).float() / 127.5 - 1,
        "p": torch.from_numpy(np.asarray(pal.convert("RGB")).transpose(2, 0, 1).copy()).float() / 127.5 - 1,
    }
    s = Folder(path=str(tmp_path), heldout_fraction=0.5).load()
    got = torch.cat([s.train, s.heldout])
    assert got.shape == (2, 3, 4, 4)
    assert all(any(torch.equal(x, e) for x in got) for e in expected.values())


def test_folder_refuses_an_image_mode_without_a_known_range(tmp_path):
    save_image(tmp_path / "a.png", fake_images(1, 1, 4, 4)[0])
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "f.png", format="TIFF")  # opened by content
    with pytest.raises(ValueError, match=f"{tmp_path / 'f.png'} has PIL mode F, which has no known pixel range"):
        Folder(path=str(tmp_path)).load()
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "f.png", format="TIFF")
    with pytest.raises(ValueError, match=f"{tmp_path / 'f.png'} has PIL mode I with values 70000..70000, outside"):
        Folder(path=str(tmp_path)).load()


# ---------------------------------------------------------------- npz

def test_npz_channels_last_with_labels_and_a_seeded_split(tmp_path):
    images, labels = fake_images(8, 3, 4, 4), [0, 1] * 4
    np.savez(tmp_path / "d.npz", x=images.transpose(0, 2, 3, 1), y=np.array(labels, dtype=np.int32))
    s = NPZ(path=str(tmp_path / "d.npz"), heldout_fraction=0.25).load()
    assert s.train.shape == (6, 3, 4, 4) and s.heldout.shape == (2, 3, 4, 4) and s.num_classes == 2
    assert sorted(s.heldout_labels.tolist()) == [0, 1]
    assert_round_trip(s, images, labels)


def test_npz_channels_first_with_a_given_heldout_split_and_floats(tmp_path):
    images = fake_images(5, 1, 4, 4)
    np.savez(tmp_path / "d.npz", images=images[:3], labels=np.array([4, 0, 1]), x_heldout=images[3:],
             y_heldout=np.array([2, 3]))
    s = NPZ(path=str(tmp_path / "d.npz")).load()
    assert s.train.shape == (3, 1, 4, 4) and s.heldout.shape == (2, 1, 4, 4) and s.num_classes == 5
    assert_round_trip(s, images, [4, 0, 1, 2, 3])

    f = np.linspace(-1, 1, 2 * 16, dtype=np.float64).reshape(2, 4, 4)  # [N, H, W] floats in [-1, 1]
    np.savez(tmp_path / "f.npz", x=f)
    s = NPZ(path=str(tmp_path / "f.npz")).load()
    assert torch.equal(torch.cat([s.train, s.heldout]).sort(0).values,
                       torch.from_numpy(f[:, None].astype(np.float32)).sort(0).values)


def test_npz_bad_input_names_the_cause(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(ValueError, match=f"cannot read {path} as an .npz file: .*allow_pickle=False"):
        NPZ(path=str(path)).load()
    np.savez(path, x=np.full((2, 4, 4), 2.0))
    with pytest.raises(ValueError, match=r"x in .*d.npz is float but not within \[-1, 1\] \(min 2.0, max 2.0\)"):
        NPZ(path=str(path)).load()
    np.savez(path, images=fake_images(2, 3, 4, 4), y=np.array([0]))
    with pytest.raises(ValueError, match=r"y in .*d.npz must be 2 integer class labels >= 0, got int64 \[1\]"):
        NPZ(path=str(path)).load()
    np.savez(path, z=np.zeros(3))
    with pytest.raises(ValueError, match="d.npz has no array x or images"):
        NPZ(path=str(path)).load()
    with pytest.raises(FileNotFoundError, match="expected an .npz file with an array x \\(or images\\) at /nope.npz"):
        NPZ(path="/nope.npz").load()
