"""Tests for reid.evaluation.rank_metrics against hand-worked answers and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation import rank_metrics

# --------------------------------------------------------------------------------------------
# Hand-worked example (1-D features, squared euclidean distance = (q - g)^2).
#
# Gallery:  idx  pid  cam  feat
#           g0    1    0    0     same pid+cam as q0 -> removed for q0 (valid for q1)
#           g1   -1    1    1     junk -> removed for everybody
#           g2    2    1    2
#           g3    1    1    3
#           g4    5    1    3     ties with g3 for q0 (both at 9): g3 (lower index) ranks first
#           g5    1    2    6
#           g6    3    1    5     the only pid-3 entry, same cam as q2 -> removed for q2
#           g7    2    2   10
# Queries:  q0 pid 1 cam 0 feat 0;  q1 pid 2 cam 0 feat 10;
#           q2 pid 3 cam 1 feat 5  (only positive is same-cam -> excluded);
#           q3 pid -1 cam 0 feat 1 (only "positive" is the junk g1 -> excluded).
#
# q0: d = g0 0 (removed), g1 1 (junk), g2 4, g3 9, g4 9, g5 36, g6 25, g7 100
#     valid ranking: g2 (neg) r1, g3 (POS) r2, g4 (neg) r3, g6 (neg) r4, g5 (POS) r5, g7 r6
#     positives at ranks 2, 5 -> AP = (1/2 + 2/5) / 2 = 0.45, INP = 2/5 = 0.4, first hit r2
# q1: d = g0 100, g1 81 (junk), g2 64, g3 49, g4 49, g5 16, g6 25, g7 0
#     valid ranking: g7 (POS) r1, g5 r2, g6 r3, g3 r4, g4 r5, g2 (POS) r6, g0 r7
#     positives at ranks 1, 6 -> AP = (1/1 + 2/6) / 2 = 2/3, INP = 2/6 = 1/3, first hit r1
# mAP = (0.45 + 2/3) / 2 = 0.558333..., mINP = (0.4 + 1/3) / 2 = 0.366666...
# CMC (max_rank 10 > valid gallery sizes 6 and 7): rank1 = 1/2, ranks 2..10 = 1 (cumulative).
# --------------------------------------------------------------------------------------------
HAND_GF = np.array([[0], [1], [2], [3], [3], [6], [5], [10]], dtype=np.float32)
HAND_GP = np.array([1, -1, 2, 1, 5, 1, 3, 2])
HAND_GC = np.array([0, 1, 1, 1, 1, 2, 1, 2])
HAND_QF = np.array([[0], [10], [5], [1]], dtype=np.float32)
HAND_QP = np.array([1, 2, 3, -1])
HAND_QC = np.array([0, 0, 1, 0])


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 256])
def test_hand_worked_example(chunk_size):
    out = rank_metrics(HAND_QF, HAND_GF, HAND_QP, HAND_GP, HAND_QC, HAND_GC,
                       metric="euclidean", max_rank=10, chunk_size=chunk_size)
    assert set(out) == {"cmc", "mAP", "mINP", "num_valid_queries", "num_excluded_queries"}
    assert out["num_valid_queries"] == 2
    assert out["num_excluded_queries"] == 2
    assert out["cmc"].dtype == np.float64 and out["cmc"].shape == (10,)
    np.testing.assert_allclose(out["cmc"], [0.5] + [1.0] * 9, atol=1e-12)
    assert out["mAP"] == pytest.approx((0.45 + 2 / 3) / 2, abs=1e-9)
    assert out["mINP"] == pytest.approx((0.4 + 1 / 3) / 2, abs=1e-9)
    assert isinstance(out["mAP"], float) and isinstance(out["mINP"], float)
    assert isinstance(out["num_valid_queries"], int)


def test_hand_worked_single_query_and_torch_inputs():
    # q0 alone, inputs as torch tensors: AP 0.45, INP 0.4, CMC [0, 1, 1].
    out = rank_metrics(torch.from_numpy(HAND_QF[:1]), torch.from_numpy(HAND_GF),
                       torch.from_numpy(HAND_QP[:1]), torch.from_numpy(HAND_GP),
                       torch.from_numpy(HAND_QC[:1]), torch.from_numpy(HAND_GC), max_rank=3)
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0, 1.0])
    assert out["mAP"] == pytest.approx(0.45, abs=1e-9)
    assert out["mINP"] == pytest.approx(0.4, abs=1e-9)
    assert (out["num_valid_queries"], out["num_excluded_queries"]) == (1, 0)


# --------------------------------------------------------------------------------------------
# Brute-force reference: full float64 distance matrix, per-query filtering, sort by
# (distance, gallery index), metrics by definition.
# --------------------------------------------------------------------------------------------
def reference(qf, gf, q_pids, g_pids, q_camids, g_camids, metric, max_rank):
    qf = np.asarray(qf, dtype=np.float64)
    gf = np.asarray(gf, dtype=np.float64)
    if metric == "cosine":
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        dist = 1.0 - qf @ gf.T
    else:
        dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    cmcs, aps, inps, excluded = [], [], [], 0
    for i in range(len(qf)):
        keep = [j for j in range(len(gf))
                if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        order = sorted(keep, key=lambda j: (dist[i, j], j))
        pos_ranks = [r for r, j in enumerate(order, start=1) if g_pids[j] == q_pids[i]]
        if not pos_ranks:
            excluded += 1
            continue
        aps.append(sum(n / r for n, r in enumerate(pos_ranks, start=1)) / len(pos_ranks))
        inps.append(len(pos_ranks) / pos_ranks[-1])
        cmcs.append([1.0 if pos_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    if not aps:
        return {"num_valid_queries": 0, "num_excluded_queries": excluded}
    return {"cmc": np.mean(cmcs, axis=0), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "num_valid_queries": len(aps), "num_excluded_queries": excluded}


def random_problem(seed, kind):
    """Random query/gallery with junk; features chosen so float32 arithmetic is exact.

    kind "coarse": integer features in {0, 1, 2}^3 -> very many tied distances.
    kind "fine":   multiples of 1/8 in [-2, 2]^6 -> few ties.
    kind "unit":   4 entries of +-1 in 8 dims (norm exactly 2) -> cosine exact, many ties.
    """
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(5, 30)), int(rng.integers(10, 45))
    if kind == "coarse":
        qf = rng.integers(0, 3, size=(num_q, 3)).astype(np.float32)
        gf = rng.integers(0, 3, size=(num_g, 3)).astype(np.float32)
    elif kind == "fine":
        qf = (rng.integers(-16, 17, size=(num_q, 6)) / 8).astype(np.float32)
        gf = (rng.integers(-16, 17, size=(num_g, 6)) / 8).astype(np.float32)
    else:
        def unit(n):
            x = np.zeros((n, 8), dtype=np.float32)
            for row in x:
                idx = rng.choice(8, size=4, replace=False)
                row[idx] = rng.choice([-1.0, 1.0], size=4)
            return x
        qf, gf = unit(num_q), unit(num_g)
    num_ids = int(rng.integers(2, 7))
    q_pids = rng.integers(0, num_ids, size=num_q)
    g_pids = rng.integers(-1, num_ids, size=num_g)  # includes pid -1 junk
    q_camids = rng.integers(0, 3, size=num_q)
    g_camids = rng.integers(0, 3, size=num_g)
    return qf, gf, q_pids, g_pids, q_camids, g_camids


def assert_same(out, ref):
    np.testing.assert_allclose(out["cmc"], ref["cmc"], rtol=0, atol=1e-6)
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    assert out["mINP"] == pytest.approx(ref["mINP"], abs=1e-6)
    assert out["num_valid_queries"] == ref["num_valid_queries"]
    assert out["num_excluded_queries"] == ref["num_excluded_queries"]


@pytest.mark.parametrize("metric,kind", [("euclidean", "coarse"), ("euclidean", "fine"),
                                         ("cosine", "unit"), ("cosine", "fine")])
def test_matches_brute_force_reference(metric, kind):
    checked = 0
    for seed in range(20):
        problem = random_problem(seed, kind)
        max_rank = 20
        ref = reference(*problem, metric=metric, max_rank=max_rank)
        if ref["num_valid_queries"] == 0:  # no valid query in this draw
            with pytest.raises(ValueError, match="no valid query"):
                rank_metrics(*problem, metric=metric, max_rank=max_rank)
            continue
        for chunk_size in (1, 7, 1000):
            out = rank_metrics(*problem, metric=metric, max_rank=max_rank, chunk_size=chunk_size)
            assert_same(out, ref)
        checked += 1
    assert checked >= 15


def test_brute_force_reference_sees_ties_and_junk():
    # Guard that the random "coarse" problems really exercise ties, junk and exclusions.
    qf, gf, q_pids, g_pids, *_ = random_problem(3, "coarse")
    dist = ((qf[:, None, :] - gf[None]) ** 2).sum(-1)
    assert any(len(np.unique(row)) < len(row) for row in dist)
    assert (g_pids == -1).any()


def test_tie_rule_lower_gallery_index_first():
    # Two gallery items at the same distance; only the order decides. Positive at index 0 vs 1.
    qf = np.zeros((1, 2), dtype=np.float32)
    gf = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out_first = rank_metrics(qf, gf, [7], [7, 8], [0], [1, 1], max_rank=2)
    out_second = rank_metrics(qf, gf, [7], [8, 7], [0], [1, 1], max_rank=2)
    assert out_first["mAP"] == 1.0 and out_first["cmc"].tolist() == [1.0, 1.0]
    assert out_second["mAP"] == 0.5 and out_second["cmc"].tolist() == [0.0, 1.0]
    assert out_second["mINP"] == 0.5


def torchreid_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Transcription of torchreid's python eval_market1501 (stable argsort for determinism)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        tmp = raw_cmc.cumsum() / (np.arange(len(raw_cmc)) + 1.0) * raw_cmc
        all_ap.append(tmp.sum() / raw_cmc.sum())
    return np.asarray(all_cmc, dtype=np.float64).mean(0), float(np.mean(all_ap))


def test_agrees_with_torchreid_without_junk():
    rng = np.random.default_rng(123)
    qf = rng.integers(0, 3, size=(40, 4)).astype(np.float32)
    gf = rng.integers(0, 3, size=(120, 4)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 8, 40), rng.integers(0, 8, 120)
    q_camids, g_camids = rng.integers(0, 2, 40), rng.integers(0, 2, 120)
    # Every query keeps >= 1 positive and >= max_rank valid entries (torchreid needs equal lengths).
    g_pids[:16], g_camids[:16] = np.repeat(np.arange(8), 2), np.tile([0, 1], 8)
    dist = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    ref_cmc, ref_map = torchreid_eval_market1501(dist, q_pids, g_pids, q_camids, g_camids, 50)
    out = rank_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, max_rank=50, chunk_size=16)
    np.testing.assert_allclose(out["cmc"], ref_cmc, atol=1e-6)
    assert out["mAP"] == pytest.approx(ref_map, abs=1e-6)
    assert out["num_valid_queries"] == 40


@pytest.mark.parametrize("seed", range(5))
def test_cosine_equals_euclidean_on_normalised_features(seed):
    # Entries +-0.5 with 4 nonzeros: exactly unit norm, so |q-g|^2 = 2 - 2 cos exactly.
    qf, gf, q_pids, g_pids, q_camids, g_camids = random_problem(seed, "unit")
    qf, gf = qf / 2, gf / 2
    args = (qf, gf, q_pids, g_pids, q_camids, g_camids)
    try:
        eu = rank_metrics(*args, metric="euclidean", max_rank=15, chunk_size=4)
    except ValueError:
        pytest.skip("no valid query in this draw")
    co = rank_metrics(*args, metric="cosine", max_rank=15, chunk_size=4)
    np.testing.assert_array_equal(eu["cmc"], co["cmc"])
    assert eu["mAP"] == co["mAP"] and eu["mINP"] == co["mINP"]
    assert eu["num_valid_queries"] == co["num_valid_queries"]


def test_cosine_is_scale_invariant_and_differs_from_euclidean():
    # q at (1, 0); gallery a=(10, 1) (near in angle, far in space), b=(0.5, 0.5).
    qf = np.array([[1.0, 0.0]], dtype=np.float32)
    gf = np.array([[10.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    args = (qf, gf, [1], [1, 2], [0], [1, 1])
    assert rank_metrics(*args, metric="cosine", max_rank=2)["mAP"] == 1.0
    assert rank_metrics(*args, metric="euclidean", max_rank=2)["mAP"] == 0.5


def test_chunks_bound_the_sorted_block(monkeypatch):
    # The only sort is per chunk: it never sees more than chunk_size query rows.
    seen = []
    real_sort = torch.sort

    def spy(x, *a, **k):
        seen.append(tuple(x.shape))
        return real_sort(x, *a, **k)

    monkeypatch.setattr(torch, "sort", spy)
    qf, gf, q_pids, g_pids, q_camids, g_camids = random_problem(0, "coarse")
    rank_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, chunk_size=7)
    assert seen and all(rows <= 7 and cols == len(gf) for rows, cols in seen)
    assert sum(rows for rows, _ in seen) == len(qf)


def test_errors():
    args = (HAND_QF, HAND_GF, HAND_QP, HAND_GP, HAND_QC, HAND_GC)
    with pytest.raises(ValueError, match="manhattan"):
        rank_metrics(*args, metric="manhattan")
    with pytest.raises(ValueError, match="gf"):
        rank_metrics(HAND_QF, np.zeros((8, 2), np.float32), *args[2:])
    with pytest.raises(ValueError, match="q_pids"):
        rank_metrics(HAND_QF, HAND_GF, HAND_QP[:3], *args[3:])
    with pytest.raises(ValueError, match="g_camids"):
        rank_metrics(*args[:5], HAND_GC[:-1])
    with pytest.raises(ValueError, match="qf"):
        rank_metrics(HAND_QF[:, 0], *args[1:])
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics(HAND_QF[2:], HAND_GF, HAND_QP[2:], HAND_GP, HAND_QC[2:], HAND_GC)
    with pytest.raises(ValueError, match="no queries"):
        rank_metrics(HAND_QF[:0], HAND_GF, HAND_QP[:0], HAND_GP, HAND_QC[:0], HAND_GC)
    with pytest.raises(ValueError, match="chunk_size"):
        rank_metrics(*args, chunk_size=0)
    with pytest.raises(ValueError, match="max_rank"):
        rank_metrics(*args, max_rank=0)
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(np.full_like(HAND_QF, np.nan), *args[1:])
    with pytest.raises(TypeError, match="g_pids"):
        rank_metrics(HAND_QF, HAND_GF, HAND_QP, HAND_GP.astype(np.float32), *args[4:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    problem = random_problem(5, "fine")
    cpu = rank_metrics(*problem, chunk_size=7)
    qf, gf, *labels = problem
    gpu = rank_metrics(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda(),
                       *[torch.from_numpy(x).cuda() for x in labels], chunk_size=7)
    assert_same(gpu, cpu)
