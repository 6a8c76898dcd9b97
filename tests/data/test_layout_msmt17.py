"""Tests of the MSMT17 layout parser on hand-made fixtures, the synthetic dataset and the real data."""

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from reid.data.layouts import LayoutError, get_parser, msmt17, parse
from reid.data.manifest import Row
from tests.data.listfiles import set_line

# ../shared beside the checkout (as in CI); the tests skip cleanly without it.
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "cuhk03-msmt17" / "MSMT17_V1"

# Deliberately unsorted within lists; test pids restart at 0; val adds pid 2's camera-05 image.
LISTS = {
    "list_train.txt": [
        "0002/0002_000_02_0113afternoon_0100_0.jpg 2",
        "0000/0000_001_03_0302noon_0002_0.jpg 0",
        "0000/0000_000_01_0302morning_0001_0.jpg 0",
    ],
    "list_val.txt": ["0002/0002_001_05_0113afternoon_0101_0.jpg 2"],
    "list_query.txt": [
        "0001/0001_000_02_0303noon_0007_0.jpg 1",
        "0000/0000_000_01_0303morning_0005_0.jpg 0",
    ],
    "list_gallery.txt": [
        "0000/0000_001_02_0303morning_0006_0.jpg 0",
        "0001/0001_001_01_0303noon_0008_0.jpg 1",
        "0001/0001_002_15_0304morning_0009_0.jpg 1",
    ],
}


def _expected(train_dir: str = "train", test_dir: str = "test") -> list[Row]:
    def row(folder, rel, pid, camid, split):
        relpath = f"{folder}/{rel}"
        return Row(relpath.replace("/", "__")[:-4], relpath, pid, camid, -1, split)

    # max train pid is 2, so test pids are offset by 3
    return [
        row(train_dir, "0000/0000_000_01_0302morning_0001_0.jpg", 0, 0, "train"),
        row(train_dir, "0000/0000_001_03_0302noon_0002_0.jpg", 0, 2, "train"),
        row(train_dir, "0002/0002_000_02_0113afternoon_0100_0.jpg", 2, 1, "train"),
        row(train_dir, "0002/0002_001_05_0113afternoon_0101_0.jpg", 2, 4, "train"),
        row(test_dir, "0000/0000_000_01_0303morning_0005_0.jpg", 3, 0, "query"),
        row(test_dir, "0001/0001_000_02_0303noon_0007_0.jpg", 4, 1, "query"),
        row(test_dir, "0000/0000_001_02_0303morning_0006_0.jpg", 3, 1, "gallery"),
        row(test_dir, "0001/0001_001_01_0303noon_0008_0.jpg", 4, 0, "gallery"),
        row(test_dir, "0001/0001_002_15_0304morning_0009_0.jpg", 4, 14, "gallery"),
    ]


def make_msmt(root: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    """Write the hand-made fixture: tiny 4x8 JPEGs and the four list files."""
    root.mkdir(parents=True)
    for i, (list_name, lines) in enumerate(sorted(LISTS.items())):
        folder = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
        for j, line in enumerate(lines):
            path = root / folder / line.split()[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 8), (40 * i, 30 * j, 100)).save(path, format="JPEG", quality=90)
        (root / list_name).write_text("".join(f"{line}\n" for line in lines))
    return root


@pytest.fixture
def fixture_v1(tmp_path: Path) -> Path:
    return make_msmt(tmp_path / "MSMT17_V1")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_exact_rows_on_hand_made_v1(fixture_v1):
    before = _snapshot(fixture_v1)
    manifest = msmt17.parse(fixture_v1)
    assert manifest.dataset == "msmt17"
    assert list(manifest.rows) == _expected()
    assert _snapshot(fixture_v1) == before  # the parser writes nothing
    assert get_parser("msmt17") is msmt17.parse


def test_dispatcher_passes_common_options(fixture_v1):
    # test_sets is a common option msmt17 does not take: ignored; a None option is dropped
    manifest = parse("msmt17", str(fixture_v1), dataset="cuhk", test_sets=["test_1000"], val=None, check_images=False)
    assert manifest.dataset == "cuhk" and list(manifest.rows) == _expected()
    with pytest.raises(TypeError, match="colour"):
        parse("msmt17", fixture_v1, colour="red")
    with pytest.raises(TypeError, match="gallery_seed"):
        parse("msmt17", fixture_v1, gallery_seed=0)
    with pytest.raises(ValueError, match="unknown dataset layout 'market'"):
        parse("market", fixture_v1)


def test_v2_folder_names_accepted(tmp_path):
    root = make_msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    assert list(msmt17.parse(root).rows) == _expected("mask_train_v2", "mask_test_v2")


def test_val_holdout_keeps_list_val_apart(fixture_v1):
    merged = msmt17.parse(fixture_v1)
    assert msmt17.parse(fixture_v1, val="merge") == merged
    held = msmt17.parse(fixture_v1, val="holdout")
    val_row = "train/0002/0002_001_05_0113afternoon_0101_0.jpg"
    expected = [r if r.relpath != val_row else Row(r.key, r.relpath, r.pid, r.camid, r.model_id, "val")
                for r in _expected()]
    assert list(held.rows) == expected  # same order: train, val, query, gallery
    assert [(r.relpath, r.pid, r.camid) for r in held.split("val")] == [(val_row, 2, 4)]  # train pid kept
    assert [r.pid for r in held.rows if r.split in ("query", "gallery")] == [3, 4, 3, 4, 4]  # same test offset
    assert parse("msmt17", fixture_v1, val="holdout", test_sets=["test_800"]).rows == held.rows
    assert held.stats()["val"] == {"images": 1, "pids": 1, "camids": 1, "models": 0}


@pytest.mark.parametrize("val", ["drop", "Merge", ""])
def test_val_unknown_mode(fixture_v1, val):
    with pytest.raises(ValueError, match=f"val must be one of .*got {val!r}"):
        msmt17.parse(fixture_v1, val=val)


def test_val_holdout_offset_counts_val_only_pids(fixture_v1):
    # a val-only identity above every list_train pid still pushes the test offset in both modes
    path = fixture_v1 / "train/0009/0009_000_01_0113morning_0001_0.jpg"
    path.parent.mkdir()
    Image.new("RGB", (4, 8)).save(path, format="JPEG")
    with (fixture_v1 / "list_val.txt").open("a") as fh:
        fh.write("0009/0009_000_01_0113morning_0001_0.jpg 9\n")
    for val in ("merge", "holdout"):
        manifest = msmt17.parse(fixture_v1, val=val)
        assert {r.pid for r in manifest.rows if r.split in ("query", "gallery")} == {10, 11}
    assert {r.pid for r in manifest.split("val")} == {2, 9}


def test_neither_v1_nor_v2_folders(tmp_path):
    root = make_msmt(tmp_path / "data" / "MSMT17_V1")
    with pytest.raises(LayoutError, match="did you mean") as err:
        msmt17.parse(root.parent)  # the parent, not the dataset folder
    assert str(root.parent) in str(err.value) and "mask_train_v2" in str(err.value)
    (root / "test").rename(root / "elsewhere")
    with pytest.raises(LayoutError, match="no test/ folder"):
        msmt17.parse(root)


@pytest.mark.parametrize(
    "list_name,lineno,new_line,what",
    [
        ("list_train.txt", 2, "0000/0000_001_03_0302noon_0002_0.jpg 0 extra", "expected 2 fields"),
        ("list_query.txt", 2, "0000/0000_000_01_0303morning_0005_0.jpg", "expected 2 fields"),
        ("list_gallery.txt", 3, "0001/0001_002_15_0304morning_0009_0.jpg x1", "'x1' is not a non-negative integer"),
        ("list_gallery.txt", 2, "0001/0001_001_01_0303noon_0008_0.jpg 2", "folder '0001' disagrees with list pid 2"),
        ("list_val.txt", 1, "0002/0003_001_05_0113afternoon_0101_0.jpg 2", "file-name pid '0003'"),
        ("list_train.txt", 3, "0000/img_0001.jpg 0", "not in MSMT17 form"),
        ("list_train.txt", 3, "0000/0000_000_00_0302morning_0001_0.jpg 0", "must be >= 01"),
        ("list_train.txt", 1, "0002_000_02_0113afternoon_0100_0.jpg 2", "is not '<pid>/<file>'"),
        ("list_gallery.txt", 1, "0000/0000_000_01_0303morning_0005_0.jpg 0", "listed twice"),
    ],
)
def test_malformed_lines_name_file_and_line(fixture_v1, list_name, lineno, new_line, what):
    set_line(fixture_v1 / list_name, lineno, new_line)
    with pytest.raises(LayoutError) as err:
        msmt17.parse(fixture_v1)
    assert f"{fixture_v1 / list_name}:{lineno}: " in str(err.value)
    assert what in str(err.value)
    assert (err.value.line, Path(err.value.file).name) == (lineno, list_name)


def test_line_numbers_count_blank_lines(fixture_v1):
    path = fixture_v1 / "list_query.txt"
    path.write_text("\n" + path.read_text().replace("0000/0000_000_01", "0000/0000_000_xx"))
    with pytest.raises(LayoutError, match=r"list_query\.txt:3: file name"):
        msmt17.parse(fixture_v1)


def test_missing_image(fixture_v1):
    (fixture_v1 / "test/0001/0001_001_01_0303noon_0008_0.jpg").unlink()
    with pytest.raises(LayoutError, match=r"list_gallery\.txt:2: missing image .*0001_001_01_0303noon_0008_0\.jpg"):
        msmt17.parse(fixture_v1, check_images=False)


def test_unreadable_image(fixture_v1):
    (fixture_v1 / "train/0002/0002_001_05_0113afternoon_0101_0.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(LayoutError, match=r"list_val\.txt:1: unreadable image .*0002_001_05_0113afternoon_0101_0\.jpg"):
        msmt17.parse(fixture_v1)
    assert len(msmt17.parse(fixture_v1, check_images=False).rows) == 9  # only checked on request


def test_missing_list_file(fixture_v1):
    (fixture_v1 / "list_val.txt").unlink()
    with pytest.raises(LayoutError, match=r"list_val\.txt: missing list file"):
        msmt17.parse(fixture_v1)


def test_layout_error_pickles():
    err = pickle.loads(pickle.dumps(LayoutError("a/list.txt", 7, "bad")))
    assert (str(err), err.file, err.line) == ("a/list.txt:7: bad", "a/list.txt", 7)
    assert isinstance(err, ValueError)


def test_synthetic_default_round_trip(default_msmt17):
    manifest = msmt17.parse(default_msmt17)
    n_lines = {
        name: len((default_msmt17 / f"list_{name}.txt").read_text().splitlines())
        for name in ("train", "val", "query", "gallery")
    }
    stats = manifest.stats()
    assert stats["train"] == {"images": n_lines["train"] + n_lines["val"], "pids": 80, "camids": 4, "models": 0}
    assert stats["query"]["images"] == n_lines["query"] and stats["gallery"]["images"] == n_lines["gallery"]
    test_pids = {r.pid for r in manifest.rows if r.split != "train"}
    assert test_pids == set(range(80, 120))
    gallery = defaultdict(set)
    for r in manifest.split("gallery"):
        gallery[r.pid].add(r.camid)
    assert all(gallery[q.pid] - {q.camid} for q in manifest.split("query"))
    order = {"train": 0, "query": 1, "gallery": 2}
    sort_keys = [(order[r.split], r.relpath) for r in manifest.rows]
    assert sort_keys == sorted(sort_keys)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not present at {REAL}")
def test_real_cuhk03_in_msmt17_layout():
    manifest = msmt17.parse(REAL)
    stats = manifest.stats()
    assert stats["train"] == {"images": 7132 + 107, "pids": 743, "camids": 2, "models": 0}
    assert stats["query"] == {"images": 200, "pids": 100, "camids": 2, "models": 0}
    assert stats["gallery"] == {"images": 738, "pids": 100, "camids": 2, "models": 0}
    # the 107 val lines are among the train rows (merged), and are not list_train lines
    val = {f"train/{line.split()[0]}" for line in (REAL / "list_val.txt").read_text().splitlines() if line.strip()}
    train = {f"train/{line.split()[0]}" for line in (REAL / "list_train.txt").read_text().splitlines() if line.strip()}
    assert len(val) == 107 and not val & train
    assert val | train == {r.relpath for r in manifest.split("train")}
    # test pids restart at 0 on disk and are offset past the 743 train pids
    assert {r.pid for r in manifest.rows if r.split != "train"} == set(range(743, 843))
    # Contrary to the README ("every query has true matches ... from the other camera"), one query
    # has none: test pid 71 has a single view-A image, which is its view-A query, so its view-B
    # query only has same-camera gallery images. Evaluation must skip such queries.
    gallery = defaultdict(set)
    for r in manifest.split("gallery"):
        gallery[r.pid].add(r.camid)
    unmatched = [q.relpath for q in manifest.split("query") if not gallery[q.pid] - {q.camid}]
    assert unmatched == ["test/0071/0071_001_02_0000cuhk_0005_0.jpg"]
