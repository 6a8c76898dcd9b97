"""Tests for reid.evaluation.query_expansion against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.query_expansion import average_query_expansion
from tests.evaluation.test_rerank import features


def brute_force_aqe(qf: np.ndarray, gf: np.ndarray, k: int, metric: str, normalize: bool) -> np.ndarray:
    q, g = qf.astype(np.float64), gf.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = np.empty_like(q)
    for i in range(len(q)):
        d = ((g - q[i]) ** 2).sum(axis=1)  # same order as 1 - cos on unit vectors
        top = np.argsort(d, kind="stable")[:k]
        out[i] = (q[i] + g[top].sum(axis=0)) / (k + 1)
    if normalize:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_euclidean_raw_features_plain_mean(seed, k):
    qf, gf = features(seed, 17, 30, 8)
    got = average_query_expansion(qf, gf, k=k, chunk_size=4)
    assert got.dtype == torch.float32 and got.shape == (17, 8)
    np.testing.assert_allclose(got.numpy(), brute_force_aqe(qf, gf, k, "euclidean", False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [3, 4])
def test_cosine_averages_normalised_features_and_renormalises(seed):
    qf, gf = features(seed, 11, 25, 6)
    qf *= 3.0  # un-normalised inputs: cosine uses their directions only
    got = average_query_expansion(qf, gf, k=4, metric="cosine")
    np.testing.assert_allclose(got.numpy(), brute_force_aqe(qf, gf, 4, "cosine", True), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got.numpy(), axis=1), 1.0, atol=1e-6)


def test_unit_norm_inputs_give_unit_norm_outputs():
    qf, gf = features(5, 9, 20, 8, normalise=True)
    got = average_query_expansion(qf, gf, k=3)
    np.testing.assert_allclose(got.numpy(), brute_force_aqe(qf, gf, 3, "euclidean", True), atol=1e-5, rtol=0)
    raw = average_query_expansion(qf, gf, k=3, normalize=False)
    np.testing.assert_allclose(raw.numpy(), brute_force_aqe(qf, gf, 3, "euclidean", False), atol=1e-5, rtol=0)
    assert np.all(np.linalg.norm(raw.numpy(), axis=1) < 1.0 - 1e-3)  # a mean of distinct unit vectors is shorter


def test_explicit_normalize_on_raw_features():
    qf, gf = features(6, 7, 12, 5)
    got = average_query_expansion(torch.from_numpy(qf), torch.from_numpy(gf), k=2, normalize=True)
    np.testing.assert_allclose(got.numpy(), brute_force_aqe(qf, gf, 2, "euclidean", True), atol=1e-5, rtol=0)


def test_hand_worked_1d():
    # Queries 0 and 10; gallery 1, 2, 9, 20. k=2: 0 -> {1, 2}: (0+1+2)/3 = 1; 10 -> {9, 2}: 7.
    qf = np.array([[0.0], [10.0]], np.float32)
    gf = np.array([[1.0], [2.0], [9.0], [20.0]], np.float32)
    got = average_query_expansion(qf, gf, k=2, normalize=False)
    np.testing.assert_allclose(got.numpy(), [[1.0], [7.0]], atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_k_zero_is_identity(metric):
    qf, gf = features(7, 5, 9, 4)
    got = average_query_expansion(qf, gf, k=0, metric=metric)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), qf)
    got[0, 0] = 123.0  # a copy, not a view of the caller's array
    assert qf[0, 0] != 123.0


def test_chunk_size_does_not_change_the_result():
    qf, gf = features(8, 13, 21, 6)
    ref = average_query_expansion(qf, gf, k=4, chunk_size=13)
    for chunk_size in (1, 5, 100):
        torch.testing.assert_close(average_query_expansion(qf, gf, k=4, chunk_size=chunk_size), ref, atol=1e-6, rtol=0)


def test_errors():
    qf, gf = features(9, 3, 5, 4)
    for kwargs, match in [
        ({"k": -1}, "k must be"), ({"k": 6}, "G=5"), ({"k": 2.0}, "k must be"), ({"k": True}, "k must be"),
        ({"chunk_size": 0}, "chunk_size"), ({"metric": "l1"}, "metric"), ({"normalize": "yes"}, "normalize"),
    ]:
        with pytest.raises(ValueError, match=match):
            average_query_expansion(qf, gf, **kwargs)
    with pytest.raises(ValueError, match="gf must have shape"):
        average_query_expansion(qf, gf[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        average_query_expansion(qf, np.full((5, 4), np.inf, np.float32))
    with pytest.raises(TypeError, match="gf"):
        average_query_expansion(qf, np.zeros((5, 4), np.complex64))
