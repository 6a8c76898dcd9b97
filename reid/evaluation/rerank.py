"""k-reciprocal re-ranking of query-gallery distances, in bounded memory.

Source: Z. Zhong, L. Zheng, D. Cao, S. Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017 (arXiv:1701.08398). Equation numbers below are that paper's:

* (2) ``N(p, k)``: the k nearest neighbours of ``p``; (3) ``R(p, k)``: its k-reciprocal nearest
  neighbours ``{g in N(p, k) : p in N(g, k)}``;
* (4) the expanded set ``R*(p, k) = R(p, k) U R(q, k/2)`` for every ``q in R(p, k)`` whose
  ``R(q, k/2)`` shares more than 2/3 of its members with ``R(p, k)``;
* (7) the k-reciprocal feature ``V_p``: Gaussian-kernel weights ``exp(-d(p, g))`` on ``R*(p, k)``,
  zero elsewhere; (11) local query expansion: ``V_p`` <- mean of ``V_g`` over ``g in N(p, k2)``;
* (8)-(10) the Jaccard distance ``d_J(p, g) = 1 - sum_j min(V_pj, V_gj) / sum_j max(V_pj, V_gj)``;
* (12) the final distance ``d*(p, g) = (1 - lambda) d_J(p, g) + lambda d(p, g)``.

The conventions the paper leaves open follow the authors' reference code (the ``re_ranking``
function copied into torchreid / fast-reid / reid-strong-baseline), so results match it:

* neighbour lists are taken among all ``Q + G`` probe and gallery items and include the item itself:
  ``N(p, k)`` is the first ``k + 1`` entries of ``p``'s ranking, ``N(p, k2)`` (for eq. 11) the first
  ``k2``; ``k/2`` is ``round(k1 / 2)`` with Python's round-half-to-even (``np.around``);
* the 2/3 rule is strict: ``|R(q, k/2) & R(p, k)| > 2/3 |R(q, k/2)|`` (the paper writes ``>=``);
* ``d`` is the original distance divided by its row maximum over all ``Q + G`` items, and the
  weights of eq. 7 are normalised to sum to 1 per row.

Unlike the reference code, which builds the dense ``(Q+G) x (Q+G)`` distance matrix (35 GB in
float32 for MSMT17's 93,820 images) and float16 ``V``, nothing here is quadratic in ``Q + G``:
neighbours come from chunked matmul + top-k, ``V`` is a CSR sparse matrix (a few tens to a few
hundred non-zeros per row) kept in float32, and the Jaccard distances are accumulated per chunk of
queries through an inverted (column -> gallery rows) index of ``V``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from reid.evaluation.rank_metrics import METRICS, _feature_pair, _int_at_least

__all__ = ["RerankConfig", "rerank_distance_chunks"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class RerankConfig:
    """Validated parameters of k-reciprocal re-ranking (Zhong et al., CVPR 2017).

    Attributes:
        k1: ``k`` of the k-reciprocal neighbour sets ``R(p, k1)`` / ``R*(p, k1)`` (eqs. 3-4), an
            int ``>= 1``. Paper default 20.
        k2: size of the local query expansion neighbourhood ``N(p, k2)`` (eq. 11), the item itself
            included, an int ``>= 1``; ``1`` disables the expansion. Paper default 6.
        lambda_value: weight of the original distance in the final distance (eq. 12), a float in
            ``[0, 1]``; ``0`` is the pure Jaccard distance. Paper default 0.3.

    Raises:
        ValueError: a value of the wrong type or out of range (the message names it).
    """

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        for name in ("k1", "k2"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        lam = self.lambda_value
        if isinstance(lam, (bool, np.bool_)) or not isinstance(lam, (int, float, np.integer, np.floating)):
            raise ValueError(f"lambda_value must be a number in [0, 1], got {lam!r}")
        if not (0.0 <= float(lam) <= 1.0):  # also rejects NaN
            raise ValueError(f"lambda_value must be in [0, 1], got {lam!r}")
        object.__setattr__(self, "k1", int(self.k1))
        object.__setattr__(self, "k2", int(self.k2))
        object.__setattr__(self, "lambda_value", float(lam))


def _distances(x: torch.Tensor, sq: torch.Tensor | None, y: torch.Tensor, y_sq: torch.Tensor | None) -> torch.Tensor:
    """``(n, D) x (m, D) -> (n, m)`` float32 original distances, clamped at 0.

    ``sq``/``y_sq`` are squared norms for the squared euclidean distance ``|x|^2 + |y|^2 - 2 x.y``;
    ``None`` means cosine distance ``1 - x.y`` on (already normalised) features.
    """
    if sq is None:
        return (1.0 - x @ y.t()).clamp_(min=0.0)
    d = torch.addmm(y_sq.unsqueeze(0), x, y.t(), beta=1.0, alpha=-2.0)
    return d.add_(sq.unsqueeze(1)).clamp_(min=0.0)


def _pair_distances(x: torch.Tensor, sq: torch.Tensor | None, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Original distances of the index pairs ``(i[t], j[t])``, same formula as :func:`_distances`,
    with ``d(i, i) = 0`` exactly."""
    dot = (x[i] * x[j]).sum(dim=1)
    d = (1.0 - dot) if sq is None else (sq[i] + sq[j] - 2.0 * dot)
    return d.clamp_(min=0.0).masked_fill_(i == j, 0.0)


def _isin_sorted(values: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Elementwise membership of ``values`` in the ascending 1-D tensor ``sorted_keys``."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, values).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == values


def _ragged(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand segments ``[starts[s], starts[s] + lengths[s])``: returns ``(segment, position)`` of
    every element, segments concatenated in order (int64 1-D tensors)."""
    total = int(lengths.sum().item())
    seg = torch.repeat_interleave(torch.arange(starts.numel(), device=starts.device), lengths, output_size=total)
    first = torch.cumsum(lengths, 0) - lengths
    pos = starts[seg] + torch.arange(total, device=starts.device) - first[seg]
    return seg, pos


def _reciprocal(nbr: torch.Tensor) -> torch.Tensor:
    """``(N, w)`` neighbour lists -> ``(N, w)`` bool: ``nbr[i, t]`` has ``i`` in its own list (eq. 3)."""
    n, w = nbr.shape
    rows = torch.arange(n, device=nbr.device).unsqueeze(1).expand(n, w)
    forward = torch.sort((rows * n + nbr).reshape(-1)).values
    return _isin_sorted((nbr * n + rows).reshape(-1), forward).view(n, w)


class _CSR:
    """Row-compressed sparse ``(N, N)`` matrix: ``indptr (N+1,)``, ``indices``/``values`` ``(nnz,)``."""

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
        self.indptr, self.indices, self.values = indptr, indices, values

    @staticmethod
    def from_chunks(counts: list[torch.Tensor], indices: list[torch.Tensor], values: list[torch.Tensor]) -> "_CSR":
        c = torch.cat(counts)
        indptr = torch.cat([c.new_zeros(1), torch.cumsum(c, 0)])
        return _CSR(indptr, torch.cat(indices), torch.cat(values))

    def row_ids(self) -> torch.Tensor:
        counts = self.indptr[1:] - self.indptr[:-1]
        return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)


def _knn(x: torch.Tensor, sq: torch.Tensor | None, width: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbours among all rows of ``x`` and each row's maximum distance.

    Returns ``(nbr (N, width) int64, rowmax (N,) float32)``; ``nbr[i, 0] == i`` (an item is its own
    first neighbour even if another item lies at distance 0); among other equal distances the order
    is that of ``torch.topk``. Peak memory ``O(chunk * N)``.
    """
    n = x.shape[0]
    nbr = torch.empty((n, width), dtype=torch.int64, device=x.device)
    rowmax = torch.empty(n, dtype=torch.float32, device=x.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        d = _distances(x[s:e], None if sq is None else sq[s:e], x, sq)
        rowmax[s:e] = d.max(dim=1).values
        local = torch.arange(e - s, device=x.device)
        d[local, local + s] = -1.0
        nbr[s:e] = torch.topk(d, width, dim=1, largest=False, sorted=True).indices
        del d
    return nbr, rowmax


def _expanded_sets(
    x: torch.Tensor, sq: torch.Tensor | None, nbr: torch.Tensor, rowmax: torch.Tensor, k1: int, chunk: int
) -> _CSR:
    """The weighted k-reciprocal features ``V`` (eqs. 3, 4, 7) as CSR, each row summing to 1."""
    n = x.shape[0]
    dev = x.device
    f1 = nbr[:, : min(k1 + 1, n)]  # N(p, k1)
    fh = nbr[:, : min(int(round(k1 / 2)) + 1, n)]  # N(q, k1/2)
    m1 = _reciprocal(f1)  # R(p, k1) as a mask over f1
    mh = _reciprocal(fh)  # R(q, k1/2) as a mask over fh
    counts, cols, vals = [], [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        loc = torch.arange(e - s, device=dev)
        f1c, m1c = f1[s:e], m1[s:e]
        base = (loc * n).unsqueeze(1)
        r_keys = (base + f1c)[m1c]  # (p, j) for j in R(p, k1), local row p
        r_sorted = torch.sort(r_keys).values
        # Candidates q in R(p, k1) and their R(q, k1/2): (rows, w1, wh).
        hk = base.unsqueeze(2) + fh[f1c]
        hm = mh[f1c] & m1c.unsqueeze(2)
        size = hm.sum(dim=2)
        inter = (_isin_sorted(hk, r_sorted) & hm).sum(dim=2)
        accept = m1c & (3 * inter > 2 * size)  # |R(q,k/2) & R(p,k)| > 2/3 |R(q,k/2)|, in integers
        keys = torch.unique(torch.cat([r_keys, hk[hm & accept.unsqueeze(2)]]))  # sorted: CSR order
        rows, j = keys // n, keys % n
        i = rows + s
        dn = _pair_distances(x, sq, i, j)
        rm = rowmax[i]
        dn = torch.where(rm > 0, dn / torch.where(rm > 0, rm, 1.0), 0.0)
        w = torch.exp(-dn)
        rsum = torch.zeros(e - s, dtype=torch.float32, device=dev).index_add_(0, rows, w)
        counts.append(torch.bincount(rows, minlength=e - s))
        cols.append(j)
        vals.append(w / rsum[rows])
    return _CSR.from_chunks(counts, cols, vals)


def _local_expansion(v: _CSR, nbr: torch.Tensor, k2: int, chunk: int) -> _CSR:
    """Local query expansion (eq. 11): row ``p`` <- mean of the rows of its first ``k2`` neighbours."""
    n = nbr.shape[0]
    w2 = min(k2, n)
    dev = nbr.device
    counts, cols, vals = [], [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        nb = nbr[s:e, :w2].reshape(-1)
        starts = v.indptr[nb]
        seg, pos = _ragged(starts, v.indptr[nb + 1] - starts)
        owner = seg // w2  # local row of the expanded item
        keys, inv = torch.unique(owner * n + v.indices[pos], return_inverse=True)
        acc = torch.zeros(keys.numel(), dtype=torch.float32, device=dev).index_add_(0, inv, v.values[pos])
        rows = keys // n
        counts.append(torch.bincount(rows, minlength=e - s))
        cols.append(keys % n)
        vals.append(acc / w2)
    return _CSR.from_chunks(counts, cols, vals)


def rerank_distance_chunks(
    qf: Any,
    gf: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
    metric: str = "euclidean",
) -> Iterator[tuple[int, torch.Tensor]]:
    """k-reciprocal re-ranked query-gallery distances (Zhong et al., CVPR 2017), chunk by chunk.

    Args:
        qf: query (probe) features, shape ``(Q, D)``, real-valued torch tensor or numpy array.
        gf: gallery features, shape ``(G, D)``.
        k1, k2, lambda_value: see :class:`RerankConfig` (paper defaults 20, 6, 0.3).
        chunk_size: rows (of the ``Q + G`` items, then of the queries) processed at once, ``>= 1``.
        metric: the original distance ``d``. ``"euclidean"``: squared euclidean distance
            ``|x|^2 + |y|^2 - 2 x.y`` on the features as given (the reference code's distance;
            L2-normalise them first for the usual setting). ``"cosine"``: ``1 - cos(x, y)``. On
            L2-normalised features the two are proportional (``|x - y|^2 = 2 (1 - cos)``), and as
            ``d`` is divided by its row maximum they give the same re-ranked distances.

    Original distance ``d`` (eqs. 7 and 12): the distance above, computed in float32 from the
    features (clamped at 0; ``d(p, p) = 0``), divided by the row maximum ``max_j d(p, j)`` over all
    ``Q + G`` items ``j`` -- as the reference code does. The row maxima come from the same chunked
    pass over all ``Q + G`` columns that finds the neighbours, so they are exact. An item whose row
    maximum is 0 (every item identical to it) gets ``d = 0`` on its row.

    Ties: each item is its own first neighbour; other equal distances are ordered as ``torch.topk``
    returns them (the reference code's ``np.argsort`` is not stable either).

    Memory: ``O(chunk_size * (Q + G))`` for the distance chunks plus the sparse ``V`` --
    ``O((Q + G) * k2 * |R*|)`` values, ``|R*| <= (k1 + 1)(round(k1/2) + 2)`` and typically a few
    tens -- never a ``(Q+G) x (Q+G)`` or ``Q x G`` matrix. Computation runs with torch on ``qf``'s
    device (CUDA if ``qf`` is a CUDA tensor); ``gf`` is moved there.

    Arguments are checked, and errors raised, when this function is called; the work is done as
    the returned iterator is consumed.

    Yields:
        ``(start, block)``: ``block`` is the ``(rows, G)`` float32 tensor of final distances
        ``d*`` (eq. 12, dimensionless, in ``[0, 1]``) of queries ``start .. start + rows - 1``
        against every gallery item, in order of ``start`` (0, chunk_size, ...), covering all queries.
        Directly consumable by ``rank_metrics_from_distances``.

    Raises:
        ValueError: ``k1``/``k2``/``lambda_value`` out of range (see :class:`RerankConfig`),
            ``chunk_size < 1``, unknown ``metric``, wrongly shaped or non-finite features, or an
            empty query or gallery set.
        TypeError: non-real features.
    """
    cfg = RerankConfig(k1, k2, lambda_value)
    chunk_size = _int_at_least(chunk_size, "chunk_size")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    _, q, g = _feature_pair(qf, gf)
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise ValueError(f"need at least one query and one gallery item, got Q={q.shape[0]}, G={g.shape[0]}")
    return _rerank(q, g, cfg, chunk_size, metric)


def _rerank(
    q: torch.Tensor, g: torch.Tensor, cfg: RerankConfig, chunk: int, metric: str
) -> Iterator[tuple[int, torch.Tensor]]:
    """The computation behind :func:`rerank_distance_chunks` (arguments already checked)."""
    with torch.no_grad():
        num_q, num_g = q.shape[0], g.shape[0]
        x = torch.cat([q, g])
        n = x.shape[0]
        if metric == "cosine":
            x = torch.nn.functional.normalize(x, p=2, dim=1)
            sq = None
        else:
            sq = (x * x).sum(dim=1)
        dev = x.device

        nbr, rowmax = _knn(x, sq, min(max(cfg.k1 + 1, cfg.k2), n), chunk)
        v = _expanded_sets(x, sq, nbr, rowmax, cfg.k1, chunk)
        if cfg.k2 > 1:
            v = _local_expansion(v, nbr, cfg.k2, chunk)
        del nbr

        # Row sums (1 up to rounding) and an inverted index: column j -> gallery rows with V[., j] > 0.
        rows = v.row_ids()
        row_sum = torch.zeros(n, dtype=torch.float32, device=dev).index_add_(0, rows, v.values)
        in_g = rows >= num_q
        g_cols = v.indices[in_g]
        order = torch.sort(g_cols, stable=True).indices
        inv_rows = (rows[in_g] - num_q)[order]
        inv_vals = v.values[in_g][order]
        colptr = torch.cat([g_cols.new_zeros(1), torch.cumsum(torch.bincount(g_cols, minlength=n), 0)])
        del in_g, g_cols, order
        q_indptr = v.indptr[: num_q + 1]
        q_nnz = int(q_indptr[-1])
        q_rows, q_cols, q_vals = rows[:q_nnz], v.indices[:q_nnz], v.values[:q_nnz]
        del v, rows

        gx = x[num_q:]
        g_sq = None if sq is None else sq[num_q:]
        g_sum = row_sum[num_q:].unsqueeze(0)
        lam = cfg.lambda_value
        for s in range(0, num_q, chunk):
            e = min(s + chunk, num_q)
            r = e - s
            a, b = int(q_indptr[s]), int(q_indptr[e])
            qr, qc, qv = q_rows[a:b] - s, q_cols[a:b], q_vals[a:b]
            starts = colptr[qc]
            lengths = colptr[qc + 1] - starts
            # sum_j min(V_qj, V_gj) for every gallery g (eq. 8), accumulated over the query's
            # non-zero columns j; the (query entry, gallery row) pairs are expanded in groups of
            # at most ~budget pairs so temporaries stay O(r * G).
            inter = torch.zeros(r * num_g, dtype=torch.float32, device=dev)
            budget = max(r * num_g // 8, num_g)
            cum = torch.cumsum(lengths, 0).cpu()
            i0, done = 0, 0
            while i0 < qc.numel():
                i1 = max(int(torch.searchsorted(cum, done + budget, right=True)), i0 + 1)
                seg, pos = _ragged(starts[i0:i1], lengths[i0:i1])
                seg += i0
                inter.index_add_(0, qr[seg] * num_g + inv_rows[pos], torch.minimum(qv[seg], inv_vals[pos]))
                done, i0 = int(cum[i1 - 1]), i1
                del seg, pos
            inter = inter.view(r, num_g)
            # sum_j max = sum V_q + sum V_g - sum_j min (eq. 9); Jaccard distance (eq. 10).
            union = (row_sum[s:e].unsqueeze(1) + g_sum).sub_(inter)
            jaccard = 1.0 - inter.div_(union)
            del union
            d = _distances(x[s:e], None if sq is None else sq[s:e], gx, g_sq)
            rm = rowmax[s:e].unsqueeze(1)
            d = torch.where(rm > 0, d / torch.where(rm > 0, rm, 1.0), 0.0)
            yield s, jaccard.mul_(1.0 - lam).add_(d, alpha=lam)  # eq. 12

