"""A manifest under construction, kept in an on-disk SQLite table so memory stays flat.

``prepare`` must handle Vehicle-1M (936k images) and bigger in bounded memory: a layout parser
streams its rows into a :class:`RowTable`, the data checks run as queries over it, and the
manifest CSV, its stats and the evaluation protocol are streamed out of it. Memory is bounded by
SQLite's page cache (``cache_kib``), whatever the number of rows; the table itself lives in a
temporary file that is removed on :meth:`RowTable.close`.

Tables:

* ``rows``: one per image, unique ``relpath`` and unique ``key``, with the place it was first
  listed (``src``, ``line``).
* ``members``: ``(relpath, test_set)`` for ``test`` rows, with the line that listed it.
* ``digests``: ``(relpath, digest)``, the SHA-256 of each readable file, filled by the data checks.

The manifest order is split order (:data:`~reid.data.manifest.SPLITS`), then ``relpath``
(Python ``str`` order: SQLite's default BINARY collation compares UTF-8 bytes, which orders
code points the same way).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from reid.data.manifest import SPLITS, TEST_SET_SEP, Manifest, ManifestError, Row, natural_key

__all__ = ["RowTable", "Existing", "collect"]

_SCHEMA = """
CREATE TABLE rows (
    relpath TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    pid INTEGER NOT NULL,
    camid INTEGER NOT NULL,
    model_id INTEGER NOT NULL,
    split TEXT NOT NULL,
    rank INTEGER NOT NULL,          -- SPLITS.index(split): manifest order is (rank, relpath)
    test_sets TEXT NOT NULL,        -- sorted names joined with '|', '' unless split = 'test'
    src TEXT NOT NULL,              -- file that first listed the image
    line INTEGER                    -- its line (NULL for folder scans)
) WITHOUT ROWID;
CREATE TABLE members (
    relpath TEXT NOT NULL,
    test_set TEXT NOT NULL,
    src TEXT NOT NULL,
    line INTEGER,
    PRIMARY KEY (test_set, relpath)
) WITHOUT ROWID;
CREATE TABLE digests (
    relpath TEXT PRIMARY KEY,
    digest BLOB NOT NULL            -- SHA-256 of the file's bytes
) WITHOUT ROWID;
"""
#: Columns of ``rows`` that :func:`row_from_sql` turns back into a :class:`Row`, in its order.
ROW_COLUMNS = "key, relpath, pid, camid, model_id, split, test_sets"


@dataclass(frozen=True)
class Existing:
    """Where a row (or a test-list membership) was first added: the :class:`Row` as stored,
    the file that listed it and the line (``None`` for a folder scan)."""

    row: Row
    src: str
    line: int | None


class RowTable:
    """Rows of one dataset's manifest in a temporary on-disk SQLite database.

    Args:
        dataset: the manifest's dataset name.
        directory: folder for the temporary database file (default: the system temp folder).
        cache_kib: SQLite page cache size in KiB: the bound on the table's memory.

    Use as a context manager (or call :meth:`close`): the database file is deleted on close.
    Not thread-safe; one table per process.
    """

    def __init__(self, dataset: str, directory: str | Path | None = None, cache_kib: int = 2048) -> None:
        self.dataset = dataset
        fd, name = tempfile.mkstemp(prefix=f"reid-{dataset}-", suffix=".sqlite", dir=directory)
        os.close(fd)
        self.path = Path(name)
        try:
            self._db = sqlite3.connect(name, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")  # a scratch file: never read after a crash
            self._db.execute("PRAGMA temp_store=FILE")
            self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN")
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        self._indexed = False

    # -- building ----------------------------------------------------------------------------

    def add(self, row: Row, src: str | Path, line: int | None) -> Existing | None:
        """Add ``row``, first listed at ``src:line``; a ``test`` row also joins its ``test_sets``.

        Returns:
            ``None`` when the image is new. Otherwise nothing is changed and the conflicting
            :class:`Existing` row is returned: the one with the same ``relpath`` (the image is
            listed again: the caller decides whether that is an error or, for a test image listed
            by another test list, calls :meth:`add_test_sets`), else the one with the same
            ``key`` (two paths map to one sample key: ``existing.row.relpath != row.relpath``).
        """
        try:
            self._db.execute(
                "INSERT INTO rows VALUES (?,?,?,?,?,?,?,?,?,?)",
                (row.relpath, row.key, row.pid, row.camid, row.model_id, row.split, SPLITS.index(row.split),
                 TEST_SET_SEP.join(sorted(row.test_sets)), str(src), line),
            )
        except sqlite3.IntegrityError:
            first = self.get(row.relpath)
            if first is None:
                (other,) = self._db.execute("SELECT relpath FROM rows WHERE key = ?", (row.key,)).fetchone()
                first = self.get(other)
            return first
        for name in row.test_sets:
            self._db.execute("INSERT INTO members VALUES (?,?,?,?)", (row.relpath, name, str(src), line))
        return None

    def add_test_sets(self, relpath: str, names: Iterable[str], src: str | Path, line: int | None) -> Existing | None:
        """Put the existing test image ``relpath`` in more test lists (listed at ``src:line``).

        Returns:
            ``None`` on success; the :class:`Existing` membership (its row, file and line) when
            the image is already in one of ``names`` (the same list names it twice).

        Raises:
            KeyError: ``relpath`` is not in the table.
        """
        first = self.get(relpath)
        if first is None:
            raise KeyError(relpath)
        for name in names:
            hit = self._db.execute("SELECT src, line FROM members WHERE test_set = ? AND relpath = ?",
                                   (name, relpath)).fetchone()
            if hit is not None:
                return Existing(first.row, hit[0], hit[1])
        merged = tuple(sorted(set(first.row.test_sets) | set(names)))
        self._db.execute("UPDATE rows SET test_sets = ? WHERE relpath = ?", (TEST_SET_SEP.join(merged), relpath))
        self._db.executemany("INSERT INTO members VALUES (?,?,?,?)",
                             [(relpath, name, str(src), line) for name in names])
        return None

    def get(self, relpath: str) -> Existing | None:
        """The row stored for ``relpath`` with where it was first listed, or ``None``."""
        hit = self._db.execute(f"SELECT {ROW_COLUMNS}, src, line FROM rows WHERE relpath = ?", (relpath,)).fetchone()
        return None if hit is None else Existing(row_from_sql(hit[:7]), hit[7], hit[8])

    def offset_pids(self, splits: Iterable[str], offset: int) -> None:
        """Add ``offset`` to the pid of every row of ``splits`` (e.g. MSMT17's test pids)."""
        splits = tuple(splits)
        self._db.execute(f"UPDATE rows SET pid = pid + ? WHERE split IN ({_marks(splits)})", (offset, *splits))

    def set_digests(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """Record ``(relpath, sha256 digest)`` pairs in ``digests`` (used by the data checks; safe
        while a cursor over ``rows`` is open)."""
        self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?,?)", pairs)

    def delete_train_pids(self, pids: Iterable[int]) -> int:
        """Remove the ``train`` rows of ``pids``; return how many rows went."""
        cur = self._db.executemany("DELETE FROM rows WHERE split = 'train' AND pid = ?", ((p,) for p in pids))
        return cur.rowcount

    # -- reading -----------------------------------------------------------------------------

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        """Run a read query on the tables (see the module docstring); rows stream from the cursor."""
        self._index()
        return self._db.execute(sql, args)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]

    def rows(self, splits: Iterable[str] | None = None) -> Iterator[Row]:
        """Stream the rows in manifest order (split order, then ``relpath``), optionally only ``splits``."""
        where, args = "", ()
        if splits is not None:
            args = tuple(splits)
            where = f"WHERE split IN ({_marks(args)})"
        for hit in self.execute(f"SELECT {ROW_COLUMNS} FROM rows {where} ORDER BY rank, relpath", args):
            yield row_from_sql(hit)

    def test_sets(self) -> list[str]:
        """Names of the test lists with rows, sorted."""
        return [name for (name,) in self.execute("SELECT DISTINCT test_set FROM members ORDER BY test_set")]

    def stats(self) -> dict[str, dict[str, int]]:
        """The same dict as :meth:`Manifest.stats`, computed by queries."""
        out: dict[str, dict[str, int]] = {}
        count = ("COUNT(*), COUNT(DISTINCT r.pid), COUNT(DISTINCT r.camid), "
                 "COUNT(DISTINCT CASE WHEN r.model_id >= 0 THEN r.model_id END)")
        for split in SPLITS:
            n = self.execute(f"SELECT {count} FROM rows r WHERE r.split = ?", (split,)).fetchone()
            if n[0]:
                out[split] = dict(zip(("images", "pids", "camids", "models"), n))
        for name in sorted(self.test_sets(), key=natural_key):
            n = self.execute(f"SELECT {count} FROM members m JOIN rows r ON r.relpath = m.relpath "
                             "WHERE m.test_set = ?", (name,)).fetchone()
            out[f"test:{name}"] = dict(zip(("images", "pids", "camids", "models"), n))
        return out

    def manifest(self) -> Manifest:
        """Every row in memory as a :class:`Manifest` (for small datasets and tests)."""
        return Manifest(self.dataset, tuple(self.rows()))

    @classmethod
    def from_rows(cls, dataset: str, rows: Iterable[Row], directory: str | Path | None = None) -> "RowTable":
        """A table holding ``rows`` (each listed at ``<dataset>:<position>``)."""
        table = cls(dataset, directory)
        try:
            for i, row in enumerate(rows, start=1):
                first = table.add(row, dataset, i)
                if first is not None:
                    what = "image" if first.row.relpath == row.relpath else f"key {row.key!r} of"
                    raise ManifestError(f"manifest {dataset!r}: {what} {row.relpath} appears twice "
                                        f"(rows {first.line} and {i})")
        except BaseException:
            table.close()
            raise
        return table

    def _index(self) -> None:
        if not self._indexed:
            self._db.execute("CREATE INDEX rows_order ON rows (rank, relpath)")
            self._db.execute("CREATE INDEX rows_pid ON rows (split, pid)")
            self._indexed = True

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close and delete the database file."""
        try:
            self._db.close()
        finally:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RowTable":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(dataset: str, fill: Callable[..., None], *args: Any, **kwargs: Any) -> Manifest:
    """Run a layout's streaming ``fill(table, *args, **kwargs)`` into a temporary table and
    return the whole :class:`Manifest` in memory (what each layout's ``parse`` does)."""
    with RowTable(dataset) as table:
        fill(table, *args, **kwargs)
        return table.manifest()


def _marks(values: tuple) -> str:
    return ",".join("?" * len(values))


def row_from_sql(hit: tuple) -> Row:
    """The :class:`Row` of a result tuple of :data:`ROW_COLUMNS`."""
    key, relpath, pid, camid, model_id, split, test_sets = hit
    return Row(key, relpath, pid, camid, model_id, split, tuple(test_sets.split(TEST_SET_SEP)) if test_sets else ())
