import pytest
import torch
import torch.nn.functional as F

from reid.engine.criterion import Criterion
from reid.losses.sag import SAGCrossEntropy  # noqa: F401  (registers "sag_ce")
from reid.models import build
from reid.models.sag import SAG, SelfAttentionGrid

torch.set_num_threads(1)

B, H, W, N = 4, 64, 32, 3
PIDS = torch.tensor([0, 1, 2, 0])
#: the params.yaml section proposed for SAG (paper values)
LOSS_SETTINGS = {"sag_ce": {"weight": 1.0, "epsilon": 0.0}}
#: lower-branch grid (h, w) after layer<i> for a 64 x 32 input, standard ResNet strides
GRIDS = {1: (16, 8), 2: (8, 4), 3: (4, 2), 4: (2, 1)}


def _images(b=B):
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_each_depth_builds_trains_and_evaluates(depth):
    """D1..D4 (Table 1) with the default ResNet-50: forward, one CE step, eval."""
    torch.manual_seed(0)
    m = build("sag", N, depth=depth)
    assert m.l2_normalize is (depth < 4)  # Sec. 4.6: eq. 7 only at D1-D3
    out = m(_images())
    assert set(out) == {"embed", "logits", "sag_grid"}
    assert out["embed"].shape == (B, 2048) and out["logits"].shape == (B, N)
    assert out["sag_grid"].shape == (B, 1, *GRIDS[depth])
    loss, logs = Criterion(SAG.losses, LOSS_SETTINGS, {"num_classes": N})(out, {"pids": PIDS})
    loss.backward()
    bad = [n for n, p in m.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad
    assert m.sag.conv.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        a, b = m(_images(2)), m(_images(2))
    assert set(a) == {"embed"} and a["embed"].shape == (2, 2048)
    assert torch.equal(a["embed"], b["embed"])


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_grid_weights_sum_to_one_over_positions(depth):
    torch.manual_seed(0)
    m = SAG(N, depth=depth, backbone_depth=18)
    grid = m(_images())["sag_grid"]
    assert (grid >= 0).all()
    assert torch.allclose(grid.sum(dim=(1, 2, 3)), torch.ones(B), atol=1e-6)
    m.eval()
    g = SelfAttentionGrid(8).eval()(torch.randn(3, 8, 5, 2))
    assert torch.allclose(g.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-6)


def test_two_branches_share_weights_and_upper_is_bilinear_x2():
    torch.manual_seed(0)
    m = SAG(N, backbone_depth=18).eval()
    seen = []
    hook = m.backbone.conv1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = _images(2)
    with torch.no_grad():
        m(x)
    hook.remove()
    assert [tuple(t.shape) for t in seen] == [(2, 3, 2 * H, 2 * W), (2, 3, H, W)]
    assert torch.allclose(seen[0], F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    assert torch.equal(seen[1], x)


def test_d4_embed_is_grid_weighted_max_filtered_feature():
    """eq. 6 at D4: v = maxpool_2x2(f1) * G, pooled as the G-weighted sum (no eq. 7)."""
    torch.manual_seed(0)
    m = SAG(N, depth=4, backbone_depth=18).eval()
    x = _images(2)
    with torch.no_grad():
        trunk = m.backbone
        f1 = trunk(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        f2 = trunk(x)
        grid = m.sag(f2)
        expected = (F.max_pool2d(f1, 2, 2) * grid).sum(dim=(2, 3))
        assert torch.allclose(m(x)["embed"], expected, atol=1e-5)


def test_l2_normalisation_at_shallow_depth_and_override():
    torch.manual_seed(0)
    m = SAG(N, depth=2, backbone_depth=18).eval()
    captured = []
    hook = m.backbone.layer3.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    with torch.no_grad():
        m(_images(2))
    hook.remove()
    v = captured[-1]  # what layer3 receives on the attended stream
    assert v.shape[2:] == GRIDS[2]
    assert torch.allclose(v.flatten(1).norm(dim=1), torch.ones(2), atol=1e-5)  # eq. 7
    assert SAG(N, depth=2, backbone_depth=18, l2_normalize=False).l2_normalize is False
    assert SAG(N, depth=4, backbone_depth=18, l2_normalize=True).l2_normalize is True


def test_param_groups():
    m = SAG(N, backbone_depth=18)
    groups = m.param_groups(0.01)
    assert {g["name"]: g["lr"] for g in groups} == {"backbone": 0.01, "sag": 0.01, "classifier": 0.1}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}


def test_defaults():
    with torch.device("meta"):
        m = build("sag", 751)
    assert m.depth == 4 and m.scale_factor == 2.0 and m.feat_dim == 2048
    assert m.backbone.layer4[0].conv2.stride == (2, 2)  # standard ResNet-50: D4 grid 5x2 at 160x64
    assert sum(p.numel() for p in m.sag.parameters()) == 2048 + 1 + 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"depth": 0},
        {"depth": 5},
        {"depth": 4.0},
        {"depth": True},
        {"l2_normalize": "yes"},
        {"scale_factor": 1.0},
        {"head_lr_mult": -1.0},
        {"backbone_depth": 34},
        {"last_stride": 3},
    ],
)
def test_invalid_arguments(kwargs):
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError):
        SAG(**kwargs)


def test_rejects_bad_images():
    with pytest.raises(ValueError):
        SAG(N, backbone_depth=18)(torch.randn(2, 3, 64))
