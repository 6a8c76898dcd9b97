"""Tests for reid.evaluation.rerank against a dense float64 transcription of Zhong et al. (CVPR 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.rank_metrics import rank_metrics, rank_metrics_from_distances
from reid.evaluation.rerank import RerankConfig, _knn, rerank_distance_chunks


def dense_rerank(qf: np.ndarray, gf: np.ndarray, k1: int, k2: int, lam: float, metric: str) -> np.ndarray:
    """Straightforward dense re-ranking: the paper's equations with python sets, float64.

    Conventions of the authors' reference code: neighbour lists include the item itself
    (N(p, k) = first k+1 of p's ranking), k/2 = round(k1/2), strict 2/3 rule, d divided by its row
    maximum, normalised Gaussian weights, local query expansion over the first k2 of the ranking.
    """
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, num_q = len(x), len(qf)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = np.clip(1.0 - x @ x.T, 0.0, None)
        np.fill_diagonal(d, 0.0)
    else:
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d = d / d.max(axis=1, keepdims=True)
    # Each item first in its own ranking (documented tie rule), then by distance, then by index.
    ranked = d.copy()
    np.fill_diagonal(ranked, -1.0)
    ranking = np.argsort(ranked, axis=1, kind="stable")

    def nn(p: int, k: int) -> list[int]:  # eq. 2, the item itself included
        return list(ranking[p, : k + 1])

    def recip(p: int, k: int) -> set[int]:  # eq. 3
        return {g for g in nn(p, k) if p in nn(g, k)}

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n))
    for p in range(n):
        r = recip(p, k1)
        r_star = set(r)
        for q in r:  # eq. 4 (strict, as the reference code)
            rq = recip(q, half)
            if len(rq & r) > 2.0 / 3.0 * len(rq):
                r_star |= rq
        idx = sorted(r_star)
        w = np.exp(-d[p, idx])  # eq. 7
        v[p, idx] = w / w.sum()
    if k2 > 1:  # eq. 11
        v = np.stack([v[ranking[p, :k2]].mean(axis=0) for p in range(n)])
    out = np.empty((num_q, len(gf)))
    for i in range(num_q):
        for j in range(len(gf)):
            a, b = v[i], v[num_q + j]
            jac = 1.0 - np.minimum(a, b).sum() / np.maximum(a, b).sum()  # eq. 10
            out[i, j] = (1.0 - lam) * jac + lam * d[i, num_q + j]  # eq. 12
    return out


def collect(chunks, num_q: int, num_g: int) -> np.ndarray:
    out = np.full((num_q, num_g), np.nan, dtype=np.float64)
    expected_start = 0
    for start, block in chunks:
        assert start == expected_start
        assert block.dtype == torch.float32 and block.ndim == 2 and block.shape[1] == num_g
        out[start : start + block.shape[0]] = block.numpy()
        expected_start = start + block.shape[0]
    assert expected_start == num_q
    return out


def features(seed: int, num_q: int, num_g: int, dim: int, normalise: bool = False):
    gen = np.random.default_rng(seed)
    qf = gen.standard_normal((num_q, dim)).astype(np.float32)
    gf = gen.standard_normal((num_g, dim)).astype(np.float32)
    if normalise:
        qf /= np.linalg.norm(qf, axis=1, keepdims=True)
        gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    return qf, gf


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k1,k2,lam", [(5, 3, 0.3), (4, 1, 0.0), (7, 6, 0.5), (2, 6, 0.2)])
def test_matches_dense_reference(seed, k1, k2, lam):
    qf, gf = features(seed, 15, 40, 8)
    got = collect(rerank_distance_chunks(qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk_size=6), 15, 40)
    np.testing.assert_allclose(got, dense_rerank(qf, gf, k1, k2, lam, "euclidean"), atol=1e-5, rtol=0)


def test_matches_dense_reference_paper_defaults_cosine():
    qf, gf = features(7, 20, 70, 16)
    got = collect(rerank_distance_chunks(qf, gf, metric="cosine", chunk_size=32), 20, 70)
    np.testing.assert_allclose(got, dense_rerank(qf, gf, 20, 6, 0.3, "cosine"), atol=1e-5, rtol=0)


def test_cosine_equals_euclidean_on_normalised_features():
    # |x - y|^2 = 2 (1 - cos) on unit vectors, and the row-max normalisation removes the factor 2.
    qf, gf = features(11, 10, 30, 8, normalise=True)
    a = collect(rerank_distance_chunks(qf, gf, k1=6, k2=3, metric="cosine"), 10, 30)
    b = collect(rerank_distance_chunks(qf, gf, k1=6, k2=3, metric="euclidean"), 10, 30)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k1,k2", [(1, 1), (1, 2), (3, 2)])
def test_exact_duplicates_keep_each_item_its_own_first_neighbour(k1, k2):
    # Queries 0-3 also appear in the gallery (distance 0 to their copies; no other ties).
    qf, gf = features(6, 8, 20, 5)
    gf[[2, 5, 11, 17]] = qf[:4]
    got = collect(rerank_distance_chunks(qf, gf, k1=k1, k2=k2, chunk_size=5), 8, 20)
    np.testing.assert_allclose(got, dense_rerank(qf, gf, k1, k2, 0.3, "euclidean"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_each_item_is_its_own_first_neighbour_among_identical_items(metric):
    # Six identical items and neighbour lists of width 3: without the tie rule an item's own list
    # could leave it out (topk returns any 3 of the 6 zero distances).
    x = torch.cat([torch.ones(6, 4), torch.randn(10, 4, generator=torch.Generator().manual_seed(0))])
    sq = None if metric == "cosine" else (x * x).sum(1)
    xs = torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x
    for chunk in (1, 4, 16):
        nbr, rowmax = _knn(xs, sq, 3, chunk)
        assert torch.equal(nbr[:, 0], torch.arange(16))
        assert set(nbr[:6, :3].flatten().tolist()) <= set(range(6))


def test_fewer_items_than_neighbours():
    # N = 7 < k1 + 1: every list is the whole set, so every item is in every R*(p, k1).
    qf, gf = features(5, 3, 4, 4)
    got = collect(rerank_distance_chunks(qf, gf), 3, 4)
    np.testing.assert_allclose(got, dense_rerank(qf, gf, 20, 6, 0.3, "euclidean"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    qf, gf = features(3, 13, 30, 8)
    ref = collect(rerank_distance_chunks(qf, gf, k1=5, k2=3, chunk_size=7), 13, 30)
    got = collect(rerank_distance_chunks(qf, gf, k1=5, k2=3, chunk_size=chunk_size), 13, 30)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_lambda_one_is_row_normalised_original_distance():
    qf, gf = features(4, 6, 9, 5)
    got = collect(rerank_distance_chunks(qf, gf, k1=3, k2=2, lambda_value=1.0), 6, 9)
    x = np.concatenate([qf, gf]).astype(np.float64)
    d = ((x[:6, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(got, d[:, 6:] / d.max(axis=1, keepdims=True), atol=1e-6, rtol=0)


def test_torch_input_and_range():
    qf, gf = features(8, 9, 25, 6)
    got = collect(rerank_distance_chunks(torch.from_numpy(qf), torch.from_numpy(gf), k1=5, k2=3), 9, 25)
    assert np.all(got >= -1e-7) and np.all(got <= 1 + 1e-6)
    np.testing.assert_allclose(got, dense_rerank(qf, gf, 5, 3, 0.3, "euclidean"), atol=1e-5, rtol=0)


def test_lambda_one_keeps_rank_metrics():
    # lambda = 1 scales each query's row by a positive constant: the rankings, so the metrics, stay.
    qf, gf = features(9, 12, 40, 8)
    gen = np.random.default_rng(9)
    qp, gp = gen.integers(0, 5, 12), gen.integers(0, 5, 40)
    qc, gc = np.zeros(12, np.int64), np.ones(40, np.int64)
    ref = rank_metrics(qf, gf, qp, gp, qc, gc, max_rank=10)
    chunks = rerank_distance_chunks(qf, gf, k1=5, k2=3, lambda_value=1.0, chunk_size=5)
    got = rank_metrics_from_distances(chunks, qp, gp, qc, gc, max_rank=10)
    np.testing.assert_allclose(got["cmc"], ref["cmc"])
    assert got["mAP"] == pytest.approx(ref["mAP"]) and got["mINP"] == pytest.approx(ref["mINP"])


def test_config_defaults_and_validation():
    assert RerankConfig() == RerankConfig(20, 6, 0.3)
    assert RerankConfig(k1=np.int64(3), lambda_value=1).k1 == 3
    for kwargs in [
        {"k1": 0}, {"k1": -2}, {"k1": 2.5}, {"k1": True}, {"k2": 0}, {"k2": "6"},
        {"lambda_value": -0.1}, {"lambda_value": 1.5}, {"lambda_value": float("nan")}, {"lambda_value": None},
    ]:
        name, value = next(iter(kwargs.items()))
        with pytest.raises(ValueError, match=name):
            RerankConfig(**kwargs)
        with pytest.raises(ValueError, match=name):
            rerank_distance_chunks(np.zeros((2, 3), np.float32), np.ones((4, 3), np.float32), **kwargs)


def test_argument_errors_raised_at_call():
    qf, gf = features(0, 3, 5, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        rerank_distance_chunks(qf, gf, chunk_size=0)
    with pytest.raises(ValueError, match="metric"):
        rerank_distance_chunks(qf, gf, metric="manhattan")
    with pytest.raises(ValueError, match="gf must have shape"):
        rerank_distance_chunks(qf, gf[:, :3])
    with pytest.raises(ValueError, match="qf must have shape"):
        rerank_distance_chunks(qf[0], gf)
    with pytest.raises(ValueError, match="NaN"):
        rerank_distance_chunks(np.full((2, 4), np.nan, np.float32), gf)
    with pytest.raises(ValueError, match="Q=0"):
        rerank_distance_chunks(qf[:0], gf)
    with pytest.raises(ValueError, match="G=0"):
        rerank_distance_chunks(qf, gf[:0])
    with pytest.raises(TypeError, match="qf"):
        rerank_distance_chunks(np.array([["a"]]), gf)
