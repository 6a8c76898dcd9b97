"""Tests of the synthetic dataset generator: determinism, atomic writes, exact layouts, learnability."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.data import synthetic
from reid.data.synthetic import (
    MSMT17SynthConfig,
    Vehicle1MSynthConfig,
    write_msmt17,
    write_vehicle1m,
)

TINY_MSMT = MSMT17SynthConfig(
    num_train_ids=4, num_test_ids=3, num_cameras=3, cameras_per_id=2, images_per_id_camera=(1, 2), val_every=2
)
TINY_VEH = Vehicle1MSynthConfig(num_models=2, vehicles_per_model=3, num_test_vehicles=3, images_per_vehicle=2)

MSMT_LINE = re.compile(
    r"(?P<dir>\d{4})/(?P<pid>\d{4})_(?P<idx>\d{3})_(?P<cam>\d{2})_(?P<date>\d{4}(morning|noon|afternoon))"
    r"_(?P<frame>\d{4})_(?P<n>\d)\.jpg (?P<lpid>\d+)"
)
VEH_LINE = re.compile(r"(?P<dir>\d+)/(?P<n>\d+)\.jpg (?P<vid>\d+) (?P<model>\d+)")


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted path order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n") or text == ""
    return text.splitlines()


# ---------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("writer,cfg", [(write_msmt17, TINY_MSMT), (write_vehicle1m, TINY_VEH)])
def test_same_seed_gives_identical_bytes(tmp_path, writer, cfg):
    a = writer(tmp_path / "a", cfg)
    b = writer(tmp_path / "b", cfg)
    assert a.name == b.name
    assert sum(1 for p in a.rglob("*.jpg")) >= 6
    assert tree_digest(a) == tree_digest(b)


@pytest.mark.parametrize("writer,cfg", [(write_msmt17, TINY_MSMT), (write_vehicle1m, TINY_VEH)])
def test_different_seed_gives_different_images(tmp_path, writer, cfg):
    a = writer(tmp_path / "a", cfg)
    b = writer(tmp_path / "b", type(cfg)(**{**cfg.__dict__, "seed": 1}))
    assert tree_digest(a) != tree_digest(b)
    imgs_a = sorted(a.rglob("*.jpg"))
    imgs_b = sorted(b.rglob("*.jpg"))
    pix_a = np.asarray(Image.open(imgs_a[0]), dtype=np.int16)
    pix_b = np.asarray(Image.open(imgs_b[0]), dtype=np.int16)
    assert np.abs(pix_a - pix_b).mean() > 5


def test_images_do_not_depend_on_dataset_size(tmp_path):
    """Per-image seeding: person 0..2 come out byte-identical whether 3 or 5 train ids are made."""
    small = write_msmt17(tmp_path / "s", MSMT17SynthConfig(**{**TINY_MSMT.__dict__, "num_train_ids": 3}))
    large = write_msmt17(tmp_path / "l", MSMT17SynthConfig(**{**TINY_MSMT.__dict__, "num_train_ids": 5}))
    for pid in range(3):
        assert tree_digest(small / "train" / f"{pid:04d}") == tree_digest(large / "train" / f"{pid:04d}")
    assert (large / "train" / "0004").is_dir() and not (small / "train" / "0004").exists()


# ---------------------------------------------------------------------------------- atomicity


def test_refuses_non_empty_target_and_overwrites_on_request(tmp_path):
    target = tmp_path / "MSMT17_V1"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_msmt17(tmp_path, TINY_MSMT)
    assert (target / "keep.txt").read_text() == "mine"
    out = write_msmt17(tmp_path, TINY_MSMT, overwrite=True)
    assert out == target and not (target / "keep.txt").exists()
    assert (target / "list_train.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MSMT17_V1"]  # no temp folders left


def test_empty_existing_target_is_accepted(tmp_path):
    (tmp_path / "Vehicle-1M").mkdir()
    out = write_vehicle1m(tmp_path, TINY_VEH)
    assert (out / "train-test-split" / "train_list.txt").is_file()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic._render_person

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_person", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        write_msmt17(tmp_path, TINY_MSMT)
    assert list(tmp_path.iterdir()) == []


def test_config_validation():
    with pytest.raises(ValueError, match="cameras_per_id"):
        MSMT17SynthConfig(num_cameras=2, cameras_per_id=3)
    with pytest.raises(ValueError, match="images_per_id_camera"):
        MSMT17SynthConfig(images_per_id_camera=(3, 2))
    with pytest.raises(ValueError, match="num_test_vehicles"):
        Vehicle1MSynthConfig(num_models=1, vehicles_per_model=3, num_test_vehicles=3)
    with pytest.raises(ValueError, match="disagrees with test_fraction"):
        Vehicle1MSynthConfig(num_test_vehicles=10, test_fraction=0.5)
    assert MSMT17SynthConfig(images_per_id_camera=2).images_per_id_camera == (2, 2)
    assert MSMT17SynthConfig(num_cameras=2).cameras_per_id == 2  # default min(3, num_cameras)
    assert Vehicle1MSynthConfig().num_test_vehicles == 32  # 1/3 of 12 x 8
    assert Vehicle1MSynthConfig(test_fraction=0.25).num_test_vehicles == 24


# ---------------------------------------------------------------------------------- MSMT17 layout


def test_msmt17_layout(default_msmt17):
    root = default_msmt17
    assert root.name == "MSMT17_V1"
    assert sorted(p.name for p in root.iterdir()) == [
        "list_gallery.txt", "list_query.txt", "list_train.txt", "list_val.txt", "test", "train"
    ]
    listed: dict[str, set[str]] = {}
    records: dict[str, list[tuple[int, int, str]]] = {}  # list -> (pid, cam0, relpath)
    for name, folder in (("train", "train"), ("val", "train"), ("query", "test"), ("gallery", "test")):
        recs = []
        for line in _lines(root / f"list_{name}.txt"):
            m = MSMT_LINE.fullmatch(line)
            assert m, f"list_{name}.txt line {line!r} not in MSMT17 form"
            assert int(m["dir"]) == int(m["pid"]) == int(m["lpid"])
            assert 1 <= int(m["cam"]) <= 4
            rel = line.split()[0]
            assert (root / folder / rel).is_file()
            recs.append((int(m["lpid"]), int(m["cam"]) - 1, rel))
        records[name] = recs
        listed.setdefault(folder, set()).update(r for *_, r in recs)
    # every image on disk is listed exactly once, nothing else
    for folder in ("train", "test"):
        on_disk = {p.relative_to(root / folder).as_posix() for p in (root / folder).rglob("*") if p.is_file()}
        assert on_disk == listed[folder]
    assert len(records["train"]) + len(records["val"]) == len(listed["train"])
    assert len(records["query"]) + len(records["gallery"]) == len(listed["test"])
    # default sizes; test pids restart at 0
    assert {p for p, _, _ in records["train"]} == set(range(80))
    assert {p for p, _, _ in records["query"] + records["gallery"]} == set(range(40))
    assert {c for _, c, _ in records["train"]} == set(range(4))
    # val: a few train images of train pids, disjoint from list_train
    val = records["val"]
    assert 5 <= len(val) <= 20
    assert {p for p, _, _ in val} <= {p for p, _, _ in records["train"]}
    # images per (id, cam) within 2..3; 3 cameras per id
    per = defaultdict(int)
    for split in ("train", "val"):
        for pid, cam, _ in records[split]:
            per[(pid, cam)] += 1
    assert set(per.values()) <= {2, 3}
    assert all(sum(1 for (p, _) in per if p == pid) == 3 for pid in range(80))
    # query: at most one per (pid, cam); every query has a same-pid gallery image from another camera
    qkeys = [(p, c) for p, c, _ in records["query"]]
    assert len(qkeys) == len(set(qkeys)) and len({p for p, _ in qkeys}) == 40
    gallery = defaultdict(set)
    for pid, cam, _ in records["gallery"]:
        gallery[pid].add(cam)
    for pid, cam in qkeys:
        assert gallery[pid] - {cam}, f"query pid {pid} cam {cam} has no cross-camera gallery match"
    # image format
    img = Image.open(root / "train" / records["train"][0][2])
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 128))


# ---------------------------------------------------------------------------------- Vehicle-1M layout


def test_vehicle1m_layout(default_vehicle1m):
    root = default_vehicle1m
    assert root.name == "Vehicle-1M"
    split_dir = root / "train-test-split"
    assert sorted(p.name for p in split_dir.iterdir()) == [
        "test_1000.txt", "test_2000.txt", "test_3000.txt", "train_list.txt"
    ]
    lists = {}
    model_of: dict[int, int] = {}
    for path in sorted(split_dir.iterdir()):
        recs = []
        for line in _lines(path):
            m = VEH_LINE.fullmatch(line)
            assert m, f"{path.name} line {line!r} not '<vid>/<n>.jpg <vid> <model>'"
            vid, model = int(m["vid"]), int(m["model"])
            assert int(m["dir"]) == vid
            assert model_of.setdefault(vid, model) == model
            assert (root / "image" / line.split()[0]).is_file()
            recs.append((vid, line.split()[0]))
        lists[path.stem] = recs
    vids = {name: {v for v, _ in recs} for name, recs in lists.items()}
    lines = {name: {r for _, r in recs} for name, recs in lists.items()}
    assert lines["test_1000"] < lines["test_2000"] < lines["test_3000"]
    assert [len(vids[n]) for n in ("test_1000", "test_2000", "test_3000")] == [11, 22, 32]
    assert not vids["train_list"] & vids["test_3000"]
    assert len(vids["train_list"]) == 64
    on_disk = {p.relative_to(root / "image").as_posix() for p in (root / "image").rglob("*") if p.is_file()}
    assert on_disk == lines["train_list"] | lines["test_3000"]
    assert len(on_disk) == 96 * 8
    # several vehicles per model, in train and in test
    per_model = defaultdict(set)
    for vid, model in model_of.items():
        per_model[model].add(vid)
    assert len(per_model) == 12 and all(len(v) == 8 for v in per_model.values())
    test_models = defaultdict(int)
    for vid in vids["test_3000"]:
        test_models[model_of[vid]] += 1
    assert max(test_models.values()) >= 2
    img = Image.open(root / "image" / lists["train_list"][0][1])
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (96, 96))


# ---------------------------------------------------------------------------------- learnability


def _hist(path: Path, person_crop: bool = False) -> np.ndarray:
    """64-bin RGB histogram; ``person_crop``: centre crop + grey-world colour normalisation."""
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    if person_crop:
        h, w = img.shape[:2]
        img = img[h // 4 : h * 15 // 16, w // 4 : w * 3 // 4]
        img = img / img.reshape(-1, 3).mean(0) * 128
    q = np.clip(img // 64, 0, 3).astype(np.int64)
    hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64).astype(np.float64)
    return hist / hist.sum()


def _l1(feats: np.ndarray) -> np.ndarray:
    return np.abs(feats[:, None] - feats[None]).sum(-1)


def test_person_ids_learnable_but_not_trivial(default_msmt17):
    recs = [MSMT_LINE.fullmatch(line) for line in _lines(default_msmt17 / "list_train.txt")][:200]
    paths = [default_msmt17 / "train" / m[0].split()[0] for m in recs]
    pids = np.array([int(m["pid"]) for m in recs])
    cams = np.array([int(m["cam"]) for m in recs])
    same_id = pids[:, None] == pids[None]
    same_cam = cams[:, None] == cams[None]
    # identity survives a camera change: on the (normalised) person region, same-id pairs seen by
    # different cameras are closer than different-id pairs seen by different cameras
    dist = _l1(np.stack([_hist(p, person_crop=True) for p in paths]))
    assert dist[same_id & ~same_cam].mean() < 0.9 * dist[~same_id & ~same_cam].mean()
    # ...but it is not trivial: on whole images the camera dominates a naive colour feature,
    # different persons under one camera look closer than one person under two cameras
    raw = _l1(np.stack([_hist(p) for p in paths]))
    assert raw[~same_id & same_cam].mean() < raw[same_id & ~same_cam].mean()


def test_vehicle_model_shared_and_ids_differ_in_small_marks(default_vehicle1m):
    recs = [line.split() for line in _lines(default_vehicle1m / "train-test-split" / "train_list.txt")][::2]
    dist = _l1(np.stack([_hist(default_vehicle1m / "image" / rel) for rel, _, _ in recs]))
    vids = np.array([int(v) for _, v, _ in recs])
    models = np.array([int(m) for *_, m in recs])
    same_vid = vids[:, None] == vids[None]
    same_model = models[:, None] == models[None]
    assert dist[same_model & ~same_vid].mean() < 0.95 * dist[~same_model].mean()
    # the vehicles of one model are NOT told apart by colour: only their small marks differ
    off = ~np.eye(len(vids), dtype=bool)
    assert dist[same_vid & off].mean() > 0.9 * dist[same_model & ~same_vid].mean()


def test_vehicles_of_one_model_differ_only_in_windscreen_and_head():
    s = 96
    model = synthetic._vehicle_model(0, 3)
    a = np.asarray(synthetic._vehicle_layer(model, synthetic._vehicle_marks(0, 24), s, None), dtype=np.int16)
    b = np.asarray(synthetic._vehicle_layer(model, synthetic._vehicle_marks(0, 25), s, None), dtype=np.int16)
    diff_rows = np.nonzero(np.abs(a - b).sum(axis=(1, 2)))[0]
    assert diff_rows.size > 0  # the two vehicles do differ...
    assert diff_rows.max() < model.hood_bottom * s  # ...only above the grille (windscreen / car head)
    assert (np.abs(a - b).sum(-1) > 0).mean() < 0.06  # and only in small marks
    other = np.asarray(
        synthetic._vehicle_layer(synthetic._vehicle_model(0, 4), synthetic._vehicle_marks(0, 24), s, None),
        dtype=np.int16,
    )
    assert (np.abs(a - other).sum(-1) > 0).mean() > 0.15  # another model differs broadly
