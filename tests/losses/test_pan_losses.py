import pytest
import torch
import torch.nn.functional as F

from reid.engine.criterion import Criterion
from reid.losses.pan import OrthogonalRegularization, PartCrossEntropy, orthogonal_penalty
from reid.losses.sag import SAGCrossEntropy
from reid.losses.registry import available_losses, build_loss

torch.set_num_threads(1)


def _orthonormal_masks(b, k, h, w, seed=0):
    """Non-negative orthonormal masks: disjoint supports, unit L2 norm per row."""
    g = torch.Generator().manual_seed(seed)
    n = h * w
    owner = torch.randint(0, k, (n,), generator=g)
    owner[:k] = torch.arange(k)  # every mask gets at least one position
    m = torch.rand(b, k, n, generator=g) * F.one_hot(owner, k).t().float()
    m = m / m.norm(dim=2, keepdim=True)
    return m.view(b, k, h, w)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_orthogonal_penalty_zero_for_orthonormal_masks(k):
    masks = _orthonormal_masks(4, k, 6, 3)
    assert torch.allclose(orthogonal_penalty(masks), torch.zeros(4), atol=1e-6)
    # signed orthonormal rows (QR) are orthonormal too
    q, _ = torch.linalg.qr(torch.randn(18, k))
    assert orthogonal_penalty(q.t().reshape(1, k, 6, 3)).item() < 1e-5


def test_orthogonal_penalty_positive_otherwise_and_exact_value():
    ortho = _orthonormal_masks(2, 3, 4, 2)
    scaled = ortho * 2.0  # rows of norm 2: M M^T - I = 3 I  ->  ||.||_F = 3 sqrt(3)
    assert torch.allclose(orthogonal_penalty(scaled), torch.full((2,), 3 * 3 ** 0.5), atol=1e-5)
    overlap = ortho.clone()
    overlap[:, 1] = ortho[:, 0]  # two identical unit masks: off-diagonal 1 twice -> sqrt(2)
    assert torch.allclose(orthogonal_penalty(overlap), torch.full((2,), 2 ** 0.5), atol=1e-5)
    assert (orthogonal_penalty(torch.rand(3, 2, 4, 2)) > 0).all()


def test_orthogonal_regularization_is_mean_over_scales_and_batch():
    masks = (torch.rand(3, 1, 4, 2), torch.rand(3, 2, 4, 2), torch.rand(3, 3, 4, 2))
    loss, logs = OrthogonalRegularization()({"part_masks": masks}, {})
    m = [mk.flatten(2) for mk in masks]
    manual = sum(
        torch.linalg.matrix_norm(x @ x.transpose(1, 2) - torch.eye(x.shape[1])) for x in m
    ) / 3
    assert torch.allclose(loss, manual.mean(), atol=1e-6)
    assert logs == {"pan_orth": pytest.approx(loss.item())}
    zero, _ = OrthogonalRegularization()({"part_masks": [_orthonormal_masks(3, k, 4, 2) for k in (1, 2, 3)]}, {})
    assert zero.item() < 1e-6


def test_orthogonal_regularization_gradient_finite_at_zero_and_nonzero_elsewhere():
    masks = _orthonormal_masks(2, 2, 4, 2).requires_grad_(True)
    loss, _ = OrthogonalRegularization()({"part_masks": [masks]}, {})
    loss.backward()
    assert torch.isfinite(masks.grad).all()
    other = torch.rand(2, 2, 4, 2, requires_grad=True)
    OrthogonalRegularization()({"part_masks": [other]}, {})[0].backward()
    assert other.grad.abs().sum() > 0


def test_orthogonal_regularization_errors():
    reg = OrthogonalRegularization()
    with pytest.raises(ValueError):
        reg({"part_masks": []}, {})
    with pytest.raises(ValueError):
        reg({"part_masks": torch.rand(2, 3, 4, 2)}, {})  # a tensor, not a sequence of scales
    with pytest.raises(ValueError):
        reg({"part_masks": [torch.rand(2, 1, 4, 2), torch.rand(3, 2, 4, 2)]}, {})
    with pytest.raises(ValueError):
        orthogonal_penalty(torch.rand(2, 3))


def test_part_cross_entropy_is_sum_of_part_ces():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, 7, generator=g)
    pids = torch.tensor([0, 1, 2, 3, 6])
    loss, logs = PartCrossEntropy(num_classes=7)({"part_logits": logits}, {"pids": pids})
    manual = sum(F.cross_entropy(logits[:, p], pids) for p in range(6))
    assert torch.allclose(loss, manual, atol=1e-5)
    assert logs["pan_part_ce"] == pytest.approx(loss.item())
    assert 0.0 <= logs["acc"] <= 1.0
    smooth, _ = PartCrossEntropy(num_classes=7, epsilon=0.1)({"part_logits": logits}, {"pids": pids})
    manual_s = sum(F.cross_entropy(logits[:, p], pids, label_smoothing=0.1) for p in range(6))
    assert torch.allclose(smooth, manual_s, atol=1e-5)


def test_part_cross_entropy_errors():
    with pytest.raises(ValueError):
        PartCrossEntropy(num_classes=0)
    with pytest.raises(ValueError):
        PartCrossEntropy(num_classes=3, epsilon=1.0)
    with pytest.raises(ValueError):
        PartCrossEntropy(num_classes=3)({"part_logits": torch.randn(2, 3)}, {"pids": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError):
        PartCrossEntropy(num_classes=3)({"part_logits": torch.randn(2, 4, 5)}, {"pids": torch.zeros(2, dtype=torch.long)})


def test_sag_ce_is_plain_cross_entropy():
    logits = torch.randn(4, 5)
    pids = torch.tensor([0, 4, 2, 2])
    loss, logs = SAGCrossEntropy(num_classes=5)({"logits": logits}, {"pids": pids})
    assert torch.allclose(loss, F.cross_entropy(logits, pids), atol=1e-6)
    assert set(logs) == {"ce", "acc"}


def test_registered_and_built_by_criterion():
    assert {"pan_part_ce", "pan_orth", "sag_ce"} <= set(available_losses())
    assert isinstance(build_loss("sag_ce", num_classes=3), SAGCrossEntropy)
    settings = {
        "pan_part_ce": {"weight": 1.0, "epsilon": 0.0},
        "triplet": {"weight": 1.0, "margin": 0.3},
        "pan_orth": {"weight": 1e-3},
    }
    crit = Criterion(("pan_part_ce", "triplet", "pan_orth"), settings, {"num_classes": 3})
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = {
        "part_logits": torch.randn(6, 6, 3),
        "feat": torch.randn(6, 12),
        "part_masks": (torch.rand(6, 1, 4, 2), torch.rand(6, 2, 4, 2)),
    }
    total, logs = crit(outputs, {"pids": pids})
    parts = [PartCrossEntropy(3)(outputs, {"pids": pids})[0], OrthogonalRegularization()(outputs, {})[0]]
    assert logs["pan_orth"] == pytest.approx(parts[1].item(), rel=1e-5)
    assert logs["pan_part_ce"] == pytest.approx(parts[0].item(), rel=1e-5)
    assert total.item() == pytest.approx(parts[0].item() + logs["triplet"] + 1e-3 * parts[1].item(), rel=1e-5)
    with pytest.raises(ValueError):
        Criterion(("pan_orth",), {"pan_orth": {"weight": 1.0, "margin": 0.3}})
