"""Tests for reid.data.shards: WebDataset tars, DALI .idx files and shards.json."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reid.data.shards as shards_mod
from reid.data.manifest import SPLITS, Manifest, Row, key_from_relpath
from reid.data.shards import SHARDS_JSON, ShardsError, ShardsIndex, ShardsSummary, write_shards

#: the splits the fixture manifest has (the others must produce no shards)
PRESENT = ("train", "query", "gallery")

TARGET = 20480  # two tar records: several small samples per shard
LONG_DIR = "d" * 120  # a member name over 100 chars needs a PAX header


def _make_dataset(root: Path) -> Manifest:
    """~50 tiny JPEGs of varying size over 3 splits, one long name, one image > TARGET."""
    rng = np.random.default_rng(0)
    rows = []
    plan = {"train": 26, "query": 14, "gallery": 12}
    for split, n in plan.items():
        for i in range(n):
            pid = 100 + i % 5 if split == "train" else 200 + i % 3
            rel = f"{split}/{pid:04d}/{pid:04d}_c{i % 3}_{i:03d}.jpg"
            if split == "train" and i == 7:
                rel = f"{split}/{LONG_DIR}/{pid:04d}_{i:03d}.jpg"
            size = (96, 96) if split == "gallery" and i == 5 else (8 + 4 * (i % 5), 8 + 2 * (i % 7))
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=100 if size == (96, 96) else 85)
            rows.append(Row(key_from_relpath(rel), rel, pid, i % 3, i % 4 if split != "train" else -1, split))
    return Manifest("toy", tuple(rows))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    images = base / "images"
    manifest = _make_dataset(images)
    out = base / "out"
    summary = write_shards(manifest, images, out, TARGET)
    assert isinstance(summary, ShardsSummary)
    index = ShardsIndex.load(out)
    return manifest, images, out, index, summary


def _expected(manifest: Manifest, images: Path, split: str):
    return [
        (r.key, (images / r.relpath).read_bytes(),
         {"key": r.key, "relpath": r.relpath, "pid": r.pid, "camid": r.camid,
          "model_id": r.model_id, "split": r.split})
        for r in manifest.split(split)
    ]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_layout_several_shards_per_split(built):
    manifest, _, out, index, _ = built
    names = sorted(p.name for p in out.iterdir())
    assert SHARDS_JSON in names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    assert tuple(split for split in SPLITS if manifest.split(split)) == PRESENT
    assert index.splits() == PRESENT
    for split in PRESENT:
        tars = [s.name for s in index.shards if s.split == split]
        assert tars == [f"{split}-{i:06d}.tar" for i in range(len(tars))]
        assert all(t[:-4] + ".idx" in names for t in tars)
        assert len(tars) >= 2, split
    assert set(names) == {SHARDS_JSON} | {s.name for s in index.shards} | {s.index for s in index.shards}
    assert len(index) == len(manifest.rows)


def test_round_trip_webdataset(built):
    import webdataset as wds

    manifest, images, _, index, _ = built
    for split in PRESENT:
        urls = [str(p) for p in index.shard_paths(split)]
        got = [(s["__key__"], s["jpg"], json.loads(s["json"]))
               for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
        assert got == _expected(manifest, images, split), split


def test_round_trip_read_jpeg_and_labels(built):
    manifest, images, out, index, _ = built
    loaded = ShardsIndex.load(out)
    for split in PRESENT:
        exp = _expected(manifest, images, split)
        assert loaded.keys(split) == [k for k, _, _ in exp]
        assert loaded.pids(split) == [lab["pid"] for _, _, lab in exp]
        for key, jpg, lab in exp:
            assert loaded.read_jpeg(key) == jpg
            assert loaded.labels(key) == {k: v for k, v in lab.items() if k != "relpath"}
    summary = loaded.summary()
    assert all(f"{sp} {len(manifest.split(sp))} samples" in summary for sp in PRESENT)
    with pytest.raises(KeyError, match="nope"):
        loaded.read_jpeg("nope")
    loaded.verify()


def test_read_jpeg_threads_with_evicting_cache(built):
    manifest, images, out, _, _ = built
    loaded = ShardsIndex.load(out, max_open_files=2)  # 8 shards -> constant eviction
    keys = [r.key for r in manifest.rows] * 4
    want = {r.key: (images / r.relpath).read_bytes() for r in manifest.rows}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(loaded.read_jpeg, keys))
    assert got == [want[k] for k in keys]
    loaded.close()
    assert loaded.read_jpeg(keys[0]) == want[keys[0]]  # reopens after close


def test_round_trip_dali_with_index_files(built):
    from nvidia.dali import fn, pipeline_def

    manifest, images, _, index, _ = built
    for split in PRESENT:
        exp = _expected(manifest, images, split)
        tars = [str(p) for p in index.shard_paths(split)]
        idxs = [str(p) for p in index.index_paths(split)]

        @pipeline_def(batch_size=len(exp), num_threads=1, device_id=None, seed=0)
        def pipe():
            jpg, lab = fn.readers.webdataset(
                paths=tars, index_paths=idxs, ext=["jpg", "json"],
                missing_component_behavior="error", random_shuffle=False, name="reader",
            )
            return jpg, lab

        p = pipe()
        p.build()
        assert p.epoch_size("reader") == len(exp)
        jpgs, labels = p.run()
        got = []
        for i in range(len(exp)):
            lab = json.loads(np.array(labels[i]).tobytes())
            source = jpgs[i].source_info()  # "<tar>:<offset>:<member name>"
            assert source.endswith(f":{lab['key']}.jpg")
            got.append((lab["key"], np.array(jpgs[i]).tobytes(), lab))
        assert got == exp, split
        del p


def test_idx_matches_dali_wds2idx_tool(built, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    _, _, out, index, _ = built
    for info in index.shards:
        ref = tmp_path / (info.name + ".ref.idx")
        with wds2idx.IndexCreator(str(out / info.name), str(ref), verbose=False) as creator:
            creator.create_index()
        ours = (out / info.index).read_text()
        assert ours == ref.read_text(), info.name
        head = ours.splitlines()[0].split()
        assert head == ["v1.2", str(info.count)]


def test_idx_offsets_point_at_member_data(built):
    _, _, out, index, _ = built
    info = index.shards[0]
    lines = (out / info.index).read_text().splitlines()[1:]
    raw = (out / info.name).read_bytes()
    with tarfile.open(out / info.name) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf}
    for line in lines:
        f = line.split()
        assert len(f) == 8 and f[0] == "jpg" and f[4] == "json"
        for ext, off, size, name in (f[0:4], f[4:8]):
            assert name.endswith("." + ext) and int(off) % 512 == 0
            assert raw[int(off): int(off) + int(size)] == members[name]


def test_tar_headers_are_fixed(built):
    _, _, out, index, _ = built
    with tarfile.open(out / index.shards[0].name) as tf:
        for m in tf:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "root", "root", 0o444)
            assert m.isreg()


def test_byte_identical_output(built, tmp_path):
    manifest, images, out, _, _ = built
    again = tmp_path / "again"
    write_shards(manifest, images, again, TARGET)
    assert _digests(again) == _digests(out)
    write_shards(manifest, images, again, TARGET)  # rewrite in place
    assert _digests(again) == _digests(out)


def test_shards_respect_target_bytes_greedily(built):
    _, _, out, index, _ = built
    big = [s for s in index.shards if s.bytes > TARGET]
    assert len(big) == 1 and big[0].count == 1 and big[0].split == "gallery"

    def content(path: Path) -> list[int]:
        """Bytes of each sample's members (headers + padded data), from the tar itself."""
        with tarfile.open(path) as tf:
            ms = list(tf)
        sizes, start = [], 0
        for jpg, js in zip(ms[::2], ms[1::2]):
            end = js.offset_data + -(-js.size // 512) * 512
            sizes.append(end - start)
            start = end
        return sizes

    for split in PRESENT:
        shards = [s for s in index.shards if s.split == split]
        for cur, nxt in zip(shards, shards[1:]):
            cur_sizes, nxt_sizes = content(out / cur.name), content(out / nxt.name)
            assert cur.bytes == (out / cur.name).stat().st_size
            assert cur.bytes <= TARGET or cur.count == 1
            # greedy: the next shard's first sample would not have fit
            with_next = sum(cur_sizes) + nxt_sizes[0] + 1024
            assert -(-with_next // 10240) * 10240 > TARGET


def test_shards_json_counts(built):
    manifest, _, out, index, summary = built
    text = (out / SHARDS_JSON).read_text()
    doc = json.loads(text)
    # written piecewise, yet exactly the one-shot serialisation of the whole document
    assert text == json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
    assert list(doc) == ["dataset", "format", "shards", "splits", "target_bytes", "version"]
    assert (doc["format"], doc["version"]) == ("reid-wds-shards", 2)
    assert doc["target_bytes"] == TARGET and doc["dataset"] == "toy"
    rows = {r.key: r for r in manifest.rows}
    listed = [e[0] for rec in doc["shards"] for e in rec["samples"]]
    assert listed == [r.key for sp in SPLITS for r in manifest.split(sp)]  # split order, then tar order
    for rec in doc["shards"]:
        assert list(rec) == ["bytes", "count", "index", "name", "samples", "sha256", "split"]
        with tarfile.open(out / rec["name"]) as tf:
            members = list(tf)
        assert rec["count"] == len(members) // 2 == len(rec["samples"])
        assert rec["bytes"] == (out / rec["name"]).stat().st_size
        assert rec["sha256"] == hashlib.sha256((out / rec["name"]).read_bytes()).hexdigest()
        assert rec["index"] == rec["name"][:-4] + ".idx"
        for m, entry in zip(members[::2], rec["samples"]):
            key, off, size, pid, camid, model_id = entry
            r = rows[key]
            assert m.name == f"{key}.jpg" and (off, size) == (m.offset_data, m.size)
            assert (pid, camid, model_id, rec["split"]) == (r.pid, r.camid, r.model_id, r.split)
    for split in PRESENT:
        tot = doc["splits"][split]
        recs = [r for r in doc["shards"] if r["split"] == split]
        assert tot == {"shards": len(recs), "samples": len(manifest.split(split)),
                       "bytes": sum(r["bytes"] for r in recs)}
    assert list(doc["splits"]) == sorted(PRESENT)
    # the returned summary is small and agrees with the loaded index
    assert (summary.root, summary.dataset, summary.target_bytes, summary.shards) == (
        index.root, index.dataset, index.target_bytes, index.shards)
    assert dict(summary.samples) == {sp: len(manifest.split(sp)) for sp in PRESENT}
    assert summary.splits() == index.splits() == PRESENT and len(summary) == len(index)
    assert summary.bytes == sum(s.bytes for s in index.shards)
    assert summary.summary() == index.summary()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("from_csv", [False, True])
def test_missing_image_names_path_and_leaves_no_catalogue(built, tmp_path, workers, from_csv):
    manifest, images, _, _, _ = built
    out = tmp_path / "out"
    write_shards(manifest, images, out, TARGET)
    bad = Row("ghost", "query/9999/ghost.jpg", 1, 0, -1, "query")  # after train's shards went out
    broken = Manifest("toy", manifest.rows[:30] + (bad,) + manifest.rows[30:])
    source = broken
    if from_csv:
        source = tmp_path / "toy.csv"
        broken.write(source)
    with pytest.raises(ShardsError) as info:
        write_shards(source, images, out, TARGET, workers=workers)
    assert str(images / "query/9999/ghost.jpg") in str(info.value)
    assert "ghost" in str(info.value) and "No such file" in str(info.value)
    assert not (out / SHARDS_JSON).exists()  # the old catalogue must not describe new tars
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ShardsError, match="shards.json"):
        ShardsIndex.load(out)


def test_stale_shards_removed(built, tmp_path):
    manifest, images, _, _, _ = built
    out = tmp_path / "out"
    first = write_shards(manifest, images, out, TARGET)
    (out / "notes.txt").write_text("keep me")
    train_only = Manifest("toy", manifest.split("train"))
    second = write_shards(train_only, images, out, 10 * 1024 * 1024)
    assert len(first.shards) > 3
    assert [s.name for s in second.shards] == ["train-000000.tar"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", SHARDS_JSON, "train-000000.tar", "train-000000.idx"])
    loaded = ShardsIndex.load(out)
    assert loaded.keys("query") == [] and loaded.keys("train") == [r.key for r in manifest.split("train")]
    assert second.splits() == ("train",) and len(second) == len(train_only.rows)


def test_load_and_verify_detect_damage(built, tmp_path):
    manifest, images, _, _, _ = built
    out = tmp_path / "out"
    write_shards(manifest, images, out, TARGET)

    victim = out / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF  # inside the first jpg: same size, different hash
    victim.write_bytes(bytes(data))
    ShardsIndex.load(out)  # sizes still match
    with pytest.raises(ShardsError, match="train-000001.tar: sha256"):
        ShardsIndex.load(out).verify()

    victim.write_bytes(bytes(data) + b"\0" * 512)
    with pytest.raises(ShardsError, match=r"shards\.json.*train-000001\.tar.*recorded"):
        ShardsIndex.load(out)

    victim.unlink()
    with pytest.raises(ShardsError, match=r"shards\.json.*train-000001\.tar is missing"):
        ShardsIndex.load(out)

    (out / SHARDS_JSON).write_text("{not json")
    with pytest.raises(ShardsError, match=r"shards\.json.*not JSON"):
        ShardsIndex.load(out)


def test_bad_arguments(built, tmp_path):
    manifest, images, _, _, _ = built
    with pytest.raises(ValueError, match="target_bytes"):
        write_shards(manifest, images, tmp_path / "o", 0)
    dotted = Manifest("toy", (Row("a.b", manifest.rows[0].relpath, 1, 0, -1, "train"),))
    with pytest.raises(ShardsError, match="a.b"):
        write_shards(dotted, images, tmp_path / "o", TARGET)


def _frozen_dataset(root: Path) -> Manifest:
    """Fixed bytes (no encoder involved): empty, block-edge and multi-record images, member
    names of 99-101 characters (the USTAR/PAX boundary) and one far over it."""
    rows = []
    for i, size in enumerate((0, 1, 511, 512, 513, 10240, 20000)):
        rel = f"img/e{i}.jpg"
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes((j * 7 + i) % 251 for j in range(size)))
        rows.append(Row(f"edge{i}", rel, i, i % 3, -1, "train"))
    for length in (95, 96, 97, 150):  # + ".jpg"/".json": 99..101 and 154 characters
        key = (f"k{length}_" + "x" * length)[:length]
        rel = f"img/n{length}.jpg"
        (root / rel).write_bytes(bytes(range(256)) * 3)
        rows.append(Row(key, rel, length, 1, 2, "query"))
    return Manifest("frozen", tuple(rows))


#: sha256 of every file written for _frozen_dataset (target 12000 bytes). The tars and .idx files
#: are from the original webdataset.TarWriter-based writer and must never change; shards.json is
#: format version 2 (per-shard sample lists; its v1 hash was 6c344d69...).
FROZEN_SHA256 = {
    "query-000000.idx": "3122aa5cb33eb98f840962aff305e9fe886eb127bf40f49a6a8493db4150af68",
    "query-000000.tar": "26086be9817b3c63055fbb1a45c55820584874b9957a5c7ede3b831b9d5351c9",
    "query-000001.idx": "48a17e6c804ba6661ce1a7e95afc2d609899aaa9e6effec0658a743a7146ec40",
    "query-000001.tar": "80d66f10a2035ba13902520232a297c30b0b2a5b91392ff4cffe70b893d9a12c",
    "shards.json": "eaf962b08aff3b351fbbfce6aed68983e39633ccbb41bf7decfd0af76112d41a",
    "train-000000.idx": "e52e17280b172a451e344521275201841d072c48d355f2447dd7bcd2203a1fd4",
    "train-000000.tar": "6660da805f4815b25229c0b6bfb0d37e08281c4cea9d8095bb7dda47dc57235a",
    "train-000001.idx": "bc83a3e1b567d46a8465ad5b5432d1988605080392cf70cae4ef7e3d2bc5ba99",
    "train-000001.tar": "4888f7ae51a69b61675a60c11cf77e8582360d4ba856bf772c9c7703388528ff",
    "train-000002.idx": "5c6c6ec75445c71ee12db69dab0c6765d6cfb66a882c043dd5b2e012ef7849d3",
    "train-000002.tar": "9d9219ae9081f5812eb969e2654cd6c703d7b8eb6a7a5c927ecaa20d54b0b628",
    "train-000003.idx": "67dcd94f682ab333699652de45fce50dab2ef4a07cbfd40716b34f43da3e47e1",
    "train-000003.tar": "c2eb48251958e7e2ccab56f23fc0b7d3f0711e2af201645382f116509f17b6f0",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_frozen_bytes(tmp_path, workers):
    manifest = _frozen_dataset(tmp_path / "images")
    out = tmp_path / "out"
    summary = write_shards(manifest, tmp_path / "images", out, 12000, workers=workers)
    assert _digests(out) == FROZEN_SHA256
    loaded = ShardsIndex.load(out)
    assert (summary.root, summary.dataset, summary.target_bytes, summary.shards) == (
        loaded.root, loaded.dataset, loaded.target_bytes, loaded.shards)
    assert loaded.keys("train") == [r.key for r in manifest.split("train")]
    assert loaded.keys("query") == [r.key for r in manifest.split("query")]
    loaded.verify()


# -- writing with worker processes, from a manifest CSV -------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("from_csv", [False, True])
def test_same_bytes_for_any_worker_count_and_source(built, tmp_path, workers, from_csv):
    manifest, images, out, _, _ = built
    source = manifest
    if from_csv:
        source = tmp_path / "toy.csv"
        manifest.write(source)
    again = tmp_path / "again"
    summary = write_shards(source, images, again, TARGET, workers=workers)
    assert _digests(again) == _digests(out)  # every tar, idx and shards.json
    assert summary.dataset == "toy" and len(summary.shards) >= 2 * len(PRESENT)


def test_csv_dataset_name_and_key_check(built, tmp_path):
    manifest, images, _, _, _ = built
    csv = tmp_path / "manifest.csv"
    manifest.write(csv)
    summary = write_shards(csv, images, tmp_path / "o", TARGET, dataset="toy2")
    assert summary.dataset == ShardsIndex.load(tmp_path / "o").dataset == "toy2"
    assert write_shards(csv, images, tmp_path / "o", TARGET).dataset == "manifest"  # the file's stem

    Manifest("toy", (Row("a.b", manifest.rows[0].relpath, 1, 0, -1, "train"),)).write(csv)
    with pytest.raises(ShardsError, match=r"key 'a\.b' must match"):
        write_shards(csv, images, tmp_path / "o", TARGET)
    assert not (tmp_path / "o" / SHARDS_JSON).exists()
    with pytest.raises(ShardsError, match="no such file"):
        write_shards(tmp_path / "nope.csv", images, tmp_path / "o", TARGET)


#: set by a test before the pool forks: the key whose image _grow_then_write changes
_GROW = {"key": None}
_REAL_WRITE_SHARD = shards_mod._write_shard


def _grow_then_write(job):
    """_write_shard, after appending a byte to one image of the job (so it changed since planning)."""
    for s in job.samples:
        if s.key == _GROW["key"]:
            with open(Path(job.images_root) / s.relpath, "ab") as fh:
                fh.write(b"\0")
    return _REAL_WRITE_SHARD(job)


@pytest.mark.parametrize("workers", [1, 2])
def test_image_changed_while_sharding(built, tmp_path, monkeypatch, workers):
    manifest, images, _, index, _ = built
    copy = tmp_path / "images"
    shutil.copytree(images, copy)
    victim = manifest.split("gallery")[3]
    monkeypatch.setitem(_GROW, "key", victim.key)
    monkeypatch.setattr(shards_mod, "_write_shard", _grow_then_write)
    out = tmp_path / "out"
    with pytest.raises(ShardsError) as info:
        write_shards(manifest, copy, out, TARGET, workers=workers)
    msg = str(info.value)
    assert msg == (f"image of sample {victim.key!r} (split gallery) changed while sharding: "
                   f"{copy / victim.relpath}: {(images / victim.relpath).stat().st_size + 1} bytes, "
                   f"{(images / victim.relpath).stat().st_size} when the shards were planned")
    assert not (out / SHARDS_JSON).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    shard = index.location(victim.key)[0]
    assert not (out / shard).exists()  # nor the victim's shard (others in flight may have been written)


def test_bad_workers(built, tmp_path):
    manifest, images, _, _, _ = built
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be an int >= 1"):
            write_shards(manifest, images, tmp_path / "o", TARGET, workers=bad)


# -- shards.json version and consistency ----------------------------------------------------------


def _v1_doc(doc: dict) -> dict:
    """The same catalogue in format version 1 (a global samples map)."""
    samples = {e[0]: [rec["name"], *e[1:], rec["split"]] for rec in doc["shards"] for e in rec["samples"]}
    shards = [{k: v for k, v in rec.items() if k != "samples"} for rec in doc["shards"]]
    return {**doc, "version": 1, "shards": shards, "samples": dict(sorted(samples.items()))}


def test_v1_catalogue_rejected(built, tmp_path):
    manifest, images, _, _, _ = built
    out = tmp_path / "out"
    write_shards(manifest, images, out, TARGET)
    doc = json.loads((out / SHARDS_JSON).read_text())
    (out / SHARDS_JSON).write_text(json.dumps(_v1_doc(doc), sort_keys=True, separators=(",", ":")))
    with pytest.raises(ShardsError, match=r"shards\.json: format version 1, this code reads version 2: "
                                          r"re-run the shard stage"):
        ShardsIndex.load(out)


def test_load_rejects_inconsistent_samples(built, tmp_path):
    manifest, images, _, _, _ = built
    out = tmp_path / "out"
    write_shards(manifest, images, out, TARGET)
    good = json.loads((out / SHARDS_JSON).read_text())

    def broken(mutate, match):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        (out / SHARDS_JSON).write_text(json.dumps(doc))
        with pytest.raises(ShardsError, match=match):
            ShardsIndex.load(out)

    dup = good["shards"][0]["samples"][0][0]
    broken(lambda d: d["shards"][1]["samples"][0].__setitem__(0, dup), f"{dup!r} appears twice")
    broken(lambda d: d["shards"][0]["samples"].pop(), "records count .* samples list has")
    broken(lambda d: d["shards"][0]["samples"].reverse(), "bad offset")
    broken(lambda d: d["shards"][0]["samples"][0].__setitem__(1, 10 ** 9), "bad offset")
    broken(lambda d: d["shards"][0]["samples"][0].append(0), "list of 6 fields")
    broken(lambda d: d["splits"]["train"].__setitem__("samples", 1), "do not match the shard list")
    broken(lambda d: d["shards"][0].pop("samples"), r"shards\[0\] malformed")


# -- the tar header builder -------------------------------------------------------------------------


def _tarfile_reference(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o444, "root", "root"
    return ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def test_header_matches_tarfile_brute_force():
    rng = random.Random(0)
    ascii_chars = "".join(map(chr, range(128)))
    odd = "éü中😀\udcff"  # non-ASCII, astral, a surrogate-escaped byte
    names = ["", "a", "x.jpg", "k" * 99, "k" * 100, "k" * 101, "k" * 150, "é", "é" * 50, "a" * 99 + "é"]
    for _ in range(400):
        length = rng.choice([rng.randint(0, 20), rng.randint(90, 110), rng.randint(0, 300)])
        chars = ascii_chars if rng.random() < 0.7 else ascii_chars + odd
        names.append("".join(rng.choice(chars) for _ in range(length)))
    limit = 8 ** 11  # sizes from here on need a PAX header
    sizes = [0, 1, 511, 512, 513, 10240, limit - 1, limit, limit + 1, 1 << 40]
    sizes += [rng.randrange(limit) for _ in range(20)]
    checked = fast = 0
    for name in names:
        for size in rng.sample(sizes, 4) + [0, limit - 1]:
            want = _tarfile_reference(name, size)
            assert shards_mod._header(name, size) == want, (name, size)
            assert shards_mod._header_len(name, size) == len(want), (name, size)
            checked += 1
            fast += len(want) == 512
    assert checked > 2000 and 0.3 * checked < fast < checked  # both paths really exercised


def test_labels_json_matches_json_dumps():
    rng = random.Random(1)
    chars = "".join(map(chr, range(160))) + '"\\/é中😀\u2028\udcff'
    for i in range(500):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 30)))
        row = Row(f"k{i}_{text}", text, rng.randint(-5, 10 ** 12), rng.randint(0, 20), rng.randint(-1, 9), "train")
        want = json.dumps({"key": row.key, "relpath": row.relpath, "pid": row.pid, "camid": row.camid,
                           "model_id": row.model_id, "split": row.split},
                          sort_keys=True, separators=(",", ":")).encode("utf-8")
        assert shards_mod._labels_json(row) == want
    odd = Row("k", "r.jpg", True, 0, -1, "query")  # not an exact int: json.dumps itself decides
    assert shards_mod._labels_json(odd) == b'{"camid":0,"key":"k","model_id":-1,"pid":true,"relpath":"r.jpg","split":"query"}'
