"""Tests of the VehicleID layout parser on hand-made fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.data.layouts import LayoutError, get_parser, parse, vehicleid
from reid.data.manifest import Row
from tests.data.listfiles import set_line

# image -> vid. Train vehicles 1, 4; test vehicles 20, 30, 40, 50.
IMAGES = {
    "0000001": 1, "0000002": 1, "0000010": 4,
    "0000100": 20, "0000101": 20, "0000200": 30, "0000300": 40, "0000301": 40, "0000500": 50,
}
# vehicles 4, 30 and 50 have no model; 20 is listed twice with the same model; 99 is in no list
MODEL_ATTR = ["1 7", "20 3", "40 9", "20 3", "99 2"]
LISTS = {  # nested test lists, lines deliberately unsorted
    "train_list.txt": ["0000010 4", "0000002 1", "0000001 1"],
    "test_list_800.txt": ["0000101 20", "0000100 20", "0000200 30"],
    "test_list_1600.txt": ["0000100 20", "0000101 20", "0000300 40", "0000200 30", "0000301 40"],
    "test_list_13164.txt": ["0000500 50", "0000100 20", "0000101 20", "0000200 30", "0000300 40", "0000301 40"],
}
ALL = ("test_13164", "test_1600", "test_800")


def _row(image: str, model_id: int, split: str, test_sets: tuple[str, ...] = ()) -> Row:
    return Row(f"image__{image}", f"image/{image}.jpg", IMAGES[image], 0, model_id, split, test_sets)


TRAIN = [_row("0000001", 7, "train"), _row("0000002", 7, "train"), _row("0000010", -1, "train")]
TEST = [
    _row("0000100", 3, "test", ALL),
    _row("0000101", 3, "test", ALL),
    _row("0000200", -1, "test", ALL),
    _row("0000300", 9, "test", ("test_13164", "test_1600")),
    _row("0000301", 9, "test", ("test_13164", "test_1600")),
    _row("0000500", -1, "test", ("test_13164",)),
]


def _jpeg(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 4), (shade % 256, 10, 60)).save(path, format="JPEG", quality=90)


def make_vehicleid(root: Path) -> Path:
    for i, image in enumerate(IMAGES):
        _jpeg(root / "image" / f"{image}.jpg", 25 * i)
    (root / "attribute").mkdir()
    (root / "attribute" / "model_attr.txt").write_text("".join(f"{line}\n" for line in MODEL_ATTR))
    (root / "attribute" / "color_attr.txt").write_text("not read\n")
    (root / "train_test_split").mkdir()
    for name, lines in LISTS.items():
        (root / "train_test_split" / name).write_text("".join(f"{line}\n" for line in lines))
    return root


@pytest.fixture
def vid_root(tmp_path: Path) -> Path:
    return make_vehicleid(tmp_path / "VehicleID_V1.0")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_exact_rows_all_test_lists(vid_root):
    before = _snapshot(vid_root)
    manifest = vehicleid.parse(vid_root)
    assert manifest.dataset == "vehicleid"
    assert list(manifest.rows) == TRAIN + TEST
    assert _snapshot(vid_root) == before  # the parser writes nothing
    assert get_parser("vehicleid") is vehicleid.parse
    assert vehicleid.available_test_sets(vid_root) == ["test_800", "test_1600", "test_13164"]
    sets = manifest.test_sets()
    assert {name: len(rows) for name, rows in sets.items()} == {"test_13164": 6, "test_1600": 5, "test_800": 3}
    assert manifest.stats()["test:test_1600"] == {"images": 5, "pids": 3, "camids": 1, "models": 2}


@pytest.mark.parametrize(
    "wanted,expected",
    [
        (["test_800"], [r for r in TEST if "test_800" in r.test_sets]),
        ("test_800", [r for r in TEST if "test_800" in r.test_sets]),  # one name as a string
        (["test_1600", "test_800", "test_800"], [r for r in TEST if "test_1600" in r.test_sets]),
    ],
)
def test_test_sets_restriction(vid_root, wanted, expected):
    names = {wanted} if isinstance(wanted, str) else set(wanted)
    restricted = [Row(r.key, r.relpath, r.pid, r.camid, r.model_id, r.split,
                      tuple(n for n in r.test_sets if n in names)) for r in expected]
    assert list(vehicleid.parse(vid_root, test_sets=wanted).rows) == TRAIN + restricted


def test_test_sets_restriction_skips_unread_lists(vid_root):
    # a broken list that is not asked for is not read
    (vid_root / "train_test_split" / "test_list_13164.txt").write_text("garbage\n")
    assert [r.relpath for r in vehicleid.parse(vid_root, test_sets=["test_800"]).split("test")] == [
        "image/0000100.jpg", "image/0000101.jpg", "image/0000200.jpg"]


def test_dispatcher(vid_root):
    manifest = parse("vehicleid", str(vid_root), dataset="vid", test_sets=["test_1600"],
                     val="holdout", check_images=False)
    assert manifest.dataset == "vid"
    assert [r.test_sets for r in manifest.split("test")] == [("test_1600",)] * 5
    assert parse("vehicleid", vid_root, test_sets=None).rows == vehicleid.parse(vid_root).rows


def test_unknown_or_empty_test_sets(vid_root):
    with pytest.raises(LayoutError) as err:
        vehicleid.parse(vid_root, test_sets=["test_800", "test_3200"])
    assert str(err.value) == (f"{vid_root / 'train_test_split'}: unknown test list 'test_3200'; "
                              "available: test_800, test_1600, test_13164")
    with pytest.raises(LayoutError, match="unknown test list 'test_list_800'"):
        vehicleid.parse(vid_root, test_sets=["test_list_800"])
    with pytest.raises(ValueError, match="at least one"):
        vehicleid.parse(vid_root, test_sets=[])


@pytest.mark.parametrize(
    "file,lineno,new_line,what",
    [
        ("train_test_split/train_list.txt", 2, "0000002", "expected 2 fields '<image> <vid>', got 1"),
        ("train_test_split/train_list.txt", 2, "0000002 1 7", "expected 2 fields"),
        ("train_test_split/test_list_800.txt", 2, "0000100 twenty", "vehicle id 'twenty' is not a non-negative"),
        ("train_test_split/test_list_800.txt", 2, "0000100 -20", "vehicle id '-20' is not a non-negative"),
        ("train_test_split/train_list.txt", 1, "image/0000010 4", "must be a bare name"),
        ("train_test_split/train_list.txt", 1, "0000010.jpg 4", "must not carry the .jpg extension"),
        ("train_test_split/test_list_1600.txt", 6, "0000300 40", "image 0000300 listed twice (first at line 3)"),
        ("train_test_split/train_list.txt", 4, "0000010 4", "listed twice (first at line 1)"),
        ("train_test_split/test_list_1600.txt", 6, "0000002 1", "image image/0000002.jpg is also a train image (at "),
        ("train_test_split/test_list_13164.txt", 2, "0000100 21",
         "image image/0000100.jpg has vehicle id 21 but vehicle id 20 at "),
        ("attribute/model_attr.txt", 4, "20 5", "vehicle 20 has model id 5 but model id 3 at line 2"),
        ("attribute/model_attr.txt", 1, "1", "expected 2 fields '<vid> <model_id>', got 1"),
        ("attribute/model_attr.txt", 5, "x 2", "vehicle id 'x' is not a non-negative integer"),
        ("attribute/model_attr.txt", 5, "99 two", "model id 'two' is not a non-negative integer"),
    ],
)
def test_malformed_lines_name_file_and_line(vid_root, file, lineno, new_line, what):
    set_line(vid_root / file, lineno, new_line)
    before = _snapshot(vid_root)
    with pytest.raises(LayoutError) as err:
        vehicleid.parse(vid_root, check_images=False)
    assert str(err.value).startswith(f"{vid_root / file}:{lineno}: ")
    assert what in str(err.value)
    assert (err.value.line, err.value.file) == (lineno, str(vid_root / file))
    assert _snapshot(vid_root) == before


def test_conflicts_name_the_first_place(vid_root):
    split = vid_root / "train_test_split"
    set_line(split / "test_list_13164.txt", 2, "0000100 21")
    with pytest.raises(LayoutError, match=r"test_list_13164\.txt:2: .* at .*test_list_800\.txt:2$"):
        vehicleid.parse(vid_root)
    set_line(split / "test_list_13164.txt", 2, "0000100 20")
    _jpeg(vid_root / "image" / "0000600.jpg")
    set_line(split / "test_list_800.txt", 4, "0000600 4")  # a train vehicle in a test list
    with pytest.raises(LayoutError, match=r"test_list_800\.txt:4: test vehicle 4 is also a train vehicle "
                                          r"\(at .*train_list\.txt:1\)"):
        vehicleid.parse(vid_root)


def test_missing_and_unreadable_images(vid_root):
    (vid_root / "image" / "0000500.jpg").unlink()
    with pytest.raises(LayoutError, match=r"test_list_13164\.txt:1: missing image .*image/0000500\.jpg"):
        vehicleid.parse(vid_root, check_images=False)
    assert len(vehicleid.parse(vid_root, test_sets=["test_1600"]).rows) == 8  # not read: not needed
    (vid_root / "image" / "0000301.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(LayoutError, match=r"test_list_1600\.txt:5: unreadable image .*image/0000301\.jpg"):
        vehicleid.parse(vid_root, test_sets=["test_1600"])
    assert len(vehicleid.parse(vid_root, test_sets=["test_1600"], check_images=False).rows) == 8


@pytest.mark.parametrize("file", ["attribute/model_attr.txt", "train_test_split/train_list.txt"])
def test_missing_list_file(vid_root, file):
    (vid_root / file).unlink()
    with pytest.raises(LayoutError) as err:
        vehicleid.parse(vid_root)
    assert str(err.value) == f"{vid_root / file}: missing list file"


def test_missing_folders_and_lists(vid_root, tmp_path):
    with pytest.raises(LayoutError, match=r"no train_test_split/ folder found \(did you mean .*VehicleID_V1\.0\?\)"):
        vehicleid.parse(tmp_path)
    for path in (vid_root / "train_test_split").glob("test_list_*.txt"):
        path.unlink()
    with pytest.raises(LayoutError) as err:
        vehicleid.parse(vid_root)
    assert str(err.value) == f"{vid_root / 'train_test_split'}: no test list (test_list_<size>.txt) found"
