"""Rank-list figures: a few sampled queries, each followed by its top-k gallery images.

Each gallery image gets a green border when it shows the query's identity and a red one when it
does not, with its rank and distance printed under it. The ranking follows the protocol of
:func:`reid.evaluation.rank_metrics.rank_metrics` exactly: gallery entries with the query's pid
*and* camid, and gallery entries with pid ``-1`` (junk), are removed from a query's ranking, and
the remaining entries are ordered by (distance, gallery index), with the same float32 distance
formula. A rank list is therefore the picture behind the CMC: a query's first green image is at
the rank where it counts as a hit.

Figures are composed with PIL (exact pixel layout, JPEG decoding) and written as PNG with
:func:`reid.io.atomic_write_bytes`: a failure leaves no partial file and an earlier file intact.
The bytes depend only on the inputs (no timestamps), so DVC sees unchanged plots as unchanged.

Typical use (what the evaluate stage calls)::

    write_rank_lists(index, query_features, gallery_features, plots_dir / "rank_lists.png",
                     n_queries=8, k=10, seed=0, metric="euclidean")
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from reid.evaluation.rank_metrics import METRICS, _distance_chunks, _int_at_least, _labels, _query_gallery
from reid.io import atomic_write_bytes

if TYPE_CHECKING:  # not at run time: it would pull in the data loaders
    from reid.evaluation.features import Features

__all__ = [
    "CORRECT_COLOUR", "WRONG_COLOUR", "QUERY_COLOUR", "PairTable", "RankListRow", "TopK", "plot_rank_list",
    "plot_rank_lists", "render_rank_lists", "sample_queries", "top_k_gallery", "write_rank_lists",
]

CORRECT_COLOUR = (0, 170, 0)
"""RGB border of a gallery image with the query's pid."""
WRONG_COLOUR = (220, 0, 0)
"""RGB border of a gallery image with another pid."""
QUERY_COLOUR = (30, 90, 220)
"""RGB border of the query image."""

BORDER = 4          # px, border width around each image
GAP = 6             # px, between two cells of a row and between rows
QUERY_GAP = 24      # px, extra space between the query and its first gallery image
MARGIN = 10         # px, around the whole figure
_BACKGROUND = (255, 255, 255)
_TILE_FILL = (235, 235, 235)  # letterbox colour inside a tile
_TEXT = (0, 0, 0)


# --------------------------------------------------------------------------------------------
# which queries, and their top-k gallery entries


def sample_queries(num_queries: int, n: int, seed: int = 0) -> np.ndarray:
    """``min(n, num_queries)`` distinct query indices drawn uniformly from ``range(num_queries)``.

    Deterministic: the same arguments give the same indices (``numpy.random.default_rng(seed)``
    without replacement), returned sorted ascending as an ``int64`` array of shape
    ``(min(n, num_queries),)``. With ``n >= num_queries`` every index is returned.

    Raises:
        ValueError: ``num_queries``, ``n`` or ``seed`` is not an int ``>= 0``.
    """
    num_queries = _int_at_least(num_queries, "num_queries", 0)
    n = _int_at_least(n, "n", 0)
    seed = _int_at_least(seed, "seed", 0)
    if n >= num_queries:
        return np.arange(num_queries, dtype=np.int64)
    picked = np.random.default_rng(int(seed)).choice(num_queries, size=n, replace=False)
    return np.sort(picked).astype(np.int64)


@dataclass(frozen=True)
class TopK:
    """The top-k valid gallery entries of some queries (see :func:`top_k_gallery`).

    Attributes:
        query_indices: ``(n,) int64`` the queries, as indices into ``qf``, in the given order.
        indices: ``(n, k) int64`` gallery indices in rank order (rank 1 first); ``-1`` pads a
            row whose query has fewer than ``k`` valid gallery entries.
        distances: ``(n, k) float32`` their distances (as in ``rank_metrics``: squared
            euclidean, or ``1 - cos``); NaN where ``indices`` is ``-1``.
        correct: ``(n, k) bool`` the gallery entry has the query's pid; False at padding.
        num_positives: ``(n,) int64`` the query's valid positives in the whole gallery (0: the
            query is excluded from the metrics; all its entries are red).
    """

    query_indices: np.ndarray
    indices: np.ndarray
    distances: np.ndarray
    correct: np.ndarray
    num_positives: np.ndarray


def top_k_gallery(qf: Any, gf: Any, q_idx: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                  k: int = 10, metric: str = "euclidean", chunk_size: int = 64) -> TopK:
    """Top-``k`` valid gallery entries of the queries ``q_idx``, ranked as in ``rank_metrics``.

    Args:
        qf: query features ``(Q, D)``, real (numpy or torch; computed on ``qf``'s device).
        gf: gallery features ``(G, D)``.
        q_idx: the queries to rank, ``(n,)`` integer indices into ``qf`` (e.g. from
            :func:`sample_queries`); ``n`` may be 0.
        q_pids, g_pids, q_camids, g_camids: integer labels ``(Q,)`` / ``(G,)``; gallery pid ``-1``
            is junk.
        k: entries per query, ``>= 1``.
        metric: ``"euclidean"`` (squared euclidean distance) or ``"cosine"`` (``1 - cos`` of
            L2-normalised features), computed in float32 with the formula of ``rank_metrics``.
        chunk_size: queries ranked at once, ``>= 1``; extra memory is ``O(chunk_size * G)``.

    Protocol (as :func:`~reid.evaluation.rank_metrics.rank_metrics`): for each query, gallery
    entries with its pid and camid and those with pid ``-1`` are removed; the rest are ordered
    by (distance, gallery index) with a stable sort of the float32 distances.

    Returns:
        :class:`TopK` with ``(n, k)`` arrays (padded with ``-1`` / NaN / False where a query has
        fewer than ``k`` valid entries).

    Raises:
        ValueError: unknown ``metric``; ``k`` or ``chunk_size`` < 1; a wrongly shaped argument
            (named); non-finite features; a ``q_idx`` entry outside ``[0, Q)``.
        TypeError: non-integer labels or ``q_idx``; non-real features.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    k = _int_at_least(k, "k", 1)
    chunk_size = _int_at_least(chunk_size, "chunk_size", 1)
    device, qf_t, gf_t, qp, gp, qc, gc = _query_gallery(qf, gf, q_pids, g_pids, q_camids, g_camids)
    num_q = qf_t.shape[0]
    q_idx_np = np.asarray(q_idx.detach().cpu() if isinstance(q_idx, torch.Tensor) else q_idx)
    if q_idx_np.ndim != 1:
        raise ValueError(f"q_idx must be 1-D, got shape {q_idx_np.shape}")
    if q_idx_np.size and q_idx_np.dtype.kind not in "iu":
        raise TypeError(f"q_idx must hold integer indices, got dtype {q_idx_np.dtype}")
    q_idx_np = q_idx_np.astype(np.int64)
    bad = q_idx_np[(q_idx_np < 0) | (q_idx_np >= num_q)]
    if bad.size:
        raise ValueError(f"q_idx entries must lie in [0, {num_q}), got {bad[:5].tolist()}")

    n = len(q_idx_np)
    indices = np.full((n, k), -1, np.int64)
    distances = np.full((n, k), np.nan, np.float32)
    num_pos = np.zeros(n, np.int64)
    with torch.no_grad():
        g_junk = gp == -1
        selected = qf_t[torch.as_tensor(q_idx_np, device=device)]
        # rank_metrics' own distance blocks, so that ties break alike
        for start, dist in _distance_chunks(selected, gf_t, metric, "float32", chunk_size):
            rows = torch.as_tensor(q_idx_np[start:start + chunk_size], device=device)
            same_pid = gp.unsqueeze(0) == qp[rows].unsqueeze(1)
            valid = ~((same_pid & (gc.unsqueeze(0) == qc[rows].unsqueeze(1))) | g_junk.unsqueeze(0))
            order = torch.sort(dist, dim=1, stable=True).indices  # ties: lower gallery index first
            sorted_valid = valid.gather(1, order)
            vrank = torch.cumsum(sorted_valid, dim=1)
            r, c = (sorted_valid & (vrank <= k)).nonzero(as_tuple=True)
            g = order[r, c]
            slot = (vrank[r, c] - 1).cpu().numpy()
            rr = r.cpu().numpy() + start
            indices[rr, slot] = g.cpu().numpy()
            distances[rr, slot] = dist[r, g].cpu().numpy()
            num_pos[start:start + len(rows)] = (same_pid & valid).sum(dim=1).cpu().numpy()
    g_pids_np = gp.cpu().numpy()
    q_pids_np = qp.cpu().numpy()[q_idx_np]
    correct = (indices >= 0) & (g_pids_np[np.maximum(indices, 0)] == q_pids_np[:, None])
    return TopK(q_idx_np, indices, distances, correct, num_pos)


class PairTable:
    """The protocol's positive and negative (query, gallery) pairs, from the labels alone.

    For query ``i``, its *positives* are the gallery entries with its pid, another camid and
    pid != -1 (exactly the positives of ``rank_metrics``); its *negatives* those with another pid
    and pid != -1. Neither list is materialised: the non-junk gallery is sorted once by
    (pid, camid), so that query ``i``'s positives are two runs of that order and its negatives
    two more, and the ``j``-th positive / negative of query ``i`` is found in O(1). Memory is
    ``O(Q + G)`` whatever the number of pairs (``Q * G`` can exceed 10^9).

    Args:
        q_pids, q_camids: ``(Q,)`` integer arrays (numpy or torch).
        g_pids, g_camids: ``(G,)`` integer arrays; pid ``-1`` is junk.

    Attributes:
        num_pos, num_neg: ``(Q,) int64`` positives / negatives per query.

    Raises:
        ValueError / TypeError: wrongly shaped or non-integer labels (named).
    """

    def __init__(self, q_pids: Any, q_camids: Any, g_pids: Any, g_camids: Any) -> None:
        cpu = torch.device("cpu")
        qp = _labels(q_pids, "q_pids", len(q_pids), cpu).numpy()
        qc = _labels(q_camids, "q_camids", len(qp), cpu).numpy()
        gp = _labels(g_pids, "g_pids", len(g_pids), cpu).numpy()
        gc = _labels(g_camids, "g_camids", len(gp), cpu).numpy()
        keep = np.flatnonzero(gp != -1)
        pids, pid_code = np.unique(np.concatenate([qp, gp[keep]]), return_inverse=True)
        cams, cam_code = np.unique(np.concatenate([qc, gc[keep]]), return_inverse=True)
        c = max(len(cams), 1)
        g_key = pid_code[len(qp):].astype(np.int64) * c + cam_code[len(qp):]
        order = np.argsort(g_key, kind="stable")
        self._gallery = keep[order]  # non-junk gallery indices sorted by (pid, camid, index)
        key = g_key[order]
        q_pid = pid_code[:len(qp)].astype(np.int64) * c
        q_key = q_pid + cam_code[:len(qp)]
        self._lo = np.searchsorted(key, q_pid, "left")          # the query's pid: [lo, hi)
        self._hi = np.searchsorted(key, q_pid + c, "left")
        self._clo = np.searchsorted(key, q_key, "left")         # ... and its camid: [clo, chi)
        self._chi = np.searchsorted(key, q_key, "right")
        self.num_pos = ((self._hi - self._lo) - (self._chi - self._clo)).astype(np.int64)
        self.num_neg = (len(keep) - (self._hi - self._lo)).astype(np.int64)

    def positive(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Gallery indices of the ``j``-th positives (0-based, ``j < num_pos[i]``) of queries ``i``."""
        pos = self._lo[i] + j
        return self._gallery[np.where(j >= self._clo[i] - self._lo[i], pos + (self._chi[i] - self._clo[i]), pos)]

    def negative(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Gallery indices of the ``j``-th negatives (0-based, ``j < num_neg[i]``) of queries ``i``."""
        return self._gallery[np.where(j >= self._lo[i], j + (self._hi[i] - self._lo[i]), j)]


# --------------------------------------------------------------------------------------------
# drawing


@dataclass(frozen=True)
class RankListRow:
    """One query and its ranked gallery images, for :func:`render_rank_lists`.

    Attributes:
        query_image: PIL image, or ``(H, W, 3)`` / ``(H, W)`` uint8 array.
        gallery_images: the ``m`` ranked gallery images (rank 1 first), same kinds.
        distances: ``m`` finite distances (printed under the images, 4 significant digits).
        correct: ``m`` booleans: same pid as the query (green border) or not (red).
        query_caption: text under the query image (may hold ``\\n``).
        gallery_captions: optional ``m`` extra lines printed under each distance (e.g. pids).
    """

    query_image: Any
    gallery_images: Sequence[Any]
    distances: Sequence[float]
    correct: Sequence[bool]
    query_caption: str = "query"
    gallery_captions: Sequence[str] | None = None


def _rgb(image: Any, name: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) \
            or 0 in arr.shape[:2]:
        raise ValueError(f"{name} must be a PIL image or an (H, W, 3) / (H, W) uint8 array, "
                         f"got {type(image).__name__} of shape {getattr(arr, 'shape', None)} dtype {arr.dtype}")
    return Image.fromarray(arr).convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType: bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    if not text:
        return 0, 0
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return int(math.ceil(x1 - min(x0, 0))), int(math.ceil(y1 - min(y0, 0)))


@dataclass(frozen=True)
class _Row:
    query: Image.Image
    gallery: list[Image.Image]
    colours: list[tuple[int, int, int]]
    captions: list[str]  # query caption first


def _check_row(i: int, row: RankListRow) -> _Row:
    m = len(row.gallery_images)
    dists = np.asarray(row.distances, dtype=np.float64)
    correct = np.asarray(row.correct)
    if dists.shape != (m,) or correct.shape != (m,):
        raise ValueError(f"rows[{i}]: {m} gallery images need {m} distances and {m} correct flags, "
                         f"got shapes {dists.shape} and {correct.shape}")
    if correct.dtype != np.bool_:
        raise ValueError(f"rows[{i}].correct must be booleans, got dtype {correct.dtype}")
    if not np.all(np.isfinite(dists)):
        raise ValueError(f"rows[{i}].distances must be finite, got {dists.tolist()}")
    extra = list(row.gallery_captions) if row.gallery_captions is not None else [""] * m
    if len(extra) != m:
        raise ValueError(f"rows[{i}].gallery_captions must have {m} entries, got {len(extra)}")
    captions = [str(row.query_caption)]
    captions += [f"{r}: {d:.4g}" + (f"\n{e}" if e else "") for r, (d, e) in enumerate(zip(dists, extra), 1)]
    return _Row(_rgb(row.query_image, f"rows[{i}].query_image"),
                [_rgb(g, f"rows[{i}].gallery_images[{j}]") for j, g in enumerate(row.gallery_images)],
                [CORRECT_COLOUR if c else WRONG_COLOUR for c in correct.tolist()], captions)


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit ``width x height`` (aspect kept), centred on the tile colour."""
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    tile = Image.new("RGB", (width, height), _TILE_FILL)
    tile.paste(image.resize((w, h), Image.Resampling.BICUBIC), ((width - w) // 2, (height - h) // 2))
    return tile


def render_rank_lists(rows: Sequence[RankListRow], title: str, tile_height: int = 128,
                      ) -> tuple[Image.Image, list[list[tuple[int, int, int, int]]]]:
    """Draw rank lists, one row per query: the query, then its gallery images left to right.

    Every image is scaled (aspect kept, letterboxed) into a tile ``tile_height`` px high and as
    wide as ``tile_height`` times the median width/height ratio of all images of the figure
    (so people and vehicles both fill their tiles), framed by a ``BORDER`` px border:
    :data:`QUERY_COLOUR` for the query, :data:`CORRECT_COLOUR` / :data:`WRONG_COLOUR` for the
    gallery images, with ``"<rank>: <distance>"`` (and the optional extra caption) under each.
    All columns have one width, so the figure is
    ``2 MARGIN + QUERY_GAP + (m + 1) * column + m * GAP`` px wide for ``m`` gallery images per row
    (rows may differ in length; the longest sets the width) and grows by one row height per row.

    Args:
        rows: the queries to draw, at least one.
        title: text at the top.
        tile_height: image height in px, ``>= 16``.

    Returns:
        ``(image, boxes)``: the RGB figure and, per row, the outer ``(x0, y0, x1, y1)`` box
        (inclusive pixel coordinates) of each border, the query's first.

    Raises:
        ValueError: no rows; a row whose distances / correct flags / captions do not match its
            gallery images in number, non-finite distances, non-boolean flags, or an image that
            is neither a PIL image nor a uint8 ``(H, W[, 3])`` array (each naming the row).
    """
    tile_height = _int_at_least(tile_height, "tile_height", 16)
    if len(rows) == 0:
        raise ValueError("rows is empty: no rank list to draw")
    checked = [_check_row(i, r) for i, r in enumerate(rows)]
    ratios = [im.width / im.height for r in checked for im in (r.query, *r.gallery)]
    tile_w = int(min(max(round(tile_height * float(np.median(ratios))), tile_height // 4), 3 * tile_height))

    font, title_font = _font(12), _font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = [[_text_size(probe, c, font) for c in r.captions] for r in checked]
    column = max(tile_w + 2 * BORDER, *(w for s in sizes for w, _ in s))
    caption_h = max(h for s in sizes for _, h in s)
    title_w, title_h = _text_size(probe, title, title_font)
    row_h = tile_height + 2 * BORDER + 3 + caption_h
    m = max(len(r.gallery) for r in checked)
    width = max(2 * MARGIN + QUERY_GAP + (m + 1) * column + m * GAP, 2 * MARGIN + title_w)
    height = 2 * MARGIN + title_h + GAP + len(checked) * row_h + (len(checked) - 1) * GAP

    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, fill=_TEXT, font=title_font)
    boxes: list[list[tuple[int, int, int, int]]] = []
    for i, row in enumerate(checked):
        y = MARGIN + title_h + GAP + i * (row_h + GAP)
        row_boxes = []
        for j, (image, colour) in enumerate(zip((row.query, *row.gallery), (QUERY_COLOUR, *row.colours))):
            x = MARGIN + j * (column + GAP) + (QUERY_GAP if j else 0)
            bx = x + (column - tile_w - 2 * BORDER) // 2
            box = (bx, y, bx + tile_w + 2 * BORDER - 1, y + tile_height + 2 * BORDER - 1)
            draw.rectangle(box, fill=colour)
            canvas.paste(_fit(image, tile_w, tile_height), (bx + BORDER, y + BORDER))
            cw, _ = sizes[i][j]
            draw.multiline_text((x + (column - cw) // 2, box[3] + 3), row.captions[j], fill=_TEXT, font=font,
                                spacing=2, align="center")
            row_boxes.append(box)
        boxes.append(row_boxes)
    return canvas, boxes


def _save_png(image: Image.Image, path: str | Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_rank_lists(rows: Sequence[RankListRow], path: str | Path, title: str, tile_height: int = 128) -> Path:
    """Draw several rank lists (one row per query, see :func:`render_rank_lists`) into one PNG.

    The PNG is encoded in memory and written with :func:`reid.io.atomic_write_bytes` (parent
    folders created; on any error no file, or the previous file, is left at ``path``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: as :func:`render_rank_lists`.
    """
    image, _ = render_rank_lists(rows, title, tile_height)
    return _save_png(image, path)


def plot_rank_list(query_image: Any, gallery_images: Sequence[Any], distances: Sequence[float],
                   correct: Sequence[bool], path: str | Path, title: str, query_caption: str = "query",
                   gallery_captions: Sequence[str] | None = None, tile_height: int = 128) -> Path:
    """One query's rank list as a PNG: the query, then its ranked gallery images in a row.

    Args:
        query_image: PIL image or uint8 ``(H, W, 3)`` / ``(H, W)`` array.
        gallery_images: ``m`` images, rank 1 first.
        distances: ``m`` finite distances, printed as ``"<rank>: <distance>"`` under each image.
        correct: ``m`` booleans: same pid as the query -> green border, else red.
        path: output PNG (written atomically, parent folders created).
        title: text at the top.
        query_caption, gallery_captions, tile_height: see :class:`RankListRow` and
            :func:`render_rank_lists` (the layout and its size in px are described there).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: as :func:`render_rank_lists`.
    """
    row = RankListRow(query_image, gallery_images, distances, correct, query_caption, gallery_captions)
    return plot_rank_lists([row], path, title, tile_height)


# --------------------------------------------------------------------------------------------
# from shards and features to a PNG


class _JpegSource(Protocol):
    def read_jpeg(self, key: str) -> bytes: ...


def _decode(index: _JpegSource, key: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(index.read_jpeg(key))) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"sample {key!r}: its image bytes cannot be decoded: {err}") from err


def write_rank_lists(index: _JpegSource, query: Features, gallery: Features, path: str | Path,
                     n_queries: int = 8, k: int = 10, seed: int = 0, metric: str = "euclidean",
                     title: str | None = None, tile_height: int = 128) -> Path:
    """Rank lists of ``n_queries`` sampled queries as ONE PNG, one row per query.

    Queries are drawn with :func:`sample_queries` (``seed``) among those with at least one
    valid positive (the queries ``rank_metrics`` scores), shown in query order; each row is the
    query (caption: ``pid``, ``cam``, and its number of valid positives) and its top-``k``
    gallery images from :func:`top_k_gallery` (caption: rank, distance, ``pid``, ``cam``),
    bordered green (same pid) or red. Images come from ``index.read_jpeg(key)``, decoded with
    PIL. The figure is about ``(k + 1) * 80`` px wide for people at ``tile_height`` 128 and
    ``n_queries * 175`` px high.

    Args:
        index: where the images are: a :class:`reid.data.shards.ShardsIndex` (anything with
            ``read_jpeg(key) -> bytes``).
        query, gallery: :class:`~reid.evaluation.features.Features` of the query and gallery
            of one round (``feats (N, D)``, ``pids``/``camids (N,) int64``, ``keys``). For
            gallery draws with camid overrides, pass Features with the camids the metrics used
            (``dataclasses.replace(f, camids=...)``).
        path: output PNG, written atomically.
        n_queries: queries to show, ``>= 1`` (fewer if fewer queries have a positive).
        k: gallery images per query, ``>= 1``.
        seed: query sampling seed.
        metric: ``euclidean`` or ``cosine`` (as the metrics).
        title: figure title (default names k, the metric and the colour code).
        tile_height: image height in px.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no query has a valid positive; bad arguments (as :func:`top_k_gallery`);
            an image that cannot be decoded (naming its key).
        KeyError / reid.data.shards.ShardsError: a key missing from ``index`` / unreadable shard.
    """
    n_queries = _int_at_least(n_queries, "n_queries", 1)
    scored = np.flatnonzero(PairTable(query.pids, query.camids, gallery.pids, gallery.camids).num_pos > 0)
    if scored.size == 0:
        raise ValueError(f"no query of the {len(query.keys)} has a valid positive in the gallery of "
                         f"{len(gallery.keys)}: no rank list to draw")
    chosen = scored[sample_queries(len(scored), n_queries, seed)]
    top = top_k_gallery(query.feats, gallery.feats, chosen, query.pids, gallery.pids, query.camids,
                        gallery.camids, k=k, metric=metric)
    rows = []
    for qi, idx, dist, ok, npos in zip(chosen, top.indices, top.distances, top.correct, top.num_positives):
        keep = idx >= 0
        idx, dist, ok = idx[keep], dist[keep], ok[keep]
        rows.append(RankListRow(
            _decode(index, query.keys[qi]), [_decode(index, gallery.keys[g]) for g in idx], dist.tolist(),
            ok.tolist(), query_caption=f"query pid {query.pids[qi]}\ncam {query.camids[qi]}, {npos} pos",
            gallery_captions=[f"pid {gallery.pids[g]} cam {gallery.camids[g]}" for g in idx]))
    if title is None:
        title = f"Top-{k} rank lists ({metric} distance): green border = same id, red = other id"
    return plot_rank_lists(rows, path, title, tile_height)
