"""Tests of the Vehicle-1M layout parser on hand-made fixtures and the synthetic dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.data.layouts import LayoutError, get_parser, parse, vehicle1m
from reid.data.manifest import Row

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


def _gallery_pick(seed: int, vid: int, n: int) -> int:
    """The documented draw: index into the vehicle's relpath-sorted images."""
    return int(np.random.default_rng([seed, vid]).integers(n))


def _expected_test_rows(vids: list[int], seed: int) -> tuple[list[Row], list[Row]]:
    query, gallery = [], []
    for vid in vids:
        model, names = VEHICLES[vid]
        rels = sorted(f"image/{vid}/{n}.jpg" for n in names)
        pick = _gallery_pick(seed, vid, len(rels))
        for i, rel in enumerate(rels):
            key = rel[:-4].replace("/", "__")
            if i == pick:
                gallery.append(Row(key, rel, vid, 1, model, "gallery"))
            else:
                query.append(Row(key, rel, vid, 0, model, "query"))
    return sorted(query, key=lambda r: r.relpath), sorted(gallery, key=lambda r: r.relpath)


TRAIN_ROWS = [
    Row("image__3__0", "image/3/0.jpg", 3, 0, 1, "train"),
    Row("image__3__1", "image/3/1.jpg", 3, 0, 1, "train"),
    Row("image__5__0", "image/5/0.jpg", 5, 0, 1, "train"),
]


def test_exact_rows_on_hand_made_fixture(fixture_root):
    before = sorted(p.as_posix() for p in fixture_root.rglob("*"))
    manifest = vehicle1m.parse(fixture_root)  # test_1000, gallery_seed 0
    assert manifest.dataset == "vehicle1m"
    query, gallery = _expected_test_rows([7, 9], seed=0)
    assert list(manifest.rows) == TRAIN_ROWS + query + gallery
    assert [r.pid for r in gallery] == [7, 9] and len(query) == 3
    assert sorted(p.as_posix() for p in fixture_root.rglob("*")) == before  # the parser writes nothing
    assert get_parser("vehicle1m") is vehicle1m.parse


def test_other_test_set_split_folder_name_and_seed(tmp_path):
    root = make_vehicle1m(tmp_path / "Vehicle-1M", split_dir="train_test_split")
    manifest = vehicle1m.parse(root, test_set="test_2000", gallery_seed=5)
    query, gallery = _expected_test_rows([7, 9, 12], seed=5)
    assert list(manifest.rows) == TRAIN_ROWS + query + gallery
    assert [r.relpath for r in gallery if r.pid == 12] == ["image/12/0.jpg"]  # single image -> gallery only
    assert vehicle1m.available_test_sets(root) == ["test_1000", "test_2000"]
    via_dispatch = parse("vehicle1m", root, dataset="v1m", test_set="test_2000", gallery_seed=5, check_images=True)
    assert via_dispatch.dataset == "v1m" and via_dispatch.rows == manifest.rows


def test_draw_independent_of_line_order(fixture_root):
    path = fixture_root / "train-test-split" / "test_1000.txt"
    original = vehicle1m.parse(fixture_root)
    path.write_text("".join(f"{line}\n" for line in reversed(LISTS["test_1000.txt"])))
    assert vehicle1m.parse(fixture_root) == original


def test_camid_rule_never_drops_a_true_match(fixture_root):
    manifest = vehicle1m.parse(fixture_root, test_set="test_2000")
    gallery = {(r.pid, r.camid) for r in manifest.split("gallery")}
    assert all((q.pid, q.camid) not in gallery for q in manifest.split("query"))
    assert all((q.pid, 1) in gallery for q in manifest.split("query"))  # ...and every query has its match
    assert {r.camid for r in manifest.split("train")} == {0}


def _set_line(root: Path, list_name: str, lineno: int, new: str | None) -> None:
    path = root / "train-test-split" / list_name
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    elif lineno > len(lines):
        lines.append(new)
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


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
    with pytest.raises(LayoutError, match=r"test_3000\.txt: unknown test_set 'test_3000'; available: test_1000, test_2000"):
        vehicle1m.parse(fixture_root, test_set="test_3000")


def test_missing_train_list_and_split_folder(fixture_root):
    (fixture_root / "train-test-split" / "train_list.txt").unlink()
    with pytest.raises(LayoutError, match=r"train_list\.txt: missing list file"):
        vehicle1m.parse(fixture_root)
    with pytest.raises(LayoutError, match="no split folder"):
        vehicle1m.parse(fixture_root / "image")


def test_synthetic_default_round_trip(default_vehicle1m):
    manifests = {name: vehicle1m.parse(default_vehicle1m, test_set=name) for name in ("test_1000", "test_2000", "test_3000")}
    for name, manifest in manifests.items():
        stats = manifest.stats()
        assert stats["train"] == {"images": 512, "pids": 64, "camids": 1, "models": 12}
        assert stats["gallery"]["images"] == stats["gallery"]["pids"] == stats["query"]["pids"]
        assert Counter(r.pid for r in manifest.split("gallery")).most_common(1)[0][1] == 1
        assert stats["query"]["images"] == 7 * stats["query"]["pids"]
        gallery = {(r.pid, r.camid) for r in manifest.split("gallery")}
        assert not any((q.pid, q.camid) in gallery for q in manifest.split("query"))
    assert [manifests[n].stats()["gallery"]["pids"] for n in manifests] == [11, 22, 32]
    # nested test sets: a vehicle keeps its gallery image whichever test set it is in
    small = set(r.relpath for r in manifests["test_1000"].split("gallery"))
    large = set(r.relpath for r in manifests["test_3000"].split("gallery"))
    assert small < large
    # a different gallery_seed draws differently (32 vehicles with 8 images each)
    other = set(r.relpath for r in vehicle1m.parse(default_vehicle1m, "test_3000", gallery_seed=1).split("gallery"))
    assert other != large and len(other) == len(large)
