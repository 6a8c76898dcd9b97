import json

import numpy as np
import pytest

from reid.data.manifest import Manifest, Row
from reid.data.protocols import Protocol, ProtocolError, build_protocol

BOTH = ("test_1000", "test_2000")


def _row(pid, n, lists):
    return Row(f"image__{pid}__{n}", f"image/{pid}/{n}.jpg", pid, 0, 1, "test", lists)


# pid 7: 4 images in both lists, pid 9: 3 images in both, pid 12: one image, only in test_2000
VEHICLE = Manifest("veh", (
    Row("image__1__0", "image/1/0.jpg", 1, 0, 1, "train"),
    *[_row(7, n, BOTH) for n in range(4)], *[_row(9, n, BOTH) for n in range(3)], _row(12, 0, ("test_2000",)),
))


def test_gallery_draws_follow_the_documented_rule():
    p = build_protocol(VEHICLE, num_draws=5, seed=3)
    assert p.kind == "gallery_draws" and list(p.sets) == ["test_1000", "test_2000"]
    for d, gallery in enumerate(p.sets["test_2000"]):
        expected = []
        for pid, n in ((12, 1), (7, 4), (9, 3)):  # pids in ascending order: 7, 9, 12
            keys = sorted(f"image__{pid}__{i}" for i in range(n))
            expected.append((pid, keys[int(np.random.default_rng([3, d, pid]).integers(n))]))
        assert gallery == tuple(k for _, k in sorted(expected))


def test_rounds_split_each_list_into_one_gallery_image_per_vehicle():
    p = build_protocol(VEHICLE, num_draws=4, seed=0)
    rounds = list(p.rounds(lambda split: ()))
    assert [(r.name, r.index) for r in rounds] == [(n, i) for n in BOTH for i in range(4)]
    for r in rounds:
        members = set(p.members[r.name])
        assert set(r.query) | set(r.gallery) == members and not set(r.query) & set(r.gallery)
        pids = [int(k.split("__")[1]) for k in r.gallery]
        assert sorted(pids) == sorted(set(pids))  # one gallery image per vehicle
    # a vehicle keeps its gallery image in every list of a round; pid 12 is gallery-only
    for i in range(4):
        small, large = p.sets["test_1000"][i], p.sets["test_2000"][i]
        assert set(small) < set(large) and "image__12__0" in large
    assert len({p.sets["test_2000"][i] for i in range(4)}) > 1  # rounds differ
    assert build_protocol(VEHICLE, 4, 0) == p and build_protocol(VEHICLE, 4, 1) != p


def test_fixed_protocol_uses_query_and_gallery_splits():
    m = Manifest("p", (Row("a", "a.jpg", 1, 0, -1, "query"), Row("b", "b.jpg", 1, 1, -1, "gallery")))
    p = build_protocol(m, num_draws=10, seed=0)
    assert p.kind == "fixed"
    keys = {"query": ["a"], "gallery": ["b", "c"]}
    (r,) = p.rounds(keys.__getitem__)
    assert (r.name, r.query, r.gallery) == ("query_gallery", ("a",), ("b", "c"))


def test_write_read_round_trip_and_errors(tmp_path):
    p = build_protocol(VEHICLE, num_draws=2, seed=1)
    path = tmp_path / "veh.protocol.json"
    p.write(path)
    assert Protocol.read(path) == p
    assert json.loads(path.read_text())["format"] == "reid-protocol"
    with pytest.raises(ProtocolError, match="no protocol file"):
        Protocol.read(tmp_path / "missing.json")
    path.write_text('{"format": "other"}')
    with pytest.raises(ProtocolError, match="not a reid-protocol file"):
        Protocol.read(path)
    with pytest.raises(ValueError, match="num_draws"):
        build_protocol(VEHICLE, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        build_protocol(VEHICLE, 1, -1)
    mixed = Manifest("x", (*VEHICLE.rows, Row("q", "q.jpg", 5, 0, -1, "query")))
    with pytest.raises(ValueError, match="both test lists and a query/gallery split"):
        build_protocol(mixed, 1, 0)


def _random_vehicle_manifest(seed):
    rng = np.random.default_rng(seed)
    rows = [Row("image__0__0", "image/0/0.jpg", 0, 0, 0, "train")]
    for pid in rng.permutation(np.arange(1, 40)):
        lists = ("test_full",) if pid > 25 else ("test_1000", "test_full") if pid > 10 else BOTH + ("test_full",)
        rows += [Row(f"image__{pid}__{n}", f"image/{pid}/{n}.jpg", int(pid), 0, int(pid) % 5, "test", lists)
                 for n in rng.permutation(int(rng.integers(1, 6)))]
    return Manifest("veh", tuple(rows))


@pytest.mark.parametrize("seed", range(4))
def test_streamed_protocol_is_byte_identical_to_the_in_memory_one(tmp_path, seed):
    from reid.data.protocols import write_protocol
    from reid.data.row_table import RowTable

    manifest = _random_vehicle_manifest(seed)
    with RowTable.from_rows("veh", manifest.rows) as table:
        kind, sets = write_protocol(table, tmp_path / "p.json", num_draws=3, seed=seed)
        ordered = table.manifest()  # the table's (manifest) order: split, then relpath
    assert (kind, sets) == ("gallery_draws", ("test_1000", "test_2000", "test_full"))
    assert (tmp_path / "p.json").read_text() == build_protocol(ordered, 3, seed).to_json()
    assert Protocol.read(tmp_path / "p.json") == build_protocol(ordered, 3, seed)


def test_streamed_protocol_fixed_and_errors(tmp_path):
    from reid.data.protocols import write_protocol
    from reid.data.row_table import RowTable

    fixed = Manifest("p", (Row("a", "a.jpg", 1, 0, -1, "query"), Row("b", "b.jpg", 1, 1, -1, "gallery")))
    with RowTable.from_rows("p", fixed.rows) as table:
        assert write_protocol(table, tmp_path / "f.json", 10, 0) == ("fixed", ("query_gallery",))
    assert (tmp_path / "f.json").read_text() == build_protocol(fixed, 10, 0).to_json()
    mixed = (*VEHICLE.rows, Row("q", "q.jpg", 5, 0, -1, "query"))
    with RowTable.from_rows("x", mixed) as table:
        with pytest.raises(ValueError, match="both test lists"):
            write_protocol(table, tmp_path / "m.json", 2, 0)
        with pytest.raises(ValueError, match="num_draws"):
            write_protocol(table, tmp_path / "m.json", 0, 0)
    assert not (tmp_path / "m.json").exists()
