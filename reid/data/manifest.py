"""The manifest: one typed row per image, the seam between layout parsers and everything downstream.

Every layout parser (``reid.data.layouts.<name>.parse``) returns a :class:`Manifest`; nothing
downstream knows which on-disk layout it came from. On disk a manifest is a CSV file with the
header ``key,relpath,pid,camid,model_id,split,test_sets``.

Splits:

* ``train``: training images.
* ``val``: held-out validation images (e.g. MSMT17's ``list_val.txt`` when not merged into train).
* ``query`` / ``gallery``: a fixed evaluation split (MSMT17, Market-1501, VeRi-776).
* ``test``: images of test lists whose query/gallery roles are drawn per evaluation round
  (Vehicle-1M, VehicleID: one random gallery image per vehicle, the rest queries; see
  ``reid.data.protocols``). ``test_sets`` names the lists an image belongs to, e.g.
  ``("test_1000", "test_2000")``; it is empty for every other split.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Container, Iterable, Iterator, Sequence, TextIO

from reid.io import atomic_open

SPLITS = ("train", "val", "query", "gallery", "test")
FIELDS = ("key", "relpath", "pid", "camid", "model_id", "split", "test_sets")
TEST_SET_SEP = "|"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ManifestError(ValueError):
    """A manifest file or row is malformed; the message names the file and line."""


def key_from_relpath(relpath: str) -> str:
    """Derive the stable sample key of an image from its path relative to the dataset root.

    WebDataset groups tar members by the part of the basename before the first dot, so keys
    hold only ``[A-Za-z0-9_-]``: ``/`` becomes ``__``, the extension is dropped and any other
    character becomes ``-``. Example: ``train/0001/0001_c1_0.jpg`` -> ``train__0001__0001_c1_0``.
    """
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    return "__".join(_KEY_UNSAFE.sub("-", part) for part in stem.split("/"))


@dataclass(frozen=True, slots=True)
class Row:
    """One image of a dataset.

    Attributes:
        key: stable sample key (see :func:`key_from_relpath`), unique within a manifest.
        relpath: image path relative to the dataset root, ``/``-separated.
        pid: identity id (person or vehicle) as an int; unique across splits of one dataset
            (parsers offset test pids past the train pids where the layout restarts them).
        camid: camera id, int >= 0.
        model_id: vehicle-model id, or -1 where unknown (person datasets).
        split: one of :data:`SPLITS`.
        test_sets: for ``split == "test"``, the names of the test lists holding this image
            (non-empty, sorted); empty for every other split.
    """

    key: str
    relpath: str
    pid: int
    camid: int
    model_id: int
    split: str
    test_sets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ManifestError(f"row {self.key!r}: split {self.split!r} is not one of {SPLITS}")
        if (self.split == "test") != bool(self.test_sets):
            raise ManifestError(f"row {self.key!r}: test_sets must be non-empty exactly for split 'test', "
                                f"got split {self.split!r} with test_sets {self.test_sets}")
        if any(not name or TEST_SET_SEP in name for name in self.test_sets):
            raise ManifestError(f"row {self.key!r}: bad test set name in {self.test_sets}")


@dataclass(frozen=True)
class Manifest:
    """An ordered, immutable table of :class:`Row` for one dataset.

    Attributes:
        dataset: dataset name, e.g. ``msmt17``.
        rows: the rows, in a deterministic order (parsers sort them).

    Raises:
        ManifestError: on duplicate keys.
    """

    dataset: str
    rows: tuple[Row, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for row in self.rows:
            if row.key in seen:
                raise ManifestError(f"manifest {self.dataset!r}: duplicate key {row.key!r}")
            seen.add(row.key)

    def split(self, name: str) -> tuple[Row, ...]:
        """Rows of one split, in manifest order. Raises ``ManifestError`` for an unknown split."""
        if name not in SPLITS:
            raise ManifestError(f"unknown split {name!r}; expected one of {SPLITS}")
        return tuple(r for r in self.rows if r.split == name)

    def test_sets(self) -> dict[str, tuple[Row, ...]]:
        """Test-list name -> its rows (split ``test``), in manifest order; names in natural order
        (``test_800`` < ``test_1600`` < ``test_full``)."""
        out: dict[str, list[Row]] = {}
        for r in self.rows:
            for name in r.test_sets:
                out.setdefault(name, []).append(r)
        return {name: tuple(out[name]) for name in sorted(out, key=natural_key)}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per split with rows, and per test list (``test:<name>``): number of images, pids,
        cameras and vehicle models (``model_id >= 0``)."""
        groups = {name: rows for name in SPLITS if (rows := self.split(name))}
        groups.update({f"test:{name}": rows for name, rows in self.test_sets().items()})
        out: dict[str, dict[str, int]] = {}
        for name, rows in groups.items():
            out[name] = {
                "images": len(rows),
                "pids": len({r.pid for r in rows}),
                "camids": len({r.camid for r in rows}),
                "models": len({r.model_id for r in rows if r.model_id >= 0}),
            }
        return out

    def to_csv(self) -> str:
        """Serialise to CSV text with the header ``key,relpath,pid,camid,model_id,split,test_sets``
        (``test_sets`` joined with ``|``)."""
        buf = io.StringIO()
        _write_csv(buf, self.rows)
        return buf.getvalue()

    def write(self, path: str | Path) -> None:
        """Write the CSV atomically (temp file, then rename)."""
        write_rows(path, self.rows)

    @classmethod
    def read(cls, path: str | Path, dataset: str | None = None) -> "Manifest":
        """Read a manifest CSV written by :meth:`write` into memory (see :func:`iter_rows` to stream).

        Raises:
            ManifestError: naming the file and line of a bad header, a wrong field count,
                a non-integer pid/camid/model_id, an unknown split or a duplicate key.
        """
        path = Path(path)
        return cls(dataset=dataset or path.stem, rows=tuple(iter_rows(path)))


def write_rows(path: str | Path, rows: Iterable[Row]) -> int:
    """Stream ``rows`` into a manifest CSV at ``path``, atomically (temp file, then rename).

    Memory does not depend on the number of rows. Returns the number of rows written.
    Nothing is left at ``path`` if ``rows`` raises.
    """
    with atomic_open(path, "w") as fh:
        return _write_csv(fh, rows)


def _write_csv(fh: TextIO, rows: Iterable[Row]) -> int:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(FIELDS)
    n = 0
    for r in rows:
        writer.writerow((r.key, r.relpath, r.pid, r.camid, r.model_id, r.split, TEST_SET_SEP.join(r.test_sets)))
        n += 1
    return n


def iter_rows(path: str | Path, splits: Container[str] | None = None) -> Iterator[Row]:
    """Stream the rows of a manifest CSV, in file order, one at a time (flat memory).

    Args:
        path: a manifest CSV written by :meth:`Manifest.write` or :func:`write_rows`.
        splits: yield only rows of these splits (every row is still parsed and checked).

    Raises:
        ManifestError: naming the file and line of a bad header, a wrong field count, a
            non-integer pid/camid/model_id or an unknown split. Duplicate keys are not checked
            here (that needs every key; :meth:`Manifest.read` checks them).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != FIELDS:
            raise ManifestError(f"{path}:1: header must be {','.join(FIELDS)}, got {header}")
        for lineno, fields in enumerate(reader, start=2):
            row = _parse_row(path, lineno, fields)
            if splits is None or row.split in splits:
                yield row


def _parse_row(path: Path, lineno: int, fields: Sequence[str]) -> Row:
    if len(fields) != len(FIELDS):
        raise ManifestError(f"{path}:{lineno}: expected {len(FIELDS)} fields, got {len(fields)}")
    key, relpath, pid, camid, model_id, split, test_sets = fields
    try:
        return Row(key, relpath, int(pid), int(camid), int(model_id), split,
                   tuple(test_sets.split(TEST_SET_SEP)) if test_sets else ())
    except ValueError as err:
        raise ManifestError(f"{path}:{lineno}: {err}") from None


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that orders digit runs numerically: ``test_800`` < ``test_1600`` < ``test_full``."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]


def contiguous_labels(pids: Iterable[int]) -> dict[int, int]:
    """Map each distinct pid to a contiguous train label ``0..n-1`` in ascending pid order."""
    return {pid: i for i, pid in enumerate(sorted(set(pids)))}
