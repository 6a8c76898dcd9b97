"""Retrieval metrics for re-identification: CMC, mAP and mINP, computed in bounded memory.

The protocol is the standard Market-1501 / MSMT17 one (as implemented by torchreid's
``eval_market1501``), with junk handling and mINP added:

* For each query, gallery entries with the same pid **and** the same camid as the query are
  removed from that query's ranking (they are "easy" same-camera matches).
* Gallery entries with pid ``-1`` (junk / distractor-junk) are removed from every ranking.
* A query left with no positive (same pid) among its remaining gallery entries is excluded
  from every metric and counted in ``num_excluded_queries``.

Two entry points share one ranking core:

* :func:`rank_metrics` -- from query and gallery features (euclidean or cosine distance,
  computed chunk by chunk in float32 or bfloat16 inputs with float32 accumulation);
* :func:`rank_metrics_from_distances` -- from distance blocks that the caller computes chunk by
  chunk (e.g. k-reciprocal re-ranking), so any distance can be scored the same way.

The full ``Q x G`` distance matrix is never built and no row is sorted: AP, INP and CMC only
need the rank of each positive among the query's valid gallery entries, which is counted
directly (see :func:`rank_metrics_from_distances`, "Algorithm").

Sources:
  L. Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015
  (Market-1501 protocol: CMC and mAP).
  M. Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
  TPAMI 2021, Sec. 4.2 (mINP: inverse negative penalty).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["rank_metrics", "rank_metrics_from_distances", "METRICS", "DTYPES"]

METRICS = ("euclidean", "cosine")
DTYPES = ("float32", "bfloat16")

_INT32_MAX = 2**31 - 1
_TIE_BATCH = 1 << 16  # tied entries refined per searchsorted call


def _device_of(x: Any) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _to_numpy_compatible(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if not arr.flags.writeable:  # torch.as_tensor warns on read-only arrays
        arr = arr.copy()
    return arr


def _int_at_least(value: Any, name: str, low: int = 1) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _features(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be a real floating (or integer) array, got dtype {t.dtype}")
    else:
        arr = _to_numpy_compatible(x)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real floating (or integer) array, got dtype {arr.dtype}")
        t = torch.as_tensor(arr)
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _labels(x: Any, name: str, n: int | None, device: torch.device | None) -> torch.Tensor:
    """Integer labels as an int64 tensor on ``device`` (None: where they are, numpy on CPU);
    ``n`` is the required length (None: any)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer array, got dtype {t.dtype}")
    else:
        arr = _to_numpy_compatible(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        t = torch.as_tensor(arr.astype(np.int64, copy=False))
    if t.ndim != 1 or (n is not None and t.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(t.shape)}")
    return t.to(device=device if device is not None else t.device, dtype=torch.int64)


def _feature_pair(qf: Any, gf: Any) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """``(device, qf, gf)``: validated float32 ``(Q, D)`` / ``(G, D)`` features on ``qf``'s device.

    Raises:
        ValueError / TypeError: as :func:`_features`, or ``gf``'s width differs from ``qf``'s.
    """
    device = _device_of(qf)
    q, g = _features(qf, "qf", device), _features(gf, "gf", device)
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"gf must have shape (G, {q.shape[1]}) to match qf, got shape {tuple(g.shape)}")
    return device, q, g


def _query_gallery(qf: Any, gf: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> tuple:
    """:func:`_feature_pair` plus the four label arrays as int64 tensors on the same device:
    ``(device, qf, gf, q_pids, g_pids, q_camids, g_camids)``.

    Raises:
        ValueError / TypeError: as :func:`_feature_pair` and :func:`_labels` (the argument is named).
    """
    device, q, g = _feature_pair(qf, gf)
    num_q, num_g = q.shape[0], g.shape[0]
    return (device, q, g, _labels(q_pids, "q_pids", num_q, device), _labels(g_pids, "g_pids", num_g, device),
            _labels(q_camids, "q_camids", num_q, device), _labels(g_camids, "g_camids", num_g, device))

def _distance_chunks(qf: torch.Tensor, gf: torch.Tensor, metric: str, dtype: str,
                     chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, dist)`` with ``dist`` the ``(rows, G)`` float32 distances of queries
    ``[start, start + rows)``, ``rows <= chunk_size``, in order.

    ``qf`` / ``gf`` are finite float32 ``(Q, D)`` / ``(G, D)`` tensors on one device. With
    ``dtype="bfloat16"`` the (normalised, for cosine) features are rounded to bfloat16 and the
    products are accumulated in float32: on CUDA by ``torch.mm(..., out_dtype=torch.float32)``, on
    other devices by a float32 matmul of the rounded values (a product of two bfloat16 numbers is
    exact in float32, so this is the same arithmetic). Squared norms are taken of the rounded
    features, so euclidean distances are those of the rounded vectors.
    """
    if metric == "cosine":
        qf = torch.nn.functional.normalize(qf, p=2, dim=1)
        gf = torch.nn.functional.normalize(gf, p=2, dim=1)
    native_bf16 = dtype == "bfloat16" and qf.device.type == "cuda"
    if dtype == "bfloat16":
        qf, gf = qf.to(torch.bfloat16), gf.to(torch.bfloat16)
        if not native_bf16:  # exact upcast of the rounded values; the matmul accumulates in fp32
            qf, gf = qf.float(), gf.float()
    g_sq = (gf.float() * gf.float()).sum(dim=1).unsqueeze(0) if metric == "euclidean" else None
    gf_t = gf.t()
    for start in range(0, qf.shape[0], chunk_size):
        q = qf[start:start + chunk_size]
        if native_bf16:
            dist = torch.mm(q, gf_t, out_dtype=torch.float32)
            if g_sq is not None:
                dist.mul_(-2.0).add_(g_sq)
        elif g_sq is not None:  # float32 |g|^2 - 2 q.g (the formula other modules reuse for equal ties)
            dist = torch.addmm(g_sq, q, gf_t, beta=1.0, alpha=-2.0)
        else:
            dist = torch.mm(q, gf_t)
        if g_sq is not None:  # + |q|^2, clamped at 0 against cancellation
            qfl = q.float()
            dist.add_((qfl * qfl).sum(dim=1, keepdim=True)).clamp_(min=0.0)
        else:  # 1 - cos, in place (the same rounding as 1.0 - x)
            dist.neg_().add_(1.0)
        yield start, dist
        del dist  # so the next block is not allocated while this one is still referenced


def _positive_ranks(dist: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of every positive among the valid entries of its row, without sorting the rows.

    Args:
        dist: ``(rows, G)`` float32 / float64 distances, NaN-free, contiguous.
        valid: ``(rows, G)`` bool, entries that take part in the row's ranking.
        pos: ``(rows, G)`` bool, positives (a subset of ``valid``).

    Returns:
        ``(n_pos, ranks)``: ``n_pos`` ``(rows,)`` int64 positives per row; ``ranks`` ``(rows, P)``
        int64 with ``P = max(n_pos)``, where ``ranks[i, k]`` (``k < n_pos[i]``) is the 1-based rank
        of row ``i``'s ``(k+1)``-th best positive among its valid entries under the order
        (distance, gallery index); entries ``k >= n_pos[i]`` are meaningless.

    Work buffers: ``(rows, G)`` int32 buckets (int64 only if ``rows * (P+1) >= 2^31``), a gather
    in ``dist``'s dtype and bool masks, plus an int64 index per entry that ties a positive's
    distance (usually few); the rest is ``(rows, P+1)`` or ``O(_TIE_BATCH)``.
    """
    rows, num_g = dist.shape
    device = dist.device
    pr, pc = pos.nonzero(as_tuple=True)  # row-major: gallery index ascending within a row
    n_pos = torch.bincount(pr, minlength=rows)  # (a bool .sum() would copy the block to int64)
    width = int(n_pos.max()) if rows else 0
    if width == 0:
        return n_pos, torch.zeros((rows, 0), dtype=torch.int64, device=device)
    nb = width + 1  # buckets 0..P per row
    flat_dt = torch.int32 if rows * nb < _INT32_MAX else torch.int64
    row_off = torch.arange(0, rows * nb, nb, device=device)  # (rows,) int64

    # The positives' keys (d, idx) in a (rows, P+1) table padded with (+inf, G) -- after every real
    # key -- sorted by (distance, gallery index): columns start in gallery-index order (nonzero is
    # row-major) and the sort is stable, so equal distances keep that order and the padding stays
    # last. sorted_slot[i, s] is where column s went.
    slot = torch.arange(pr.numel(), device=device) - (torch.cumsum(n_pos, 0) - n_pos)[pr]
    key_d = torch.full((rows, nb), float("inf"), dtype=dist.dtype, device=device)
    key_i = torch.full((rows, nb), num_g, dtype=torch.int64, device=device)
    key_d[pr, slot] = dist[pr, pc]
    key_i[pr, slot] = pc
    key_d, order = torch.sort(key_d, dim=1, stable=True)
    key_i = key_i.gather(1, order)
    sorted_slot = torch.empty_like(order).scatter_(1, order, torch.arange(nb, device=device).expand(rows, nb))

    # bucket[i, j] = number of positives whose key is strictly below (dist[i, j], j), stored as the
    # flat index i * (P+1) + bucket into the (rows, P+1) tables.
    # Step 1 (all entries): positives with a strictly smaller distance; <= P thanks to the padding.
    bucket = torch.searchsorted(key_d, dist, out_int32=flat_dt == torch.int32)
    bucket.add_(row_off.to(flat_dt).unsqueeze(1))
    # A positive's own bucket is its sorted slot (its key is unique).
    bucket[pr, pc] = (row_off[pr] + sorted_slot[pr, slot]).to(flat_dt)
    del pr, pc, slot, order, sorted_slot
    # Step 2, for the other entries whose distance equals a positive's (key_d at their step-1
    # bucket is that distance): also count the tied positives with a lower gallery index.
    tie = key_d.view(-1).index_select(0, bucket.view(-1)).view(rows, num_g) == dist
    tie.logical_and_(~pos)
    tied = tie.view(-1).nonzero().squeeze(1)  # flat indices i * G + j, usually few
    del tie
    if tied.numel():
        # Composite integer key of each positive: (i * (P+1) + start) * (G+1) + idx, with start the
        # slot of the first positive of its equal-distance group: sorted over the whole table.
        # A tied entry's step-1 bucket is i * (P+1) + start of its group, and the positives with a
        # composite key below  bucket * (G+1) + j  are those of earlier rows (dropped by the row
        # offset), earlier groups, and the group members with idx < j -- so the search returns
        # the entry's exact flat bucket.
        new_group = torch.ones((rows, nb), dtype=torch.bool, device=device)
        new_group[:, 1:] = key_d[:, 1:] != key_d[:, :-1]
        group_start = torch.where(new_group, torch.arange(nb, device=device), 0).cummax(dim=1).values
        scale = num_g + 1
        comp = ((row_off.unsqueeze(1) + group_start) * scale + key_i).view(-1)
        del new_group, group_start
        flat_bucket = bucket.view(-1)
        for s in range(0, tied.numel(), _TIE_BATCH):  # bounded temporaries, also when all entries tie
            t = tied[s : s + _TIE_BATCH]
            query = flat_bucket[t].to(torch.int64).mul_(scale).add_(t % num_g)
            flat_bucket[t] = torch.searchsorted(comp, query).to(flat_dt)
            del t, query
    del tied

    # The (k+1)-th positive's rank = number of valid entries with bucket <= k: count the valid
    # entries per (row, bucket) -- invalid ones go to one extra bin at the end -- and take cumsums.
    bucket.masked_fill_(~valid, rows * nb)
    counts = torch.bincount(bucket.view(-1), minlength=rows * nb + 1)[: rows * nb].view(rows, nb)
    del bucket
    ranks = torch.cumsum(counts[:, :width], dim=1)
    return n_pos, ranks


class _Accumulator:
    """Sums of AP, INP and first-hit counts over the valid queries seen so far (one device)."""

    def __init__(self, max_rank: int, device: torch.device) -> None:
        self.max_rank = max_rank
        self.cmc_counts = torch.zeros(max_rank + 2, dtype=torch.int64, device=device)
        self.ap_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.inp_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.num_valid = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, n_pos: torch.Tensor, ranks: torch.Tensor) -> None:
        """Add rows with ``n_pos`` ``(rows,)`` positives at ``ranks`` ``(rows, P)`` (see
        :func:`_positive_ranks`)."""
        has = n_pos > 0
        if not bool(has.any()):
            return
        device = self.ap_sum.device  # blocks may come from another device
        n_pos, ranks = n_pos[has].to(device), ranks[has].to(device)
        nth = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
        in_row = nth.unsqueeze(0) <= n_pos.unsqueeze(1)
        precision = torch.where(in_row, nth.unsqueeze(0) / ranks.clamp(min=1).to(torch.float64), 0.0)
        npf = n_pos.to(torch.float64)
        last = ranks.gather(1, (n_pos - 1).unsqueeze(1)).squeeze(1)
        self.ap_sum += (precision.sum(dim=1) / npf).sum()
        self.inp_sum += (npf / last.to(torch.float64)).sum()
        self.num_valid += n_pos.numel()
        self.cmc_counts += torch.bincount(ranks[:, 0].clamp(max=self.max_rank + 1), minlength=self.max_rank + 2)

    def result(self, num_q: int) -> dict:
        n_valid = int(self.num_valid.item())
        if n_valid == 0:
            raise ValueError(
                f"no valid query: none of the {num_q} queries has a positive gallery entry left "
                "after removing same-pid-same-camera and pid -1 (junk) entries"
            )
        cmc = torch.cumsum(self.cmc_counts[1 : self.max_rank + 1], 0).to(torch.float64) / n_valid
        return {
            "cmc": cmc.cpu().numpy().astype(np.float64),
            "mAP": float(self.ap_sum.item()) / n_valid,
            "mINP": float(self.inp_sum.item()) / n_valid,
            "num_valid_queries": n_valid,
            "num_excluded_queries": num_q - n_valid,
        }


def _distance_block(block: Any, start: int, num_q: int, num_g: int) -> torch.Tensor:
    if isinstance(block, torch.Tensor):
        t = block.detach()
    elif isinstance(block, np.ndarray):
        t = torch.as_tensor(_to_numpy_compatible(block))
    else:
        raise TypeError(f"distance block at start {start} must be a torch tensor or numpy array, "
                        f"got {type(block).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"distance block at start {start} must be floating point, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[1] != num_g:
        raise ValueError(f"distance block at start {start} must have shape (rows, {num_g}) "
                         f"(G = len(g_pids)), got shape {tuple(t.shape)}")
    stop = start + t.shape[0]
    if stop > num_q:
        raise ValueError(f"distance block for queries [{start}, {stop}) goes past Q = {num_q} (len(q_pids))")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # exact; searchsorted needs float32/float64
    if bool(torch.isnan(t).any()):
        raise ValueError(f"distance block for queries [{start}, {stop}) contains NaN")
    return t.contiguous()


def rank_metrics_from_distances(
    distance_chunks: Iterable[tuple[int, Any]],
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
) -> dict:
    """CMC, mAP and mINP from query-vs-gallery distances supplied block by block.

    Use this to score any distance (e.g. k-reciprocal re-ranking) with exactly the protocol, tie
    rule and metric definitions of :func:`rank_metrics`, without ever holding the ``Q x G``
    matrix: only one block (and ``O(rows * G)`` work buffers) is alive at a time, provided the
    caller's iterable produces the blocks lazily (a generator) and keeps no reference to them.

    Args:
        distance_chunks: iterable of ``(start, block)``. ``start`` is an int; ``block`` is a
            ``(rows, G)`` floating torch tensor (any device) or numpy array of distances -- smaller
            means more similar, any unit -- between queries ``start .. start + rows - 1`` and every
            gallery entry. Blocks must come in order and cover queries ``0 .. Q-1`` exactly once
            (``start`` of each block == end of the previous one, the first at 0, the last ending
            at ``Q``); blocks with 0 rows are allowed. float16/bfloat16 blocks are upcast (exactly)
            to float32; float32 and float64 blocks are ranked in their own precision. ``+-inf`` is
            allowed (ranked last / first), NaN is not.
        q_pids, g_pids: identity labels, shapes ``(Q,)`` / ``(G,)``, integer (numpy or torch);
            they define ``Q`` and ``G``. Gallery pid ``-1`` marks junk and is ignored.
        q_camids, g_camids: camera ids, shapes ``(Q,)`` / ``(G,)``, integer.
        max_rank: length of the returned CMC curve (ranks ``1..max_rank``), ``>= 1``.

    The labels are moved to each block's device and the work is done there.

    Protocol, tie rule and metrics: as in :func:`rank_metrics` (same-pid-same-camera and pid ``-1``
    gallery entries removed per query; ties ordered by (distance, gallery index); ranks are
    1-based positions among the query's valid gallery entries; AP ``(1/n) sum_i i / r_i``, INP
    ``n / r_n``, single-shot cumulative CMC; queries without positives excluded and counted).

    Algorithm (per block, no sort of whole rows): the keys ``(d, idx)`` of each row's ``n``
    positives are sorted (an ``(rows, max n + 1)`` sort, padding included). For every gallery entry ``j``,
    ``torch.searchsorted`` (batched over rows) gives ``b_j``, the number of positives whose key
    is below ``(d_j, j)`` -- by distance, then, for entries whose distance equals a positive's, by
    gallery index through a second search on composite integer keys, so ties are exact. The
    ``k``-th positive's rank is the number of valid entries with ``b_j < k``: a per-(row, ``b``)
    count (``bincount``) and a cumulative sum over ``b``. Cost ``O(rows * G * log n)``; work
    buffers are a few bytes per block entry (int32 where the values fit, bool masks).

    Returns:
        ``{"cmc": np.ndarray (max_rank,) float64, "mAP": float, "mINP": float,
        "num_valid_queries": int, "num_excluded_queries": int}``; metrics are fractions in [0, 1].

    Raises:
        ValueError: a block that does not start where the previous one ended (gap or overlap; the
            message names the query ranges), that reaches past ``Q``, or has not ``G`` columns or 2
            dimensions; blocks that end before ``Q``; NaN distances; wrongly shaped labels;
            ``max_rank`` < 1; ``Q == 0``; no valid query.
        TypeError: an item that is not a ``(start, block)`` pair, a non-int ``start``, a block that
            is not a floating torch tensor / numpy array, non-integer labels.
    """
    max_rank = _int_at_least(max_rank, "max_rank")
    qp = _labels(q_pids, "q_pids", None, None)
    num_q = qp.shape[0]
    qc = _labels(q_camids, "q_camids", num_q, None)
    gp = _labels(g_pids, "g_pids", None, None)
    num_g = gp.shape[0]
    gc = _labels(g_camids, "g_camids", num_g, None)
    if num_q == 0:
        raise ValueError("no queries: q_pids has 0 entries")

    on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}
    acc: _Accumulator | None = None
    expected = 0
    with torch.no_grad():
        for item in distance_chunks:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"distance_chunks must yield (start, block) pairs, got {type(item).__name__}")
            start, block = item
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
                raise TypeError(f"block start must be an int, got {start!r}")
            start = int(start)
            if start != expected:
                what = (f"gap: queries [{expected}, {start}) are missing" if start > expected
                        else f"overlap: queries [{start}, {expected}) were already given")
                raise ValueError(f"distance block starts at {start} but the previous blocks end at "
                                 f"{expected} ({what})")
            dist = _distance_block(block, start, num_q, num_g)
            del block, item
            rows = dist.shape[0]
            expected = start + rows
            if rows == 0:
                continue
            device = dist.device
            if device not in on_device:
                on_device[device] = tuple(t.to(device) for t in (qp, qc, gp, gc, gp == -1))
            qp_d, qc_d, gp_d, gc_d, g_junk = on_device[device]
            if acc is None:
                acc = _Accumulator(max_rank, device)

            same_pid = gp_d.unsqueeze(0) == qp_d[start:expected].unsqueeze(1)
            invalid = gc_d.unsqueeze(0) == qc_d[start:expected].unsqueeze(1)
            invalid.logical_and_(same_pid).logical_or_(g_junk.unsqueeze(0))
            pos = same_pid.logical_and_(~invalid)
            valid = invalid.logical_not_()
            del same_pid, invalid
            n_pos, ranks = _positive_ranks(dist, valid, pos)
            del dist, valid, pos
            acc.add(n_pos, ranks)
            del n_pos, ranks
        if expected != num_q:
            raise ValueError(f"distance blocks cover queries [0, {expected}) but Q = {num_q} (len(q_pids)): "
                             f"queries [{expected}, {num_q}) are missing")
        assert acc is not None  # num_q > 0 and full coverage imply at least one non-empty block
        return acc.result(num_q)


def rank_metrics(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "euclidean",
    max_rank: int = 50,
    chunk_size: int = 256,
    dtype: str = "float32",
) -> dict:
    """CMC, mAP and mINP of a query set against a gallery, in chunks of queries.

    Args:
        qf: query features, shape ``(Q, D)``, real-valued (torch tensor or numpy array).
        gf: gallery features, shape ``(G, D)``.
        q_pids, g_pids: identity labels, shapes ``(Q,)`` / ``(G,)``, integer (numpy or torch).
            Gallery pid ``-1`` marks junk and is ignored.
        q_camids, g_camids: camera ids, shapes ``(Q,)`` / ``(G,)``, integer.
        metric: ``"euclidean"`` -- squared euclidean distance ``|q - g|^2`` (same ranking as the
            euclidean distance); ``"cosine"`` -- ``1 - cos(q, g)`` on L2-normalised features.
        max_rank: length of the returned CMC curve (ranks ``1..max_rank``), ``>= 1``.
        chunk_size: number of queries processed at once, ``>= 1``. Peak extra memory is
            ``O(chunk_size * G)``: about 16 bytes per entry of a ``chunk_size x G`` block (the
            largest single tensor is the float32 block itself), up to ~24 where many distances tie
            exactly, plus the inputs. The full ``Q x G`` distance matrix is never built and no row
            is sorted.
        dtype: precision of the matmul inputs, ``"float32"`` or ``"bfloat16"``. Products are
            always accumulated, and distances returned and ranked, in float32. With
            ``"bfloat16"`` the features (after L2 normalisation for cosine) are rounded to
            bfloat16 -- 8 significant bits, relative error <= 2^-9 per element -- so distances
            are those of the rounded vectors: dot products carry a relative error of order 2^-8,
            near-equal distances may swap or tie, and metrics can differ slightly from float32.
            On CUDA this uses ``torch.mm(..., out_dtype=torch.float32)`` (tensor cores); elsewhere
            the rounded values are multiplied in float32 (same arithmetic, no speed-up).

    All computation is done with torch on ``qf``'s device (CUDA if ``qf`` is a CUDA tensor, else
    CPU); the other inputs are moved there. Metric accumulation is in float64. The distance blocks
    are ranked by :func:`rank_metrics_from_distances`.

    Protocol (Zheng et al. 2015, as in torchreid ``eval_market1501``): for each query, gallery
    entries with the same pid *and* the same camid are removed from its ranking, and so are gallery
    entries with pid ``-1``. Positives are the remaining gallery entries with the query's pid.
    Queries with no positive left are excluded from all metrics and counted.

    Tie rule: gallery entries are ordered by (distance, gallery index) -- the computed float32
    distances, and among equal distances the lower gallery index ranks first (as a stable sort).
    Ranks are 1-based positions among the query's *valid* (non-removed) gallery entries.

    Metrics, for a valid query with positives at ranks ``r_1 < ... < r_n``:

    * CMC: ``cmc[k-1] = 1`` if ``r_1 <= k`` else ``0`` ("single-shot cumulative", torchreid);
      averaged over valid queries. If a query's valid gallery is shorter than ``max_rank`` the
      curve stays at 1 beyond it (it is cumulative and the query has a positive). Unlike torchreid,
      which shortens the curve to ``G`` when ``G < max_rank``, the curve always has ``max_rank``
      entries; the values for ranks ``<= G`` are the same.
    * AP: ``(1/n) * sum_i i / r_i`` (mean precision at each positive's rank, torchreid's
      definition). mAP is its mean over valid queries.
    * INP: ``n / r_n`` (Ye et al. 2021, Sec. 4.2: positives over the rank of the hardest
      positive). mINP is its mean over valid queries.

    All metrics are fractions in ``[0, 1]`` (not percent).

    Returns:
        ``{"cmc": np.ndarray (max_rank,) float64, "mAP": float, "mINP": float,
        "num_valid_queries": int, "num_excluded_queries": int}``

    Raises:
        ValueError: unknown ``metric`` or ``dtype``; a wrongly shaped argument (named in the
            message); ``max_rank`` or ``chunk_size`` < 1; non-finite features; ``Q == 0``; no valid
            query; NaN distances (float32 overflow of huge features).
        TypeError: non-integer pids/camids or non-real features.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    max_rank = _int_at_least(max_rank, "max_rank")
    chunk_size = _int_at_least(chunk_size, "chunk_size")

    _, qf_t, gf_t, qp, gp, qc, gc = _query_gallery(qf, gf, q_pids, g_pids, q_camids, g_camids)
    if qf_t.shape[0] == 0:
        raise ValueError("no queries: qf has 0 rows")

    with torch.no_grad():
        chunks = _distance_chunks(qf_t, gf_t, metric, dtype, chunk_size)
        return rank_metrics_from_distances(chunks, qp, gp, qc, gc, max_rank=max_rank)
