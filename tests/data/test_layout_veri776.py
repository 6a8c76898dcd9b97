"""Tests of the VeRi-776 layout parser on hand-made fixtures, with and without the name lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.data.layouts import LayoutError, get_parser, parse, veri776
from reid.data.manifest import Row
from tests.data.listfiles import set_line

# folder -> (name list, file names in list order: deliberately unsorted)
VERI = {
    "image_train": ("name_train.txt", ["0010_c019_00069790_0.jpg", "0002_c002_00030600_0.jpg",
                                       "0002_c003_00084280_1.jpg"]),
    "image_query": ("name_query.txt", ["0006_c001_00000100_1.jpg", "0005_c020_00010455_0.jpg"]),
    "image_test": ("name_test.txt", ["0005_c020_00010460_0.jpg", "0006_c002_00000200_0.jpg",
                                     "0005_c003_00012345_0.jpg"]),
}


def _row(relpath: str, pid: int, camid: int, split: str) -> Row:
    return Row(relpath[:-4].replace("/", "__"), relpath, pid, camid, -1, split)


EXPECTED = [
    _row("image_train/0002_c002_00030600_0.jpg", 2, 1, "train"),
    _row("image_train/0002_c003_00084280_1.jpg", 2, 2, "train"),
    _row("image_train/0010_c019_00069790_0.jpg", 10, 18, "train"),
    _row("image_query/0005_c020_00010455_0.jpg", 5, 19, "query"),
    _row("image_query/0006_c001_00000100_1.jpg", 6, 0, "query"),
    _row("image_test/0005_c003_00012345_0.jpg", 5, 2, "gallery"),
    _row("image_test/0005_c020_00010460_0.jpg", 5, 19, "gallery"),
    _row("image_test/0006_c002_00000200_0.jpg", 6, 1, "gallery"),
]


def _jpeg(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 4), (shade % 256, 50, 200)).save(path, format="JPEG", quality=90)


def make_veri(root: Path, lists: bool = True) -> Path:
    for folder, (list_name, names) in VERI.items():
        (root / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            _jpeg(root / folder / name, 40 * i)
        if lists:
            (root / list_name).write_text("".join(f"{name}\n" for name in names))
    (root / "image_test" / "Thumbs.db").write_bytes(b"\x00junk")
    (root / "train_label.xml").write_text("<TrainingImages/>\n")  # colour/type labels: not read
    return root


@pytest.fixture
def veri(tmp_path: Path) -> Path:
    return make_veri(tmp_path / "VeRi")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_exact_rows_with_name_lists(veri):
    before = _snapshot(veri)
    manifest = veri776.parse(veri)
    assert manifest.dataset == "veri776"
    assert list(manifest.rows) == EXPECTED
    assert _snapshot(veri) == before  # the parser writes nothing
    assert get_parser("veri776") is veri776.parse


def test_exact_rows_without_name_lists(tmp_path):
    root = make_veri(tmp_path / "VeRi", lists=False)
    (root / "image_train" / "sub").mkdir()  # sub-folders are not read
    _jpeg(root / "image_train" / "sub" / "0099_c001_00000001_0.jpg")
    assert list(veri776.parse(root).rows) == EXPECTED
    manifest = parse("veri776", root, dataset="veri", test_sets=["test_800"], val="merge",
                     check_images=False)
    assert manifest.dataset == "veri" and list(manifest.rows) == EXPECTED


def test_lists_are_authoritative_per_folder(veri):
    # an image in a folder but not in its list is not read; a folder without list is scanned
    _jpeg(veri / "image_train" / "0011_c001_00000001_0.jpg")
    _jpeg(veri / "image_test" / "0006_c004_00000300_0.jpg")
    (veri / "name_test.txt").unlink()
    rows = list(veri776.parse(veri).rows)
    assert rows == EXPECTED + [_row("image_test/0006_c004_00000300_0.jpg", 6, 3, "gallery")]


def test_crlf_and_blank_lines_in_list(veri):
    names = VERI["image_query"][1]
    (veri / "name_query.txt").write_bytes(b"\r\n".join(n.encode() for n in ["", *names, ""]))
    assert list(veri776.parse(veri).rows) == EXPECTED


@pytest.mark.parametrize(
    "list_name,lineno,new_line,what",
    [
        ("name_train.txt", 2, "0002_c002_00030600_0.jpg 2", "expected 1 field"),
        ("name_query.txt", 1, "0006_c001_00000100.jpg", "is not in VeRi-776 form"),
        ("name_query.txt", 2, "image_query/0005_c020_00010455_0.jpg", "is not in VeRi-776 form"),
        ("name_test.txt", 3, "0005_c000_00012345_0.jpg", "camera field '000' of '0005_c000_00012345_0.jpg' must be"),
        ("name_test.txt", 4, "0005_c020_00010460_0.jpg", "listed twice (first at line 1)"),
        ("name_train.txt", 3, "0002_c003_00084280_9.jpg", "missing image"),
    ],
)
def test_malformed_list_lines_name_file_and_line(veri, list_name, lineno, new_line, what):
    set_line(veri / list_name, lineno, new_line)
    before = _snapshot(veri)
    with pytest.raises(LayoutError) as err:
        veri776.parse(veri, check_images=False)
    assert str(err.value).startswith(f"{veri / list_name}:{lineno}: ")
    assert what in str(err.value)
    assert (err.value.line, Path(err.value.file).name) == (lineno, list_name)
    assert _snapshot(veri) == before


def test_bad_file_name_when_scanning(tmp_path):
    root = make_veri(tmp_path / "VeRi", lists=False)
    image = root / "image_query" / "0006_c1_00000100_1.jpg"  # fine: any number of camera digits
    _jpeg(image)
    assert _row("image_query/0006_c1_00000100_1.jpg", 6, 0, "query") in veri776.parse(root).rows
    bad = root / "image_query" / "0006-c001-00000100-1.jpg"
    _jpeg(bad)
    with pytest.raises(LayoutError) as err:
        veri776.parse(root)
    assert str(err.value) == (f"{bad}: file name '0006-c001-00000100-1.jpg' is not in VeRi-776 form "
                              "<vid>_c<cam>_<timestamp>_<n>.jpg")
    assert err.value.line is None


def test_unreadable_image(veri):
    (veri / "image_test" / "0006_c002_00000200_0.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(LayoutError, match=r"name_test\.txt:2: unreadable image .*0006_c002_00000200_0\.jpg"):
        veri776.parse(veri)
    (veri / "name_test.txt").unlink()
    with pytest.raises(LayoutError, match=r"0006_c002_00000200_0\.jpg: unreadable image "):
        veri776.parse(veri)
    assert list(veri776.parse(veri, check_images=False).rows) == EXPECTED


def test_missing_folders(veri, tmp_path):
    with pytest.raises(LayoutError, match=r"missing folder\(s\) image_train/, image_query/, image_test/ "
                                          r"\(did you mean .*VeRi\?\)"):
        veri776.parse(tmp_path)
    (veri / "image_query").rename(veri / "query")
    with pytest.raises(LayoutError) as err:
        veri776.parse(veri)
    assert str(err.value) == f"{veri}: missing folder(s) image_query/"
