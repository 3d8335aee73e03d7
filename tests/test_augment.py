"""EDM's non-leaking augmentation pipe: reproducible from its generator, identity at p=0, labels as EDM encodes them."""

from __future__ import annotations

import math
import pickle

import torch

from aotbench.augment import AugmentPipe, _warp
from aotbench.pool import PoolSource

ONLY_XFLIP = dict(xflip=1, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def images(n=64, c=3, s=16, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_same_generator_seed_same_pool_other_seed_other_pool():
    x = images()
    a, la = AugmentPipe(p=0.5)(x, g(7))
    b, lb = AugmentPipe(p=0.5)(x, g(7))
    c, lc = AugmentPipe(p=0.5)(x, g(8))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c) and not torch.equal(la, lc)


def test_all_randomness_comes_from_the_generator():
    x = images(16)
    torch.manual_seed(0)
    a, la = AugmentPipe(p=1)(x, g(3))
    torch.manual_seed(123)
    torch.rand(5)
    b, lb = AugmentPipe(p=1)(x, g(3))
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_p0_is_the_identity_with_zero_labels():
    x = images()
    y, labels = AugmentPipe(p=0)(x, g(0))
    assert torch.equal(y, x)
    assert labels.shape == (64, 9) and labels.dtype == torch.float32 and not labels.any()


def test_labels_are_edm_s_nine_and_p1_changes_every_image():
    x = images(128)
    pipe = AugmentPipe(p=1)
    assert AugmentPipe.dim == 9 and pipe.dim == 9
    y, lab = pipe(x, g(1))
    assert y.shape == x.shape and lab.shape == (128, 9) and lab.dtype == torch.float32
    xflip, yflip, scale, rcos, rsin, an_c, an_s, tx, ty = lab.T
    assert set(xflip.tolist()) == {0.0, 1.0} and set(yflip.tolist()) == {0.0, 1.0}
    assert torch.allclose((rcos + 1) ** 2 + rsin**2, torch.ones(128), atol=1e-5)  # cos(a) - 1, sin(a)
    assert (scale != 0).all() and (tx != 0).all() and (ty != 0).all()  # p=1: every transform applied
    assert ((y - x).flatten(1).abs().amax(1) > 1e-3).all()


def test_overall_probability_gates_each_transform():
    lab = AugmentPipe(p=0.12)(images(4000, 1, 8), g(2))[1]
    assert abs(float((lab[:, 2] != 0).float().mean()) - 0.12) < 0.025  # scale applied with probability p
    assert abs(float((lab[:, 7] != 0).float().mean()) - 0.12) < 0.025  # translation too
    assert abs(float(lab[:, 0].mean()) - 0.5) < 0.05  # xflip multiplier 1e8: always tried, a coin flip


def test_a_pure_flip_flips_exactly_the_labelled_images():
    x = images(64)
    pipe = AugmentPipe(p=1, **ONLY_XFLIP)
    assert pipe.dim == 1
    y, lab = pipe(x, g(4))
    flipped = lab[:, 0] == 1
    assert 0 < flipped.sum() < 64
    assert torch.equal(y[flipped], x[flipped].flip(3)) and torch.equal(y[~flipped], x[~flipped])


def smooth(n=2):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    return torch.stack([torch.sin(2 * xx) * torch.cos(3 * yy), xx * yy])[None].repeat(n, 1, 1, 1)


def test_the_resampling_is_exact_for_the_identity_transform():
    x = images(2, 2, 16)  # the wavelet up/down-sampling pair reconstructs perfectly
    assert torch.allclose(_warp(x, torch.eye(3).expand(2, 3, 3)), x, atol=1e-5)


def test_a_half_turn_of_a_smooth_image_is_a_flip_of_both_axes():
    x = smooth()
    m = torch.tensor([[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]]).expand(2, 3, 3)  # rotation by pi about the centre
    err = (_warp(x, m) - x.flip(2).flip(3)).abs().max()
    assert err < 0.05 < (x - x.flip(2).flip(3)).abs().max()  # the wavelet filter is nearly, not exactly, symmetric


def test_the_pipe_pickles_and_pools_are_reproducible_with_it():
    pipe = pickle.loads(pickle.dumps(AugmentPipe(p=0.5)))

    class Identity:
        def pair(self, data, noise, labels=None):
            return torch.arange(data.shape[0])

    data = images(50, 1, 8)
    src = PoolSource(data, None, 32, 0, 0, Identity(), "identity", pipe)
    a, b = src[3], src[3]
    assert torch.equal(a.y, b.y) and torch.equal(a.augment_labels, b.augment_labels)
    assert a.augment_labels.shape == (32, 9) and not torch.equal(a.y, data[a.index])
    assert math.isfinite(float(a.y.sum()))
