"""APNet-C / APNet-S (reid.models.apnet) and the SE / RGA-S blocks (reid.models.attention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import reid.models.apnet  # noqa: F401  (registers apnet_c / apnet_s)
from reid.engine.criterion import Criterion
from reid.models import ResNetBNNeck, build
from reid.models.apnet import APNetC, APNetS, AttentionPyramid, split_sizes, stage_sizes
from reid.models.attention import RGASpatial, SqueezeExcitation

torch.set_num_threads(1)

PIDS = torch.tensor([0, 0, 1, 1, 2, 2])
SETTINGS = {"ce": {"weight": 1.0, "epsilon": 0.1}, "triplet": {"weight": 1.0, "margin": 0.3}}


def _images(b: int = 4, h: int = 64, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics/affine params, so eval-mode comparisons are meaningful."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ---------------------------------------------------------------- SE and level 1 == plain SE


def test_se_matches_its_equation():
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=4)
    x = torch.randn(3, 32, 5, 4)
    a = torch.sigmoid(se.fc2.weight @ torch.relu(se.fc1.weight @ x.mean((2, 3)).T)).T  # eq. (5)
    assert torch.allclose(se(x), x * a[:, :, None, None], atol=1e-6)
    assert se.fc1.bias is None and se.fc2.bias is None and se.fc1.out_features == 8


@pytest.mark.parametrize("radix", [1, 2, 4])
def test_level1_pyramid_is_exactly_plain_se(radix):
    """Level 1 never splits (n = radix ** 0 = 1): same weights -> bit-identical output."""
    torch.manual_seed(0)
    model = APNetC(num_classes=3, level=1, radix=radix, depth=18)
    x = torch.randn(2, 64, 8, 4)
    pyramid = model.pyramids[0]
    assert pyramid.sizes == [[64]]
    se = SqueezeExcitation(64, reduction=16)
    se.load_state_dict(pyramid.levels[0][0].state_dict())
    assert torch.equal(pyramid(x), se(x))


def test_apnet_c_level1_radix1_equals_se_resnet():
    """The whole model: APNet-C level 1 radix 1 == a ResNet with a plain SE block after each stage."""
    torch.manual_seed(0)
    model = build("apnet_c", 5, level=1, radix=1, depth=18)
    _randomise_bn(model)
    model.eval()
    ses = []
    for p in model.pyramids:
        blk = p.levels[0][0]
        se = SqueezeExcitation(blk.channels, 16)
        se.load_state_dict(blk.state_dict())
        ses.append(se)
    x = _images()
    with torch.no_grad():
        y = x
        stage = 0
        for name, module in model.backbone.named_children():
            y = module(y)
            if name.startswith("layer"):
                y = ses[stage](y)
                stage += 1
        ref = model.bottleneck(torch.flatten(model.gap(y), 1))
        assert torch.equal(model(x)["embed"], ref)


def test_level0_is_the_bag_of_tricks_baseline():
    torch.manual_seed(0)
    model = build("apnet_c", 5, level=0, depth=18)
    assert len(model.pyramids) == 0
    base = ResNetBNNeck(num_classes=5, depth=18)
    _randomise_bn(model)
    base.load_state_dict(model.state_dict())
    model.eval(), base.eval()
    with torch.no_grad():
        assert torch.equal(model(_images())["embed"], base(_images())["embed"])
    assert [g["name"] for g in model.param_groups(0.1)] == ["backbone", "bnneck", "classifier"]


# ---------------------------------------------------------------- split-attend-merge-stack


def test_split_sizes():
    assert split_sizes(8, 4) == [2, 2, 2, 2]
    assert split_sizes(7, 3) == [3, 2, 2]
    with pytest.raises(ValueError):
        split_sizes(2, 4)


def test_apnet_c_pyramid_structure():
    model = APNetC(num_classes=3, level=3, radix=2, depth=50)
    assert len(model.pyramids) == 4
    for p, c in zip(model.pyramids, (256, 512, 1024, 2048)):
        assert p.dim == 1
        assert [len(level) for level in p.levels] == [1, 2, 4]
        assert p.sizes == [[c], [c // 2] * 2, [c // 4] * 4]
        assert [blk.channels for blk in p.levels[2]] == [c // 4] * 4
        assert p.levels[2][0].fc1.out_features == c // 4 // 16


def test_apnet_s_pyramid_structure():
    model = APNetS(num_classes=3, input_size=(256, 128), level=3, radix=2, depth=50)
    heights = [64, 32, 16, 16]
    for p, h, (sh, sw) in zip(model.pyramids, heights, stage_sizes(256, 128)):
        assert p.dim == 2 and sh == h
        assert p.sizes == [[h], [h // 2] * 2, [h // 4] * 4]
        assert [(blk.height, blk.width) for blk in p.levels[1]] == [(h // 2, sw)] * 2


def test_stage_sizes_match_the_trunk():
    model = APNetC(num_classes=3, level=0, depth=18)
    x = _images(1, 70, 35)
    sizes = []
    with torch.no_grad():
        for name, module in model.eval().backbone.named_children():
            x = module(x)
            if name.startswith("layer"):
                sizes.append(tuple(x.shape[2:]))
    assert sizes == stage_sizes(70, 35, last_stride=1)


@pytest.mark.parametrize("dim", [1, 2])
def test_sub_attentions_only_see_their_part(dim):
    """One level split in two: the output of part 0 does not depend on part 1's input (eq. (2))."""
    torch.manual_seed(0)
    if dim == 1:
        blocks = [[SqueezeExcitation(8, 2), SqueezeExcitation(8, 2)]]
        sizes = [[8, 8]]
    else:
        blocks = [[RGASpatial(8, 3, 4), RGASpatial(8, 3, 4)]]
        sizes = [[3, 3]]
    pyr = AttentionPyramid(blocks, sizes, dim=dim).eval()
    x = torch.randn(2, 16 if dim == 1 else 8, 6 if dim == 2 else 5, 4)
    y = x.clone()
    y.narrow(dim, sizes[0][0], sizes[0][1]).add_(torch.randn_like(y.narrow(dim, sizes[0][0], sizes[0][1])))
    with torch.no_grad():
        a, b = pyr(x), pyr(y)
    first = sizes[0][0]
    assert torch.equal(a.narrow(dim, 0, first), b.narrow(dim, 0, first))
    assert not torch.allclose(a.narrow(dim, first, first), b.narrow(dim, first, first))


def test_levels_stack_coarse_to_fine():
    """X_i = A_i(X_{i-1}) * X_{i-1} (eq. (3)), level 1 first."""
    torch.manual_seed(0)
    l1 = [SqueezeExcitation(8, 2)]
    l2 = [SqueezeExcitation(4, 2), SqueezeExcitation(4, 2)]
    pyr = AttentionPyramid([l1, l2], [[8], [4, 4]], dim=1)
    x = torch.randn(2, 8, 3, 3)
    x1 = l1[0](x)
    x2 = torch.cat([l2[0](x1[:, :4]), l2[1](x1[:, 4:])], dim=1)
    assert torch.allclose(pyr(x), x2, atol=1e-6)


# ---------------------------------------------------------------- RGA-S


def test_rga_spatial_attention_shape_range_and_size_check():
    torch.manual_seed(0)
    rga = RGASpatial(16, 4, 3)
    x = torch.randn(2, 16, 4, 3)
    a = rga.attention(x)
    assert a.shape == (2, 1, 4, 3)
    assert ((a > 0) & (a < 1)).all()
    assert rga.gg[0].in_channels == 2 * 12  # one relation channel per position, in and out
    assert torch.allclose(rga(x), x * a)
    with pytest.raises(ValueError, match="4x3"):
        rga(torch.randn(2, 16, 5, 3))


def test_apnet_s_rejects_other_input_sizes():
    model = APNetS(num_classes=3, input_size=(64, 32), level=2, depth=18)
    with pytest.raises(ValueError, match="64x32"):
        model(_images(2, 96, 32))
    with pytest.raises(ValueError, match="stripes"):
        APNetS(num_classes=3, input_size=(32, 32), level=4, depth=18)  # 8 stripes of a 2-row map


# ---------------------------------------------------------------- training step, groups, args


@pytest.mark.parametrize("name,kwargs", [
    ("apnet_c", dict(depth=18, level=3)),
    ("apnet_s", dict(depth=18, level=3, input_size=(64, 32))),
])
def test_train_step_and_param_groups(name, kwargs):
    torch.manual_seed(0)
    model = build(name, 3, **kwargs)
    assert model.losses == ("ce", "triplet")
    out = model(_images(6))
    assert set(out) == {"embed", "feat", "logits"}
    assert out["embed"].shape == out["feat"].shape == (6, 512) and out["logits"].shape == (6, 3)
    loss, logs = Criterion(model.losses, SETTINGS, {"num_classes": 3})(out, {"pids": PIDS})
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad
    groups = model.param_groups(0.01)
    assert [g["name"] for g in groups] == ["backbone", "attention", "bnneck", "classifier"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(_images(2))["embed"], model(_images(2))["embed"])


def test_defaults_are_the_papers():
    c = APNetC(num_classes=3)
    assert (c.level, c.radix, c.depth, c.last_stride, c.se_reduction) == (2, 2, 50, 1, 16)
    s = APNetS(num_classes=3)
    assert (s.level, s.radix, s.depth, s.last_stride, s.input_size) == (2, 2, 50, 1, (256, 128))
    assert s.test_input_size == s.input_size


@pytest.mark.parametrize("kwargs", [dict(level=-1), dict(radix=0), dict(level=1.5), dict(se_reduction=0),
                                    dict(depth=34), dict(last_stride=3)])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        APNetC(num_classes=3, **kwargs)


def test_apnet_s_invalid_input_size():
    with pytest.raises(ValueError, match="input_size"):
        APNetS(num_classes=3, input_size=(0, 128), depth=18)
    with pytest.raises(ValueError, match="input_size"):
        APNetS(num_classes=3, input_size=256, depth=18)


def test_gflops_at_224_match_table_iii():
    """Table III: APNet-C0..C3 at 224x224 (last stride 1) = 6.23-6.25 GFLOPs as counted by
    PyTorch-OpCounter (multiply-adds); torch's counter counts a multiply-add as 2 FLOPs."""
    paper = {0: 6.23, 1: 6.23, 2: 6.24, 3: 6.25}
    for level, gmac in paper.items():
        model = APNetC(num_classes=751, level=level).to("meta").eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, 224, 224, device="meta"))
        ours = counter.get_total_flops() / 2e9
        assert abs(ours - gmac) / gmac < 0.05, (level, ours, gmac)


def test_apnet_s_masks_start_uniform_and_rga_init_is_kept_on_request():
    """zero_init_gate (default): every RGA-S mask is exactly 0.5 at initialisation, in train and
    eval mode; zero_init_gate=False keeps RGA's random initial masks."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 32)
    for mode in ("train", "eval"):
        model = APNetS(num_classes=3, input_size=(64, 32), level=2, depth=18)
        getattr(model, mode)()
        masks = []

        def recording(attention):
            def wrapped(t):
                masks.append(attention(t))
                return masks[-1]
            return wrapped

        for pyr in model.pyramids:
            for lvl in pyr.levels:
                for blk in lvl:
                    blk.attention = recording(blk.attention)
        with torch.no_grad():
            model(x)
        assert len(masks) == 4 * (1 + 2)
        assert all(torch.equal(m, torch.full_like(m, 0.5)) for m in masks)
    rga = RGASpatial(16, 4, 3, zero_init_gate=False).train()
    assert not torch.allclose(rga.attention(torch.randn(2, 16, 4, 3)), torch.tensor(0.5), atol=1e-3)
