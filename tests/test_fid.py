"""FID: offline Inception features, fid-ref statistics, agreement with clean-fid's own computation, EDM's TF1
bilinear preprocessing checked against TensorFlow, and records that say what their FID is."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aotbench.config import CellConfig, resolve
from aotbench.errors import UserError
from aotbench.evaluate import EvalContext
from aotbench.inception import (Inception, load_reference, read_reference, reference_npz, reference_path,
                                tf1_bilinear_resize, to_uint8)
from conftest import run_cli, tiny_train

DATA = Path(__file__).parent / "data"


def write_pngs(folder, seed, n=10, size=16):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3))
    for i in range(n):
        img = np.clip(base + rng.normal(0, 40 + 20 * seed, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")


def test_fid_ref_and_fid_agree_with_clean_fid(tmp_path):
    """fid-ref on folder A, our FID of folder B against it, and clean-fid's compute_fid(A, B) with the same
    Inception: the same number."""
    from cleanfid import fid as cleanfid

    a, b = tmp_path / "a", tmp_path / "b"
    write_pngs(a, 0)
    write_pngs(b, 1)
    ref = tmp_path / "ref.npz"
    out = run_cli("fid-ref", "--dataset", f"folder:path={a}:heldout_fraction=0.1", "--out", str(ref),
                  "--device", "cpu", "--quiet")
    assert out.returncode == 0, out.stderr
    # the folder plugin holds out 10%: reference = its train split; recompute clean-fid on exactly those files
    from aotbench.config import resolve
    from aotbench.plugins import get_registry
    from aotbench.datasets import load_splits

    reg = get_registry()
    train_a = load_splits(reg, resolve(reg, "dataset", f"folder:path={a}:heldout_fraction=0.1")).train
    (tmp_path / "a_train").mkdir()
    for i, x in enumerate(train_a):
        Image.fromarray(((x + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(tmp_path / "a_train" /
                                                                                        f"{i}.png")
    net = Inception(device="cpu", batch=8)
    mu_r, s_r = load_reference(ref, net)
    imgs_b = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in sorted(b.glob("*.png"))])
    from aotbench.frechet import gaussian_stats
    mu, s = gaussian_stats(net(imgs_b.float() / 127.5 - 1))
    ours = cleanfid.frechet_distance(mu, s, mu_r, s_r)
    model = net.model
    theirs = cleanfid.compute_fid(str(tmp_path / "a_train"), str(b), mode="clean", num_workers=0, batch_size=8,
                                  device=torch.device("cpu"), verbose=False,
                                  custom_feat_extractor=lambda x: model((x - 128) / 128))
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_a_reference_from_another_inception_is_refused(tmp_path):
    net = Inception(device="cpu")
    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3), n=3, inception_sha256="0" * 64)
    with pytest.raises(ValueError, match="another Inception"):
        load_reference(path, net)


def test_fid_ref_bad_input_is_one_line(tmp_path):
    out = run_cli("fid-ref", "--dataset", "moons", "--out", str(tmp_path / "r.npz"))
    assert out.returncode == 2 and "not an image dataset" in out.stderr
    out = run_cli("fid-ref", "--dataset", "digits", "--weights", "/no/inception.pt", "--out", str(tmp_path / "r.npz"))
    assert out.returncode == 2 and "Inception weights file not found" in out.stderr
    assert not (tmp_path / "r.npz").exists()


# ---------------------------------------------------------------------------------------------------------------
# EDM preprocessing: TF1's legacy bilinear resize


def test_tf1_resize_matches_tensorflow():
    """Our resize against TensorFlow's own op. tests/data/tf1_resize_bilinear.npz was written (TensorFlow 2.21.0,
    tensorflow-cpu from PyPI, in a scratch venv outside the repo) by this script, run as
    ``python make_tf1_fixture.py tests/data/tf1_resize_bilinear.npz``; for ``rgb32`` it keeps every third output
    row (rows 0, 3, ..., 297; all 299 columns) to stay small, the other outputs are whole::

        import sys

        import numpy as np
        import tensorflow as tf

        rng = np.random.default_rng(0)
        inputs = {
            "ramp": np.array([[0, 1, 2], [10, 20, 40]], np.float32).reshape(1, 2, 3, 1),
            "rgb32": rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8).astype(np.float32),
            "grey8": (rng.random((1, 8, 8, 1)) * 255).astype(np.float32),
        }
        rows = {"ramp": slice(None), "rgb32": slice(0, 299, 3), "grey8": slice(None)}  # rgb32: every 3rd output row
        arrays = {"tf_version": np.array(tf.__version__)}
        for name, x in inputs.items():
            y = tf.compat.v1.image.resize_bilinear(tf.constant(x), [299, 299], align_corners=False).numpy()
            assert y.dtype == np.float32 and y.shape == (1, 299, 299, x.shape[-1])
            arrays[f"{name}_in"] = x
            arrays[f"{name}_rows"] = np.arange(299)[rows[name]]
            arrays[f"{name}_out"] = y[:, rows[name]]
        np.savez_compressed(sys.argv[1], **arrays)

    When it was written our float32 arithmetic matched TF's bit for bit (max abs difference 0 on all three).
    """
    with np.load(DATA / "tf1_resize_bilinear.npz") as d:
        for name in ("ramp", "rgb32", "grey8"):
            x = torch.from_numpy(d[f"{name}_in"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
            ours = tf1_bilinear_resize(x).permute(0, 2, 3, 1).numpy()[:, d[f"{name}_rows"]]
            tf_out = d[f"{name}_out"]
            assert ours.shape == tf_out.shape and ours.dtype == np.float32
            assert np.abs(ours - tf_out).max() <= 1e-4, name


def test_tf1_resize_hand_worked():
    """Source coordinate j * in / out, no half-pixel offset, upper neighbour clamped to the last pixel."""
    out = tf1_bilinear_resize(torch.tensor([[[[0.0, 10.0]]]]), (1, 4))
    assert out.flatten().tolist() == [0, 5, 10, 10]
    # 2x2 -> 3x4: rows at y = 0, 2/3, 4/3 (clamped to row 1); columns at x = 0, 1/2, 1, 3/2 (clamped to column 1)
    x = torch.tensor([[0.0, 10.0], [20.0, 40.0]])[None, None]
    expected = torch.tensor([[0.0, 5.0, 10.0, 10.0],
                             [40 / 3, 5 + 25 * 2 / 3, 30.0, 30.0],
                             [20.0, 30.0, 40.0, 40.0]])
    got = tf1_bilinear_resize(x, (3, 4))
    assert got.shape == (1, 1, 3, 4)
    torch.testing.assert_close(got[0, 0], expected, rtol=0, atol=1e-5)
    # channels and batch are independent; 299 -> 299 is the identity
    y = torch.rand(2, 3, 299, 299) * 255
    torch.testing.assert_close(tf1_bilinear_resize(y), y, rtol=0, atol=0)


def test_tf1_resize_agrees_with_the_grid_sample_form_of_nvidias_inception():
    """NVIDIA's inception-2015-12-05 TorchScript resizes with affine_grid + grid_sample(align_corners=False,
    padding_mode='border'), the grid shifted by 1/in - 1/out in normalized units: the same coordinates, other float
    rounding."""
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0)) * 255
    theta = torch.tensor([[1.0, 0.0, 1 / 24 - 1 / 299], [0.0, 1.0, 1 / 32 - 1 / 299]]).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [2, 3, 299, 299], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(tf1_bilinear_resize(x), ref, rtol=0, atol=1e-3)


def test_edm_mode_runs_the_network_on_tf1_resized_uint8_pixels():
    """edm mode = PNG quantization, TF1 bilinear to 299, (x - 128) / 128 into the network; and not clean mode."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    edm = Inception(device="cpu", resize="edm")
    feats = edm(images)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    u8 = to_uint8(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        by_hand = edm.model((tf1_bilinear_resize(u8) - 128) / 128).double().numpy()
    np.testing.assert_allclose(feats, by_hand, rtol=0, atol=1e-6)
    clean = Inception(device="cpu", resize="clean")(images)
    assert np.abs(feats - clean).max() > 1e-2  # different preprocessing, different features
    assert edm.name != Inception(device="cpu", resize="clean").name


def test_grey_images_are_repeated_to_rgb_in_edm_mode():
    g = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    net = Inception(device="cpu", resize="edm")
    captured = []
    net._model = lambda x: captured.append(x) or torch.zeros(len(x), 2048)
    net(g)
    assert captured[0].shape == (1, 3, 299, 299)
    assert torch.equal(captured[0][:, 0], captured[0][:, 1]) and torch.equal(captured[0][:, 0], captured[0][:, 2])


# ---------------------------------------------------------------------------------------------------------------
# reference statistics: mode, Inception, EDM's npz


def test_a_reference_of_another_resize_mode_is_refused(tmp_path):
    feats = np.random.default_rng(0).normal(size=(6, 3))
    clean, edm = Inception(device="cpu", resize="clean"), Inception(device="cpu", resize="edm")
    path = tmp_path / "ref.npz"
    path.write_bytes(reference_npz(feats, clean, "test", "f" * 16))
    info = read_reference(path, clean)
    assert (info["mode"], info["inception_sha256"], info["n"], info["data_fingerprint"]) == \
        ("clean", clean.sha256, 6, "f" * 16)
    with pytest.raises(ValueError, match="resize=clean") as err:
        load_reference(path, edm)
    assert "\n" not in str(err.value)
    # an older fid-ref file (Inception named, mode not) cannot be trusted in any mode
    np.savez(tmp_path / "old.npz", mu=np.zeros(3), sigma=np.eye(3), n=3, inception_sha256=clean.sha256)
    with pytest.raises(ValueError, match="resize mode"):
        load_reference(tmp_path / "old.npz", clean)


def test_an_edm_reference_npz_is_accepted_only_in_edm_mode(tmp_path, registry):
    """EDM's fid.py ref writes only mu and sigma (from NVIDIA's TF1-resizing Inception)."""
    path = tmp_path / "cifar10-32x32.npz"
    np.savez(path, mu=np.arange(2048.0), sigma=np.eye(2048))
    mu, sigma = load_reference(path, Inception(device="cpu", resize="edm"))
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    for mode in ("clean", "torch"):
        with pytest.raises(ValueError, match="EDM's preprocessing.*fid:resize=edm"):
            load_reference(path, Inception(device="cpu", resize=mode))
    with pytest.raises(UserError, match="fid:resize=edm"):  # refused when the grid is planned, not after sampling
        resolve(registry, "metric", f"fid:ref={path}:resize=clean")
    resolve(registry, "metric", f"fid:ref={path}:resize=edm")


# ---------------------------------------------------------------------------------------------------------------
# records: content-keyed reference statistics, what the FID is, rank deficiency


class Squash(torch.nn.Module):
    """A stand-in 'model': D(x, sigma) = tanh(x / 80), so one Euler step from sigma_max gives noise images."""

    num_classes = 0

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        return torch.tanh(x / 80)


def write_npz_dataset(path, seed, n=6, size=16):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3))
    x = np.clip(base + rng.normal(0, 30, (n + 2, size, size, 3)), 0, 255).astype(np.uint8)
    np.savez(path, x=x[:n], x_heldout=x[n:])
    return f"npz:path={path}"


def fid_context(registry, dataset: str, cache_dir, memo, fid="fid", n=4):
    from aotbench.datasets import load_splits

    splits = load_splits(registry, resolve(registry, "dataset", dataset))
    cell = CellConfig(train=tiny_train(registry), sampler=resolve(registry, "sampler", "euler"),
                      guidance=resolve(registry, "guidance", "none"), steps=1, n_samples=n,
                      metrics=(resolve(registry, "metric", fid),))
    return EvalContext(registry, cell, splits, Squash(), cache_dir=cache_dir, memo=memo)


def compute_fid(registry, ctx, spec="fid"):
    choice = resolve(registry, "metric", spec)
    return registry.get("metric", "fid").build(**choice.kwargs).compute(ctx)


class TinyInception:
    """A stand-in Inception with ``dim``-d features (a fixed projection of the pixels): fast, and its dimension
    can sit on either side of the sample count."""

    dim = 4

    def __init__(self, weights=None, device="cpu", batch=64, resize="clean"):
        self.sha256, self.resize, self.device = "ab" * 32, resize, device
        self.name = f"tiny-{self.dim}-{resize}"

    def __call__(self, images, desc="", progress=False):
        proj = torch.randn(images[0].numel(), self.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return (images.flatten(1).double() @ proj).numpy()


def use_tiny_inception(registry, monkeypatch, dim=4):
    fid_module = sys.modules[registry.get("metric", "fid").obj.__module__]
    monkeypatch.setattr(fid_module, "Inception", type("Tiny", (TinyInception,), {"dim": dim}))


def test_two_datasets_of_one_name_never_share_reference_statistics(tmp_path, registry, monkeypatch):
    """Two npz datasets (both named 'npz') in one results folder, even sharing one memo: each gets its own cached
    statistics, keyed by its content, and so its own FID of the same samples. (A stand-in Inception: the keys are
    the point, and the real one's 2048-d Frechet distance costs tens of seconds on a busy CPU.)"""
    use_tiny_inception(registry, monkeypatch)
    cache, memo = tmp_path / "cache", {}
    ctx_a = fid_context(registry, write_npz_dataset(tmp_path / "a.npz", 0), cache, memo)
    ctx_b = fid_context(registry, write_npz_dataset(tmp_path / "b.npz", 1), cache, memo)
    assert ctx_a.splits.name == ctx_b.splits.name == "npz"
    assert ctx_a.splits.fingerprint != ctx_b.splits.fingerprint
    rec_a, rec_b = compute_fid(registry, ctx_a), compute_fid(registry, ctx_b)
    assert torch.equal(ctx_a.samples, ctx_b.samples)  # same noise, same model: only the reference differs
    assert rec_a["fid_ref"] == f"train:{ctx_a.splits.fingerprint}" and rec_b["fid_ref"] == f"train:{ctx_b.splits.fingerprint}"
    assert rec_a["fid"] != pytest.approx(rec_b["fid"], rel=1e-6)
    net = TinyInception()
    files = sorted((cache / "fid-ref").glob("*.npz"))
    assert files == sorted(reference_path(cache, "npz", "train", c.splits.fingerprint, net) for c in (ctx_a, ctx_b))
    for ctx, rec in ((ctx_a, rec_a), (ctx_b, rec_b)):
        info = read_reference(reference_path(cache, "npz", "train", ctx.splits.fingerprint, net), net)
        assert info["data_fingerprint"] == ctx.splits.fingerprint and info["n"] == len(ctx.splits.train) == 6
        assert np.allclose(info["mu"], net(ctx.splits.train).mean(0))
        assert rec["fid_ref_n"] == 6
    # a fresh memo over the same results folder reads each dataset's own file back
    again = compute_fid(registry, fid_context(registry, write_npz_dataset(tmp_path / "b.npz", 1), cache, {}))
    assert again["fid"] == rec_b["fid"]


def test_fid_metric_end_to_end_in_edm_mode(tmp_path, registry):
    """The real Inception through the metric, resize=edm: what the record says, the warning, the cache file."""
    ctx = fid_context(registry, write_npz_dataset(tmp_path / "a.npz", 0, n=3), tmp_path / "cache", {}, n=2)
    rec = compute_fid(registry, ctx, "fid:resize=edm")
    net = Inception(device="cpu", resize="edm")
    assert np.isfinite(rec["fid"]) and rec["fid"] > 0 and rec["fid_mean"] == rec["fid"] and rec["fid_runs"] == 1
    assert (rec["fid_mode"], rec["fid_n"], rec["fid_dim"], rec["fid_ref"], rec["fid_ref_n"]) == \
        ("edm", 2, 2048, f"train:{ctx.splits.fingerprint}", 3)
    assert rec["fid_inception_sha256"] == net.sha256 and rec["fid_rank_deficient"] is True
    assert any("2 samples <= 2048" in w and "rank-deficient" in w for w in ctx.warnings)
    info = read_reference(reference_path(tmp_path / "cache", "npz", "train", ctx.splits.fingerprint, net), net)
    assert (info["mode"], info["n"]) == ("edm", 3)


@pytest.mark.parametrize("dim,deficient", [(3, False), (4, True), (5, True)])
def test_rank_deficiency_flag_and_warning(tmp_path, registry, monkeypatch, dim, deficient):
    use_tiny_inception(registry, monkeypatch, dim)
    ctx = fid_context(registry, write_npz_dataset(tmp_path / "a.npz", 0), tmp_path / "cache", {}, n=4)
    rec = compute_fid(registry, ctx)
    assert (rec["fid_n"], rec["fid_dim"], rec["fid_rank_deficient"]) == (4, dim, deficient)
    assert any("rank-deficient" in w and "samples" in w for w in ctx.warnings) == deficient


def test_a_user_reference_is_named_by_its_content(tmp_path, registry, monkeypatch):
    use_tiny_inception(registry, monkeypatch)
    ref = tmp_path / "ref.npz"
    ref.write_bytes(reference_npz(np.random.default_rng(0).normal(size=(3, 4)), TinyInception(), "test"))
    ctx = fid_context(registry, write_npz_dataset(tmp_path / "a.npz", 0), tmp_path / "cache", {})
    rec = compute_fid(registry, ctx, f"fid:ref={ref}")
    assert rec["fid_ref"] == "file:" + hashlib.sha256(ref.read_bytes()).hexdigest()[:16] and rec["fid_ref_n"] == 3
    assert not (tmp_path / "cache" / "fid-ref").exists()  # the train split was never needed
    # a reference of 3 images (4-d features) is itself rank-deficient: said too
    assert any("reference statistics from 3 images" in w for w in ctx.warnings)


def test_fid_ref_default_output_is_keyed_by_content_and_mode(tmp_path, registry):
    """fid-ref without --out writes where the fid metric looks: the train split's fingerprint, Inception, mode."""
    from aotbench.datasets import load_splits

    dataset = write_npz_dataset(tmp_path / "a.npz", 0, n=3)
    out = run_cli("fid-ref", "--dataset", dataset, "--results", str(tmp_path / "results"), "--resize", "edm",
                  "--device", "cpu", "--quiet")
    assert out.returncode == 0, out.stderr
    fingerprint = load_splits(registry, resolve(registry, "dataset", dataset)).fingerprint
    net = Inception(device="cpu", resize="edm")
    info = read_reference(reference_path(tmp_path / "results" / "cache", "npz", "train", fingerprint, net), net)
    assert (info["mode"], info["n"], info["data_fingerprint"]) == ("edm", 3, fingerprint)
