"""Retrieval metrics for re-identification: CMC, mAP and mINP, computed in bounded memory.

The protocol is the standard Market-1501 / MSMT17 one (as implemented by torchreid's
``eval_market1501``), with junk handling and mINP added:

* For each query, gallery entries with the same pid **and** the same camid as the query are
  removed from that query's ranking (they are "easy" same-camera matches).
* Gallery entries with pid ``-1`` (junk / distractor-junk) are removed from every ranking.
* A query left with no positive (same pid) among its remaining gallery entries is excluded
  from every metric and counted in ``num_excluded_queries``.

Sources:
  L. Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015
  (Market-1501 protocol: CMC and mAP).
  M. Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
  TPAMI 2021, Sec. 4.2 (mINP: inverse negative penalty).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["rank_metrics", "METRICS"]

METRICS = ("euclidean", "cosine")


def _device_of(x: Any) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _to_numpy_compatible(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if not arr.flags.writeable:  # torch.as_tensor warns on read-only arrays
        arr = arr.copy()
    return arr


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


def _labels(x: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer array, got dtype {t.dtype}")
    else:
        arr = _to_numpy_compatible(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        t = torch.as_tensor(arr.astype(np.int64, copy=False))
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)


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
            ``O(chunk_size * G)``; the full ``Q x G`` distance matrix and its sort are never built.

    All computation is done with torch in float32 on ``qf``'s device (CUDA if ``qf`` is a CUDA
    tensor, else CPU); the other inputs are moved there. Metric accumulation is in float64.

    Protocol (Zheng et al. 2015, as in torchreid ``eval_market1501``): for each query, gallery
    entries with the same pid *and* the same camid are removed from its ranking, and so are gallery
    entries with pid ``-1``. Positives are the remaining gallery entries with the query's pid.
    Queries with no positive left are excluded from all metrics and counted.

    Tie rule: gallery entries are ordered by (distance, gallery index) -- a stable sort of the
    computed float32 distances, so among equal distances the lower gallery index ranks first.
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
        ValueError: unknown ``metric``; a wrongly shaped argument (named in the message);
            ``max_rank`` or ``chunk_size`` < 1; non-finite features; ``Q == 0``; no valid query.
        TypeError: non-integer pids/camids or non-real features.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be an int >= 1, got {max_rank!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    max_rank = int(max_rank)
    chunk_size = int(chunk_size)

    device = _device_of(qf)
    qf_t = _features(qf, "qf", device)
    gf_t = _features(gf, "gf", device)
    num_q, dim = qf_t.shape
    num_g = gf_t.shape[0]
    if gf_t.shape[1] != dim:
        raise ValueError(f"gf must have shape (G, {dim}) to match qf, got shape {tuple(gf_t.shape)}")
    qp = _labels(q_pids, "q_pids", num_q, device)
    qc = _labels(q_camids, "q_camids", num_q, device)
    gp = _labels(g_pids, "g_pids", num_g, device)
    gc = _labels(g_camids, "g_camids", num_g, device)
    if num_q == 0:
        raise ValueError("no queries: qf has 0 rows")

    with torch.no_grad():
        if metric == "cosine":
            qf_t = torch.nn.functional.normalize(qf_t, p=2, dim=1)
            gf_t = torch.nn.functional.normalize(gf_t, p=2, dim=1)
            g_sq = None
        else:
            g_sq = (gf_t * gf_t).sum(dim=1)
        gf_tt = gf_t.t()
        g_junk = gp == -1

        cmc_counts = torch.zeros(max_rank + 2, dtype=torch.int64, device=device)
        ap_sum = torch.zeros((), dtype=torch.float64, device=device)
        inp_sum = torch.zeros((), dtype=torch.float64, device=device)
        num_valid = torch.zeros((), dtype=torch.int64, device=device)

        for start in range(0, num_q, chunk_size):
            stop = min(start + chunk_size, num_q)
            q = qf_t[start:stop]
            rows = stop - start
            if g_sq is not None:
                q_sq = (q * q).sum(dim=1, keepdim=True)
                dist = torch.addmm(g_sq.unsqueeze(0), q, gf_tt, beta=1.0, alpha=-2.0)
                dist.add_(q_sq).clamp_(min=0.0)
            else:
                dist = 1.0 - q @ gf_tt

            same_pid = gp.unsqueeze(0) == qp[start:stop].unsqueeze(1)
            same_cam = gc.unsqueeze(0) == qc[start:stop].unsqueeze(1)
            valid = ~((same_pid & same_cam) | g_junk.unsqueeze(0))
            pos = same_pid & valid
            del same_cam, same_pid

            # Stable sort: ties keep ascending gallery index order.
            order = torch.sort(dist, dim=1, stable=True).indices
            del dist
            sorted_valid = valid.gather(1, order)
            sorted_pos = pos.gather(1, order)
            del order, valid, pos
            # 1-based rank among the query's valid gallery entries (meaningful where valid).
            vrank = torch.cumsum(sorted_valid, dim=1, dtype=torch.int32)
            del sorted_valid

            n_pos = sorted_pos.sum(dim=1)  # (rows,)
            # Positives in row-major order: within a row, in increasing rank.
            pr, pc = sorted_pos.nonzero(as_tuple=True)
            del sorted_pos
            if pr.numel() == 0:
                continue
            r = vrank[pr, pc].to(torch.int64)  # rank of each positive
            offsets = torch.cumsum(n_pos, 0) - n_pos
            nth = torch.arange(pr.numel(), device=device) - offsets[pr] + 1  # i of r_i

            ap = torch.zeros(rows, dtype=torch.float64, device=device)
            ap.index_add_(0, pr, nth.to(torch.float64) / r.to(torch.float64))
            first = torch.full((rows,), num_g + 1, dtype=torch.int64, device=device)
            first.scatter_reduce_(0, pr, r, reduce="amin")
            last = torch.zeros(rows, dtype=torch.int64, device=device)
            last.scatter_reduce_(0, pr, r, reduce="amax")

            has = n_pos > 0
            npf = n_pos[has].to(torch.float64)
            ap_sum += (ap[has] / npf).sum()
            inp_sum += (npf / last[has].to(torch.float64)).sum()
            num_valid += has.sum()
            cmc_counts += torch.bincount(first[has].clamp(max=max_rank + 1), minlength=max_rank + 2)

        n_valid = int(num_valid.item())
        if n_valid == 0:
            raise ValueError(
                f"no valid query: none of the {num_q} queries has a positive gallery entry left "
                "after removing same-pid-same-camera and pid -1 (junk) entries"
            )
        cmc = torch.cumsum(cmc_counts[1 : max_rank + 1], 0).to(torch.float64) / n_valid
        return {
            "cmc": cmc.cpu().numpy().astype(np.float64),
            "mAP": float(ap_sum.item()) / n_valid,
            "mINP": float(inp_sum.item()) / n_valid,
            "num_valid_queries": n_valid,
            "num_excluded_queries": num_q - n_valid,
        }
