"""Tests of the Market-1501 (and DukeMTMC-reID) layout parser on hand-made fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.data.layouts import LayoutError, get_parser, market1501, parse
from reid.data.manifest import Row

# folder -> file names. Train holds a junk (-1) and a distractor (0) image, skipped; the gallery
# keeps both. Thumbs.db and a sub-folder are ignored.
MARKET = {
    "bounding_box_train": [
        "0007_c2s3_070952_01.jpg",
        "0002_c3s1_000551_01.jpg",
        "-1_c1s1_000401_03.jpg",
        "0002_c1s1_000451_03.jpg",
        "0000_c6s1_000001_01.jpg",
    ],
    "query": ["0003_c6s2_000201_00.jpg", "0001_c1s1_001051_00.jpg"],
    "bounding_box_test": [
        "0001_c2s1_001101_01.jpg",
        "0000_c5s1_000001_04.jpg",
        "0003_c1s1_000111_02.jpg",
        "-1_c1s1_000401_03.jpg",
    ],
}


def _row(relpath: str, pid: int, camid: int, split: str) -> Row:
    return Row(relpath[:-4].replace("/", "__"), relpath, pid, camid, -1, split)


EXPECTED = [
    _row("bounding_box_train/0002_c1s1_000451_03.jpg", 2, 0, "train"),
    _row("bounding_box_train/0002_c3s1_000551_01.jpg", 2, 2, "train"),
    _row("bounding_box_train/0007_c2s3_070952_01.jpg", 7, 1, "train"),
    _row("query/0001_c1s1_001051_00.jpg", 1, 0, "query"),
    _row("query/0003_c6s2_000201_00.jpg", 3, 5, "query"),
    _row("bounding_box_test/-1_c1s1_000401_03.jpg", -1, 0, "gallery"),
    _row("bounding_box_test/0000_c5s1_000001_04.jpg", 0, 4, "gallery"),
    _row("bounding_box_test/0001_c2s1_001101_01.jpg", 1, 1, "gallery"),
    _row("bounding_box_test/0003_c1s1_000111_02.jpg", 3, 0, "gallery"),
]


def _jpeg(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 4), (shade % 256, 80, 120)).save(path, format="JPEG", quality=90)


def make_market(root: Path, folders: dict[str, list[str]] = MARKET) -> Path:
    for folder, names in folders.items():
        (root / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            _jpeg(root / folder / name, 30 * i)
    return root


@pytest.fixture
def market(tmp_path: Path) -> Path:
    root = make_market(tmp_path / "Market-1501-v15.09.15")
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"\x00not an image")
    (root / "query" / "notes.txt").write_text("not read\n")
    _jpeg(root / "bounding_box_test" / "nested" / "0009_c1s1_000001_00.jpg")  # sub-folder: not read
    _jpeg(root / "gt_bbox" / "0001_c1s1_001051_00.jpg")  # other release folders: not read
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_exact_rows_junk_and_distractors(market):
    before = _snapshot(market)
    manifest = market1501.parse(market)
    assert manifest.dataset == "market1501"
    assert list(manifest.rows) == EXPECTED
    assert manifest.rows[5].key == "bounding_box_test__-1_c1s1_000401_03"
    assert _snapshot(market) == before  # the parser writes nothing
    assert get_parser("market1501") is market1501.parse
    # train: no junk/distractor; query: none either; gallery keeps both
    assert {r.pid for r in manifest.split("train")} == {2, 7}
    assert sorted(r.pid for r in manifest.split("gallery")) == [-1, 0, 1, 3]


def test_dispatcher_ignores_other_layouts_options(market):
    manifest = parse("market1501", str(market), dataset="market", test_sets=["test_800"], val="holdout",
                     check_images=False)
    assert manifest.dataset == "market" and list(manifest.rows) == EXPECTED
    with pytest.raises(TypeError, match="colour"):
        parse("market1501", market, colour="red")


def test_duke_style_names(tmp_path):
    root = make_market(tmp_path / "DukeMTMC-reID", {
        "bounding_box_train": ["0005_c2_f0046985.jpg", "0001_c8_f0001234.jpg"],
        "query": ["0010_c1_f0099999.jpg"],
        "bounding_box_test": ["0010_c5_f0100000.jpg", "0000_c3_f0000001.jpg"],
    })
    assert list(parse("market1501", root).rows) == [
        _row("bounding_box_train/0001_c8_f0001234.jpg", 1, 7, "train"),
        _row("bounding_box_train/0005_c2_f0046985.jpg", 5, 1, "train"),
        _row("query/0010_c1_f0099999.jpg", 10, 0, "query"),
        _row("bounding_box_test/0000_c3_f0000001.jpg", 0, 2, "gallery"),
        _row("bounding_box_test/0010_c5_f0100000.jpg", 10, 4, "gallery"),
    ]


def test_upper_case_extension_and_empty_train(tmp_path):
    root = make_market(tmp_path / "custom", {
        "bounding_box_train": [], "query": ["0004_c2s1_000001_00.JPG"], "bounding_box_test": ["0004_c1.jpg"],
    })
    assert list(market1501.parse(root).rows) == [
        Row("query__0004_c2s1_000001_00", "query/0004_c2s1_000001_00.JPG", 4, 1, -1, "query"),
        _row("bounding_box_test/0004_c1.jpg", 4, 0, "gallery"),
    ]


@pytest.mark.parametrize(
    "folder,name,what",
    [
        ("query", "-1_c1s1_000401_03.jpg", "query image has junk pid -1"),
        ("query", "0000_c1s1_000401_03.jpg", "query image has distractor pid 0"),
        ("bounding_box_train", "img_0001.jpg", "is not in Market-1501 form"),
        ("bounding_box_test", "0001c1s1_000001_00.jpg", "is not in Market-1501 form"),
        ("query", "0001_c1s1.000001.jpg", "is not in Market-1501 form"),
        ("bounding_box_test", "0001_c0s1_000001_00.jpg", "camera field '0' of '0001_c0s1_000001_00.jpg' must be"),
        ("bounding_box_test", "-2_c1s1_000001_00.jpg", "pid '-2' of '-2_c1s1_000001_00.jpg' must be -1 (junk) or >= 0"),
        ("bounding_box_train", "-0_c1s1_000001_00.jpg", "pid '-0'"),
    ],
)
def test_bad_files_name_the_file(market, folder, name, what):
    image = market / folder / name
    _jpeg(image)
    before = _snapshot(market)
    with pytest.raises(LayoutError) as err:
        market1501.parse(market, check_images=False)
    assert str(err.value).startswith(f"{image}: ")
    assert what in str(err.value)
    assert (err.value.file, err.value.line) == (str(image), None)
    assert _snapshot(market) == before


def test_same_key_twice(market):
    _jpeg(market / "query" / "0001_c1s1_001051_00.JPG")
    with pytest.raises(LayoutError, match=r"query/0001_c1s1_001051_00\.jpg: same sample key "
                                          r"'query__0001_c1s1_001051_00' as .*query/0001_c1s1_001051_00\.JPG"):
        market1501.parse(market)


def test_unreadable_image(market):
    image = market / "bounding_box_test" / "0003_c1s1_000111_02.jpg"
    image.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(LayoutError) as err:
        market1501.parse(market)
    assert str(err.value).startswith(f"{image}: unreadable image {image}")
    assert list(market1501.parse(market, check_images=False).rows) == EXPECTED  # only checked on request


def test_missing_folders(market, tmp_path):
    with pytest.raises(LayoutError, match=r"missing folder\(s\) bounding_box_train/, query/, bounding_box_test/ "
                                          r"\(did you mean .*Market-1501-v15\.09\.15\?\)"):
        market1501.parse(tmp_path)  # the parent, not the dataset folder
    (market / "query").rename(market / "queries")
    with pytest.raises(LayoutError) as err:
        market1501.parse(market)
    assert str(err.value) == f"{market}: missing folder(s) query/"
    with pytest.raises(LayoutError, match="not a directory"):
        market1501.parse(market / "nowhere")
