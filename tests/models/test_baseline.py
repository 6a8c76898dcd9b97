import pytest
import torch

from reid.models import ResNetBNNeck, build
from reid.models.backbones import resnet

torch.set_num_threads(1)

B, H, W = 4, 64, 32


@pytest.fixture(scope="module")
def model18():
    torch.manual_seed(0)
    return ResNetBNNeck(num_classes=6, depth=18)


def _images(b=B):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, H, W, generator=g)


def test_train_outputs(model18):
    model18.train()
    out = model18(_images())
    assert set(out) == {"embed", "feat", "logits"}
    assert out["embed"].shape == (B, 512)
    assert out["feat"].shape == (B, 512)
    assert out["logits"].shape == (B, 6)
    for v in out.values():
        assert v.dtype == torch.float32
    # neck_feat="after": embed is the BN output, not the raw pooled feature
    assert not torch.allclose(out["embed"], out["feat"])
    # train-mode BN standardises each channel over the batch
    assert torch.allclose(out["embed"].mean(0), torch.zeros(512), atol=1e-4)
    assert (out["feat"] >= 0).all()  # GAP of a ReLU output


def test_eval_outputs(model18):
    model18.eval()
    with torch.no_grad():
        out = model18(_images(2))
    assert set(out) == {"embed"}
    assert out["embed"].shape == (2, 512)
    model18.train()


def test_neck_feat_before():
    torch.manual_seed(0)
    m = ResNetBNNeck(num_classes=3, depth=18, neck_feat="before")
    out = m(_images())
    assert torch.equal(out["embed"], out["feat"])
    m.eval()
    with torch.no_grad():
        assert (m(_images(2))["embed"] >= 0).all()  # raw pooled ReLU feature


def test_last_stride_doubles_layer4_resolution():
    x = _images(2)
    t1, c1 = resnet(18, last_stride=1)
    t2, c2 = resnet(18, last_stride=2)
    assert c1 == c2 == 512
    with torch.no_grad():
        y1, y2 = t1.eval()(x), t2.eval()(x)
    assert y1.shape == (2, 512, H // 16, W // 16)
    assert y2.shape == (2, 512, H // 32, W // 32)
    assert y1.shape[2:] == tuple(2 * s for s in y2.shape[2:])


def test_bnneck_bias_frozen(model18):
    model18.train()
    bn = model18.bottleneck
    assert not bn.bias.requires_grad
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert model18.classifier.bias is None
    assert model18.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)

    model18.zero_grad(set_to_none=True)
    out = model18(_images())
    (out["logits"].logsumexp(1).mean() + out["feat"].pow(2).mean()).backward()
    assert bn.bias.grad is None
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    assert model18.classifier.weight.grad.abs().sum() > 0

    # An optimizer step over param_groups leaves the bias at zero.
    opt = torch.optim.SGD(model18.param_groups(0.1), lr=0.1, weight_decay=0.1)
    before = model18.bottleneck.weight.detach().clone()
    opt.step()
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert not torch.equal(bn.weight, before)
    model18.zero_grad(set_to_none=True)


def test_losses_attribute():
    assert ResNetBNNeck.losses == ("ce", "triplet")
    assert isinstance(ResNetBNNeck.losses, tuple)


def test_param_groups_cover_trainable_exactly_once(model18):
    groups = model18.param_groups(0.01)
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    assert set(names) == {"backbone", "bnneck", "classifier"}
    assert all(g["lr"] == 0.01 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter appears in two groups"
    trainable = {id(p) for p in model18.parameters() if p.requires_grad}
    assert set(ids) == trainable
    assert id(model18.bottleneck.bias) not in ids
    torch.optim.SGD(groups, lr=0.01)  # accepted by a torch optimizer


def test_feat_dim_properties(model18):
    assert model18.feat_dim == model18.in_features == 512
    assert model18.classifier.in_features == 512


def test_depth50_builds():
    m = build("resnet_bnneck", 10, depth=50)
    assert m.feat_dim == m.in_features == 2048
    assert m.classifier.weight.shape == (10, 2048)
    block = m.backbone.layer4[0]
    assert block.conv2.stride == (1, 1)
    assert block.downsample[0].stride == (1, 1)
    assert block.conv1.stride == (1, 1)


def test_depth50_last_stride_2():
    trunk, c = resnet(50, last_stride=2)
    assert c == 2048
    assert trunk.layer4[0].conv2.stride == (2, 2)
    assert trunk.layer4[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("kwargs", [{"depth": 34}, {"depth": 101}, {"last_stride": 3}, {"neck_feat": "middle"}])
def test_invalid_args_raise(kwargs):
    with pytest.raises(ValueError):
        ResNetBNNeck(num_classes=3, **{"depth": 18, **kwargs})


def test_invalid_num_classes():
    with pytest.raises(ValueError):
        ResNetBNNeck(num_classes=0, depth=18)
