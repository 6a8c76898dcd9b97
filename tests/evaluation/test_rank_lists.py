"""Tests for reid.evaluation.rank_lists: top-k ranking vs brute force, query sampling, pair table,
rank-list figures (size, border colours, atomic writes) and write_rank_lists end to end."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from reid.evaluation import rank_lists
from reid.evaluation.features import Features
from reid.evaluation.rank_lists import (BORDER, CORRECT_COLOUR, GAP, MARGIN, QUERY_COLOUR, QUERY_GAP, WRONG_COLOUR,
                                        PairTable, RankListRow, plot_rank_list, plot_rank_lists,
                                        render_rank_lists, sample_queries, top_k_gallery, write_rank_lists)
from reid.evaluation.rank_metrics import rank_metrics
from tests.evaluation.test_rank_metrics import HAND_GC, HAND_GF, HAND_GP, HAND_QC, HAND_QF, HAND_QP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



# --------------------------------------------------------------------------------------------
# top_k_gallery


def test_top_k_hand_worked():
    # q0 (pid 1 cam 0, feat 0): g0 same pid+cam and g1 junk removed; g3/g4 tie at 9 -> g3 first.
    # q1 (pid 2 cam 0, feat 10): g7 0, g5 16, g6 25, g3 49, g4 49 (tie), g2 64, g0 100.
    # q2 (pid 3 cam 1, feat 5): its only positive g6 has its camid -> removed, no positive.
    # q3 (pid -1): junk g1 is never ranked, nothing is correct.
    top = top_k_gallery(HAND_QF, HAND_GF, [0, 1, 2, 3], HAND_QP, HAND_GP, HAND_QC, HAND_GC, k=8)
    np.testing.assert_array_equal(top.indices, [[2, 3, 4, 6, 5, 7, -1, -1],
                                                [7, 5, 6, 3, 4, 2, 0, -1],
                                                [5, 3, 4, 2, 0, 7, -1, -1],
                                                [0, 2, 3, 4, 6, 5, 7, -1]])
    np.testing.assert_array_equal(top.distances[0], [4, 9, 9, 25, 36, 100, np.nan, np.nan])
    np.testing.assert_array_equal(top.distances[1], [0, 16, 25, 49, 49, 64, 100, np.nan])
    np.testing.assert_array_equal(top.correct[0], [0, 1, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(top.correct[1], [1, 0, 0, 0, 0, 1, 0, 0])
    assert not top.correct[2:].any()
    np.testing.assert_array_equal(top.num_positives, [2, 2, 0, 0])
    assert top.indices.dtype == np.int64 and top.distances.dtype == np.float32 and top.correct.dtype == bool
    # a subset of queries, in the given order, with k smaller than the valid gallery
    top = top_k_gallery(torch.from_numpy(HAND_QF), torch.from_numpy(HAND_GF), np.array([1, 0]), HAND_QP,
                        HAND_GP, HAND_QC, HAND_GC, k=2)
    np.testing.assert_array_equal(top.query_indices, [1, 0])
    np.testing.assert_array_equal(top.indices, [[7, 5], [2, 3]])


def brute_force_top_k(qf, gf, q_pids, g_pids, q_camids, g_camids, q_idx, k, metric):
    """Per query: float64 distances, protocol filter, sort by (distance, gallery index)."""
    qf, gf = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    if metric == "cosine":
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    out = []
    for i in q_idx:
        d = 1.0 - gf @ qf[i] if metric == "cosine" else ((gf - qf[i]) ** 2).sum(axis=1)
        valid = [j for j in range(len(gf))
                 if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        ranked = sorted(valid, key=lambda j: (d[j], j))[:k]
        out.append((ranked, [d[j] for j in ranked], [bool(g_pids[j] == q_pids[i]) for j in ranked],
                    sum(g_pids[j] == q_pids[i] for j in valid)))
    return out


def _random_set(seed, nq=12, ng=30, dim=3, integer=True):
    rng = np.random.default_rng(seed)
    if integer:  # few distinct values: many exact ties (exact in float32)
        qf = rng.integers(0, 3, (nq, dim)).astype(np.float32)
        gf = rng.integers(0, 3, (ng, dim)).astype(np.float32)
    else:
        qf = rng.normal(size=(nq, dim)).astype(np.float32)
        gf = rng.normal(size=(ng, dim)).astype(np.float32)
    q_pids = rng.integers(0, 5, nq)
    g_pids = rng.integers(-1, 5, ng)  # about 1 in 6 junk
    return qf, gf, q_pids, g_pids, rng.integers(0, 2, nq), rng.integers(0, 2, ng)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_top_k_matches_brute_force_with_ties_and_junk(chunk_size):
    qf, gf, qp, gp, qc, gc = _random_set(1)
    d = ((qf[:, None, :] - gf[None]) ** 2).sum(-1)
    assert any(len(set(row)) < len(row) for row in d)  # the example really has ties
    q_idx = np.array([3, 0, 7, 11, 5, 2])
    top = top_k_gallery(qf, gf, q_idx, qp, gp, qc, gc, k=10, chunk_size=chunk_size)
    for row, (ranked, dists, correct, npos) in enumerate(brute_force_top_k(qf, gf, qp, gp, qc, gc, q_idx, 10,
                                                                          "euclidean")):
        assert top.indices[row, :len(ranked)].tolist() == ranked
        assert top.distances[row, :len(ranked)].tolist() == dists  # exact: small integers
        assert top.correct[row, :len(ranked)].tolist() == correct
        assert top.num_positives[row] == npos
        assert (top.indices[row, len(ranked):] == -1).all()


def test_top_k_cosine_matches_brute_force():
    qf, gf, qp, gp, qc, gc = _random_set(2, integer=False)
    q_idx = np.arange(len(qf))
    top = top_k_gallery(qf, gf, q_idx, qp, gp, qc, gc, k=6, metric="cosine")
    for row, (ranked, dists, correct, npos) in enumerate(brute_force_top_k(qf, gf, qp, gp, qc, gc, q_idx, 6,
                                                                          "cosine")):
        assert top.indices[row].tolist() == ranked
        np.testing.assert_allclose(top.distances[row], dists, atol=1e-5)
        assert top.correct[row].tolist() == correct and top.num_positives[row] == npos


def test_top_k_agrees_with_rank_metrics_cmc():
    # A query's first correct entry is its CMC hit: over the valid queries, the fraction with a
    # correct entry among the first r must be rank_metrics' cmc[r - 1].
    qf, gf, qp, gp, qc, gc = _random_set(3, nq=40, ng=60)
    k = 8
    top = top_k_gallery(qf, gf, np.arange(40), qp, gp, qc, gc, k=k)
    valid = top.num_positives > 0
    hits = np.cumsum(top.correct[valid], axis=1) > 0
    res = rank_metrics(qf, gf, qp, gp, qc, gc, max_rank=k)
    np.testing.assert_allclose(hits.mean(axis=0), res["cmc"], atol=1e-12)
    assert valid.sum() == res["num_valid_queries"]


def test_top_k_empty_and_bad_arguments():
    top = top_k_gallery(HAND_QF, HAND_GF, np.array([], np.int64), HAND_QP, HAND_GP, HAND_QC, HAND_GC, k=3)
    assert top.indices.shape == (0, 3) and top.num_positives.shape == (0,)
    args = (HAND_QP, HAND_GP, HAND_QC, HAND_GC)
    with pytest.raises(ValueError, match=r"\[4\]"):
        top_k_gallery(HAND_QF, HAND_GF, [0, 4], *args)
    with pytest.raises(ValueError, match="-1"):
        top_k_gallery(HAND_QF, HAND_GF, [-1], *args)
    with pytest.raises(TypeError, match="q_idx"):
        top_k_gallery(HAND_QF, HAND_GF, [0.0], *args)
    with pytest.raises(ValueError, match="k must be"):
        top_k_gallery(HAND_QF, HAND_GF, [0], *args, k=0)
    with pytest.raises(ValueError, match="manhattan"):
        top_k_gallery(HAND_QF, HAND_GF, [0], *args, metric="manhattan")
    with pytest.raises(ValueError, match="g_pids"):
        top_k_gallery(HAND_QF, HAND_GF, [0], HAND_QP, HAND_GP[:-1], HAND_QC, HAND_GC)


# --------------------------------------------------------------------------------------------
# sample_queries and PairTable


def test_sample_queries_deterministic_distinct_in_range():
    a = sample_queries(100, 8, seed=3)
    assert a.dtype == np.int64 and a.shape == (8,)
    assert np.array_equal(a, sample_queries(100, 8, seed=3))
    assert np.array_equal(a, np.sort(a)) and len(set(a.tolist())) == 8
    assert a.min() >= 0 and a.max() < 100
    draws = {tuple(sample_queries(100, 8, seed=s)) for s in range(10)}
    assert len(draws) == 10  # the seed matters
    np.testing.assert_array_equal(sample_queries(5, 8, seed=0), np.arange(5))
    np.testing.assert_array_equal(sample_queries(5, 5, seed=1), np.arange(5))
    assert sample_queries(0, 3).shape == (0,) and sample_queries(7, 0).shape == (0,)
    # every index is drawn about equally often (each with probability 2/10)
    counts = np.bincount(np.concatenate([sample_queries(10, 2, seed=s) for s in range(2000)]), minlength=10)
    assert np.all(np.abs(counts - 400) < 80), counts
    for bad in ({"num_queries": -1, "n": 1}, {"num_queries": 3, "n": 1.5}, {"num_queries": 3, "n": 1, "seed": -2}):
        with pytest.raises(ValueError):
            sample_queries(**bad)


def test_pair_table_matches_brute_force():
    _, _, qp, gp, qc, gc = _random_set(4, nq=15, ng=40)
    table = PairTable(qp, qc, gp, gc)
    for i in range(len(qp)):
        pos = {j for j in range(len(gp)) if gp[j] != -1 and gp[j] == qp[i] and gc[j] != qc[i]}
        neg = {j for j in range(len(gp)) if gp[j] != -1 and gp[j] != qp[i]}
        assert table.num_pos[i] == len(pos) and table.num_neg[i] == len(neg)
        got_pos = table.positive(np.full(len(pos), i), np.arange(len(pos)))
        got_neg = table.negative(np.full(len(neg), i), np.arange(len(neg)))
        assert sorted(got_pos.tolist()) == sorted(pos)  # each exactly once
        assert sorted(got_neg.tolist()) == sorted(neg)


# --------------------------------------------------------------------------------------------
# figures


def _square(value: int, size: int = 48) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _row(m: int, correct=None) -> RankListRow:
    correct = [j % 2 == 0 for j in range(m)] if correct is None else correct
    return RankListRow(_square(90), [_square(20 + 20 * j) for j in range(m)], [1.5] * m, correct)


def test_plot_rank_list_writes_png_whose_size_scales_with_k(tmp_path):
    sizes = {}
    for k in (1, 2, 5, 9):
        path = tmp_path / "sub" / f"k{k}.png"
        assert plot_rank_list(_square(90), [_square(30)] * k, [0.25] * k, [True] * k, path, "t") == path
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            sizes[k] = img.size
    # square images at tile_height 128: column = 128 + 2 BORDER (wider than any caption)
    column = 128 + 2 * BORDER
    for k, (w, h) in sizes.items():
        assert w == 2 * MARGIN + QUERY_GAP + (k + 1) * column + k * GAP
        assert h == sizes[1][1]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["k1.png", "k2.png", "k5.png", "k9.png"]


def test_rank_lists_height_grows_by_one_row_per_query():
    heights = [render_rank_lists([_row(3)] * n, "t")[0].size[1] for n in (1, 2, 3, 4)]
    steps = np.diff(heights)
    assert len(set(steps.tolist())) == 1 and steps[0] > 128


def test_border_colours_follow_correctness():
    correct = [True, False, False, True, False]
    image, boxes = render_rank_lists([_row(5, correct), _row(2, [False, True])], "colours", tile_height=64)
    px = image.load()
    expected = [[QUERY_COLOUR] + [CORRECT_COLOUR if c else WRONG_COLOUR for c in correct],
                [QUERY_COLOUR, WRONG_COLOUR, CORRECT_COLOUR]]
    assert [len(b) for b in boxes] == [6, 3]
    for row_boxes, colours in zip(boxes, expected):
        for (x0, y0, x1, y1), colour in zip(row_boxes, colours):
            mid = (y0 + y1) // 2
            for x, y in ((x0, y0), (x0 + 1, mid), (x1, mid), ((x0 + x1) // 2, y1), (x0 + BORDER - 1, mid)):
                assert px[x, y] == colour
            assert px[x0 - 1, mid] == (255, 255, 255)  # outside the border: background
            assert px[x0 + BORDER + 20, mid] not in (CORRECT_COLOUR, WRONG_COLOUR, QUERY_COLOUR)  # the image
    assert CORRECT_COLOUR[1] > 2 * max(CORRECT_COLOUR[0], CORRECT_COLOUR[2])  # green
    assert WRONG_COLOUR[0] > 2 * max(WRONG_COLOUR[1], WRONG_COLOUR[2])  # red


def test_images_keep_their_aspect_and_pil_inputs():
    # a 2:1 (h:w) person image in a tile shaped by the figure's median ratio fills the tile
    person = Image.new("RGB", (32, 64), (200, 10, 10))
    image, boxes = render_rank_lists([RankListRow(person, [person], [0.5], [True])], "t", tile_height=64)
    x0, y0, x1, y1 = boxes[0][0]
    assert (x1 - x0 + 1, y1 - y0 + 1) == (32 + 2 * BORDER, 64 + 2 * BORDER)
    assert image.getpixel((x0 + BORDER + 16, y0 + BORDER + 32)) == (200, 10, 10)


def test_rank_list_rejects_bad_rows(tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match="empty"):
        plot_rank_lists([], path, "t")
    with pytest.raises(ValueError, match=r"rows\[0\].*2 gallery images"):
        plot_rank_list(_square(1), [_square(2)] * 2, [1.0], [True, False], path, "t")
    with pytest.raises(ValueError, match="finite"):
        plot_rank_list(_square(1), [_square(2)], [float("nan")], [True], path, "t")
    with pytest.raises(ValueError, match="booleans"):
        plot_rank_list(_square(1), [_square(2)], [1.0], [1], path, "t")
    with pytest.raises(ValueError, match=r"gallery_images\[0\]"):
        plot_rank_list(_square(1), [np.zeros((4, 4, 3), np.float32)], [1.0], [True], path, "t")
    assert not path.exists()


def test_rank_list_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "rl.png"
    plot_rank_list(_square(1), [_square(2)], [1.0], [True], path, "first")
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        plot_rank_list(_square(3), [_square(4)] * 3, [1.0, 2.0, 3.0], [True, False, True], path, "second")
    with pytest.raises(OSError, match="disk full"):
        plot_rank_list(_square(3), [_square(4)], [1.0], [True], tmp_path / "new.png", "second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rl.png"]  # no temp file, no partial new file


# --------------------------------------------------------------------------------------------
# write_rank_lists


class _FakeIndex:
    """``read_jpeg`` over JPEGs made in memory: each pid its own grey level (a ShardsIndex stand-in)."""

    def __init__(self, keys, pids):
        self.images = {}
        for key, pid in zip(keys, pids):
            buf = io.BytesIO()
            Image.new("RGB", (16, 32), (40 * (pid + 1) % 256,) * 3).save(buf, format="JPEG")
            self.images[key] = buf.getvalue()
        self.read = []

    def read_jpeg(self, key):
        self.read.append(key)
        return self.images[key]


def _split(prefix, feats, pids, camids):
    return Features(torch.as_tensor(feats), np.asarray(pids, np.int64), np.asarray(camids, np.int64),
                    [f"{prefix}{i}" for i in range(len(pids))])


def test_write_rank_lists_end_to_end(tmp_path):
    query = _split("q", HAND_QF, HAND_QP, HAND_QC)
    gallery = _split("g", HAND_GF, HAND_GP, HAND_GC)
    index = _FakeIndex(query.keys + gallery.keys, [*HAND_QP, *HAND_GP])
    path = write_rank_lists(index, query, gallery, tmp_path / "plots" / "rank_lists.png", n_queries=8, k=3)
    assert path == tmp_path / "plots" / "rank_lists.png"
    # only q0 and q1 have a valid positive: two rows, q0 then q1, each with its top 3
    assert set(index.read) == {"q0", "q1", "g2", "g3", "g4", "g7", "g5", "g6"}
    rows = []
    for qi, ranked, correct, dists in ((0, [2, 3, 4], [False, True, False], [4.0, 9.0, 9.0]),
                                       (1, [7, 5, 6], [True, False, False], [0.0, 16.0, 25.0])):
        rows.append(RankListRow(
            Image.open(io.BytesIO(index.images[f"q{qi}"])), [Image.open(io.BytesIO(index.images[f"g{g}"]))
                                                            for g in ranked],
            dists, correct, query_caption=f"query pid {HAND_QP[qi]}\ncam {HAND_QC[qi]}, 2 pos",
            gallery_captions=[f"pid {HAND_GP[g]} cam {HAND_GC[g]}" for g in ranked]))
    expected = plot_rank_lists(rows, tmp_path / "expected.png",
                               "Top-3 rank lists (euclidean distance): green border = same id, red = other id")
    assert path.read_bytes() == expected.read_bytes()
    # one query requested: one row, the same for the same seed
    one = write_rank_lists(index, query, gallery, tmp_path / "one.png", n_queries=1, k=3, seed=5)
    again = write_rank_lists(index, query, gallery, tmp_path / "again.png", n_queries=1, k=3, seed=5)
    assert one.read_bytes() == again.read_bytes()
    with Image.open(one) as a, Image.open(path) as b:
        assert a.size[1] < b.size[1]


def test_write_rank_lists_errors(tmp_path):
    query = _split("q", HAND_QF[2:], HAND_QP[2:], HAND_QC[2:])  # q2, q3: no valid positive
    gallery = _split("g", HAND_GF, HAND_GP, HAND_GC)
    index = _FakeIndex(query.keys + gallery.keys, [*HAND_QP[2:], *HAND_GP])
    with pytest.raises(ValueError, match="no query of the 2 has a valid positive"):
        write_rank_lists(index, query, gallery, tmp_path / "x.png")
    query = _split("q", HAND_QF, HAND_QP, HAND_QC)
    index = _FakeIndex(query.keys + gallery.keys, [*HAND_QP, *HAND_GP])
    index.images["g3"] = b"not a jpeg"
    with pytest.raises(ValueError, match="'g3'"):
        write_rank_lists(index, query, gallery, tmp_path / "x.png", k=3)
    assert not (tmp_path / "x.png").exists()
    assert rank_lists.__all__  # the module's public names are declared
