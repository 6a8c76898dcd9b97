"""TAMR: STN part sampling at initialisation, coordinate convention, residual attention (eq. (8)),
outputs, param groups, and the zoo contract with TAMR's own loss settings."""

import pytest
import torch

import reid.losses.localization  # noqa: F401  (registers "tamr_loc")
import reid.losses.mgr  # noqa: F401  (registers the MGR terms)
from reid.engine.criterion import Criterion
from reid.losses.localization import PRIOR_AREAS, PRIOR_CENTERS, PRIOR_RATIOS
from reid.models import build
from reid.models.tamr import TAMR, ResidualAttentionModule, residual_attention, sample_part, theta_to_affine

torch.set_num_threads(1)

NUM_CLASSES = 4
S = 64  # test input size (square, as the paper's 224 x 224)
PIDS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
MODEL_IDS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])

#: the settings to add to params.yaml's ``loss`` section (paper values)
LOSS_SETTINGS = {
    "tamr_loc": {"weight": 1.0, "prior_centers": [[0.0, 0.3], [0.0, -0.4]], "prior_ratios": [2.4, 2.0],
                 "prior_areas": [0.2, 0.3], "alpha": 0.1, "beta": 0.1, "gamma": 0.1, "delta": 1.0, "mu": 0.1,
                 "xi": [1.0, 1.0, 1.0, 1.0]},
    "mgr_coarse": {"weight": 1.0, "margin": 0.2, "k": 10, "normalize": True, "feat_keys": ["global_feat", "part_feat"]},
    "mgr_fine": {"weight": 1.0, "margin": 0.2, "k": 3, "normalize": True, "feat_keys": ["global_feat", "part_feat"]},
    "mgr_pair": {"weight": 1.0, "normalize": True, "feat_keys": ["global_feat", "part_feat"]},
    "tamr_ce": {"weight": 1.0, "epsilon": 0.0, "logits_keys": ["logits", "part_logits"]},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("tamr", NUM_CLASSES)


def _bilinear_image(h, w):
    """(1, 3, h, w) image whose channels are bilinear functions of the pixel centre (u, v):
    u = column, v = row (row 0 at the top). Bilinear interpolation reproduces them exactly."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([_f(0, u, v), _f(1, u, v), _f(2, u, v)]).unsqueeze(0)


def _f(c, u, v):
    return [u * v / 64.0 + 0.3 * u - 0.2 * v + 1.0, u, v][c]


def _box_crop_by_hand(center, ratio, area, h, w):
    """The prior box resampled to (h, w), from its corners, without affine_grid.

    Box: half-width sx = sqrt(area * ratio), half-height sy = sqrt(area / ratio) in the normalised
    frame ([-1, 1], y up). Its left/right edges in pixel-edge units (0 = image's left edge) are
    (cx -+ sx + 1) / 2 * w; its top/bottom edges, counted in rows from the top, are
    (1 - (cy +- sy)) / 2 * h. Output pixel j's centre lies at left + (j + 1/2) (right - left) / w
    (pixel-edge units), i.e. pixel-centre coordinate u_j = that - 1/2; likewise rows.
    """
    cx, cy = center
    sx, sy = (area * ratio) ** 0.5, (area / ratio) ** 0.5
    left, right = (cx - sx + 1) / 2 * w, (cx + sx + 1) / 2 * w
    top, bottom = (1 - (cy + sy)) / 2 * h, (1 - (cy - sy)) / 2 * h
    u = torch.tensor([left + (j + 0.5) * (right - left) / w - 0.5 for j in range(w)], dtype=torch.float64)
    v = torch.tensor([top + (i + 0.5) * (bottom - top) / h - 0.5 for i in range(h)], dtype=torch.float64)
    assert 0 <= u.min() and u.max() <= w - 1 and 0 <= v.min() and v.max() <= h - 1  # no border effects
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([_f(c, uu, vv) for c in range(3)]), (top, bottom)


@pytest.mark.parametrize("part", [0, 1])
def test_stn_at_init_samples_exactly_the_prior_box(model, part):
    image = _bilinear_image(S, S)
    noise = torch.randn(2, 3, S, S)  # the localization net must ignore its input at init
    theta, _ = model.localize(noise)
    prior = torch.tensor(model.priors, dtype=torch.float32)
    assert torch.equal(theta, prior.unsqueeze(0).expand(2, -1, -1))
    theta, parts = model.localize(image.float())
    expected, _ = _box_crop_by_hand(PRIOR_CENTERS[part], PRIOR_RATIOS[part], PRIOR_AREAS[part], S, S)
    assert parts.shape == (1, 2, 3, S, S)
    torch.testing.assert_close(parts[0, part].double(), expected, atol=2e-4, rtol=0)


def test_y_points_up(model):
    """Paper convention: the windscreen (centre y = +0.3) comes from the upper half of the
    image, the car head (y = -0.4) from the lower half."""
    _, (ws_top, ws_bottom) = _box_crop_by_hand(PRIOR_CENTERS[0], PRIOR_RATIOS[0], PRIOR_AREAS[0], S, S)
    _, (ch_top, ch_bottom) = _box_crop_by_hand(PRIOR_CENTERS[1], PRIOR_RATIOS[1], PRIOR_AREAS[1], S, S)
    assert ws_bottom < S / 2 < ch_top
    rows = _bilinear_image(S, S)[:, 2:3].expand(1, 3, S, S).float()  # value = row index
    _, parts = model.localize(rows)
    assert parts[0, 0].max() < S / 2 - 0.5 < parts[0, 1].min()


def test_sample_part_exact_pixel_crop():
    """A box exactly covering the top-right quadrant, resampled at its own resolution, is a
    pixel-exact copy of that quadrant (y up: ty = +0.5 is the upper half)."""
    images = torch.randn(2, 3, 8, 12)
    theta = torch.tensor([[0.5, 0.5, 0.5, 0.5]]).expand(2, -1)
    crop = sample_part(images, theta, size=(4, 6))
    torch.testing.assert_close(crop, images[:, :, :4, 6:], atol=1e-6, rtol=0)
    bottom_left = sample_part(images, torch.tensor([[0.5, -0.5, 0.5, -0.5]]).expand(2, -1), size=(4, 6))
    torch.testing.assert_close(bottom_left, images[:, :, 4:, :6], atol=1e-6, rtol=0)


def test_theta_and_sampling_stay_float32_under_autocast(model):
    images = _bilinear_image(S, S).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theta, parts = model.localize(images)
    assert theta.dtype == torch.float32 and parts.dtype == torch.float32
    assert torch.equal(theta[0], torch.tensor(model.priors, dtype=torch.float32))  # not rounded to bf16
    _, ref = model.localize(images)
    assert torch.equal(parts, ref)
    half = sample_part(images.bfloat16(), theta[:, 0])
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref[:, 0], atol=0.5, rtol=0.01)  # only the output is rounded


def test_theta_to_affine():
    a = theta_to_affine(torch.tensor([[0.7, 0.1, 0.3, 0.3]]))
    assert torch.allclose(a, torch.tensor([[[0.7, 0.0, 0.1], [0.0, 0.3, -0.3]]]))
    with pytest.raises(ValueError):
        theta_to_affine(torch.zeros(2, 6))


def test_residual_attention_with_zero_mask_is_identity():
    torch.manual_seed(0)
    module = ResidualAttentionModule(8).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        module.mask_conv.weight.zero_()
        module.mask_conv.bias.fill_(-1e4)  # sigmoid -> exactly 0
        mask = module.mask(module.pre(x))
        assert torch.equal(mask, torch.zeros_like(mask))
        assert torch.equal(module(x), module.trunk(module.pre(x)))  # H = (1 + 0) * F = F
    f = torch.randn(2, 8, 5, 5)
    assert torch.equal(residual_attention(f, torch.zeros_like(f)), f)


def test_residual_attention_is_eq8():
    torch.manual_seed(1)
    module = ResidualAttentionModule(8, n=1, t=1, q=1).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        pre = module.pre(x)
        m = torch.sigmoid(module.mask_conv(module.mask_units(pre)))
        assert 0 < m.min() and m.max() < 1
        torch.testing.assert_close(module(x), (1 + m) * module.trunk(pre))
    assert (len(module.pre), len(module.trunk), len(module.mask_units)) == (1, 1, 1)  # q = t = n = 1


def test_outputs(model):
    model.train()
    out = model(torch.randn(6, 3, S, S))
    assert set(out) == {"embed", "global_feat", "part_feat", "logits", "part_logits", "theta"}
    assert out["embed"].shape == (6, 1024)
    assert out["global_feat"].shape == out["part_feat"].shape == (6, 512)
    assert out["logits"].shape == out["part_logits"].shape == (6, NUM_CLASSES)
    assert out["theta"].shape == (6, 2, 4)
    model.eval()
    with torch.no_grad():
        ev = model(torch.randn(3, 3, S, S))
    assert set(ev) == {"embed"} and ev["embed"].shape == (3, 1024)
    # the two halves are unit vectors (normalize_embed=True)
    torch.testing.assert_close(ev["embed"][:, :512].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(ev["embed"][:, 512:].norm(dim=1), torch.ones(3))
    model.train()


def test_architecture_defaults(model):
    # two residual attention modules per branch, after layer3 (256 ch) and layer4 (512 ch)
    for branch in (model.global_branch, *model.part_branches):
        names = [n for n, _ in branch.named_children()]
        assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "attention1",
                         "layer4", "attention2"]
        assert (branch.attention1.channels, branch.attention2.channels) == (256, 512)
    stacked = TAMR(NUM_CLASSES, attention_after=("layer4", "layer4"))
    names = [n for n, _ in stacked.global_branch.named_children()]
    assert names[-3:] == ["layer4", "attention1", "attention2"]


def test_attention_channels_follow_the_stage():
    from reid.models.tamr import _branch

    branch, dim = _branch(50, 2, ("layer1",))  # bottleneck stage: 4 x 64 channels
    assert dim == 2048 and branch.attention1.channels == 256
    with torch.no_grad():
        assert branch.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 1, 1)


def test_param_groups(model):
    groups = model.param_groups(0.01)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"localization", "global", "parts", "fusion", "classifier"}
    assert by_name["localization"]["lr"] == pytest.approx(1e-5)  # 0.001 x base LR (Sec. IV-A)
    assert {id(p) for p in by_name["localization"]["params"]} == {id(p) for p in model.localizers.parameters()}
    assert all(g["lr"] == 0.01 for n, g in by_name.items() if n != "localization")
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(1 for _ in model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"attention_after": ("layer5",)}, {"loc_lr_mult": 0.0}, {"prior_ratios": (2.4,)},
     {"depth": 34}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        TAMR(**{"num_classes": NUM_CLASSES, **kwargs})
    with pytest.raises(ValueError):
        build("tamr", NUM_CLASSES)(torch.randn(2, 1, S, S))


def test_contract_with_tamr_losses():
    """tests/models/test_zoo.py's contract, with TAMR's loss settings (not yet in params.yaml)."""
    torch.manual_seed(0)
    model = build("tamr", NUM_CLASSES)
    assert model.test_input_size == (S, S)
    images = torch.randn(len(PIDS), 3, S, S)
    batch = {"images": images, "pids": PIDS, "model_ids": MODEL_IDS, "camids": torch.zeros_like(PIDS)}
    model.train()
    out = model(images)
    criterion = Criterion(model.losses, LOSS_SETTINGS, {"num_classes": NUM_CLASSES})
    loss, logs = criterion(out, batch)
    assert torch.isfinite(loss) and loss.dim() == 0
    for name in model.losses:
        assert name in logs
    assert logs["tamr_loc"] == 0.0  # theta is the prior at init
    assert logs["mgr_coarse_count"] > 0 and logs["mgr_fine_count"] > 0
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    with torch.no_grad():
        a, b = model(images[:4]), model(images[:4])
    assert torch.equal(a["embed"], b["embed"])
