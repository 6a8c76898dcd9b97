"""Tests for reid.evaluation.rank_metrics against hand-worked answers and a brute-force reference."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reid.evaluation.rank_metrics import _distance_chunks, rank_metrics, rank_metrics_from_distances

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
def reference_distances(qf, gf, metric):
    """Full float64 distance matrix: squared euclidean or 1 - cos."""
    qf = np.asarray(qf, dtype=np.float64)
    gf = np.asarray(gf, dtype=np.float64)
    if metric == "cosine":
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        return 1.0 - qf @ gf.T
    return ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)


def reference(qf, gf, q_pids, g_pids, q_camids, g_camids, metric, max_rank):
    dist = reference_distances(qf, gf, metric)
    return reference_from_distances(dist, q_pids, g_pids, q_camids, g_camids, max_rank)


def reference_from_distances(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    cmcs, aps, inps, excluded = [], [], [], 0
    num_q, num_g = dist.shape
    for i in range(num_q):
        keep = [j for j in range(num_g)
                if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        order = sorted(keep, key=lambda j: (dist[i, j], j))  # sorted() is exact on +-inf too
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


def test_int64_fallback_and_tie_batches_match_brute_force(monkeypatch):
    # Force the int64 bucket path (taken when rows * (P+1) >= 2^31) and tiny batches of tied entries.
    rm = importlib.import_module("reid.evaluation.rank_metrics")  # the module, not the function
    monkeypatch.setattr(rm, "_INT32_MAX", 1)
    monkeypatch.setattr(rm, "_TIE_BATCH", 2)
    checked = 0
    for seed in range(8):
        problem = random_problem(seed, "coarse")
        ref = reference(*problem, metric="euclidean", max_rank=20)
        if ref["num_valid_queries"] == 0:
            continue
        assert_same(rank_metrics(*problem, max_rank=20, chunk_size=5), ref)
        checked += 1
    assert checked >= 5


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


class _OpRecorder(TorchDispatchMode):
    """Records every aten op run inside it: (op, input shapes) and the bytes of each new tensor."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.max_new_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((func.overloadpacket, shapes))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():
                self.max_new_bytes = max(self.max_new_bytes, t.untyped_storage().nbytes())
        return out


SORTING_OPS = {torch.ops.aten.sort, torch.ops.aten.argsort, torch.ops.aten.msort, torch.ops.aten.topk,
               torch.ops.aten.kthvalue}


def test_no_row_is_sorted():
    # Rows are never sorted: the only sort is of each chunk's positive keys, (rows <= chunk_size,
    # max positives per query + 1), and every (rows, G) op sees at most chunk_size rows.
    qf, gf, q_pids, g_pids, q_camids, g_camids = random_problem(0, "coarse")
    chunk = 7
    with _OpRecorder() as rec:
        rank_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, chunk_size=chunk)
    max_pos = max(int(((g_pids == p) & ~((g_pids == p) & (g_camids == c))).sum())
                  for p, c in zip(q_pids, q_camids))
    sorts = [shapes[0] for op, shapes in rec.calls if op in SORTING_OPS]
    assert sorts and all(len(s) == 2 and s[0] <= chunk and s[1] <= max_pos + 1 for s in sorts)
    assert max_pos + 1 < len(gf)  # so a whole-row sort would be caught
    searches = [shapes[1] for op, shapes in rec.calls if op == torch.ops.aten.searchsorted]
    assert searches and sum(s[0] for s in searches if len(s) == 2) == len(qf)


def _largest_new_tensor(num_q, num_g, chunk, metric, seed=0, dim=8):
    rng = np.random.default_rng(seed)
    qf = rng.standard_normal((num_q, dim)).astype(np.float32)
    gf = rng.standard_normal((num_g, dim)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 20, num_q), rng.integers(-1, 20, num_g)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    with _OpRecorder() as rec:
        rank_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, chunk_size=chunk)
    return rec.max_new_bytes


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_memory_bounded_largest_allocation_independent_of_q(metric):
    # The largest tensor created inside rank_metrics is a (chunk, G) block, whatever Q: 16x more
    # queries allocate nothing bigger (a full Q x G matrix would be 16x bigger). The inputs are
    # small (D = 8) so that the block dominates.
    chunk, num_g = 16, 1024
    small = _largest_new_tensor(64, num_g, chunk, metric)
    large = _largest_new_tensor(1024, num_g, chunk, metric)
    assert small == large
    assert 4 * chunk * num_g <= large <= 8 * chunk * num_g  # ~ chunk x G entries of 4-8 bytes
    # ... and it grows with G (the block is chunk x G).
    wider = _largest_new_tensor(64, 2 * num_g, chunk, metric)
    assert wider >= 1.9 * small


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


# --------------------------------------------------------------------------------------------
# rank_metrics_from_distances
# --------------------------------------------------------------------------------------------
def uneven_chunks(dist, rng, to=torch.from_numpy):
    """Yield (start, block) over the rows of dist with random block sizes (0 rows allowed)."""
    start = 0
    while start < len(dist):
        rows = int(rng.integers(0, 6))
        yield start, to(dist[start:start + rows])
        start += rows


@pytest.mark.parametrize("metric,kind", [("euclidean", "coarse"), ("euclidean", "fine"), ("cosine", "unit")])
def test_from_distances_equals_rank_metrics(metric, kind):
    # Features on exact grids: the float64 distances cast to float32 are exactly what rank_metrics
    # computes, so both paths rank the same numbers (with many ties for "coarse" / "unit").
    checked = 0
    for seed in range(10):
        problem = random_problem(seed, kind)
        qf, gf, *labels = problem
        try:
            expected = rank_metrics(*problem, metric=metric, max_rank=20, chunk_size=5)
        except ValueError:
            continue
        dist = reference_distances(qf, gf, metric).astype(np.float32)
        rng = np.random.default_rng(seed)
        for to in (torch.from_numpy, np.asarray):  # torch blocks and numpy blocks
            out = rank_metrics_from_distances(uneven_chunks(dist, rng, to), *labels, max_rank=20)
            assert_same(out, expected)
        # one block for everything, torch labels
        out = rank_metrics_from_distances([(0, torch.from_numpy(dist))],
                                          *[torch.from_numpy(x) for x in labels], max_rank=20)
        assert_same(out, expected)
        checked += 1
    assert checked >= 7


@pytest.mark.parametrize("seed", range(12))
def test_from_distances_matches_brute_force_with_ties_and_infinities(seed):
    # Arbitrary distances (not from features): few distinct values, some +-inf.
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(3, 20)), int(rng.integers(5, 40))
    dist = rng.integers(0, 4, size=(num_q, num_g)).astype(np.float64)
    dist[rng.random(dist.shape) < 0.1] = np.inf
    dist[rng.random(dist.shape) < 0.05] = -np.inf
    q_pids, g_pids = rng.integers(0, 3, num_q), rng.integers(-1, 3, num_g)
    q_camids, g_camids = rng.integers(0, 2, num_q), rng.integers(0, 2, num_g)
    ref = reference_from_distances(dist, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    if ref["num_valid_queries"] == 0:
        pytest.skip("no valid query in this draw")
    for dtype in (np.float32, np.float64, np.float16):
        blocks = uneven_chunks(dist.astype(dtype), rng)
        out = rank_metrics_from_distances(blocks, q_pids, g_pids, q_camids, g_camids, max_rank=10)
        assert_same(out, ref)


def test_from_distances_ranks_float64_blocks_in_float64():
    # 1 and 1 + 1e-12 are equal in float32 (tie -> lower index first) but not in float64.
    dist = np.array([[1.0 + 1e-12, 1.0]])
    args = ([0], [5, 0], [0], [1, 1])
    assert rank_metrics_from_distances([(0, dist)], *args)["mAP"] == 1.0
    assert rank_metrics_from_distances([(0, dist.astype(np.float32))], *args)["mAP"] == 0.5


def test_from_distances_hand_worked_example():
    dist = ((HAND_QF[:, None, 0] - HAND_GF[None, :, 0]) ** 2).astype(np.float32)
    chunks = [(0, dist[:1]), (1, dist[1:1]), (1, dist[1:4])]
    out = rank_metrics_from_distances(chunks, HAND_QP, HAND_GP, HAND_QC, HAND_GC, max_rank=10)
    np.testing.assert_allclose(out["cmc"], [0.5] + [1.0] * 9, atol=1e-12)
    assert out["mAP"] == pytest.approx((0.45 + 2 / 3) / 2, abs=1e-9)
    assert out["mINP"] == pytest.approx((0.4 + 1 / 3) / 2, abs=1e-9)
    assert (out["num_valid_queries"], out["num_excluded_queries"]) == (2, 2)


def test_from_distances_errors():
    dist = torch.from_numpy(((HAND_QF[:, None, 0] - HAND_GF[None, :, 0]) ** 2).astype(np.float32))
    labels = (HAND_QP, HAND_GP, HAND_QC, HAND_GC)

    def run(chunks, **kw):
        return rank_metrics_from_distances(chunks, *labels, **kw)

    with pytest.raises(ValueError, match=r"gap: queries \[2, 3\) are missing"):
        run([(0, dist[:2]), (3, dist[3:])])
    with pytest.raises(ValueError, match=r"overlap: queries \[1, 2\)"):
        run([(0, dist[:2]), (1, dist[1:])])
    with pytest.raises(ValueError, match="starts at 1"):
        run([(1, dist[1:])])  # first block must start at 0
    with pytest.raises(ValueError, match=r"queries \[3, 4\) are missing"):
        run([(0, dist[:3])])
    with pytest.raises(ValueError, match="Q = 4"):
        run([(0, dist[:3]), (3, dist[:2])])  # reaches past Q
    with pytest.raises(ValueError, match=r"shape \(rows, 8\)"):
        run([(0, dist[:, :7])])
    with pytest.raises(ValueError, match=r"shape \(rows, 8\)"):
        run([(0, dist[0])])
    with pytest.raises(ValueError, match="NaN"):
        run([(0, torch.full_like(dist, float("nan")))])
    with pytest.raises(TypeError, match="floating"):
        run([(0, dist.to(torch.int64))])
    with pytest.raises(TypeError, match="start must be an int"):
        run([(0.0, dist)])
    with pytest.raises(TypeError, match="pairs"):
        run([dist])
    with pytest.raises(TypeError, match="tensor or numpy"):
        run([(0, dist.tolist())])
    with pytest.raises(ValueError, match="max_rank"):
        run([(0, dist)], max_rank=0)
    with pytest.raises(ValueError, match="q_camids"):
        rank_metrics_from_distances([(0, dist)], HAND_QP, HAND_GP, HAND_QC[:3], HAND_GC)
    with pytest.raises(ValueError, match="no queries"):
        rank_metrics_from_distances([], HAND_QP[:0], HAND_GP, HAND_QC[:0], HAND_GC)
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics_from_distances([(0, dist[2:])], HAND_QP[2:], HAND_GP, HAND_QC[2:], HAND_GC)


# --------------------------------------------------------------------------------------------
# bfloat16 distances
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric,kind", [("euclidean", "coarse"), ("euclidean", "fine"), ("cosine", "unit")])
def test_bfloat16_equals_float32_on_exactly_representable_features(metric, kind):
    # Grid features (multiples of 1/8 with <= 5 significant bits; +-1/2 after cosine normalisation)
    # are exact in bfloat16, and so are their products accumulated in float32: same metrics, ties
    # included.
    for seed in range(6):
        problem = random_problem(seed, kind)
        try:
            fp32 = rank_metrics(*problem, metric=metric, max_rank=20, chunk_size=7)
        except ValueError:
            continue
        bf16 = rank_metrics(*problem, metric=metric, max_rank=20, chunk_size=7, dtype="bfloat16")
        np.testing.assert_array_equal(bf16["cmc"], fp32["cmc"])
        assert (bf16["mAP"], bf16["mINP"]) == (fp32["mAP"], fp32["mINP"])


def separated_problem(seed):
    """Unit features whose cosines to each query are distinct by >= 0.06 (bf16 error ~1e-2 at most).

    Queries are +-e_i (i < 4) and gallery item j has coordinate i equal to v[perm_i(j)], v a grid of
    16 values spaced 0.06 apart, so every query's gallery cosines are distinct and 0.06 apart; the
    other 4 coordinates complete a unit vector. A random rotation makes every feature a generic
    float (not exact in bfloat16); distinct camids remove nothing.
    """
    rng = np.random.default_rng(seed)
    grid = -0.45 + 0.06 * np.arange(16)
    g = np.zeros((16, 8))
    for i in range(4):
        g[:, i] = grid[rng.permutation(16)]
    rest = rng.standard_normal((16, 4))
    g[:, 4:] = rest / np.linalg.norm(rest, axis=1, keepdims=True) * np.sqrt(1 - (g[:, :4] ** 2).sum(1, keepdims=True))
    q = np.concatenate([np.eye(4, 8), -np.eye(4, 8)])
    rot = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    qf, gf = (q @ rot.T).astype(np.float32), (g @ rot.T).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 3, 8), rng.integers(0, 3, 16)
    return qf, gf, q_pids, g_pids, np.zeros(8, np.int64), np.ones(16, np.int64)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bfloat16_matches_float32_on_well_separated_features(metric):
    maps = []
    for seed in range(8):
        problem = separated_problem(seed)
        ref = reference(*problem, metric=metric, max_rank=16)
        if ref["num_valid_queries"] == 0:
            continue
        fp32 = rank_metrics(*problem, metric=metric, max_rank=16, chunk_size=3)
        bf16 = rank_metrics(*problem, metric=metric, max_rank=16, chunk_size=3, dtype="bfloat16")
        assert_same(fp32, ref)
        np.testing.assert_array_equal(bf16["cmc"], fp32["cmc"])
        assert (bf16["mAP"], bf16["mINP"]) == (fp32["mAP"], fp32["mINP"])
        maps.append(fp32["mAP"])
    assert len(maps) >= 6 and min(maps) < 0.9  # rankings are not trivially perfect


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bfloat16_distances_are_those_of_rounded_features(metric):
    rng = np.random.default_rng(3)
    qf = torch.from_numpy(rng.standard_normal((9, 32)).astype(np.float32))
    gf = torch.from_numpy(rng.standard_normal((20, 32)).astype(np.float32))
    got = torch.cat([d for _, d in _distance_chunks(qf, gf, metric, "bfloat16", 4)])
    assert got.dtype == torch.float32 and got.shape == (9, 20)
    if metric == "cosine":
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    rq, rg = qf.bfloat16().double().numpy(), gf.bfloat16().double().numpy()
    if metric == "cosine":  # 1 - <q, g> of the rounded unit vectors (not re-normalised)
        want = 1.0 - rq @ rg.T
    else:
        want = reference_distances(rq, rg, "euclidean")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    full = reference_distances(qf.double().numpy(), gf.double().numpy(), "euclidean" if metric == "euclidean" else "cosine")
    assert np.abs(got.numpy() - full).max() > 1e-4  # the rounding really happened


def test_bfloat16_rounding_changes_the_ranking_as_documented():
    # 1 + 2^-10 and 1 - 2^-12 both round to 1.0 in bfloat16 (8 significant bits): in float32 the
    # positive g1 is nearer to q = 1; in bfloat16 both distances are 0 and the tie goes to g0.
    qf = np.array([[1.0]], dtype=np.float32)
    gf = np.array([[1.0 + 2**-10], [1.0 - 2**-12]], dtype=np.float32)
    args = (qf, gf, [1], [2, 1], [0], [1, 1])
    assert rank_metrics(*args, max_rank=2)["mAP"] == 1.0
    assert rank_metrics(*args, max_rank=2, dtype="bfloat16")["mAP"] == 0.5


def test_dtype_error():
    args = (HAND_QF, HAND_GF, HAND_QP, HAND_GP, HAND_QC, HAND_GC)
    with pytest.raises(ValueError, match="float16"):
        rank_metrics(*args, dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        rank_metrics(*args, dtype=torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    problem = random_problem(5, "fine")
    cpu = rank_metrics(*problem, chunk_size=7)
    qf, gf, *labels = problem
    gpu = rank_metrics(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda(),
                       *[torch.from_numpy(x).cuda() for x in labels], chunk_size=7)
    assert_same(gpu, cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_matches_cpu():
    # bf16 matmul with float32 output on CUDA (torch.mm out_dtype); grid features are exact.
    problem = random_problem(5, "fine")
    cpu = rank_metrics(*problem, chunk_size=7, dtype="bfloat16")
    qf, gf, *labels = problem
    gpu = rank_metrics(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda(),
                       *[torch.from_numpy(x).cuda() for x in labels], chunk_size=7, dtype="bfloat16")
    assert_same(gpu, cpu)
