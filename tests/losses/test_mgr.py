"""TAMR's multi-grain ranking loss (eqs. (9)-(13)) against a brute-force loop over all pairs."""

import pytest
import torch
import torch.nn.functional as F

from reid.losses.mgr import (
    CoarseRankingLoss,
    FineRankingLoss,
    PairwiseLoss,
    TAMRCrossEntropy,
    _ranking,
    nearest_negatives,
    pair_masks,
    squared_distances,
)
from reid.losses.registry import build_loss

torch.set_num_threads(1)


def _batch(seed, models=3, vehicles=3, images=2, unknown_models=False):
    """A shuffled M x V x K batch: pids, model_ids, and random (B, 8) features."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(models * vehicles).repeat_interleave(images)
    mids = pids // vehicles
    if unknown_models:  # the last vehicle of every model has an unknown model id
        mids = torch.where(pids % vehicles == vehicles - 1, torch.full_like(mids, -1), mids)
    perm = torch.randperm(len(pids), generator=g)
    feat = torch.randn(len(pids), 8, generator=g)
    return feat, pids[perm], mids[perm]


def _dist(x, i, j):
    return float(((x[i] - x[j]) ** 2).sum())


def _brute_ranking(feat, pids, mids, margin, k, grain):
    """Eq. (10) (grain "coarse") or (11) ("fine") by explicit loops, in float64."""
    x = F.normalize(feat.double(), dim=1)
    b = len(pids)
    pids, mids = pids.tolist(), mids.tolist()
    terms = []
    for i in range(b):
        same_v = [j for j in range(b) if j != i and pids[j] == pids[i]]
        n_v = [j for j in range(b) if pids[j] != pids[i] and mids[i] >= 0 and mids[j] == mids[i]]
        n_m = [j for j in range(b) if mids[i] >= 0 and mids[j] >= 0 and mids[j] != mids[i]]
        pos, neg = (n_v, n_m) if grain == "coarse" else (same_v, n_v)
        nearest = sorted(neg, key=lambda n: _dist(x, i, n))[:k]
        for j in pos:
            for n in nearest:
                terms.append(max(0.0, _dist(x, i, j) - _dist(x, i, n) + margin))
    return sum(terms) / len(terms) if terms else 0.0


def _brute_pair(feat, pids):
    x = F.normalize(feat.double(), dim=1)
    pids = pids.tolist()
    terms = [_dist(x, i, j) for i in range(len(pids)) for j in range(len(pids)) if i != j and pids[i] == pids[j]]
    return sum(terms) / len(terms) if terms else 0.0


SEEDS = [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("unknown", [False, True])
@pytest.mark.parametrize("margin, k", [(0.2, 10), (0.5, 3), (1.0, 30)])  # 30: more than any anchor has
def test_coarse_matches_brute_force(seed, unknown, margin, k):
    feat, pids, mids = _batch(seed, unknown_models=unknown)
    loss, logs = CoarseRankingLoss(margin=margin, k=k, feat_keys=("f",))({"f": feat}, {"pids": pids, "model_ids": mids})
    ref = _brute_ranking(feat, pids, mids, margin, k, "coarse")
    assert ref > 0
    assert loss.item() == pytest.approx(ref, abs=1e-5)
    assert logs["mgr_coarse"] == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("unknown", [False, True])
@pytest.mark.parametrize("margin, k", [(0.2, 3), (0.5, 1), (1.0, 30)])
def test_fine_matches_brute_force(seed, unknown, margin, k):
    feat, pids, mids = _batch(seed, models=2, vehicles=3, images=3, unknown_models=unknown)
    loss, _ = FineRankingLoss(margin=margin, k=k, feat_keys=("f",))({"f": feat}, {"pids": pids, "model_ids": mids})
    ref = _brute_ranking(feat, pids, mids, margin, k, "fine")
    assert ref > 0
    assert loss.item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_pair_matches_brute_force(seed):
    feat, pids, mids = _batch(seed)
    loss, logs = PairwiseLoss(feat_keys=("f",))({"f": feat}, {"pids": pids, "model_ids": mids})
    assert loss.item() == pytest.approx(_brute_pair(feat, pids), abs=1e-5)
    assert logs["mgr_pair_count"] == 18  # 9 vehicles x 2 ordered pairs
    # needs no model labels
    loss2, _ = PairwiseLoss(feat_keys=("f",))({"f": feat}, {"pids": pids})
    assert loss2.item() == loss.item()


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_terms_sum_over_the_two_tamr_features(seed):
    feat, pids, mids = _batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    other = torch.randn(feat.shape, generator=g)
    outputs = {"global_feat": feat, "part_feat": other}
    batch = {"pids": pids, "model_ids": mids}
    for cls, grain, k in ((CoarseRankingLoss, "coarse", 10), (FineRankingLoss, "fine", 3)):
        loss, logs = cls()(outputs, batch)
        ref = sum(_brute_ranking(f, pids, mids, 0.2, k, grain) for f in (feat, other))
        assert loss.item() == pytest.approx(ref, abs=1e-5)
        ref_global = _brute_ranking(feat, pids, mids, 0.2, k, grain)
        assert logs[f"mgr_{grain}_global_feat"] == pytest.approx(ref_global, abs=1e-5)
    loss, _ = PairwiseLoss()(outputs, batch)
    assert loss.item() == pytest.approx(_brute_pair(feat, pids) + _brute_pair(other, pids), abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_nearest_negatives_picks_exactly_the_k_nearest(seed, k):
    feat, pids, mids = _batch(seed)
    dist = squared_distances(feat)
    _, n_v, n_m = pair_masks(pids, mids)
    for mask in (n_v, n_m):
        idx, valid = nearest_negatives(dist, mask, k)
        assert idx.shape == valid.shape == (len(pids), min(k, len(pids)))
        for i in range(len(pids)):
            candidates = [j for j in range(len(pids)) if mask[i, j]]
            expected = sorted(candidates, key=lambda j: dist[i, j].item())[:k]  # clamped to what exists
            assert int(valid[i].sum()) == len(expected) == min(k, len(candidates))
            assert idx[i][valid[i]].tolist() == expected
            assert valid[i, : len(expected)].all()


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("grain, k", [("coarse", 10), ("fine", 3)])
def test_loss_uses_only_the_selected_negatives(seed, grain, k):
    """With a margin large enough that every hinge is active, exactly the K nearest negatives of
    each anchor (and every positive) receive gradient from the anchor's row."""
    feat, pids, mids = _batch(seed)
    dist = squared_distances(feat).requires_grad_(True)
    same_v, n_v, n_m = pair_masks(pids, mids)
    pos, neg = (n_v, n_m) if grain == "coarse" else (same_v, n_v)
    total, count, active = _ranking(dist, pos, neg, k, margin=10.0)
    assert active == count
    total.backward()
    for i in range(len(pids)):
        candidates = [j for j in range(len(pids)) if neg[i, j]]
        nearest = set(sorted(candidates, key=lambda j: dist[i, j].item())[:k])
        got_neg = {j for j in candidates if dist.grad[i, j] != 0}
        assert got_neg == nearest
        assert all(dist.grad[i, j] < 0 for j in nearest)  # pushed apart
        assert all(dist.grad[i, j] > 0 for j in range(len(pids)) if pos[i, j])  # pulled together


def test_pair_masks_and_unknown_models():
    pids = torch.tensor([0, 0, 1, 2, 3])
    mids = torch.tensor([5, 5, 5, 6, -1])
    same_v, n_v, n_m = pair_masks(pids, mids)
    assert same_v.nonzero().tolist() == [[0, 1], [1, 0]]
    assert n_v.nonzero().tolist() == [[0, 2], [1, 2], [2, 0], [2, 1]]
    assert n_m.nonzero().tolist() == [[0, 3], [1, 3], [2, 3], [3, 0], [3, 1], [3, 2]]
    # the pairs of the three grains never overlap
    assert not (same_v & n_v).any() and not (same_v & n_m).any() and not (n_v & n_m).any()
    with pytest.raises(ValueError, match="two different model ids"):
        pair_masks(torch.tensor([0, 0]), torch.tensor([1, 2]))


def test_no_triplet_gives_zero_with_gradient():
    feat = torch.randn(6, 4, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    mids = torch.zeros(6, dtype=torch.long)  # a single vehicle model: no N_m pair
    loss, logs = CoarseRankingLoss(feat_keys=("f",))({"f": feat}, {"pids": pids, "model_ids": mids})
    assert loss.item() == 0.0 and logs["mgr_coarse_count"] == 0
    loss.backward()
    assert torch.equal(feat.grad, torch.zeros_like(feat))


def test_missing_model_ids():
    with pytest.raises(ValueError, match="model_ids"):
        FineRankingLoss(feat_keys=("f",))({"f": torch.randn(4, 3)}, {"pids": torch.tensor([0, 0, 1, 1])})


def test_tamr_ce_sums_plain_cross_entropy_of_both_heads():
    g = torch.Generator().manual_seed(0)
    logits, part = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    pids = torch.tensor([0, 1, 2, 3, 4, 0])
    loss_fn = build_loss("tamr_ce", num_classes=5)
    assert isinstance(loss_fn, TAMRCrossEntropy) and loss_fn.epsilon == 0.0
    loss, logs = loss_fn({"logits": logits, "part_logits": part}, {"pids": pids})
    ref = F.cross_entropy(logits, pids) + F.cross_entropy(part, pids)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert logs["ce_part_logits"] == pytest.approx(F.cross_entropy(part, pids).item(), abs=1e-6)


def test_registered_defaults_are_the_paper_values():
    coarse, fine, pair = build_loss("mgr_coarse"), build_loss("mgr_fine"), build_loss("mgr_pair")
    assert (coarse.k, fine.k) == (10, 3)  # K1, K2 (Sec. III-C)
    assert coarse.normalize and fine.normalize and pair.normalize  # ||f(x)|| = 1
    assert coarse.feat_keys == fine.feat_keys == pair.feat_keys == ("global_feat", "part_feat")


def test_squared_distances():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    d = squared_distances(x)
    u = F.normalize(x, dim=1)
    assert torch.allclose(d, torch.cdist(u, u) ** 2, atol=1e-6)
    assert torch.equal(d.diagonal(), torch.zeros(3))
    assert torch.allclose(squared_distances(x, normalize=False)[0, 1], torch.tensor(13.0))


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (CoarseRankingLoss, {"margin": -0.1}),
        (CoarseRankingLoss, {"k": 0}),
        (FineRankingLoss, {"k": 2.5}),
        (FineRankingLoss, {"feat_keys": ()}),
        (PairwiseLoss, {"feat_keys": ("",)}),
    ],
)
def test_invalid_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)
    with pytest.raises(ValueError):
        TAMRCrossEntropy(num_classes=3, logits_keys=())
