"""Average query expansion (AQE): each query replaced by the mean of itself and its top-k gallery items.

Sources:
  O. Chum, J. Philbin, J. Sivic, M. Isard, A. Zisserman, "Total Recall: Automatic Query Expansion
  with a Generative Feature Model for Object Retrieval", ICCV 2007 ("average query expansion":
  the new query is the average of the original query and the top-ranked results).
  F. Radenovic, G. Tolias, O. Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
  TPAMI 2018 (alpha-weighted query expansion, alpha-QE; alpha = 0 is the plain average, on
  L2-normalised descriptors, re-normalised afterwards).
"""

from __future__ import annotations

from typing import Any

import torch

from reid.evaluation.rank_metrics import METRICS, _feature_pair, _int_at_least
from reid.evaluation.rerank import _distances, _is_int

__all__ = ["average_query_expansion"]

UNIT_NORM_TOL = 1e-3  # |norm - 1| below which features count as L2-normalised (normalize=None)


def _unit_norm(x: torch.Tensor) -> bool:
    return bool(((x.norm(dim=1) - 1.0).abs() <= UNIT_NORM_TOL).all())


def average_query_expansion(
    qf: Any,
    gf: Any,
    k: int = 5,
    chunk_size: int = 256,
    metric: str = "euclidean",
    normalize: bool | None = None,
) -> torch.Tensor:
    """Expanded query features ``(q + g_1 + ... + g_k) / (k + 1)`` over each query's k nearest gallery items.

    Args:
        qf: query features, shape ``(Q, D)``, real-valued torch tensor or numpy array.
        gf: gallery features, shape ``(G, D)``.
        k: number of gallery neighbours averaged with each query, an int in ``[0, G]``. ``0``
            returns the queries unchanged (as float32). Default 5, the ``TEST.AQE.QE_K`` default
            of fast-reid (whose neighbour count includes the query itself).
        chunk_size: queries processed at once, ``>= 1``; peak extra memory ``O(chunk_size * G)``
            (the ``Q x G`` distance matrix is never built).
        metric: how neighbours are found and what is averaged. ``"euclidean"``: nearest by squared
            euclidean distance, the features averaged as given. ``"cosine"``: nearest by
            ``1 - cos``, the L2-normalised features averaged (alpha-QE with alpha = 0).
        normalize: L2-normalise the expanded queries. ``None`` (default): yes for ``"cosine"``, and
            for ``"euclidean"`` when every input row already has unit norm (within 1e-3), i.e.
            the output is normalised iff the features are.

    Neighbours are the ``k`` gallery items with the smallest float32 distance; among equal
    distances the choice is ``torch.topk``'s. Computation runs with torch on ``qf``'s device.

    Returns:
        ``(Q, D)`` float32 tensor on ``qf``'s device: the expanded queries.

    Raises:
        ValueError: ``k`` not an int in ``[0, G]``, ``chunk_size < 1``, unknown ``metric``,
            ``normalize`` not a bool or None, wrongly shaped or non-finite features.
        TypeError: non-real features.
    """
    chunk_size = _int_at_least(chunk_size, "chunk_size")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if normalize is not None and not isinstance(normalize, bool):
        raise ValueError(f"normalize must be True, False or None, got {normalize!r}")
    _, q, g = _feature_pair(qf, gf)
    if not _is_int(k) or not 0 <= k <= g.shape[0]:
        raise ValueError(f"k must be an int in [0, G={g.shape[0]}], got {k!r}")
    k = int(k)
    if k == 0:
        return q.clone()
    with torch.no_grad():
        if metric == "cosine":
            q = torch.nn.functional.normalize(q, p=2, dim=1)
            g = torch.nn.functional.normalize(g, p=2, dim=1)
            g_sq = None
            if normalize is None:
                normalize = True
        else:
            g_sq = (g * g).sum(dim=1)
            if normalize is None:
                normalize = _unit_norm(q) and _unit_norm(g)
        out = torch.empty_like(q)
        for s in range(0, q.shape[0], int(chunk_size)):
            e = min(s + int(chunk_size), q.shape[0])
            qc = q[s:e]
            d = _distances(qc, None if g_sq is None else (qc * qc).sum(dim=1), g, g_sq)
            idx = torch.topk(d, k, dim=1, largest=False).indices
            del d
            out[s:e] = (qc + g[idx].sum(dim=1)) / (k + 1)
        if normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out
