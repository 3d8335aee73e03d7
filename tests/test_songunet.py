"""``ddpmpp`` / ``ncsnpp``: EDM's SongUNet at CIFAR-10 size, its structure, conditioning, and training in the engine."""

from __future__ import annotations

import math

import pytest
import torch

from aotbench import cli
from aotbench.config import TrainConfig, resolve
from aotbench.datasets import bind_data, load_splits
from aotbench.train import TrainOptions, build_model, train_model
from aotbench_plugins.networks.songunet import (Conv2d, DDPMpp, FourierEmbedding, NCSNpp, PositionalEmbedding,
                                                UNetBlock)
from conftest import run_cli

TINY = dict(model_channels=16, channel_mult="1,2", num_blocks=1, attn_resolutions="4", dropout=0.0)


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def meta(cls, shape=(3, 32, 32), num_classes=0, **kw):
    with torch.device("meta"):
        return cls(shape, num_classes, **kw)


@pytest.mark.parametrize("cls,uncond,aug9,cond10_aug9", [
    # EDM's SongUNet at train.py's CIFAR-10 settings, counted on EDM's own class out of band: identical
    (DDPMpp, 55_732_739, 55_733_891, 55_735_299),
    (NCSNpp, 56_395_523, 56_397_827, 56_400_643),
])
def test_parameter_counts_at_edm_cifar10_settings(cls, uncond, aug9, cond10_aug9):
    assert n_params(meta(cls)) == uncond
    assert n_params(meta(cls, augment_dim=9)) == aug9  # EDM's CIFAR runs: augment_dim=9
    assert n_params(meta(cls, num_classes=10, augment_dim=9)) == cond10_aug9


def test_ddpmpp_and_ncsnpp_differ_where_edm_says():
    d, n = meta(DDPMpp), meta(NCSNpp)
    assert isinstance(d.map_noise, PositionalEmbedding) and d.map_noise.endpoint
    assert isinstance(n.map_noise, FourierEmbedding) and n.map_noise.freqs.shape == (128,)  # channel_mult_noise=2
    assert d.map_layer0.in_features == 128 and n.map_layer0.in_features == 256
    assert not any("aux_residual" in k for k in d.enc) and [k for k in n.enc if "aux_residual" in k] == [
        "16x16_aux_residual", "8x8_aux_residual"]
    assert d.enc["16x16_down"].conv0.resample_filter.shape[-1] == 2
    assert n.enc["16x16_down"].conv0.resample_filter.shape[-1] == 4
    for net in (d, n):
        blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
        assert len(blocks) == 12 + 2 + 2 + 2 + 15  # encoder blocks, downs, two middle, ups, decoder blocks
        assert all(not b.adaptive_scale and b.skip_scale == pytest.approx(math.sqrt(0.5)) for b in blocks)
        attn = sorted(name for name, m in net.named_modules() if isinstance(m, UNetBlock) and m.num_heads)
        assert attn == ["dec.16x16_block4", "dec.8x8_in0", *[f"enc.16x16_block{i}" for i in range(4)]]
        assert all(m.eps == 1e-6 and m.num_groups == min(32, m.num_channels // 4)
                   for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
        assert all(b.dropout == 0.13 for b in blocks)


def test_box_filter_resamples_as_nearest_and_average_pool():
    x = torch.randn(2, 3, 8, 8)
    down = Conv2d(3, 3, 0, down=True, resample_filter=(1, 1))
    up = Conv2d(3, 3, 0, up=True, resample_filter=(1, 1))
    assert torch.allclose(down(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(up(x), torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6)
    fir = Conv2d(3, 3, 0, down=True, resample_filter=(1, 3, 3, 1))
    assert torch.allclose(fir(torch.ones(1, 3, 8, 8))[..., 1:-1, 1:-1], torch.ones(1, 3, 2, 2))  # unit DC gain


def test_edm_initialisation_zero_ish_output_and_xavier_elsewhere():
    torch.manual_seed(0)
    net = DDPMpp((3, 8, 8), 0, **TINY)
    out_conv = net.dec["8x8_aux_conv"].weight
    bound = math.sqrt(6 / (16 * 9 + 3 * 9))
    assert out_conv.abs().max() <= 1e-5 * bound and out_conv.abs().max() > 0
    w = net.map_layer1.weight
    assert w.abs().max() <= math.sqrt(6 / (64 + 64)) and w.abs().max() > 0.9 * math.sqrt(6 / (64 + 64))
    assert all(float(b.detach().abs().max()) == 0 for name, b in net.named_parameters()
               if name.endswith("bias") and "norm" not in name)


def _randomised(net):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("cls", [DDPMpp, NCSNpp])
def test_class_and_augmentation_conditioning_change_the_output_and_null_label_works(cls):
    torch.manual_seed(0)
    net = _randomised(cls((3, 8, 8), 10, augment_dim=9, **TINY))
    x, c = torch.randn(4, 3, 8, 8), torch.full((4,), -0.3)
    with torch.no_grad():
        a = net(x, c, torch.tensor([1, 1, 1, 1]))
        b = net(x, c, torch.tensor([2, 2, 2, 2]))
        null = net(x, c, torch.full((4,), 10))  # index num_classes = "no label"
        none = net(x, c, None)
        aug = net(x, c, torch.tensor([1, 1, 1, 1]), torch.randn(4, 9))
        zero_aug = net(x, c, torch.tensor([1, 1, 1, 1]), torch.zeros(4, 9))
        other_noise = net(x, c + 0.5, torch.tensor([1, 1, 1, 1]))
    assert a.shape == x.shape and torch.isfinite(null).all()
    assert not torch.allclose(a, b) and not torch.allclose(a, null) and not torch.allclose(a, aug)
    assert torch.allclose(null, none)  # no labels at all = the null label (EDM's all-zero one-hot)
    assert torch.allclose(zero_aug, a)  # zero augmentation labels = none given (bias-free map, EDM)
    assert not torch.allclose(a, other_noise)


@pytest.mark.parametrize("cls", [DDPMpp, NCSNpp])
def test_tiny_network_keeps_the_shape_and_backpropagates(cls):
    torch.manual_seed(0)
    net = cls((1, 8, 8), 0, **TINY)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = net(x, torch.randn(3))
    out.square().sum().backward()
    assert out.shape == x.shape
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("shape,bad", [((2,), "(2,)"), ((3, 8, 6), "(3, 8, 6)"), ((3, 6, 6), "(3, 6, 6)")])
def test_wrong_image_size_is_a_clear_value_error(shape, bad):
    with pytest.raises(ValueError, match=r"ddpmpp needs square images .* divisible by 4") as err:
        DDPMpp(shape, 0, channel_mult="2,2,2")
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_wrong_image_size_via_the_cli_is_one_line_exit_2(tmp_path):
    out = run_cli("run", "--dataset", "moons", "--network", "ddpmpp", "--results", str(tmp_path / "r"))
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "ddpmpp" in out.stderr and "(2,)" in out.stderr
    assert not (tmp_path / "r").exists()


def test_list_shows_parameter_counts(capsys):
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert "55.7M params at 3x32x32" in text and "56.4M params at 3x32x32" in text


def test_a_tiny_ddpmpp_with_augmentation_trains_in_the_engine(registry, tmp_path):
    cfg = bind_data(registry, TrainConfig(
        dataset=resolve(registry, "dataset", "digits"),
        network=resolve(registry, "network", {"name": "ddpmpp", **TINY, "augment_dim": 9}),
        pairing=resolve(registry, "pairing", "aot"), seed=0, train_steps=40, batch=32, pool=64, lr=2e-3, augment_p=0.12))
    torch.manual_seed(0)
    ckpt = train_model(registry, cfg, tmp_path / "m.pt", TrainOptions(progress=False, pair_workers=0, log_every=10))
    losses = [loss for _, loss in ckpt["history"]]
    assert ckpt["done"] and len(losses) == 4 and losses[-1] < losses[0], losses
    init = build_model(registry, cfg, load_splits(registry, cfg.dataset)).state_dict()  # the engine's seeded init
    assert init.keys() == ckpt["net"].keys()
    assert all(torch.isfinite(v).all() for v in ckpt["net"].values())
    for name in ("net.dec.8x8_aux_conv.weight", "net.map_augment.weight", "net.enc.4x4_block0.qkv.weight"):
        assert not torch.equal(ckpt["net"][name], init[name]), name
