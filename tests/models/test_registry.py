import pytest
import torch
from torch import nn

import reid.models as models
from reid.models import ResNetBNNeck, available, build, register
from reid.models.registry import MODELS, Registry

torch.set_num_threads(1)


class _Dummy(nn.Module):
    losses = ("ce",)

    def __init__(self, num_classes, width=3):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(width, num_classes)


def test_exports():
    assert {"build", "register", "available"} <= set(models.__all__)


def test_duplicate_register_raises_naming_it():
    reg = Registry("model")
    reg.register("dup")(_Dummy)
    with pytest.raises(ValueError, match="'dup'"):
        reg.register("dup")(_Dummy)
    with pytest.raises(ValueError, match="resnet_bnneck"):
        register("resnet_bnneck")(_Dummy)


def test_unknown_name_lists_available():
    reg = Registry("model")
    reg.register("alpha")(_Dummy)
    reg.register("beta")(_Dummy)
    with pytest.raises(KeyError) as exc:
        reg.build("gamma", num_classes=3)
    msg = str(exc.value)
    assert "gamma" in msg and "alpha" in msg and "beta" in msg
    with pytest.raises(KeyError, match="resnet_bnneck"):
        build("no_such_model", 5)


def test_build_returns_registered_class_with_num_classes():
    name = "_test_dummy_model"
    try:
        returned = register(name)(_Dummy)
        assert returned is _Dummy  # decorator returns the class unchanged
        assert name in available()
        m = build(name, 7, width=5)
        assert type(m) is _Dummy
        assert m.num_classes == 7
        assert m.fc.weight.shape == (7, 5)
    finally:
        MODELS.unregister(name)
    assert name not in available()


def test_builtin_registered():
    assert "resnet_bnneck" in available()
    assert available() == sorted(available())
    m = build("resnet_bnneck", 4, depth=18)
    assert isinstance(m, ResNetBNNeck)
    assert m.num_classes == 4


def test_factory_must_return_module():
    reg = Registry("model")
    reg.register("bad")(lambda num_classes: object())
    with pytest.raises(TypeError):
        reg.build("bad", 3)
