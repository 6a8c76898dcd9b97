import math

import pytest
import torch
import torch.nn.functional as F

from reid.losses import CrossEntropyLabelSmooth, available_losses, build_loss

torch.set_num_threads(1)


def _hand_ce(logits, label, eps):
    """-sum_i q_i log p_i for one sample, written out with math."""
    n = len(logits)
    lse = math.log(sum(math.exp(v) for v in logits))
    return -sum(
        ((1 - eps + eps / n) if i == label else eps / n) * (v - lse) for i, v in enumerate(logits)
    )


def test_hand_computed_two_samples_three_classes():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    pids = torch.tensor([2, 0])
    loss_fn = CrossEntropyLabelSmooth(num_classes=3, epsilon=0.1)
    loss, logs = loss_fn({"logits": logits}, {"pids": pids})
    # sample 1: q = (1/30, 1/30, 28/30), log p = (-2.40761, -1.40761, -0.40761) -> 0.507606
    # sample 2: uniform p -> log 3 = 1.098612 whatever q is
    expected = (_hand_ce([1, 2, 3], 2, 0.1) + _hand_ce([0, 0, 0], 0, 0.1)) / 2
    assert expected == pytest.approx(0.8031091, abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.dim() == 0
    assert set(logs) >= {"ce"}
    assert logs["ce"] == pytest.approx(expected, abs=1e-6)
    assert isinstance(logs["ce"], float)
    assert logs["acc"] == pytest.approx(1.0)  # argmax 2 for row 0, ties -> 0 for row 1


def test_epsilon_zero_is_plain_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    pids = torch.randint(0, 5, (8,), generator=g)
    loss, _ = CrossEntropyLabelSmooth(5, epsilon=0.0)({"logits": logits}, {"pids": pids})
    assert loss.item() == pytest.approx(F.cross_entropy(logits, pids).item(), abs=1e-6)


def test_matches_torch_label_smoothing():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 7, generator=g) * 3
    pids = torch.randint(0, 7, (8,), generator=g)
    loss, _ = CrossEntropyLabelSmooth(7, epsilon=0.2)({"logits": logits}, {"pids": pids})
    ref = F.cross_entropy(logits, pids, label_smoothing=0.2)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    plain = F.cross_entropy(logits, pids)
    assert abs(loss.item() - plain.item()) > 1e-3  # smoothing does change the value


def test_gradient_is_softmax_minus_smoothed_target():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=g, requires_grad=True)
    pids = torch.tensor([0, 1, 2, 1])
    eps = 0.1
    loss, _ = CrossEntropyLabelSmooth(3, eps)({"logits": logits}, {"pids": pids})
    loss.backward()
    q = torch.full((4, 3), eps / 3)
    q[torch.arange(4), pids] = 1 - eps + eps / 3
    expected = (logits.detach().softmax(1) - q) / 4
    assert torch.allclose(logits.grad, expected, atol=1e-6)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
def test_invalid_epsilon_raises(eps):
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(3, epsilon=eps)


def test_invalid_num_classes_and_shapes():
    with pytest.raises(ValueError):
        CrossEntropyLabelSmooth(0)
    loss_fn = CrossEntropyLabelSmooth(3)
    with pytest.raises(ValueError):
        loss_fn({"logits": torch.zeros(2, 4)}, {"pids": torch.tensor([0, 1])})
    with pytest.raises(ValueError):
        loss_fn({"logits": torch.zeros(2, 3)}, {"pids": torch.tensor([0, 1, 2])})


def test_build_loss_ce_and_unknown():
    loss_fn = build_loss("ce", num_classes=4, epsilon=0.3)
    assert isinstance(loss_fn, CrossEntropyLabelSmooth)
    assert loss_fn.num_classes == 4 and loss_fn.epsilon == 0.3
    assert {"ce", "triplet"} <= set(available_losses())
    with pytest.raises(KeyError) as exc:
        build_loss("arcface")
    msg = str(exc.value)
    assert "arcface" in msg and "ce" in msg and "triplet" in msg
