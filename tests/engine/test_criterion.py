import pytest
import torch

from reid.engine.criterion import Criterion
from reid.losses import build_loss


def test_weighted_sum_of_declared_losses():
    torch.manual_seed(0)
    outputs = {"logits": torch.randn(8, 4), "feat": torch.randn(8, 16)}
    batch = {"pids": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    settings = {"ce": {"weight": 0.5, "epsilon": 0.1}, "triplet": {"weight": 2.0, "margin": 0.3}}
    crit = Criterion(("ce", "triplet"), settings, {"num_classes": 4})
    total, logs = crit(outputs, batch)
    ce, _ = build_loss("ce", num_classes=4, epsilon=0.1)(outputs, batch)
    tri, _ = build_loss("triplet", margin=0.3)(outputs, batch)
    assert float(total) == pytest.approx(0.5 * float(ce) + 2.0 * float(tri), rel=1e-6)
    assert logs["loss"] == pytest.approx(float(total))
    assert logs["ce"] == pytest.approx(float(ce)) and logs["triplet"] == pytest.approx(float(tri))
    assert "triplet/d_ap" in logs


def test_missing_loss_settings_is_named():
    with pytest.raises(KeyError, match="triplet"):
        Criterion(("triplet",), {"ce": {"weight": 1.0, "epsilon": 0.1}})


def test_unknown_loss_setting_names_the_key():
    settings = {"triplet": {"weight": 1.0, "margin": 0.3, "marign": 0.2}}
    with pytest.raises(ValueError, match=r"loss\.triplet\.marign"):
        Criterion(("triplet",), settings, {"num_classes": 4})
