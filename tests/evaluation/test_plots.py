"""Tests for reid.evaluation.plots: CMC PNG and CSV outputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from reid.evaluation.plots import plot_cmc, write_cmc_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_cmc_writes_valid_png(tmp_path):
    cmc_a = np.linspace(0.6, 1.0, 50)
    cmc_b = np.linspace(0.4, 0.95, 20)
    path = tmp_path / "sub" / "cmc.png"
    out = plot_cmc({"model A": cmc_a, "model B": cmc_b}, path, "Market-1501 CMC",
                   extra={"model A": {"mAP": 0.71, "mINP": 0.3}})
    assert out == path and path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # a real rendered figure, not an empty image
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (640, 480)
        # Not a blank canvas: several distinct colours were drawn.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 10
    # Atomic write leaves no temp files behind.
    assert [p.name for p in path.parent.iterdir()] == ["cmc.png"]


def test_plot_cmc_rejects_bad_curves(tmp_path):
    with pytest.raises(ValueError):
        plot_cmc({}, tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="percent"):
        plot_cmc({"a": np.array([50.0, 80.0])}, tmp_path / "x.png", "t")
    with pytest.raises(ValueError):
        plot_cmc({"a": np.zeros((2, 3))}, tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_write_cmc_csv(tmp_path):
    cmc = np.array([0.5, 0.75, 0.875, 0.9, 1.0 / 3.0, 1.0])
    path = tmp_path / "plots" / "cmc.csv"
    assert write_cmc_csv(cmc, path) == path
    text = path.read_text()
    assert text.splitlines()[0] == "rank,cmc"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(cmc)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(cmc) + 1))
    assert [float(r["cmc"]) for r in rows] == cmc.tolist()  # exact round trip
    assert [p.name for p in path.parent.iterdir()] == ["cmc.csv"]


def test_write_cmc_csv_from_rank_metrics(tmp_path):
    from reid.evaluation import rank_metrics

    qf = np.array([[0.0], [10.0]], dtype=np.float32)
    gf = np.array([[1.0], [9.0], [4.0]], dtype=np.float32)
    out = rank_metrics(qf, gf, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], max_rank=5)
    path = write_cmc_csv(out["cmc"], tmp_path / "cmc.csv")
    lines = path.read_text().splitlines()
    assert lines == ["rank,cmc", "1,1.0", "2,1.0", "3,1.0", "4,1.0", "5,1.0"]
    with pytest.raises(ValueError):
        write_cmc_csv(np.array([]), tmp_path / "empty.csv")


# --------------------------------------------------------------------------------------------
# distance histograms and the pair-distance sampler
#
# Hand-worked example (1-D features, squared euclidean distance):
#   gallery  g0 pid 1 cam 0 feat 0.5 | g1 pid 1 cam 1 feat 2 | g2 pid 2 cam 1 feat 9
#            g3 pid -1 (junk) feat 4 | g4 pid 3 cam 1 feat 7
#   q0 pid 1 cam 0 feat 0:  g0 same pid+cam (removed), g1 positive d 4, g3 junk,
#                           negatives g2 d 81, g4 d 49
#   q1 pid 2 cam 0 feat 10: g2 positive d 1, negatives g0 d 90.25, g1 d 64, g4 d 9
# Pair order: query, then the gallery sorted by (pid, camid): pos [4, 1], neg [81, 49, 90.25, 64, 9].
# --------------------------------------------------------------------------------------------
from reid.evaluation.plots import DISTANCE_LABELS, plot_distance_histograms, sample_pair_distances  # noqa: E402

PAIR_QF = np.array([[0.0], [10.0]], dtype=np.float32)
PAIR_GF = np.array([[0.5], [2.0], [9.0], [4.0], [7.0]], dtype=np.float32)
PAIR_LABELS = dict(q_pids=np.array([1, 2]), g_pids=np.array([1, 1, 2, -1, 3]),
                   q_camids=np.array([0, 0]), g_camids=np.array([0, 1, 1, 1, 1]))
PAIR_POS = [4.0, 1.0]
PAIR_NEG = [81.0, 49.0, 90.25, 64.0, 9.0]


def test_sample_pair_distances_hand_worked():
    pos, neg = sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=10)
    assert pos.dtype == np.float64 and neg.dtype == np.float64 and pos.ndim == neg.ndim == 1
    assert pos.tolist() == PAIR_POS and neg.tolist() == PAIR_NEG
    # fewer negatives kept: an ordered subset of them, the same for the same seed
    seen = set()
    for seed in range(300):
        pos, neg = sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=3, seed=seed)
        assert pos.tolist() == PAIR_POS  # both positives kept (2 <= 3)
        assert len(neg) == 3 and len(set(neg.tolist())) == 3
        assert neg.tolist() == [d for d in PAIR_NEG if d in set(neg.tolist())]  # in pair order
        seen.add(tuple(neg.tolist()))
    assert len(seen) == 10  # all C(5, 3) subsets occur
    a = sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=3, seed=7)[1]
    assert a.tolist() == sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=3, seed=7)[1].tolist()
    # more positives than max_pairs: one of them
    pos, neg = sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=1)
    assert len(pos) == 1 and pos[0] in PAIR_POS and len(neg) == 1 and neg[0] in PAIR_NEG


def test_sample_pair_distances_negatives_uniform():
    counts = dict.fromkeys(PAIR_NEG, 0)
    for seed in range(500):
        for d in sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=3, seed=seed)[1]:
            counts[float(d)] += 1
    # each negative is kept with probability 3/5: 300 of 500, standard deviation ~11
    assert all(abs(c - 300) < 55 for c in counts.values()), counts


def _brute_pairs(qf, gf, q_pids, g_pids, q_camids, g_camids, metric):
    qf, gf = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    if metric == "cosine":
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        d = 1.0 - qf @ gf.T
    else:
        d = ((qf[:, None, :] - gf[None]) ** 2).sum(-1)
    same = q_pids[:, None] == g_pids[None]
    keep = (g_pids != -1)[None]
    pos = same & keep & (q_camids[:, None] != g_camids[None])
    return d[pos], d[~same & keep]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sample_pair_distances_match_brute_force(metric):
    rng = np.random.default_rng(5)
    qf, gf = rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    labels = dict(q_pids=rng.integers(0, 6, 20), g_pids=rng.integers(-1, 6, 50),
                  q_camids=rng.integers(0, 3, 20), g_camids=rng.integers(0, 3, 50))
    ref_pos, ref_neg = _brute_pairs(qf, gf, labels["q_pids"], labels["g_pids"], labels["q_camids"],
                                    labels["g_camids"], metric)
    pos, neg = sample_pair_distances(torch.from_numpy(qf), gf, **labels, max_pairs=10_000, metric=metric,
                                     chunk_size=7)
    np.testing.assert_allclose(np.sort(pos), np.sort(ref_pos), atol=1e-5)  # every pair exactly once
    np.testing.assert_allclose(np.sort(neg), np.sort(ref_neg), atol=1e-5)
    assert len(ref_pos) > 40 and len(ref_neg) > 500
    pos, neg = sample_pair_distances(qf, gf, **labels, max_pairs=40, metric=metric, seed=1)
    assert len(pos) == 40 and len(neg) == 40
    for sample, ref in ((pos, ref_pos), (neg, ref_neg)):
        gaps = np.abs(sample[:, None] - ref[None]).min(axis=1)
        assert gaps.max() < 1e-5  # each sampled distance is one of the true pairs
        assert len(np.unique(np.round(sample, 4))) == len(sample)  # no pair drawn twice


def test_sample_pair_distances_bounded_memory():
    # 3000 x 4000 = 12M pairs: a pair mask alone would be 12 MB, the distances 48 MB.
    import tracemalloc

    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(3000, 1)).astype(np.float32), rng.normal(size=(4000, 1)).astype(np.float32)
    labels = dict(q_pids=rng.integers(0, 500, 3000), g_pids=rng.integers(-1, 500, 4000),
                  q_camids=rng.integers(0, 4, 3000), g_camids=rng.integers(0, 4, 4000))
    tracemalloc.start()
    try:
        pos, neg = sample_pair_distances(qf, gf, **labels, max_pairs=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pos) == 1000 and len(neg) == 1000
    assert peak < 4_000_000, peak


def test_sample_pair_distances_errors():
    with pytest.raises(ValueError, match="manhattan"):
        sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, metric="manhattan")
    with pytest.raises(ValueError, match="max_pairs"):
        sample_pair_distances(PAIR_QF, PAIR_GF, **PAIR_LABELS, max_pairs=0)
    with pytest.raises(ValueError, match="g_camids"):
        sample_pair_distances(PAIR_QF, PAIR_GF, **{**PAIR_LABELS, "g_camids": np.array([0, 1])})
    with pytest.raises(ValueError, match="NaN"):
        sample_pair_distances(np.array([[np.nan], [0.0]], np.float32), PAIR_GF, **PAIR_LABELS)


def test_plot_distance_histograms_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "plots" / "dist.png"
    out = plot_distance_histograms(rng.normal(1.0, 0.3, 500), rng.normal(3.0, 0.5, 2000), path, "distances",
                                   xlabel=DISTANCE_LABELS["euclidean"])
    assert out == path and path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        assert img.size == (640, 480)
        colours = {c for _, c in rgb.getcolors(maxcolors=1 << 20)}
    # both histograms drawn: greenish and reddish fills
    assert any(g > r + 40 and g > b + 40 for r, g, b in colours)
    assert any(r > g + 40 and r > b + 40 for r, g, b in colours)
    # same data, same bytes (no timestamp): DVC sees an unchanged plot as unchanged
    again = plot_distance_histograms(rng.normal(size=0), np.array([1.0, 2.0]), tmp_path / "a.png", "t")
    again2 = plot_distance_histograms(np.array([]), np.array([1.0, 2.0]), tmp_path / "b.png", "t")
    assert again.read_bytes() == again2.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["dist.png"]


def test_plot_distance_histograms_rejects_bad_input(tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match="both empty"):
        plot_distance_histograms(np.array([]), np.array([]), path, "t")
    with pytest.raises(ValueError, match="neg"):
        plot_distance_histograms(np.array([1.0]), np.array([np.inf]), path, "t")
    with pytest.raises(ValueError, match="pos"):
        plot_distance_histograms(np.ones((2, 2)), np.array([1.0]), path, "t")
    with pytest.raises(ValueError, match="bins"):
        plot_distance_histograms(np.array([1.0]), np.array([2.0]), path, "t", bins=0)
    assert not path.exists()


def test_plot_distance_histograms_is_atomic(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "dist.png"
    plot_distance_histograms(np.array([1.0, 2.0]), np.array([3.0, 4.0]), path, "first")
    before = path.read_bytes()

    def broken_savefig(self, fname, *args, **kwargs):
        fname.write(b"\x89PNG partial")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_distance_histograms(np.array([5.0]), np.array([6.0]), path, "second")
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_distance_histograms(np.array([5.0]), np.array([6.0]), tmp_path / "new.png", "second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["dist.png"]
