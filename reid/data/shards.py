"""WebDataset shards of a manifest, with DALI index files.

:func:`write_shards` turns a manifest (a :class:`~reid.data.manifest.Manifest` in memory, or a
manifest CSV streamed row by row) plus its image folder into a folder of shards;
:class:`ShardsIndex` loads, validates and randomly reads that folder.

Files in ``out_dir`` (all sizes and offsets are in bytes):

``<split>-<NNNNNN>.tar`` (``split`` in ``train``, ``val``, ``query``, ``gallery``, ``test``;
``NNNNNN`` from ``000000``)
    An uncompressed POSIX tar (PAX format; a PAX extended header only appears for a member name
    over 100 characters or not ASCII) in WebDataset layout. Samples appear in manifest order; each
    sample is two regular-file members, in this order:

    * ``<key>.jpg``: the image file's bytes, unchanged (whatever format the file really is).
    * ``<key>.json``: the labels as compact UTF-8 JSON with sorted keys,
      ``{"camid":..,"key":..,"model_id":..,"pid":..,"relpath":..,"split":..}``.

    Every header field is fixed (mtime 0, uid/gid 0, uname/gname ``root``, mode ``0o444``), so
    the same input gives byte-identical tars. The archive ends with tar's two zero blocks and is
    zero-padded to a multiple of 10240 bytes (tar's default record size), like every tar writer.

``<split>-<NNNNNN>.idx``
    The DALI index of the tar of the same name, in the format of DALI's ``wds2idx`` tool, version
    ``v1.2``, read by ``nvidia.dali.fn.readers.webdataset(index_paths=...)``. ASCII text::

        v1.2 <num_samples>
        jpg <data_offset> <size> <key>.jpg json <data_offset> <size> <key>.json
        ...

    one line per sample, in tar order; ``data_offset`` is where the member's data starts in the
    tar (after its header, always a multiple of 512), ``size`` its length.

``shards.json`` (format version 2)
    The catalogue: one line of compact JSON with sorted keys (exactly
    ``json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\\n"``)::

        {"dataset": <manifest dataset name>,
         "format": "reid-wds-shards",
         "shards": [{"bytes": <tar file size>, "count": <samples>, "index": "train-000000.idx",
                     "name": "train-000000.tar",
                     "samples": [[<key>, <jpg data offset>, <jpg size>, <pid>, <camid>, <model_id>],
                                 ...],                          # tar order (= manifest order)
                     "sha256": <hex of the tar>, "split": "train"},
                    ...],                                       # split order, then number
         "splits": {"train": {"bytes": <sum of tar sizes>, "samples": <n>, "shards": <n>}, ...},
         "target_bytes": <int>,
         "version": 2}

    ``splits`` lists only splits that have rows. Each shard record carries its own samples, so
    the file is written shard by shard without holding every key. It is written last (into a
    temp file renamed after every tar exists, and the old one is removed first), so a run that
    crashes leaves either no ``shards.json`` or one whose tars all exist. Version 1 (a global
    ``samples`` map keyed by sample key) is no longer read: re-run the shard stage.

Sharding rule: a split's samples fill ``<split>-000000.tar`` in manifest order; a new shard is
started when adding the next sample would make the tar file (padding included) larger than
``target_bytes``. A shard always holds at least one sample, so a single sample larger than
``target_bytes`` gets a shard of its own (the only case where a tar exceeds the target). The cut
is planned from the images' sizes (``os.stat``) before any byte is read, so it does not depend on
how many worker processes write the tars.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import os
import re
import stat
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, NamedTuple

from reid.data.manifest import SPLITS, Manifest, Row, iter_rows
from reid.io import atomic_open, atomic_write_text

__all__ = [
    "INDEX_VERSION",
    "SHARDS_JSON",
    "ShardInfo",
    "ShardsError",
    "ShardsIndex",
    "ShardsSummary",
    "write_shards",
]

SHARDS_JSON = "shards.json"
FORMAT_NAME = "reid-wds-shards"
FORMAT_VERSION = 2
INDEX_VERSION = "v1.2"  # DALI wds2idx index format version written to every .idx

_OWNER = "root"
_MODE = 0o444
_TAR_FORMAT = tarfile.PAX_FORMAT
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240
_KEY_OK = re.compile(r"[A-Za-z0-9_-]+")  # used with fullmatch (no trailing newline slips through)
_SHARD_FILE = re.compile(r"^(?:%s)-[0-9]{6}\.(?:tar|idx)$" % "|".join(SPLITS))
_SAMPLE_FIELDS = 6  # [key, jpg offset, jpg size, pid, camid, model_id] in a shard record
_HASH_CHUNK = 1 << 20
_WRITE_CHUNK = 1 << 20  # a worker writes (and hashes) its tar in pieces of about this many bytes


class ShardsError(ValueError):
    """A shards folder is missing, corrupt or inconsistent, or an input image is unreadable.

    The message names the file concerned (``shards.json``, the tar/idx, or the image path).
    """


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard as recorded in ``shards.json`` (without its per-sample list).

    Attributes:
        name: tar file name, e.g. ``train-000000.tar`` (relative to the shards folder).
        split: the split all its samples belong to.
        count: number of samples (each = one ``.jpg`` + one ``.json`` member).
        bytes: size of the tar file in bytes.
        sha256: hex SHA-256 of the tar file.
        index: name of its DALI index file, e.g. ``train-000000.idx``.
    """

    name: str
    split: str
    count: int
    bytes: int
    sha256: str
    index: str


class _Entry(NamedTuple):
    shard: str
    offset: int
    size: int
    pid: int
    camid: int
    model_id: int
    split: str


def _summary_line(root: Path, shards: Iterable[ShardInfo], counts: Mapping[str, int]) -> str:
    shards = tuple(shards)
    parts = []
    for split in SPLITS:
        if counts.get(split):
            n = sum(1 for s in shards if s.split == split)
            parts.append(f"{split} {counts[split]} samples/{n} shards")
    total = sum(s.bytes for s in shards)
    return f"{', '.join(parts) or 'no samples'}; {total} bytes in {root}"


@dataclass(frozen=True)
class ShardsSummary:
    """What :func:`write_shards` wrote: O(number of shards), not O(samples).

    Use ``ShardsIndex.load(summary.root)`` for per-sample access.

    Attributes:
        root: the shards folder.
        dataset: dataset name written to ``shards.json``.
        target_bytes: the ``target_bytes`` the shards were written with.
        shards: every shard, in split order then shard number.
        samples: split -> number of samples, for the splits that have rows (``SPLITS`` order).
        bytes: total size of the tar files in bytes.
    """

    root: Path
    dataset: str
    target_bytes: int
    shards: tuple[ShardInfo, ...]
    samples: Mapping[str, int]
    bytes: int

    def splits(self) -> tuple[str, ...]:
        """Splits that have samples, in ``SPLITS`` order."""
        return tuple(s for s in SPLITS if self.samples.get(s))

    def __len__(self) -> int:
        return sum(self.samples.values())

    def summary(self) -> str:
        """One line for logs, e.g. ``train 26 samples/4 shards, query ... ; 163840 bytes in <root>``
        (the same line as :meth:`ShardsIndex.summary`)."""
        return _summary_line(self.root, self.shards, self.samples)


# --------------------------------------------------------------------------------------------
# tar headers


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """The header of one member: what webdataset's ``TarWriter(user="root", group="root",
    mode=0o444, mtime=0)`` writes (uid/gid 0, regular file), so tars stay byte-identical."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = _MODE
    ti.uname = _OWNER
    ti.gname = _OWNER
    return ti


def _tarfile_header(name: str, size: int) -> bytes:
    """The header block(s) of a member as ``tarfile`` writes them (PAX format: USTAR, preceded by
    a PAX extended header when a field does not fit USTAR)."""
    return _tarinfo(name, size).tobuf(_TAR_FORMAT, tarfile.ENCODING, "surrogateescape")


# The USTAR block tarfile writes for these fixed fields, cut around the two fields that vary
# (name: bytes 0-99, size: 124-135) and the checksum (148-155). Taken from tarfile itself.
_USTAR_NAME = 100  # bytes of the name field (tarfile.LENGTH_NAME)
_USTAR_SIZE_LIMIT = 8 ** 11  # the size field holds 11 octal digits + NUL
_TEMPLATE = _tarfile_header("", 0)
assert len(_TEMPLATE) == _BLOCK
_MODE_UID_GID = _TEMPLATE[100:124]
_MTIME = _TEMPLATE[136:148]
_AFTER_CHKSUM = _TEMPLATE[156:]  # type flag, linkname, magic, uname, gname, devices, prefix
# tarfile's checksum: 256 (the checksum field counted as 8 spaces) + every other header byte.
_CHKSUM_BASE = 8 * ord(" ") + sum(_MODE_UID_GID) + sum(_MTIME) + sum(_AFTER_CHKSUM)
_NULS = bytes(_USTAR_NAME)


def _fits_ustar(name: str, size: int) -> bool:
    """Whether tarfile (PAX format) writes this member with a lone USTAR block: an ASCII name of
    at most 100 characters and a size below 8 GiB (11 octal digits)."""
    return len(name) <= _USTAR_NAME and name.isascii() and 0 <= size < _USTAR_SIZE_LIMIT


def _header(name: str, size: int) -> bytes:
    """The header block(s) of a regular-file member ``name`` of ``size`` bytes, byte-identical to
    ``tarfile.TarInfo.tobuf(PAX_FORMAT)`` with the fixed fields of :func:`_tarinfo`.

    A member that fits USTAR (see :func:`_fits_ustar`) gets one 512-byte block built from a
    template (name, size and checksum patched in, ~1 µs); any other goes through ``tarfile``
    (a PAX extended header, then the USTAR block).
    """
    if not _fits_ustar(name, size):
        return _tarfile_header(name, size)
    raw = name.encode("ascii")
    size_field = b"%011o\0" % size
    chksum = _CHKSUM_BASE + sum(raw) + sum(size_field)
    return b"".join((raw, _NULS[len(raw):], _MODE_UID_GID, size_field, _MTIME,
                     b"%06o\0 " % chksum, _AFTER_CHKSUM))


def _header_len(name: str, size: int) -> int:
    """``len(_header(name, size))`` in bytes, without building the common 512-byte case."""
    return _BLOCK if _fits_ustar(name, size) else len(_tarfile_header(name, size))


def _tar_file_bytes(member_bytes: int) -> int:
    """Final tar file size for members totalling ``member_bytes``: end blocks + record padding."""
    return _round_up(member_bytes + 2 * _BLOCK, _RECORD)


def _labels_json(row: Row) -> bytes:
    """The ``<key>.json`` member: compact, key-sorted JSON of the row's labels (UTF-8 bytes),
    exactly ``json.dumps(labels, sort_keys=True, separators=(",", ":"))``."""
    key, relpath, pid, camid, model_id, split = row.key, row.relpath, row.pid, row.camid, row.model_id, row.split
    if type(pid) is int and type(camid) is int and type(model_id) is int \
            and type(key) is str and type(relpath) is str and type(split) is str:
        # What json.dumps writes for exact ints and strs (ensure_ascii: its own string encoder).
        return ('{"camid":%d,"key":%s,"model_id":%d,"pid":%d,"relpath":%s,"split":%s}' % (
            camid, _json_str(key), model_id, pid, _json_str(relpath), _json_str(split))).encode("ascii")
    obj = {"key": key, "relpath": relpath, "pid": pid, "camid": camid, "model_id": model_id, "split": split}
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------
# writing one shard (in a worker process, or in-process with workers=1)


class _Planned(NamedTuple):
    """One sample of a planned shard, as sent to the writer."""

    key: str
    relpath: str
    size: int  # jpg bytes, from os.stat at planning time
    labels: bytes  # the .json member
    pid: int
    camid: int
    model_id: int


class _Job(NamedTuple):
    """One planned shard: ``<out_dir>/<split>-<number:06d>.tar`` holding ``samples`` in order."""

    out_dir: str
    images_root: str
    split: str
    number: int
    samples: list[_Planned]
    planned_bytes: int  # the tar file size the plan expects


class _Written(NamedTuple):
    """A written shard: its record (``record_json`` is its exact text in ``shards.json``)."""

    info: ShardInfo
    record_json: str


def _image_error(images_root: str | Path, split: str, key: str, relpath: str, what: str) -> ShardsError:
    return ShardsError(f"cannot read image of sample {key!r} (split {split}): "
                       f"{Path(images_root) / relpath}: {what}")


def _read_image(job: _Job, s: _Planned) -> bytes:
    path = os.path.join(job.images_root, s.relpath)
    try:
        with open(path, "rb", buffering=0) as fh:
            data = fh.readall()
    except OSError as err:
        raise _image_error(job.images_root, job.split, s.key, s.relpath,
                           err.strerror or type(err).__name__) from err
    if len(data) != s.size:
        raise ShardsError(
            f"image of sample {s.key!r} (split {job.split}) changed while sharding: "
            f"{Path(job.images_root) / s.relpath}: {len(data)} bytes, {s.size} when the shards were planned"
        )
    return data


_ZEROS = bytes(_RECORD)


class _ShardFile:
    """A tar written sample by sample into an atomic temp file (fsync + rename on commit).

    Keeps the running offset, the SHA-256 of everything written, the DALI index lines and the
    ``shards.json`` sample entries, so nothing has to be read back. Writes go out in pieces of
    about ``_WRITE_CHUNK`` bytes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cm = atomic_open(path, "wb")
        self._fh: IO[bytes] = self._cm.__enter__()
        self._sha = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._lines: list[str] = [""]  # [0]: the header line, filled in on commit
        self.entries: list[list] = []  # [key, jpg offset, jpg size, pid, camid, model_id]
        self.member_bytes = 0  # = current offset in the tar

    def _put(self, *parts: bytes) -> None:
        self._pending.extend(parts)
        self._pending_bytes += sum(map(len, parts))
        if self._pending_bytes >= _WRITE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        buf = b"".join(self._pending)
        self._fh.write(buf)
        self._sha.update(buf)
        self._pending.clear()
        self._pending_bytes = 0

    def add(self, s: _Planned, jpg: bytes) -> None:
        """Append ``<key>.jpg`` (``jpg``) then ``<key>.json`` (``s.labels``), WebDataset's order."""
        key, labels = s.key, s.labels
        jpg_head = _header(f"{key}.jpg", len(jpg))
        json_head = _header(f"{key}.json", len(labels))
        at = self.member_bytes
        jpg_at = at + len(jpg_head)
        jpg_end = jpg_at + _round_up(len(jpg), _BLOCK)
        json_at = jpg_end + len(json_head)
        self._put(jpg_head, jpg, _ZEROS[: -len(jpg) % _BLOCK], json_head, labels,
                  _ZEROS[: -len(labels) % _BLOCK])
        self.member_bytes = json_at + _round_up(len(labels), _BLOCK)
        self._lines.append(f"jpg {jpg_at} {len(jpg)} {key}.jpg json {json_at} {len(labels)} {key}.json")
        self.entries.append([key, jpg_at, len(jpg), s.pid, s.camid, s.model_id])

    def commit(self) -> tuple[int, str, str]:
        """End the tar like tarfile (two zero blocks, zero-padded to a 10240-byte record), fsync
        and rename it; return ``(file size, sha256 hex, DALI index text)``."""
        size = _tar_file_bytes(self.member_bytes)
        self._put(bytes(size - self.member_bytes))
        self._flush()
        self._cm.__exit__(None, None, None)  # flush + fsync + rename onto self.path
        self._lines[0] = f"{INDEX_VERSION} {len(self.entries)}"
        return size, self._sha.hexdigest(), "\n".join(self._lines) + "\n"

    def abort(self, err: BaseException) -> None:
        self._cm.__exit__(type(err), err, err.__traceback__)  # removes the temp file


def _write_shard(job: _Job) -> _Written:
    """Read a planned shard's images and write its tar and .idx (each atomically).

    Runs in a worker process (or in-process for ``workers=1``); every error is raised with the
    same message either way.

    Raises:
        ShardsError: an image is unreadable, or its size differs from the planned size (it
            changed while sharding); names the image path. Nothing of this shard is left behind.
    """
    path = Path(job.out_dir) / f"{job.split}-{job.number:06d}.tar"
    shard = _ShardFile(path)
    try:
        for s in job.samples:
            shard.add(s, _read_image(job, s))
    except BaseException as err:
        shard.abort(err)
        raise
    size, digest, index = shard.commit()
    actual = path.stat().st_size
    if actual != size or size != job.planned_bytes:  # the file on disk is not what was planned/written
        raise ShardsError(f"{path}: is {actual} bytes after writing, planned {job.planned_bytes}")
    index_path = path.with_suffix(".idx")
    atomic_write_text(index_path, index)
    record = {
        "bytes": size,
        "count": len(shard.entries),
        "index": index_path.name,
        "name": path.name,
        "samples": shard.entries,
        "sha256": digest,
        "split": job.split,
    }
    info = ShardInfo(path.name, job.split, len(shard.entries), size, digest, index_path.name)
    return _Written(info, json.dumps(record, sort_keys=True, separators=(",", ":")))


# --------------------------------------------------------------------------------------------
# planning (main process)


def _check_key(row: Row, dataset: str) -> None:
    if not (type(row.key) is str and _KEY_OK.fullmatch(row.key)):
        raise ShardsError(
            f"manifest {dataset!r}: key {row.key!r} must match [A-Za-z0-9_-]+ "
            "(see reid.data.manifest.key_from_relpath)"
        )


def _plan_split(rows: Iterable[Row], split: str, dataset: str, images_root: Path, out_dir: Path,
                target_bytes: int) -> Iterator[_Job]:
    """Cut one split's rows (in order) into shards by the sharding rule, from each image's
    ``os.stat`` size and its exact footprint in the tar; yield one :class:`_Job` per shard.

    Holds one shard's rows at a time.

    Raises:
        ShardsError: a key is not ``[A-Za-z0-9_-]+``, or an image is missing or not a regular
            file (names the path).
    """
    root = str(images_root)
    number = 0
    samples: list[_Planned] = []
    member_bytes = 0
    for row in rows:
        key = row.key
        _check_key(row, dataset)
        try:
            st = os.stat(os.path.join(root, row.relpath))
        except OSError as err:
            raise _image_error(images_root, split, key, row.relpath,
                               err.strerror or type(err).__name__) from err
        if not stat.S_ISREG(st.st_mode):
            raise _image_error(images_root, split, key, row.relpath, "not a regular file")
        size = st.st_size
        labels = _labels_json(row)
        nbytes = (_header_len(f"{key}.jpg", size) + _round_up(size, _BLOCK)
                  + _header_len(f"{key}.json", len(labels)) + _round_up(len(labels), _BLOCK))
        if samples and _tar_file_bytes(member_bytes + nbytes) > target_bytes:
            yield _Job(str(out_dir), root, split, number, samples, _tar_file_bytes(member_bytes))
            number += 1
            samples, member_bytes = [], 0
        samples.append(_Planned(key, row.relpath, size, labels, row.pid, row.camid, row.model_id))
        member_bytes += nbytes
    if samples:
        yield _Job(str(out_dir), root, split, number, samples, _tar_file_bytes(member_bytes))


def _csv_splits(path: Path) -> Iterator[tuple[str, Iterator[Row]]]:
    """``(split, its rows in file order)`` for each split with rows, in ``SPLITS`` order, streamed
    from a manifest CSV: one pass for the first split (which also notes the other splits
    present), then one filtered pass per other split present. Each row iterator must be
    exhausted before the next pair is requested."""
    present: set[str] = set()
    first = SPLITS[0]

    def first_pass() -> Iterator[Row]:
        for row in iter_rows(path):
            if row.split == first:
                yield row
            else:
                present.add(row.split)

    yield first, first_pass()
    for split in SPLITS[1:]:
        if split in present:
            yield split, iter_rows(path, splits=(split,))


def _manifest_splits(manifest: Manifest) -> Iterator[tuple[str, Iterator[Row]]]:
    present = {r.split for r in manifest.rows}
    for split in SPLITS:
        if split in present:
            yield split, (r for r in manifest.rows if r.split == split)


def _written_in_order(jobs: Iterable[_Job], workers: int) -> Iterator[_Written]:
    """Write ``jobs`` and yield their results in job order. ``workers == 1``: in this process;
    else a process pool with at most ``2 * workers`` shards in flight (planned or being written),
    so memory stays bounded however many shards there are."""
    if workers == 1:
        for job in jobs:
            yield _write_shard(job)
        return
    with cf.ProcessPoolExecutor(workers) as pool:
        pending: collections.deque[cf.Future] = collections.deque()
        try:
            for job in jobs:
                while len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(_write_shard, job))
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def write_shards(
    source: Manifest | str | Path,
    images_root: str | Path,
    out_dir: str | Path,
    target_bytes: int,
    workers: int = 1,
    dataset: str | None = None,
) -> ShardsSummary:
    """Write a manifest's images as WebDataset tar shards with DALI indexes and ``shards.json``.

    Args:
        source: the rows to write: a :class:`Manifest`, or the path of a manifest CSV (written by
            ``Manifest.write``), streamed with :func:`reid.data.manifest.iter_rows` (one pass
            per split present, never holding all rows). Each split with rows is written in
            manifest order to its own shards.
        images_root: folder that ``Row.relpath`` is relative to.
        out_dir: output folder (created). See the module docstring for every file's format.
        target_bytes: maximum size in bytes of a tar file (see the sharding rule in the module
            docstring); must be a positive int.
        workers: processes that read images and write tars (int >= 1; 1 = in this process, no
            pool). The output is byte-identical for any value.
        dataset: dataset name for ``shards.json`` with a CSV ``source`` (default: the file's stem,
            as ``Manifest.read``); ignored for a ``Manifest`` (its own name is used).

    This process streams the rows, ``os.stat``-s each image and plans the shards (sizes known
    before reading); each planned shard goes to a worker, which reads its images and writes the
    tar and ``.idx``; results come back in shard order and are appended to ``shards.json``.
    Memory is bounded by ``2 * workers`` shards in flight, whatever the number of rows.
    Every file is written to a temp file, fsynced and renamed. An existing ``shards.json`` is
    removed before any tar is written and the new one is renamed into place last.
    ``<split>-NNNNNN.tar``/``.idx`` files in ``out_dir`` that are not part of the new set are
    removed (other files are kept).

    Duplicate keys: a ``Manifest`` rejects them itself; a CSV is not checked here (that needs
    every key in memory) — ``prepare`` writes manifests with unique keys, and
    :meth:`ShardsIndex.load` rejects a ``shards.json`` that repeats a key.

    Returns:
        A :class:`ShardsSummary` (shard list, per-split counts, total bytes); use
        ``ShardsIndex.load(out_dir)`` for per-sample access.

    Raises:
        ShardsError: an image is missing/unreadable/not a regular file, or changed size between
            planning and writing (names its path), or a sample key is not ``[A-Za-z0-9_-]+``
            (WebDataset groups members by the name before the first dot); also when raised in a
            worker (same message). With a ``Manifest`` the keys are checked before anything is
            written; with a CSV, as rows stream (earlier tars may then exist, but no
            ``shards.json``).
        ManifestError: the CSV is malformed (names the file and line).
        ValueError: ``target_bytes`` or ``workers`` is not a positive int.
    """
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, int) or target_bytes <= 0:
        raise ValueError(f"target_bytes must be a positive int (bytes), got {target_bytes!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (processes), got {workers!r}")
    images_root = Path(images_root)
    out_dir = Path(out_dir)
    if isinstance(source, Manifest):
        name = source.dataset
        for row in source.rows:
            _check_key(row, name)
        splits = _manifest_splits(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ShardsError(f"manifest {path}: no such file")
        name = dataset if dataset is not None else path.stem
        splits = _csv_splits(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARDS_JSON).unlink(missing_ok=True)

    jobs = (job for split, rows in splits
            for job in _plan_split(rows, split, name, images_root, out_dir, target_bytes))
    shards: list[ShardInfo] = []
    totals: dict[str, dict[str, int]] = {}
    with atomic_open(out_dir / SHARDS_JSON, "w") as catalogue:
        # json.dumps(doc, sort_keys=True, separators=(",", ":")) written piecewise: the keys
        # before "shards", the shard records as they come, then the keys after it.
        head = json.dumps({"dataset": name, "format": FORMAT_NAME}, sort_keys=True, separators=(",", ":"))
        catalogue.write(head[:-1] + ',"shards":[')
        catalogue.flush()  # nothing buffered when worker processes fork
        for written in _written_in_order(jobs, workers):
            if shards:
                catalogue.write(",")
            catalogue.write(written.record_json)
            info = written.info
            shards.append(info)
            t = totals.setdefault(info.split, {"bytes": 0, "samples": 0, "shards": 0})
            t["bytes"] += info.bytes
            t["samples"] += info.count
            t["shards"] += 1

        keep = {s.name for s in shards} | {s.index for s in shards}
        for p in sorted(out_dir.iterdir()):
            if _SHARD_FILE.match(p.name) and p.name not in keep and p.is_file():
                p.unlink()
        tail = json.dumps({"splits": totals, "target_bytes": target_bytes, "version": FORMAT_VERSION},
                          sort_keys=True, separators=(",", ":"))
        catalogue.write("]," + tail[1:] + "\n")
    return ShardsSummary(
        root=out_dir,
        dataset=name,
        target_bytes=target_bytes,
        shards=tuple(shards),
        samples={s: totals[s]["samples"] for s in SPLITS if s in totals},
        bytes=sum(s.bytes for s in shards),
    )


# --------------------------------------------------------------------------------------------
# re-deriving from the tars (ShardsIndex.verify)


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset/DALI grouping: basename up to the first dot after the last slash."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def _scan_tar(path: Path) -> list[list[tuple[str, int, int, str]]]:
    """Regular-file members grouped into samples: ``[[(ext, data_offset, size, name), ...]]``."""
    samples: list[list[tuple[str, int, int, str]]] = []
    last = None
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isreg():
                    continue
                base, ext = _split_name(m.name)
                if base != last:
                    samples.append([])
                    last = base
                samples[-1].append((ext, m.offset_data, m.size, m.name))
    except (OSError, tarfile.TarError) as err:
        raise ShardsError(f"cannot read tar {path}: {err}") from err
    return samples


def _index_text(samples: list[list[tuple[str, int, int, str]]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for comps in samples:
        lines.append(" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in comps))
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# reading


class _Handle:
    __slots__ = ("fd", "refs", "retired")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 0
        self.retired = False


class _HandleCache:
    """An LRU of read-only file descriptors, safe to share between threads.

    Reads use ``os.pread`` (no shared file position). A descriptor evicted while another thread
    is reading from it is closed only when that read finishes. After ``fork`` the child starts
    with an empty cache (inherited descriptors are left to the parent).
    """

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Handle] = OrderedDict()

    def pread(self, path: str, size: int, offset: int) -> bytes:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            h = self._open.get(path)
            if h is None:
                h = _Handle(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
                self._open[path] = h
                while len(self._open) > self.max_open:
                    _, old = self._open.popitem(last=False)
                    old.retired = True
                    if old.refs == 0:
                        os.close(old.fd)
            else:
                self._open.move_to_end(path)
            h.refs += 1
        try:
            return os.pread(h.fd, size, offset)
        finally:
            with self._lock:
                h.refs -= 1
                if h.retired and h.refs == 0:
                    os.close(h.fd)

    def close(self) -> None:
        with self._lock:
            for h in self._open.values():
                h.retired = True
                if h.refs == 0:
                    os.close(h.fd)
            self._open.clear()


def _fail(json_path: Path, what: str) -> ShardsError:
    return ShardsError(f"{json_path}: {what}")


@dataclass(frozen=True, eq=False)
class ShardsIndex:
    """A loaded, validated shards folder (see the module docstring for the file formats).

    Build with :meth:`load` (after :func:`write_shards`). Thread-safe for reading:
    :meth:`read_jpeg` uses ``os.pread`` on a small LRU of open file descriptors
    (``max_open_files``); call :meth:`close` to release them. Picklable (the descriptor cache
    is not pickled), so it can be handed to DataLoader workers.

    Attributes:
        root: the shards folder.
        dataset: dataset name from the manifest.
        target_bytes: the ``target_bytes`` the shards were written with.
        shards: every shard, in split order then shard number.
    """

    root: Path
    dataset: str
    target_bytes: int
    shards: tuple[ShardInfo, ...]
    _samples: Mapping[str, _Entry] = field(repr=False)
    _keys: Mapping[str, tuple[str, ...]] = field(repr=False)
    max_open_files: int = 16
    _handles: _HandleCache = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_handles", _HandleCache(self.max_open_files))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_handles")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_handles", _HandleCache(self.max_open_files))

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, out_dir: str | Path, max_open_files: int = 16) -> "ShardsIndex":
        """Load and validate ``out_dir/shards.json`` (format version 2, see the module docstring).

        Checks the JSON structure, that every shard's tar and idx exist, that each tar's size
        equals its recorded ``bytes``, that each shard's sample list matches its ``count`` and
        lies inside the tar in increasing order, that no key appears twice, and that the
        ``splits`` totals add up. Does not hash (see :meth:`verify`).

        Raises:
            ShardsError: naming ``shards.json`` and the missing or inconsistent piece; for a
                ``shards.json`` of another format version, asking to re-run the shard stage.
        """
        root = Path(out_dir)
        jp = root / SHARDS_JSON
        try:
            doc = json.loads(jp.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _fail(jp, "missing (write the shards with reid.data.shards.write_shards)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _fail(jp, f"unreadable or not JSON: {err}") from err
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise _fail(jp, f"not a {FORMAT_NAME!r} file")
        if doc.get("version") != FORMAT_VERSION:
            raise _fail(jp, f"format version {doc.get('version')!r}, this code reads version {FORMAT_VERSION}: "
                            "re-run the shard stage to rewrite the shards (dvc repro shard@<dataset>, "
                            "or reid.data.shards.write_shards)")
        for name, typ in (("dataset", str), ("target_bytes", int), ("shards", list), ("splits", dict)):
            if not isinstance(doc.get(name), typ):
                raise _fail(jp, f"field {name!r} missing or not a {typ.__name__}")

        shards: list[ShardInfo] = []
        samples: dict[str, _Entry] = {}
        keys: dict[str, list[str]] = {}
        totals: dict[str, dict[str, int]] = {}
        for i, rec in enumerate(doc["shards"]):
            try:
                info = ShardInfo(**{f: rec[f] for f in ShardInfo.__dataclass_fields__})
                entries = rec["samples"]
            except (KeyError, TypeError) as err:
                raise _fail(jp, f"shards[{i}] malformed: {err!r}") from None
            if info.split not in SPLITS or type(info.count) is not int or type(info.bytes) is not int:
                raise _fail(jp, f"shards[{i}] ({info.name!r}) has a bad split/count/bytes")
            for fname in (info.name, info.index):
                if not isinstance(fname, str) or "/" in fname or fname in ("", ".", ".."):
                    raise _fail(jp, f"shards[{i}] has a bad file name {fname!r}")
            if not isinstance(entries, list) or len(entries) != info.count:
                got = len(entries) if isinstance(entries, list) else "no"
                raise _fail(jp, f"shard {info.name} records count {info.count} but its samples list has {got} entries")
            tar = root / info.name
            if not tar.is_file():
                raise _fail(jp, f"shard {info.name} is missing ({tar})")
            if not (root / info.index).is_file():
                raise _fail(jp, f"index {info.index} of shard {info.name} is missing ({root / info.index})")
            size = tar.stat().st_size
            if size != info.bytes:
                raise _fail(jp, f"shard {info.name} is {size} bytes, recorded {info.bytes} (corrupt or rewritten)")
            split_keys = keys.setdefault(info.split, [])
            end = 0  # samples are in tar order: each jpg starts after the previous one ends
            for entry in entries:
                if not isinstance(entry, list) or len(entry) != _SAMPLE_FIELDS or not isinstance(entry[0], str):
                    raise _fail(jp, f"shard {info.name}: sample {entry!r} must be a list of {_SAMPLE_FIELDS} "
                                    "fields [key, offset, size, pid, camid, model_id]")
                key, offset, jsize, pid, camid, model_id = entry
                if not all(type(v) is int for v in (offset, jsize, pid, camid, model_id)) \
                        or offset < end or jsize < 0 or offset + jsize > info.bytes:
                    raise _fail(jp, f"shard {info.name}: sample {key!r} has bad offset/size/labels {entry!r}")
                if key in samples:
                    raise _fail(jp, f"sample key {key!r} appears twice ({samples[key].shard} and {info.name})")
                end = offset + jsize
                samples[key] = _Entry(info.name, offset, jsize, pid, camid, model_id, info.split)
                split_keys.append(key)
            t = totals.setdefault(info.split, {"bytes": 0, "samples": 0, "shards": 0})
            t["bytes"] += info.bytes
            t["samples"] += info.count
            t["shards"] += 1
            shards.append(info)
        if len({s.name for s in shards}) != len(shards):
            raise _fail(jp, "duplicate shard names")
        if doc["splits"] != totals:
            raise _fail(jp, f"splits {doc['splits']!r} do not match the shard list (which adds up to {totals!r})")
        return cls(
            root=root,
            dataset=doc["dataset"],
            target_bytes=doc["target_bytes"],
            shards=tuple(shards),
            _samples=samples,
            _keys={s: tuple(v) for s, v in keys.items() if v},
            max_open_files=max_open_files,
        )

    # -- queries ------------------------------------------------------------------------------

    def splits(self) -> tuple[str, ...]:
        """Splits that have samples, in ``SPLITS`` order."""
        return tuple(s for s in SPLITS if s in self._keys)

    def shard_paths(self, split: str) -> list[Path]:
        """Tar paths of one split, in shard order (empty for a split without rows)."""
        return [self.root / s.name for s in self.shards if s.split == split]

    def index_paths(self, split: str) -> list[Path]:
        """DALI ``.idx`` paths of one split, aligned with :meth:`shard_paths`."""
        return [self.root / s.index for s in self.shards if s.split == split]

    def keys(self, split: str) -> list[str]:
        """Sample keys of one split in shard order (= tar order = manifest order).

        Raises ``ValueError`` for an unknown split name; an empty split gives ``[]``.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return list(self._keys.get(split, ()))

    def pids(self, split: str) -> list[int]:
        """pids aligned with :meth:`keys` (handy for :class:`reid.data.samplers.PKSampler`)."""
        return [self._samples[k].pid for k in self.keys(split)]

    def _entry(self, key: str) -> _Entry:
        try:
            return self._samples[key]
        except KeyError:
            raise KeyError(f"sample key {key!r} is not in {self.root / SHARDS_JSON}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._samples

    def __len__(self) -> int:
        return len(self._samples)

    def labels(self, key: str) -> dict[str, Any]:
        """Labels of a sample: a new dict ``{"key", "pid", "camid", "model_id", "split"}``.

        Same values as the sample's ``.json`` member, without ``relpath`` (not kept in
        ``shards.json``). Raises ``KeyError`` for an unknown key.
        """
        e = self._entry(key)
        return {"key": key, "pid": e.pid, "camid": e.camid, "model_id": e.model_id, "split": e.split}

    def location(self, key: str) -> tuple[str, int, int]:
        """``(tar name, jpg data offset, jpg size)`` of a sample, offsets/sizes in bytes."""
        e = self._entry(key)
        return e.shard, e.offset, e.size

    def read_jpeg(self, key: str) -> bytes:
        """The image bytes of a sample, read at its recorded offset (no tar parsing).

        Safe to call from several threads at once.

        Raises:
            KeyError: unknown key.
            ShardsError: the tar cannot be opened or is shorter than recorded (names the tar).
        """
        e = self._entry(key)
        path = self.root / e.shard
        try:
            data = self._handles.pread(str(path), e.size, e.offset)
        except OSError as err:
            raise ShardsError(f"cannot read sample {key!r} from {path}: {err}") from err
        if len(data) != e.size:
            raise ShardsError(
                f"{path}: short read for sample {key!r} ({len(data)} of {e.size} bytes at {e.offset})"
            )
        return data

    def summary(self) -> str:
        """One line for logs, e.g. ``train 26 samples/4 shards, query ... ; 163840 bytes in <root>``."""
        return _summary_line(self.root, self.shards, {s: len(k) for s, k in self._keys.items()})

    def close(self) -> None:
        """Close the cached file descriptors (reads after this reopen them)."""
        self._handles.close()

    def __enter__(self) -> "ShardsIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        for split in self.splits():
            yield from self._keys[split]

    # -- verification -------------------------------------------------------------------------

    def verify(self) -> None:
        """Re-hash every tar and re-derive every index and sample offset from the tars.

        Raises:
            ShardsError: listing every shard whose sha256, members, ``.idx`` content or
                recorded jpg offsets/sizes do not match (names ``shards.json`` and the files).
        """
        problems: list[str] = []
        for info in self.shards:
            tar = self.root / info.name
            try:
                digest = _sha256(tar)
            except OSError as err:
                problems.append(f"{tar}: unreadable ({err})")
                continue
            if digest != info.sha256:
                problems.append(f"{tar}: sha256 {digest} != recorded {info.sha256}")
                continue
            try:
                scanned = _scan_tar(tar)
            except ShardsError as err:
                problems.append(str(err))
                continue
            idx = self.root / info.index
            try:
                idx_ok = idx.read_text(encoding="ascii") == _index_text(scanned)
            except (OSError, UnicodeDecodeError):
                idx_ok = False
            if not idx_ok:
                problems.append(f"{idx}: does not match the {INDEX_VERSION} index of {info.name}")
            if len(scanned) != info.count:
                problems.append(f"{tar}: {len(scanned)} samples, recorded {info.count}")
            for comps in scanned:
                key = _split_name(comps[0][3])[0]
                jpg = next((c for c in comps if c[0] == "jpg"), None)
                e = self._samples.get(key)
                if jpg is None or e is None or e.shard != info.name or (e.offset, e.size) != jpg[1:3]:
                    problems.append(f"{tar}: sample {key!r} does not match its shards.json entry")
        if problems:
            head = f"{self.root / SHARDS_JSON}: verification failed:\n  "
            raise ShardsError(head + "\n  ".join(problems))
