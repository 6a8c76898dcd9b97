"""Tests of the Vehicle-1M layout parser on hand-made fixtures and the synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reid.data.layouts import LayoutError, get_parser, parse, vehicle1m
from reid.data.manifest import Row
from tests.data.listfiles import set_line

# vid -> (model, image names); vids 3, 5 train; 7, 9 in test_1000; 12 (single image) only in test_2000
VEHICLES = {3: (1, ["0", "1"]), 5: (1, ["0"]), 7: (2, ["c", "a", "b"]), 9: (1, ["0", "1"]), 12: (4, ["0"])}
LISTS = {
    "train_list.txt": ["5/0.jpg 5 1", "3/1.jpg 3 1", "image/3/0.jpg 3 1"],  # image/ prefix accepted
    "test_1000.txt": ["7/c.jpg 7 2", "7/a.jpg 7 2", "7/b.jpg 7 2", "9/0.jpg 9 1", "9/1.jpg 9 1"],
    "test_2000.txt": ["7/c.jpg 7 2", "7/a.jpg 7 2", "7/b.jpg 7 2", "9/0.jpg 9 1", "9/1.jpg 9 1", "12/0.jpg 12 4"],
}


def make_vehicle1m(root: Path, split_dir: str = "train-test-split") -> Path:
    for vid, (_, names) in VEHICLES.items():
        for k, name in enumerate(names):
            path = root / "image" / str(vid) / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 6), (20 * vid, 60 * k, 90)).save(path, format="JPEG", quality=90)
    (root / split_dir).mkdir(parents=True)
    for name, lines in LISTS.items():
        (root / split_dir / name).write_text("".join(f"{line}\n" for line in lines))
    return root


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    return make_vehicle1m(tmp_path / "Vehicle-1M")


def _test_row(vid: int, name: str, lists: tuple[str, ...]) -> Row:
    rel = f"image/{vid}/{name}.jpg"
    return Row(rel[:-4].replace("/", "__"), rel, vid, 0, VEHICLES[vid][0], "test", lists)


TRAIN_ROWS = [
    Row("image__3__0", "image/3/0.jpg", 3, 0, 1, "train"),
    Row("image__3__1", "image/3/1.jpg", 3, 0, 1, "train"),
    Row("image__5__0", "image/5/0.jpg", 5, 0, 1, "train"),
]
BOTH = ("test_1000", "test_2000")
TEST_ROWS = [
    _test_row(12, "0", ("test_2000",)),  # "image/12/0.jpg" sorts before "image/7/..."
    _test_row(7, "a", BOTH), _test_row(7, "b", BOTH), _test_row(7, "c", BOTH),
    _test_row(9, "0", BOTH), _test_row(9, "1", BOTH),
]


def test_exact_rows_on_hand_made_fixture(fixture_root):
    before = sorted(p.as_posix() for p in fixture_root.rglob("*"))
    manifest = vehicle1m.parse(fixture_root)  # every test list present
    assert manifest.dataset == "vehicle1m"
    assert list(manifest.rows) == TRAIN_ROWS + TEST_ROWS
    sets = manifest.test_sets()
    assert list(sets) == ["test_1000", "test_2000"]
    assert [len(sets[n]) for n in sets] == [5, 6]
    assert sorted(p.as_posix() for p in fixture_root.rglob("*")) == before  # the parser writes nothing
    assert get_parser("vehicle1m") is vehicle1m.parse


def test_restricted_test_sets_and_split_folder_name(tmp_path):
    root = make_vehicle1m(tmp_path / "Vehicle-1M", split_dir="train_test_split")
    manifest = vehicle1m.parse(root, test_sets=["test_1000"])
    assert list(manifest.rows) == TRAIN_ROWS + [
        _test_row(7, "a", ("test_1000",)), _test_row(7, "b", ("test_1000",)), _test_row(7, "c", ("test_1000",)),
        _test_row(9, "0", ("test_1000",)), _test_row(9, "1", ("test_1000",))]
    assert vehicle1m.available_test_sets(root) == ["test_1000", "test_2000"]
    via_dispatch = parse("vehicle1m", root, dataset="v1m", test_sets=["test_1000"], check_images=True)
    assert via_dispatch.dataset == "v1m" and via_dispatch.rows == manifest.rows


def test_rows_independent_of_line_order(fixture_root):
    path = fixture_root / "train-test-split" / "test_1000.txt"
    original = vehicle1m.parse(fixture_root)
    path.write_text("".join(f"{line}\n" for line in reversed(LISTS["test_1000.txt"])))
    assert vehicle1m.parse(fixture_root) == original


def test_one_camera_for_every_row(fixture_root):
    assert {r.camid for r in vehicle1m.parse(fixture_root).rows} == {0}


def _set_line(root: Path, list_name: str, lineno: int, new: str | None) -> None:
    set_line(root / "train-test-split" / list_name, lineno, new)


@pytest.mark.parametrize(
    "list_name,lineno,new_line,what",
    [
        ("train_list.txt", 2, "3/1.jpg 3", "expected 3 fields"),
        ("train_list.txt", 2, "3/1.jpg 3 1 extra", "expected 3 fields"),
        ("train_list.txt", 1, "5/0.jpg five 1", "vehicle id 'five' is not a non-negative integer"),
        ("test_1000.txt", 4, "9/0.jpg 9 -1", "model id '-1' is not a non-negative integer"),
        ("train_list.txt", 2, "3/1.jpg 4 1", "folder '3' disagrees with vehicle id 4"),
        ("train_list.txt", 2, "image/3/x/1.jpg 3 1", "is not '<vid>/<name>'"),
        ("test_1000.txt", 5, "9/1.jpg 9 3", "vehicle 9 has model id 3 but model id 1 at"),
        ("train_list.txt", 4, "3/1.jpg 3 1", "listed twice"),
    ],
)
def test_malformed_lines_name_file_and_line(fixture_root, list_name, lineno, new_line, what):
    _set_line(fixture_root, list_name, lineno, new_line)
    with pytest.raises(LayoutError) as err:
        vehicle1m.parse(fixture_root)
    path = fixture_root / "train-test-split" / list_name
    assert f"{path}:{lineno}: " in str(err.value)
    assert what in str(err.value)


def test_model_conflict_across_lists_names_both_places(fixture_root):
    Image.new("RGB", (6, 6)).save(fixture_root / "image/9/x.jpg", format="JPEG")
    _set_line(fixture_root, "train_list.txt", 4, "9/x.jpg 9 5")  # vid 9 is model 5 here, 1 in test_1000
    with pytest.raises(
        LayoutError, match=r"test_1000\.txt:4: vehicle 9 has model id 1 but model id 5 at .*train_list\.txt:4"
    ):
        vehicle1m.parse(fixture_root)


def test_test_vehicle_also_in_train(fixture_root):
    Image.new("RGB", (6, 6)).save(fixture_root / "image/7/z.jpg", format="JPEG")
    _set_line(fixture_root, "train_list.txt", 4, "7/z.jpg 7 2")
    with pytest.raises(LayoutError, match=r"test_1000\.txt:1: test vehicle 7 is also a train vehicle \(at .*train_list\.txt:4\)"):
        vehicle1m.parse(fixture_root)


def test_missing_image(fixture_root):
    (fixture_root / "image/9/1.jpg").unlink()
    with pytest.raises(LayoutError, match=r"test_1000\.txt:5: missing image .*image/9/1\.jpg"):
        vehicle1m.parse(fixture_root, check_images=False)


def test_unreadable_image(fixture_root):
    (fixture_root / "image/3/1.jpg").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(LayoutError, match=r"train_list\.txt:2: unreadable image .*image/3/1\.jpg"):
        vehicle1m.parse(fixture_root)
    assert len(vehicle1m.parse(fixture_root, check_images=False).split("train")) == 3


def test_unknown_test_set_lists_available(fixture_root):
    with pytest.raises(LayoutError, match=r"test_3000\.txt: unknown test list 'test_3000'; available: test_1000, test_2000"):
        vehicle1m.parse(fixture_root, test_sets=["test_1000", "test_3000"])


def test_missing_train_list_and_split_folder(fixture_root):
    (fixture_root / "train-test-split" / "train_list.txt").unlink()
    with pytest.raises(LayoutError, match=r"train_list\.txt: missing list file"):
        vehicle1m.parse(fixture_root)
    with pytest.raises(LayoutError, match="no split folder"):
        vehicle1m.parse(fixture_root / "image")


def test_synthetic_default_round_trip(default_vehicle1m):
    manifest = vehicle1m.parse(default_vehicle1m)
    stats = manifest.stats()
    assert stats["train"] == {"images": 512, "pids": 64, "camids": 1, "models": 12}
    assert [stats[f"test:{n}"]["pids"] for n in ("test_1000", "test_2000", "test_3000")] == [11, 22, 32]
    assert [stats[f"test:{n}"]["images"] for n in ("test_1000", "test_2000", "test_3000")] == [88, 176, 256]
    assert stats["test"] == {"images": 256, "pids": 32, "camids": 1, "models": stats["test:test_3000"]["models"]}
    sets = manifest.test_sets()
    # the official lists are nested, and every test row says which lists hold it
    assert {r.key for r in sets["test_1000"]} < {r.key for r in sets["test_2000"]} < {r.key for r in sets["test_3000"]}
    assert all(set(r.test_sets) == {n for n in sets if r in sets[n]} for r in manifest.split("test"))
