"""CAN (reid.models.can), its triplet loss (reid.losses.can) and the HA-CNN attention block."""

from __future__ import annotations

import pytest
import torch
import yaml

import reid.losses.can  # noqa: F401  (registers can_triplet)
import reid.models.can  # noqa: F401  (registers can)
from reid.engine.criterion import Criterion
from reid.losses import build_loss
from reid.losses.triplet import TripletLoss
from reid.models import build
from reid.models.attention import SpatialChannelAttention
from reid.models.can import CAN, PARTS, load_parsing_weights

torch.set_num_threads(1)

H, W = 64, 32
PIDS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])

#: the params.yaml ``loss:`` sections proposed for CAN (kept identical to the report)
PARAMS_YAML = """
ce:
  weight: 1.0
  epsilon: 0.1
triplet:
  weight: 1.0
  margin: 0.3
can_triplet:
  weight: 1.0        # CAN Sec. 3.4 / 4.2: the batch-hard triplet loss is CAN's only objective
  margin: 0.1        # CAN eq. (1): alpha = 0.1
  normalize: false   # Euclidean distance on the raw 3x2048 descriptor
"""


def _images(b: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def can18() -> CAN:
    torch.manual_seed(0)
    return build("can", 4, depth=18)


# ---------------------------------------------------------------- contract with the default model


def test_default_model_train_step_descriptor_6144():
    """Paper configuration (ResNet-50 streams): 3 x 2048 descriptor; one training step with the
    proposed params.yaml settings; every parameter gets a finite gradient."""
    torch.manual_seed(0)
    model = build("can", 4)
    assert model.losses == ("can_triplet", "ce")
    images = _images(len(PIDS))
    out = model.train()(images)
    assert set(out) == {"embed", "feat", "logits", "part_masks"}
    assert out["embed"].shape == out["feat"].shape == (len(PIDS), 3 * 2048) == (len(PIDS), 6144)
    assert out["logits"].shape == (len(PIDS), 4)
    assert out["part_masks"].shape == (len(PIDS), 5, H // 16, W // 16)
    criterion = Criterion(model.losses, yaml.safe_load(PARAMS_YAML), {"num_classes": 4})
    loss, logs = criterion(out, {"pids": PIDS})
    assert torch.isfinite(loss) and "can_triplet" in logs and "ce" in logs
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not bad, bad[:5]
    groups = model.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["backbone", "parsing", "pixel_attention", "classifier"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    model.eval()
    with torch.no_grad():
        a, b = model(images[:2]), model(images[:2])
    assert set(a) == {"embed"} and a["embed"].shape == (2, 6144)
    assert torch.equal(a["embed"], b["embed"])


# ---------------------------------------------------------------- part-level attention


def test_masks_are_a_distribution(can18):
    can18.eval()
    with torch.no_grad():
        probs = can18.parsing_probs(_images(), (H // 16, W // 16))
        masks = can18.masks_from_probs(probs)
    assert probs.shape == masks.shape == (4, 5, H // 16, W // 16)
    # softmax over (background, head, upper body, legs, feet): non-negative, sums to 1
    assert (probs >= 0).all() and torch.allclose(probs.sum(1), torch.ones(4, H // 16, W // 16), atol=1e-6)
    # foreground = 1 - background = sum of the four parts; the parts are the class probabilities
    assert torch.allclose(masks[:, 0], 1 - probs[:, 0], atol=1e-6)
    assert torch.equal(masks[:, 1:], probs[:, 1:])
    assert ((masks >= 0) & (masks <= 1 + 1e-6)).all()
    assert PARTS == ("foreground", "head", "upper_body", "legs", "feet")


def test_resized_masks_stay_a_distribution(can18):
    with torch.no_grad():
        probs = can18.eval().parsing_probs(_images(), (7, 5))  # bilinear up-sampling from 4 x 2
    assert probs.shape[2:] == (7, 5)
    assert torch.allclose(probs.sum(1), torch.ones(4, 7, 5), atol=1e-6)


def test_masks_weight_the_appearance_features():
    """S_k = M_k * F: with all-background parsing every part feature vanishes and the
    descriptor reduces to [S6 ; GMP(0) ; GAP(0)] = [GAP(F) ; 0 ; 0]."""
    torch.manual_seed(0)
    model = build("can", 4, depth=18).eval()
    clf = model.parsing.classifier
    x = _images()
    with torch.no_grad():
        clf.weight.zero_()
        clf.bias.copy_(torch.tensor([100.0, -100.0, -100.0, -100.0, -100.0]))
        emb = model(x)["embed"]
        f = model.backbone(x)
    d = 512
    assert torch.allclose(emb[:, :d], f.mean((2, 3)), atol=1e-5)
    assert torch.allclose(emb[:, d:], torch.zeros(4, 2 * d), atol=1e-5)


def test_descriptor_layout(can18):
    model = can18.eval()
    x = _images()
    with torch.no_grad():
        emb = model(x)["embed"]
        f = model.backbone(x)
        masks = model.masks_from_probs(model.parsing_probs(x, f.shape[2:]))
        refined = [att(f * masks[:, k : k + 1]) for k, att in enumerate(model.pixel_attention)]
    d = 512
    assert emb.shape == (4, 3 * d)
    assert torch.allclose(emb[:, :d], f.mean((2, 3)))  # S6
    parts = torch.stack([r.amax((2, 3)) for r in refined[1:]]).amax(0)
    assert torch.allclose(emb[:, d : 2 * d], parts)  # global max pooling of S'_2..S'_5
    assert torch.allclose(emb[:, 2 * d :], refined[0].mean((2, 3)))  # foreground S'_1


def test_can6_descriptor():
    torch.manual_seed(0)
    model = build("can", 4, depth=18, descriptor="can6").eval()
    with torch.no_grad():
        assert model(_images(2))["embed"].shape == (2, 6 * 512)
    assert model.classifier.in_features == 6 * 512


# ---------------------------------------------------------------- parsing weights


def test_parsing_weights_load_from_file(can18, tmp_path):
    path = tmp_path / "parsing.pt"
    torch.save(can18.parsing.state_dict(), path)
    torch.manual_seed(123)  # a different random init
    model = build("can", 4, depth=18, parsing_weights=str(path))
    for k, v in can18.parsing.state_dict().items():
        assert torch.equal(model.parsing.state_dict()[k], v), k
    assert model.parsing_weights == str(path)
    with torch.no_grad():
        assert torch.equal(model.eval().parsing_probs(_images()), can18.eval().parsing_probs(_images()))


def test_parsing_weights_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build("can", 4, depth=18, parsing_weights=str(path))


def test_parsing_weights_mismatched_keys(can18, tmp_path):
    state = dict(can18.parsing.state_dict())
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(1)
    state["classifier.weight"] = torch.zeros(20, 256, 1, 1)  # e.g. the 20 un-grouped LIP labels
    path = tmp_path / "bad_keys.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="bad_keys.pt") as info:
        load_parsing_weights(can18.parsing, path)
    msg = str(info.value)
    assert "classifier.bias" in msg and "extra.weight" in msg and "(20, 256, 1, 1)" in msg


@pytest.mark.parametrize("content", ["not a state dict", {"x": object()}])
def test_parsing_weights_unreadable(can18, tmp_path, content):
    path = tmp_path / "garbage.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="garbage.pt"):
        load_parsing_weights(can18.parsing, path)


def test_parsing_weights_not_a_torch_file(can18, tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="text.pt"):
        load_parsing_weights(can18.parsing, path)


# ---------------------------------------------------------------- losses and the ID probe


def test_can_triplet_is_triplet_with_margin_0_1():
    loss = build_loss("can_triplet")
    assert loss.margin == pytest.approx(0.1) and loss.normalize is False
    feat = torch.randn(12, 16, generator=torch.Generator().manual_seed(0))
    value, logs = loss({"feat": feat}, {"pids": PIDS})
    ref, ref_logs = TripletLoss(margin=0.1)({"feat": feat}, {"pids": PIDS})
    assert torch.equal(value, ref)
    assert logs["can_triplet"] == ref_logs["triplet"] and "triplet" not in logs


def test_id_probe_is_detached_by_default(can18):
    """The paper trains with the triplet loss only: CE on the logits trains only the classifier."""
    model = can18.train()
    model.zero_grad(set_to_none=True)
    out = model(_images(6))
    out["logits"].sum().backward()
    assert model.classifier.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier"))
    model.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    joint = build("can", 4, depth=18, detach_classifier=False)
    joint(_images(6))["logits"].sum().backward()
    assert joint.backbone.conv1.weight.grad is not None


# ---------------------------------------------------------------- pixel-level attention block


def test_spatial_channel_attention():
    torch.manual_seed(0)
    blk = SpatialChannelAttention(32, reduction=16)
    x = torch.randn(3, 32, 5, 3)
    a = blk.attention(x)
    assert a.shape == x.shape and ((a > 0) & (a < 1)).all()
    assert torch.allclose(blk(x), x * a)
    assert blk.channel[0][0].out_channels == 2
    with pytest.raises(ValueError):
        blk(torch.randn(3, 16, 5, 3))


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs", [dict(depth=34), dict(descriptor="can3"), dict(aspp_rates=()),
                                    dict(aspp_rates=(6, 0)), dict(attention_reduction=0),
                                    dict(detach_classifier=1), dict(parsing_weights=3)])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        CAN(num_classes=3, **{"depth": 18, **kwargs})


def test_rejects_non_image_input(can18):
    with pytest.raises(ValueError, match="B, 3, H, W"):
        can18(torch.randn(2, 1, H, W))
