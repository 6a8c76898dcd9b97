"""CMC plots (PNG) and CMC CSV files (DVC plot format), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from reid.io import atomic_write_bytes, atomic_write_text

__all__ = ["plot_cmc", "write_cmc_csv"]


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
    ax.set_xlabel("Rank")
    ax.set_ylabel("Matching rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
