"""CMC plots (PNG), CMC CSV files (DVC plot format) and distance histograms, written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from reid.evaluation.rank_lists import PairTable
from reid.evaluation.rank_metrics import METRICS, _int_at_least, _query_gallery
from reid.io import atomic_write_bytes, atomic_write_text

__all__ = ["DISTANCE_LABELS", "plot_cmc", "plot_distance_histograms", "sample_pair_distances", "write_cmc_csv"]

DISTANCE_LABELS = {"euclidean": "squared euclidean distance", "cosine": "cosine distance (1 - cos)"}
"""x-axis label of :func:`plot_distance_histograms` for each ``rank_metrics`` metric."""


def _save_png(fig, path: str | Path) -> Path:
    """Render ``fig`` to PNG bytes (no "Software" tag, so equal figures give equal bytes) and write
    them to ``path`` atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _finish_axes(fig, ax, path: str | Path, title: str, xlabel: str, ylabel: str, legend_loc: str) -> Path:
    """Label, title, light grid and small legend for a one-axes figure, then :func:`_save_png`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend_loc, fontsize="small")
    fig.tight_layout()
    return _save_png(fig, path)


def _as_cmc(cmc: Any, name: str) -> np.ndarray:
    arr = np.asarray(cmc, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D CMC array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{name} values must be finite fractions in [0, 1] (not percent)")
    return arr


def _legend_label(label: str, cmc: np.ndarray, extra: Mapping[str, Any] | None) -> str:
    extra = extra or {}
    rank1 = next((extra[k] for k in ("Rank-1", "rank1") if extra.get(k) is not None), cmc[0])
    parts = [f"R1 {float(rank1) * 100:.1f}%"]
    for key, short in (("mAP", "mAP"), ("mINP", "mINP")):
        if extra.get(key) is not None:
            parts.append(f"{short} {float(extra[key]) * 100:.1f}%")
    return f"{label} ({', '.join(parts)})"


def plot_cmc(
    curves: Mapping[str, Any],
    path: str | Path,
    title: str,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Plot one or more CMC curves and save them as a PNG, atomically.

    Args:
        curves: label -> CMC array of shape ``(max_rank,)``, fractions in ``[0, 1]``
            (``cmc[k-1]`` is the matching rate at rank ``k``). Curves may differ in length.
        path: output PNG path (parent folders are created).
        title: figure title.
        extra: optional label -> metrics dict; ``"mAP"`` / ``"mINP"`` (fractions in ``[0, 1]``)
            found there are shown in the legend next to Rank-1 (taken from ``"Rank-1"`` /
            ``"rank1"`` there if given, else from the curve's first value).

    The x axis is the rank (1-based), the y axis the matching rate in percent. Rendering uses the
    Agg canvas directly (no pyplot state); the PNG is rendered into memory and then written with
    :func:`reid.io.atomic_write_bytes`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no curves, or a curve that is not a non-empty 1-D array of values in [0, 1].
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    checked = {str(label): _as_cmc(cmc, f"curves[{label!r}]") for label, cmc in curves.items()}
    extra = extra or {}

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    max_len = 1
    for label, cmc in checked.items():
        ranks = np.arange(1, cmc.shape[0] + 1)
        ax.plot(ranks, cmc * 100.0, marker="." if cmc.shape[0] <= 50 else None,
                label=_legend_label(label, cmc, extra.get(label)))
        max_len = max(max_len, cmc.shape[0])
    ax.set_xlim(1, max(max_len, 2))
    ax.set_ylim(0, 100)
    return _finish_axes(fig, ax, path, title, "Rank", "Matching rate (%)", legend_loc="lower right")


def write_cmc_csv(cmc: Any, path: str | Path) -> Path:
    """Write one CMC curve as CSV with header ``rank,cmc`` (see :func:`write_cmc_table`)."""
    return write_cmc_table({"cmc": cmc}, path)


def write_cmc_table(curves: Mapping[str, Any], path: str | Path) -> Path:
    """Write CMC curves as one CSV (a DVC plot file), atomically: header ``rank,<name>,...``.

    One row per rank: ``rank`` is 1-based, each curve's matching rate a fraction in ``[0, 1]``
    written with Python's shortest round-trip float repr (exact, byte-stable).

    Returns ``path`` as a :class:`~pathlib.Path`. Raises ValueError for no curves, curves of
    different lengths, a name with a comma, or an empty, non-1-D, non-finite or out-of-[0, 1] curve.
    """
    if not curves:
        raise ValueError("write_cmc_table: no curves")
    arrays = {name: _as_cmc(c, name) for name, c in curves.items()}
    if len({len(a) for a in arrays.values()}) != 1:
        raise ValueError(f"write_cmc_table: curves differ in length: { {n: len(a) for n, a in arrays.items()} }")
    if any("," in name or not name for name in arrays):
        raise ValueError(f"write_cmc_table: bad curve name in {list(arrays)}")
    lines = ["rank," + ",".join(arrays)]
    columns = [a.tolist() for a in arrays.values()]
    lines.extend(f"{k}," + ",".join(repr(float(col[k - 1])) for col in columns)
                 for k in range(1, len(columns[0]) + 1))
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# distance histograms: positive vs negative pairs


def _distances(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of distances, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite distances")
    return arr


def plot_distance_histograms(pos: np.ndarray, neg: np.ndarray, path: str | Path, title: str,
                             bins: int = 60, xlabel: str = "distance") -> Path:
    """Overlaid histograms of positive-pair and negative-pair distances, saved as a PNG atomically.

    Args:
        pos: ``(P,)`` distances of positive (same pid, valid) pairs, finite floats.
        neg: ``(N,)`` distances of negative (other pid) pairs, finite floats (see
            :func:`sample_pair_distances`). One of the two may be empty (it is then not drawn).
        path: output PNG path (parent folders are created).
        title: figure title.
        bins: number of bins, ``>= 1``; both histograms share the same edges, spanning the
            smallest to the largest distance of either set.
        xlabel: x-axis label, e.g. ``DISTANCE_LABELS[metric]``.

    Each histogram is density-normalised (its area is 1, so sets of different sizes compare);
    the legend gives each set's pair count and mean, also marked by a dashed vertical line.
    A 640 x 480 px figure, rendered with the Agg canvas (no pyplot state) into memory, then
    written with :func:`reid.io.atomic_write_bytes`: an error leaves no partial file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: both sets empty; a set that is not 1-D or holds NaN / inf; ``bins`` < 1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos, neg = _distances(pos, "pos"), _distances(neg, "neg")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    if pos.size == 0 and neg.size == 0:
        raise ValueError("pos and neg are both empty: no distance to plot")
    edges = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=int(bins))

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for values, label, colour in ((pos, "positive pairs (same id)", "tab:green"),
                                  (neg, "negative pairs (other id)", "tab:red")):
        if values.size == 0:
            continue
        mean = float(values.mean())
        ax.hist(values, bins=edges, density=True, histtype="stepfilled", alpha=0.45, color=colour,
                edgecolor=colour, label=f"{label}: n={values.size:,}, mean {mean:.4g}")
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.2)
    return _finish_axes(fig, ax, path, title, xlabel, "density", legend_loc="upper right")


def _draw(rng: np.random.Generator, total: int, max_pairs: int) -> np.ndarray:
    """Sorted ranks in ``[0, total)``: all of them, or ``max_pairs`` uniformly without replacement."""
    if total <= max_pairs:
        return np.arange(total, dtype=np.int64)
    return np.sort(rng.choice(total, size=max_pairs, replace=False)).astype(np.int64)


def _locate(counts: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query ``i`` and in-query position ``j`` of global pair ranks (pairs numbered query by query)."""
    ends = np.cumsum(counts)
    i = np.searchsorted(ends, ranks, side="right")
    return i, ranks - (ends[i] - counts[i])


def sample_pair_distances(qf: Any, gf: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                          max_pairs: int = 200_000, seed: int = 0, metric: str = "euclidean",
                          chunk_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Distances of positive and of negative (query, gallery) pairs, sampled in bounded memory.

    Pairs follow the ``rank_metrics`` protocol: gallery pid ``-1`` (junk) is never paired; a
    *positive* pair has the query's pid and another camid (same pid + same camid is removed);
    a *negative* pair has another pid. If there are at most ``max_pairs`` positives all are
    kept, else ``max_pairs`` of them are drawn uniformly without replacement; the same for the
    negatives (which usually number ``~Q * G``). The pairs are located from the labels alone
    (:class:`reid.evaluation.rank_lists.PairTable`) and the distances computed only for the
    drawn pairs, ``chunk_size`` pairs at a time: memory is ``O(Q + G + max_pairs +
    chunk_size * D)``, never ``O(Q * G)``.

    Args:
        qf, gf: features ``(Q, D)`` / ``(G, D)``, real (numpy or torch; computed on ``qf``'s
            device in float32).
        q_pids, g_pids, q_camids, g_camids: integer labels ``(Q,)`` / ``(G,)``.
        max_pairs: most pairs kept per kind, ``>= 1``.
        seed: sampling seed. Positives and negatives use independent streams
            (``numpy.random.SeedSequence(seed).spawn(2)``), so the same seed gives the same
            pairs, and the negatives do not depend on whether positives were sampled.
        metric: ``"euclidean"``: squared euclidean ``sum((q - g)^2)``; ``"cosine"``:
            ``1 - cos(q, g)`` of L2-normalised features (the metrics of ``rank_metrics``,
            computed pair by pair rather than by its matrix expansion).
        chunk_size: pairs whose distances are computed at once, ``>= 1`` (peak extra memory about
            ``3 * chunk_size * D * 4`` bytes: 48 MiB at the default 2048 and D = 2048).

    Returns:
        ``(pos, neg)``: 1-D ``float64`` arrays of distances, in pair order (query index, then
        the gallery's (pid, camid, index) order), of lengths ``min(P, max_pairs)`` and
        ``min(N, max_pairs)`` for ``P`` positive and ``N`` negative pairs in all.

    Raises:
        ValueError: unknown ``metric``; ``max_pairs`` or ``chunk_size`` < 1, ``seed`` < 0; wrongly shaped
            arguments (named); non-finite features.
        TypeError: non-integer labels; non-real features.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    max_pairs = _int_at_least(max_pairs, "max_pairs", 1)
    chunk_size = _int_at_least(chunk_size, "chunk_size", 1)
    seed = _int_at_least(seed, "seed", 0)
    device, qf_t, gf_t, qp, gp, qc, gc = _query_gallery(qf, gf, q_pids, g_pids, q_camids, g_camids)
    table = PairTable(qp, qc, gp, gc)
    if metric == "cosine":
        qf_t = torch.nn.functional.normalize(qf_t, p=2, dim=1)
        gf_t = torch.nn.functional.normalize(gf_t, p=2, dim=1)

    def distances(qi: np.ndarray, gi: np.ndarray) -> np.ndarray:
        out = np.empty(len(qi), np.float64)
        with torch.no_grad():
            for s in range(0, len(qi), chunk_size):
                q = qf_t[torch.as_tensor(qi[s:s + chunk_size], device=device)]
                g = gf_t[torch.as_tensor(gi[s:s + chunk_size], device=device)]
                d = ((q - g) ** 2).sum(dim=1) if metric == "euclidean" else 1.0 - (q * g).sum(dim=1)
                out[s:s + chunk_size] = d.cpu().numpy()
        return out

    rng_pos, rng_neg = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    qi, j = _locate(table.num_pos, _draw(rng_pos, int(table.num_pos.sum()), max_pairs))
    pos = distances(qi, table.positive(qi, j))
    qi, j = _locate(table.num_neg, _draw(rng_neg, int(table.num_neg.sum()), max_pairs))
    neg = distances(qi, table.negative(qi, j))
    return pos, neg
