import math

import pytest
import torch

from reid.losses import TripletLoss, build_loss
from reid.losses.triplet import pairwise_euclidean

torch.set_num_threads(1)


def _brute_force(feat, pids, margin):
    """Batch-hard loss from explicit triplets (a, p, n), in float64.

    For each anchor, every triplet with pid_p == pid_a (p = a included, eq. (5)
    of Hermans et al.) and pid_n != pid_a is scored on its own; the anchor's
    loss is the largest triplet loss (the hinge/softplus is monotonic, so this is
    the batch-hard value). Anchors without any negative are skipped.
    """
    x = feat.double()
    pids = pids.tolist()
    b = len(pids)

    def dist(i, j):
        if i == j:
            return torch.zeros((), dtype=torch.float64)
        return (x[i] - x[j]).pow(2).sum().sqrt()

    per_anchor = []
    for a in range(b):
        terms = []
        for p in range(b):
            if pids[p] != pids[a]:
                continue
            for n in range(b):
                if pids[n] == pids[a]:
                    continue
                diff = dist(a, p) - dist(a, n)
                if margin is None:
                    terms.append(torch.nn.functional.softplus(diff))
                else:
                    terms.append(torch.relu(diff + margin))
        if terms:
            per_anchor.append(torch.stack(terms).max())
    return torch.stack(per_anchor).mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("margin", [0.3, 1.0, None])
def test_matches_brute_force(seed, margin):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(8, 5, generator=g)
    pids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])  # pid 3 is a singleton
    pids = pids[torch.randperm(8, generator=g)]
    feat_a = feat.clone().requires_grad_(True)
    loss, logs = TripletLoss(margin=margin)({"feat": feat_a}, {"pids": pids})
    feat_b = feat.double().requires_grad_(True)
    ref = _brute_force(feat_b, pids, margin)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert logs["triplet"] == pytest.approx(ref.item(), abs=1e-5)
    loss.backward()
    ref.backward()
    assert torch.allclose(feat_a.grad.double(), feat_b.grad, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_normalize_matches_brute_force_on_unit_vectors(seed):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(6, 4, generator=g) * 5
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, _ = TripletLoss(margin=0.3, normalize=True)({"feat": feat}, {"pids": pids})
    unit = feat / feat.norm(dim=1, keepdim=True)
    assert loss.item() == pytest.approx(_brute_force(unit, pids, 0.3).item(), abs=1e-5)
    raw, _ = TripletLoss(margin=0.3)({"feat": feat}, {"pids": pids})
    assert raw.item() != pytest.approx(loss.item(), abs=1e-3)


def test_hand_worked_1d():
    # x = 0, 1 (pid 0) and 3, 6 (pid 1), margin 0.3:
    #   a=0: d_ap=1, d_an=min(3,6)=3 -> [1-3+.3]+ = 0
    #   a=1: d_ap=1, d_an=min(2,5)=2 -> [1-2+.3]+ = 0
    #   a=3: d_ap=3, d_an=min(3,2)=2 -> [3-2+.3]+ = 1.3
    #   a=6: d_ap=3, d_an=min(6,5)=5 -> [3-5+.3]+ = 0
    feat = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    batch = {"pids": torch.tensor([0, 0, 1, 1])}
    loss, logs = TripletLoss(margin=0.3)({"feat": feat}, batch)
    assert loss.item() == pytest.approx(1.3 / 4, abs=1e-5)
    assert logs["d_ap"] == pytest.approx((1 + 1 + 3 + 3) / 4, abs=1e-5)
    assert logs["d_an"] == pytest.approx((3 + 2 + 2 + 5) / 4, abs=1e-5)
    assert logs["triplet_active"] == pytest.approx(0.25)
    assert all(isinstance(v, float) for v in logs.values())

    soft, _ = TripletLoss(margin=None)({"feat": feat}, batch)
    expected = sum(math.log1p(math.exp(d)) for d in (1 - 3, 1 - 2, 3 - 2, 3 - 5)) / 4
    assert soft.item() == pytest.approx(expected, abs=1e-5)
    zero, _ = TripletLoss(margin=0)({"feat": feat}, batch)  # 0 -> soft margin
    assert zero.item() == pytest.approx(expected, abs=1e-5)


def test_singleton_anchor_has_zero_positive_distance():
    # x = 0, 1 (pid 0), 3 (pid 1, alone), margin 2.5:
    #   a=0: 1-3+2.5 = 0.5; a=1: 1-2+2.5 = 1.5; a=3: 0-2+2.5 = 0.5  -> 2.5/3
    feat = torch.tensor([[0.0], [1.0], [3.0]])
    loss, logs = TripletLoss(margin=2.5)({"feat": feat}, {"pids": torch.tensor([0, 0, 1])})
    assert loss.item() == pytest.approx(2.5 / 3, abs=1e-5)
    assert logs["d_ap"] == pytest.approx(2 / 3, abs=1e-5)


def test_gradient_flows():
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(8, 16, generator=g, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _ = TripletLoss(margin=10.0)({"feat": feat}, {"pids": pids})  # every anchor active
    loss.backward()
    assert feat.grad is not None
    assert torch.isfinite(feat.grad).all()
    assert (feat.grad.abs().sum(dim=1) > 0).all()


def test_identical_features_give_finite_grad():
    feat = torch.zeros(4, 3, requires_grad=True)
    loss, _ = TripletLoss(margin=0.3)({"feat": feat}, {"pids": torch.tensor([0, 0, 1, 1])})
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-4)
    assert torch.isfinite(feat.grad).all()


def test_pairwise_euclidean_exact_diagonal():
    x = torch.randn(5, 8) * 100
    d = pairwise_euclidean(x)
    assert torch.equal(torch.diagonal(d), torch.zeros(5))
    assert torch.allclose(d, torch.cdist(x.double(), x.double()).float(), rtol=1e-4, atol=1e-2)


def test_single_identity_raises():
    with pytest.raises(ValueError, match="identit"):
        TripletLoss()({"feat": torch.randn(4, 3)}, {"pids": torch.tensor([7, 7, 7, 7])})


def test_invalid_args_raise():
    with pytest.raises(ValueError):
        TripletLoss(margin=-0.1)
    with pytest.raises(ValueError):
        TripletLoss()({"feat": torch.randn(4, 3)}, {"pids": torch.tensor([0, 1, 0])})
    with pytest.raises(ValueError):
        TripletLoss()({"feat": torch.randn(4)}, {"pids": torch.tensor([0, 1, 0, 1])})


def test_build_loss_triplet():
    loss_fn = build_loss("triplet", margin=0.5, normalize=True)
    assert isinstance(loss_fn, TripletLoss)
    assert loss_fn.margin == 0.5 and loss_fn.normalize
    assert build_loss("triplet", margin=None).soft_margin
