"""FID: offline Inception features, fid-ref statistics, agreement with clean-fid's own computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aotbench.inception import Inception, load_reference
from conftest import run_cli


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
    from aotbench.train import load_splits

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
