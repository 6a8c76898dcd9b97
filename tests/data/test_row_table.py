import random

import pytest

from reid.data.manifest import Manifest, ManifestError, Row
from reid.data.row_table import RowTable


def _random_rows(seed, n=60):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        split = rng.choice(("train", "val", "query", "gallery", "test"))
        sets = tuple(sorted(rng.sample(("test_800", "test_1600", "test_full"), rng.randint(1, 3)))) if split == "test" else ()
        name = f"{rng.choice('abcXYZ_-é')}{i:03d}"
        rows.append(Row(f"k{name}".replace("é", "e"), f"{split}/{name}.jpg", rng.randint(0, 9), rng.randint(0, 3),
                        rng.choice((-1, 2, 5)), split, sets))
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_rows_come_out_in_manifest_order_with_the_same_stats(seed):
    rows = _random_rows(seed)
    random.Random(seed).shuffle(rows)
    with RowTable.from_rows("d", rows) as table:
        assert len(table) == len(rows)
        expected = sorted(rows, key=lambda r: (("train", "val", "query", "gallery", "test").index(r.split), r.relpath))
        assert list(table.rows()) == expected  # split order, then relpath in Python str order
        assert list(table.rows(("gallery",))) == [r for r in expected if r.split == "gallery"]
        assert table.stats() == Manifest("d", tuple(expected)).stats()
        assert table.manifest() == Manifest("d", tuple(expected))


def test_add_reports_conflicts_and_merges_test_lists(tmp_path):
    with RowTable("d", directory=tmp_path) as table:
        assert table.path.parent == tmp_path
        a = Row("a", "img/a.jpg", 1, 0, 3, "test", ("test_800",))
        assert table.add(a, "list800.txt", 4) is None
        again = table.add(a, "list800.txt", 9)
        assert (again.row, again.src, again.line) == (a, "list800.txt", 4)
        same_key = table.add(Row("a", "img/a.JPG", 1, 0, 3, "train"), "train.txt", 1)
        assert same_key.row.relpath == "img/a.jpg"
        assert table.add_test_sets("img/a.jpg", ("test_1600",), "list1600.txt", 7) is None
        twice = table.add_test_sets("img/a.jpg", ("test_1600",), "list1600.txt", 8)
        assert (twice.src, twice.line) == ("list1600.txt", 7)
        assert list(table.rows()) == [Row("a", "img/a.jpg", 1, 0, 3, "test", ("test_1600", "test_800"))]
        assert table.test_sets() == ["test_1600", "test_800"]
        with pytest.raises(KeyError):
            table.add_test_sets("nope.jpg", ("test_800",), "x", 1)
        table.add(Row("b", "img/b.jpg", 4, 0, -1, "query"), "q.txt", 1)
        table.offset_pids(("query",), 10)
        assert table.get("img/b.jpg").row.pid == 14 and table.get("img/a.jpg").row.pid == 1
        path = table.path
    assert not path.exists()  # scratch file removed on close


def test_from_rows_rejects_a_file_listed_twice():
    rows = [Row("a", "a.jpg", 1, 0, -1, "train"), Row("b", "a.jpg", 1, 0, -1, "train")]
    with pytest.raises(ManifestError, match="a.jpg appears twice"):
        RowTable.from_rows("d", rows)


def test_delete_train_pids():
    rows = [Row("a", "a.jpg", 1, 0, -1, "train"), Row("b", "b.jpg", 2, 0, -1, "train"),
            Row("c", "c.jpg", 1, 0, -1, "query")]
    with RowTable.from_rows("d", rows) as table:
        assert table.delete_train_pids([1]) == 1
        assert [r.key for r in table.rows()] == ["b", "c"]
