import pytest
import torch

from reid.engine.criterion import Criterion
from reid.losses.pan import OrthogonalRegularization  # noqa: F401  (registers the PAN losses)
from reid.models import build
from reid.models.pan import PAN, PartAwareAttention, PartFeatureLearning

torch.set_num_threads(1)

B, H, W, N = 6, 64, 32, 3
PIDS = torch.tensor([0, 0, 1, 1, 2, 2])
#: the params.yaml sections proposed for PAN (paper values)
LOSS_SETTINGS = {
    "pan_part_ce": {"weight": 1.0, "epsilon": 0.0},
    "triplet": {"weight": 1.0, "margin": 0.3},
    "pan_orth": {"weight": 1e-3},
}


def _images(b=B, h=H, w=W):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model18():
    torch.manual_seed(0)
    return PAN(num_classes=N, depth=18)


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


def test_train_outputs(model18):
    model18.train()
    out = model18(_images())
    assert set(out) == {"embed", "feat", "part_logits", "logits", "part_masks"}
    assert out["embed"].shape == out["feat"].shape == (B, 6 * 256)
    assert out["part_logits"].shape == (B, 6, N)
    assert torch.allclose(out["logits"], out["part_logits"].mean(1))
    # last stride 1: layer4 grid is H/16 x W/16; one mask per part of each scale
    assert [tuple(m.shape) for m in out["part_masks"]] == [(B, 1, 4, 2), (B, 2, 4, 2), (B, 3, 4, 2)]
    assert all((m >= 0).all() for m in out["part_masks"])  # Conv-BN-ReLU masks
    assert not torch.allclose(out["embed"], out["feat"])  # BNNeck


def test_eval_outputs_deterministic(model18):
    model18.eval()
    with torch.no_grad():
        a, b = model18(_images(2)), model18(_images(2))
    model18.train()
    assert set(a) == {"embed"} and a["embed"].shape == (2, 1536)
    assert torch.equal(a["embed"], b["embed"])


def test_one_training_step_all_losses_reach_every_parameter(model18):
    """The zoo contract with the PAN loss settings (params.yaml does not have them yet)."""
    model18.train()
    model18.zero_grad()
    out = model18(_images())
    crit = Criterion(PAN.losses, LOSS_SETTINGS, {"num_classes": N})
    loss, logs = crit(out, {"pids": PIDS})
    assert torch.isfinite(loss)
    assert {"pan_part_ce", "triplet", "pan_orth"} <= set(logs)
    loss.backward()
    bad = [n for n, p in model18.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad
    groups = model18.param_groups(0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model18.parameters() if p.requires_grad)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"backbone": 0.01, "plm": 0.1, "pam": 0.1, "embedding": 0.1, "bnneck": 0.1, "classifier": 0.1}
    assert not model18.bottleneck.bias.requires_grad


def test_plm_part_vector_is_avgpool_of_masked_map():
    torch.manual_seed(0)
    plm = PartFeatureLearning(in_channels=16, num_parts=3, hidden=4, se_reduction=4).eval()
    x = torch.rand(2, 16, 5, 3)
    parts, masks = plm(x)
    c = plm.channel(x)  # (B, C)
    for j in range(3):
        m = c[:, :, None, None] * masks[:, j : j + 1]  # m_j = c (x) s_j, (B, C, h, w)
        assert torch.allclose(parts[:, j], (m * x).mean(dim=(2, 3)), atol=1e-6)


def test_pam_matches_eqs_1_and_2_per_part():
    torch.manual_seed(0)
    pam = PartAwareAttention(part_channels=8, in_channels=5, dim=4, out_channels=5)
    parts, x = torch.randn(2, 3, 8), torch.randn(2, 5, 6, 4)
    z = pam(parts, x)
    assert z.shape == (2, 3, 5)
    n = 24
    psi = pam.psi(x).flatten(2)  # (B, D, N)
    fx = pam.f(x).flatten(2)  # (B, C, N)
    for b in range(2):
        for i in range(3):
            theta = pam.phi(parts[b, i]) @ psi[b]  # eq. (2), (N,)
            zi = (theta[None, :] * fx[b]).sum(1) / n  # eq. (1)
            assert torch.allclose(z[b, i], zi, atol=1e-5)


def test_fusion_add_and_baseline_shapes():
    torch.manual_seed(0)
    for kw in ({"fusion": "add"}, {"pam_blocks": ()}, {"pam_dim": (8, 16, 32), "granularities": (1, 2)}):
        m = PAN(num_classes=N, depth=18, embed_dim=32, **kw)
        out = m(_images(4))
        p = sum(m.granularities)
        assert out["embed"].shape == (4, p * 32) and out["part_logits"].shape == (4, p, N)
    assert PAN(num_classes=N, depth=18, fusion="add").fused_dim == 512
    assert PAN(num_classes=N, depth=18).fused_dim == 512 + 64 + 128 + 256


@pytest.mark.parametrize(
    "kwargs, paper_m",
    [
        ({"pam_blocks": ()}, 27.8),  # Baseline
        ({"fusion": "add", "pam_dim": 128}, 32.5),
        ({"fusion": "add", "pam_dim": 256}, 33.5),
        ({"fusion": "add", "pam_dim": (256, 512, 1024)}, 36.6),
        ({"pam_dim": 128}, 33.0),
        ({}, 33.9),  # PAN_c, D = 256: the default
        ({"pam_dim": (256, 512, 1024)}, 37.0),
    ],
)
def test_param_counts_match_table_2_without_plm(kwargs, paper_m):
    """Table 2 (Market-1501, 751 ids) matches every PAN variant to <0.3% once the PLM is left out."""
    with torch.device("meta"):
        m = PAN(num_classes=751, **kwargs)
    assert _nparams(m) - _nparams(m.plm) == pytest.approx(paper_m * 1e6, rel=3e-3)


def test_build_by_name_and_defaults():
    with torch.device("meta"):
        m = build("pan", 5)
    assert isinstance(m, PAN)
    assert m.granularities == (1, 2, 3) and m.pam_dims == (256, 256, 256) and m.fusion == "concat"
    assert m.backbone.layer4[0].conv2.stride == (1, 1)
    assert m.feat_dim == 1536


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"granularities": ()},
        {"granularities": (1, 1)},
        {"granularities": (0, 2)},
        {"pam_blocks": (4,)},
        {"pam_dim": (256, 256)},
        {"pam_dim": 0},
        {"fusion": "mul"},
        {"embed_dim": 0},
        {"neck_feat": "mid"},
        {"head_lr_mult": 0},
        {"depth": 34},
        {"last_stride": 3},
    ],
)
def test_invalid_arguments(kwargs):
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError):
        PAN(**kwargs)


def test_rejects_bad_images(model18):
    with pytest.raises(ValueError):
        model18(torch.randn(2, 1, 64, 32))
