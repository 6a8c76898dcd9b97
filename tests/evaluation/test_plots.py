"""Tests for reid.evaluation.plots: CMC PNG and CSV outputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
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
