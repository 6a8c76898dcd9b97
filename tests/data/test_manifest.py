import pytest

from reid.data.manifest import FIELDS, Manifest, ManifestError, Row, contiguous_labels, key_from_relpath


def _rows():
    return (
        Row("train__1__a", "train/1/a.jpg", 1, 0, -1, "train"),
        Row("train__2__b", "train/2/b.jpg", 2, 1, -1, "val"),
        Row("image__7__1", "image/7/1.jpg", 7, 0, 3, "test", ("test_1000", "test_2000")),
        Row("image__8__1", "image/8/1.jpg", 8, 0, 3, "test", ("test_2000",)),
    )


def test_csv_round_trip_with_test_sets(tmp_path):
    m = Manifest("veh", _rows())
    path = tmp_path / "m.csv"
    m.write(path)
    text = path.read_text().splitlines()
    assert text[0] == ",".join(FIELDS)
    assert text[3] == "image__7__1,image/7/1.jpg,7,0,3,test,test_1000|test_2000"
    assert Manifest.read(path, dataset="veh") == m


def test_test_sets_and_stats():
    m = Manifest("veh", _rows())
    sets = m.test_sets()
    assert list(sets) == ["test_1000", "test_2000"]
    assert [r.key for r in sets["test_2000"]] == ["image__7__1", "image__8__1"]
    stats = m.stats()
    assert set(stats) == {"train", "val", "test", "test:test_1000", "test:test_2000"}
    assert stats["test:test_2000"] == {"images": 2, "pids": 2, "camids": 1, "models": 1}
    assert stats["train"]["models"] == 0


@pytest.mark.parametrize("content, where", [
    ("key,relpath,pid\n", "m.csv:1"),
    (",".join(FIELDS) + "\na,a.jpg,1,0,-1,train\n", "m.csv:2"),
    (",".join(FIELDS) + "\na,a.jpg,1,0,-1,train,\nb,b.jpg,x,0,-1,train,\n", "m.csv:3"),
    (",".join(FIELDS) + "\na,a.jpg,1,0,-1,holdout,\n", "m.csv:2"),
    (",".join(FIELDS) + "\na,a.jpg,1,0,-1,test,\n", "m.csv:2"),
])
def test_read_errors_name_file_and_line(tmp_path, content, where):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(ManifestError, match=where):
        Manifest.read(path)


def test_duplicate_keys_and_test_sets_rule():
    with pytest.raises(ManifestError, match="duplicate key"):
        Manifest("x", (Row("a", "a.jpg", 1, 0, -1, "train"), Row("a", "b.jpg", 1, 0, -1, "train")))
    with pytest.raises(ManifestError, match="test_sets"):
        Row("a", "a.jpg", 1, 0, -1, "train", ("test_1000",))
    with pytest.raises(ManifestError, match="bad test set name"):
        Row("a", "a.jpg", 1, 0, -1, "test", ("a|b",))


def test_keys_and_labels():
    assert key_from_relpath("train/0001/0001_c1_0.jpg") == "train__0001__0001_c1_0"
    assert key_from_relpath("image/12/3.v2.jpg") == "image__12__3-v2"
    assert contiguous_labels([30, 10, 30, 20]) == {10: 0, 20: 1, 30: 2}


def test_stream_write_and_read(tmp_path):
    from reid.data.manifest import iter_rows, write_rows

    path = tmp_path / "m.csv"
    assert write_rows(path, iter(_rows())) == 4
    assert path.read_text() == Manifest("veh", _rows()).to_csv()
    assert tuple(iter_rows(path)) == _rows()
    assert [r.key for r in iter_rows(path, splits=("test",))] == ["image__7__1", "image__8__1"]

    def failing():
        yield _rows()[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_rows(tmp_path / "n.csv", failing())
    assert list(tmp_path.iterdir()) == [path]  # nothing half-written
