"""WebDataset shards of a :class:`~reid.data.manifest.Manifest`, with DALI index files.

:func:`write_shards` turns a manifest plus its image folder into a folder of shards;
:class:`ShardsIndex` loads, validates and randomly reads that folder.

Files in ``out_dir`` (all sizes and offsets are in bytes):

``<split>-<NNNNNN>.tar`` (``split`` in ``train``, ``query``, ``gallery``; ``NNNNNN`` from ``000000``)
    An uncompressed POSIX tar (PAX format; a PAX extended header only appears for a member name
    over 100 characters) in WebDataset layout. Samples appear in manifest order; each sample is
    two regular-file members, in this order:

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

``shards.json``
    The catalogue, compact JSON with sorted keys::

        {"format": "reid-wds-shards", "version": 1, "dataset": <manifest.dataset>,
         "target_bytes": <int>,
         "shards": [{"name": "train-000000.tar", "split": "train", "count": <samples>,
                     "bytes": <tar file size>, "sha256": <hex of the tar>,
                     "index": "train-000000.idx"}, ...],          # split order, then number
         "splits": {"train": {"shards": <n>, "samples": <n>, "bytes": <sum of tar sizes>}, ...},
         "samples": {<key>: [<shard name>, <jpg data offset>, <jpg size>,
                             <pid>, <camid>, <model_id>, <split>], ...}}

    ``splits`` lists only splits that have rows. ``shards.json`` is written last (and the old one
    is removed first), so a run that crashes leaves either no ``shards.json`` or one whose tars
    all exist.

Sharding rule: a split's samples fill ``<split>-000000.tar`` in manifest order; a new shard is
started when adding the next sample would make the tar file (padding included) larger than
``target_bytes``. A shard always holds at least one sample, so a single sample larger than
``target_bytes`` gets a shard of its own (the only case where a tar exceeds the target).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, NamedTuple

from reid.data.manifest import SPLITS, Manifest, Row
from reid.io import atomic_open, atomic_write_text

__all__ = [
    "INDEX_VERSION",
    "SHARDS_JSON",
    "ShardInfo",
    "ShardsError",
    "ShardsIndex",
    "write_shards",
]

SHARDS_JSON = "shards.json"
FORMAT_NAME = "reid-wds-shards"
FORMAT_VERSION = 1
INDEX_VERSION = "v1.2"  # DALI wds2idx index format version written to every .idx

_OWNER = "root"
_MODE = 0o444
_TAR_FORMAT = tarfile.PAX_FORMAT
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240
_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_SHARD_FILE = re.compile(r"^(?:%s)-[0-9]{6}\.(?:tar|idx)$" % "|".join(SPLITS))
_SAMPLE_FIELDS = 7
_HASH_CHUNK = 1 << 20


class ShardsError(ValueError):
    """A shards folder is missing, corrupt or inconsistent, or an input image is unreadable.

    The message names the file concerned (``shards.json``, the tar/idx, or the image path).
    """


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard as recorded in ``shards.json``.

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


# --------------------------------------------------------------------------------------------
# writing


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


def _header(name: str, size: int) -> bytes:
    """The header block(s) of a member, exactly as ``tarfile`` writes them (PAX format: USTAR,
    preceded by a PAX extended header only when ``name`` is over 100 characters)."""
    return _tarinfo(name, size).tobuf(_TAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def _tar_file_bytes(member_bytes: int) -> int:
    """Final tar file size for members totalling ``member_bytes``: end blocks + record padding."""
    return _round_up(member_bytes + 2 * _BLOCK, _RECORD)


def _labels_json(row: Row) -> bytes:
    obj = {
        "key": row.key,
        "relpath": row.relpath,
        "pid": row.pid,
        "camid": row.camid,
        "model_id": row.model_id,
        "split": row.split,
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _read_image(images_root: Path, row: Row) -> bytes:
    path = images_root / row.relpath
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ShardsError(
            f"cannot read image of sample {row.key!r} (split {row.split}): {path}: {reason}"
        ) from err


_ZEROS = bytes(_RECORD)


class _Sample(NamedTuple):
    """One sample ready to write: its bytes (headers, data, padding) and where its data lies."""

    key: str
    parts: tuple[bytes, ...]  # jpg header, jpg, pad, json header, json, pad
    nbytes: int  # bytes the two members occupy in the tar (headers + padded data)
    jpg_at: int  # offset of the jpg data from the sample's start
    json_at: int  # offset of the json data from the sample's start
    jpg_size: int
    json_size: int


def _sample(key: str, jpg: bytes, labels: bytes) -> _Sample:
    """Lay out one sample's two members (``<key>.jpg`` then ``<key>.json``, as TarWriter's sorted
    extension order), each header built once; sizes and offsets follow from it."""
    jpg_head = _header(f"{key}.jpg", len(jpg))
    json_head = _header(f"{key}.json", len(labels))
    jpg_pad = _ZEROS[: -len(jpg) % _BLOCK]
    json_pad = _ZEROS[: -len(labels) % _BLOCK]
    jpg_at = len(jpg_head)
    json_at = jpg_at + len(jpg) + len(jpg_pad) + len(json_head)
    nbytes = json_at + len(labels) + len(json_pad)
    return _Sample(key, (jpg_head, jpg, jpg_pad, json_head, labels, json_pad), nbytes,
                   jpg_at, json_at, len(jpg), len(labels))


class _ShardFile:
    """A tar written member by member into an atomic temp file (fsync + rename on commit).

    Keeps the running offset, the SHA-256 of everything written and the DALI index lines, so
    nothing has to be read back.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cm = atomic_open(path, "wb")
        self._fh: IO[bytes] = self._cm.__enter__()
        self._sha = hashlib.sha256()
        self.keys: list[str] = []
        self.jpg_offsets: list[int] = []
        self.jpg_sizes: list[int] = []
        self._lines: list[str] = []
        self.member_bytes = 0  # = current offset in the tar

    def add(self, s: _Sample) -> None:
        buf = b"".join(s.parts)
        self._fh.write(buf)
        self._sha.update(buf)
        at = self.member_bytes
        self.keys.append(s.key)
        self.jpg_offsets.append(at + s.jpg_at)
        self.jpg_sizes.append(s.jpg_size)
        self._lines.append(
            f"jpg {at + s.jpg_at} {s.jpg_size} {s.key}.jpg json {at + s.json_at} {s.json_size} {s.key}.json"
        )
        self.member_bytes = at + s.nbytes

    def commit(self) -> tuple[int, str, str]:
        """End the tar like tarfile (two zero blocks, zero-padded to a 10240-byte record), fsync
        and rename it; return ``(file size, sha256 hex, DALI index text)``."""
        size = _tar_file_bytes(self.member_bytes)
        tail = bytes(size - self.member_bytes)
        self._fh.write(tail)
        self._sha.update(tail)
        self._cm.__exit__(None, None, None)  # flush + fsync + rename onto self.path
        index = "\n".join([f"{INDEX_VERSION} {len(self.keys)}", *self._lines]) + "\n"
        return size, self._sha.hexdigest(), index

    def abort(self, err: BaseException) -> None:
        self._cm.__exit__(type(err), err, err.__traceback__)  # removes the temp file


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


def _finish_shard(shard: _ShardFile, split: str, rows: Mapping[str, Row]) -> tuple[dict, dict]:
    """Commit a tar and write its .idx from what was written; return (shard record, samples)."""
    size, digest, index = shard.commit()
    path = shard.path
    actual = path.stat().st_size
    if actual != size:  # the file on disk is not what was written
        raise ShardsError(f"{path}: is {actual} bytes after writing, expected {size}")
    index_name = path.with_suffix(".idx").name
    atomic_write_text(path.with_suffix(".idx"), index)
    samples = {}
    for key, off, jsize in zip(shard.keys, shard.jpg_offsets, shard.jpg_sizes):
        r = rows[key]
        samples[key] = [path.name, off, jsize, r.pid, r.camid, r.model_id, split]
    record = {
        "name": path.name,
        "split": split,
        "count": len(shard.keys),
        "bytes": size,
        "sha256": digest,
        "index": index_name,
    }
    return record, samples


def write_shards(
    manifest: Manifest, images_root: str | Path, out_dir: str | Path, target_bytes: int
) -> "ShardsIndex":
    """Write ``manifest``'s images as WebDataset tar shards with DALI indexes and ``shards.json``.

    Args:
        manifest: the rows to write; each split with rows (``train``, ``query``, ``gallery``)
            is written in manifest order to its own shards.
        images_root: folder that ``Row.relpath`` is relative to.
        out_dir: output folder (created). See the module docstring for every file's format.
        target_bytes: maximum size in bytes of a tar file (see the sharding rule in the module
            docstring); must be a positive int.

    The tars are written directly (``tarfile`` headers, data, zero padding; the same bytes
    webdataset's ``TarWriter`` gives), so the ``.idx`` offsets, ``samples`` offsets and sha256
    come from the writing itself; no tar is read back. Every file is written to a temp file,
    fsynced and renamed. An existing ``shards.json`` is removed before any tar is written and
    the new one is written last. ``<split>-NNNNNN.tar``/``.idx`` files in ``out_dir`` that are
    not part of the new set are removed (other files are kept).

    Returns:
        The :class:`ShardsIndex` of the written folder (built from what was written; the same
        as ``ShardsIndex.load(out_dir)``).

    Raises:
        ShardsError: an image is missing/unreadable (names its path), or a sample key is not
            ``[A-Za-z0-9_-]+`` (WebDataset groups members by the name before the first dot).
        ValueError: ``target_bytes`` is not a positive int.
    """
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, int) or target_bytes <= 0:
        raise ValueError(f"target_bytes must be a positive int (bytes), got {target_bytes!r}")
    images_root = Path(images_root)
    out_dir = Path(out_dir)
    for row in manifest.rows:
        if not _KEY_OK.match(row.key):
            raise ShardsError(
                f"manifest {manifest.dataset!r}: key {row.key!r} must match [A-Za-z0-9_-]+ "
                "(see reid.data.manifest.key_from_relpath)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARDS_JSON).unlink(missing_ok=True)

    shard_records: list[dict] = []
    samples: dict[str, list] = {}
    keys: dict[str, tuple[str, ...]] = {}
    for split in SPLITS:
        rows = manifest.split(split)
        if not rows:
            continue
        by_key = {r.key: r for r in rows}
        number = 0
        shard: _ShardFile | None = None
        try:
            for row in rows:
                s = _sample(row.key, _read_image(images_root, row), _labels_json(row))
                if shard is not None and _tar_file_bytes(shard.member_bytes + s.nbytes) > target_bytes:
                    done, shard = shard, None
                    record, got = _finish_shard(done, split, by_key)
                    shard_records.append(record)
                    samples.update(got)
                    number += 1
                if shard is None:
                    shard = _ShardFile(out_dir / f"{split}-{number:06d}.tar")
                shard.add(s)
            assert shard is not None
            done, shard = shard, None
            record, got = _finish_shard(done, split, by_key)
            shard_records.append(record)
            samples.update(got)
        except BaseException as err:
            if shard is not None:
                shard.abort(err)
            raise
        keys[split] = tuple(r.key for r in rows)

    keep = {r["name"] for r in shard_records} | {r["index"] for r in shard_records}
    for path in sorted(out_dir.iterdir()):
        if _SHARD_FILE.match(path.name) and path.name not in keep and path.is_file():
            path.unlink()

    splits: dict[str, dict[str, int]] = {}
    for r in shard_records:
        s = splits.setdefault(r["split"], {"shards": 0, "samples": 0, "bytes": 0})
        s["shards"] += 1
        s["samples"] += r["count"]
        s["bytes"] += r["bytes"]
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dataset": manifest.dataset,
        "target_bytes": target_bytes,
        "shards": shard_records,
        "splits": splits,
        "samples": samples,
    }
    atomic_write_text(out_dir / SHARDS_JSON, json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    del doc
    plain = all(type(v) is int for r in manifest.rows for v in (r.pid, r.camid, r.model_id)) \
        and type(manifest.dataset) is str
    if not plain:  # labels that JSON does not round-trip exactly: let the loader judge them
        return ShardsIndex.load(out_dir)
    # What ShardsIndex.load(out_dir) would build, without re-reading shards.json: samples in
    # the JSON's (sorted) key order, keys per split in tar order (= manifest order).
    return ShardsIndex(
        root=out_dir,
        dataset=manifest.dataset,
        target_bytes=target_bytes,
        shards=tuple(ShardInfo(**rec) for rec in shard_records),
        _samples={k: _Entry(*samples[k]) for k in sorted(samples)},
        _keys=keys,
    )


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

    Build with :meth:`load` (or get one from :func:`write_shards`). Thread-safe for reading:
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
        """Load and validate ``out_dir/shards.json``.

        Checks the JSON structure, that every shard's tar and idx exist, that each tar's size
        equals its recorded ``bytes``, and that the ``samples`` map agrees with the shard list
        (known shard, matching split, per-shard counts). Does not hash (see :meth:`verify`).

        Raises:
            ShardsError: naming ``shards.json`` and the missing or inconsistent piece.
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
            raise _fail(jp, f"version {doc.get('version')!r}, expected {FORMAT_VERSION}")
        for name, typ in (("dataset", str), ("target_bytes", int), ("shards", list),
                          ("splits", dict), ("samples", dict)):
            if not isinstance(doc.get(name), typ):
                raise _fail(jp, f"field {name!r} missing or not a {typ.__name__}")

        shards: list[ShardInfo] = []
        for i, rec in enumerate(doc["shards"]):
            try:
                info = ShardInfo(**{f: rec[f] for f in ShardInfo.__dataclass_fields__})
            except (KeyError, TypeError) as err:
                raise _fail(jp, f"shards[{i}] malformed: {err!r}") from None
            if info.split not in SPLITS or not isinstance(info.count, int) or not isinstance(info.bytes, int):
                raise _fail(jp, f"shards[{i}] ({info.name!r}) has a bad split/count/bytes")
            for fname in (info.name, info.index):
                if not isinstance(fname, str) or "/" in fname or fname in ("", ".", ".."):
                    raise _fail(jp, f"shards[{i}] has a bad file name {fname!r}")
            tar = root / info.name
            if not tar.is_file():
                raise _fail(jp, f"shard {info.name} is missing ({tar})")
            if not (root / info.index).is_file():
                raise _fail(jp, f"index {info.index} of shard {info.name} is missing ({root / info.index})")
            size = tar.stat().st_size
            if size != info.bytes:
                raise _fail(jp, f"shard {info.name} is {size} bytes, recorded {info.bytes} (corrupt or rewritten)")
            shards.append(info)
        by_name = {s.name: s for s in shards}
        if len(by_name) != len(shards):
            raise _fail(jp, "duplicate shard names")

        order = {s.name: i for i, s in enumerate(shards)}
        samples: dict[str, _Entry] = {}
        counts = {s.name: 0 for s in shards}
        for key, rec in doc["samples"].items():
            if not isinstance(rec, list) or len(rec) != _SAMPLE_FIELDS:
                raise _fail(jp, f"samples[{key!r}] must be a list of {_SAMPLE_FIELDS} fields")
            entry = _Entry(*rec)
            info = by_name.get(entry.shard)
            if info is None:
                raise _fail(jp, f"samples[{key!r}] names unknown shard {entry.shard!r}")
            if entry.split != info.split:
                raise _fail(jp, f"samples[{key!r}] split {entry.split!r} != shard {info.name} split {info.split!r}")
            if not all(isinstance(v, int) for v in entry[1:6]) or entry.offset < 0 or entry.size < 0 \
                    or entry.offset + entry.size > info.bytes:
                raise _fail(jp, f"samples[{key!r}] has bad offset/size/labels {rec!r}")
            counts[entry.shard] += 1
            samples[key] = entry
        for s in shards:
            if counts[s.name] != s.count:
                raise _fail(jp, f"shard {s.name} records count {s.count} but samples lists {counts[s.name]}")

        ordered = sorted(samples, key=lambda k: (order[samples[k].shard], samples[k].offset))
        keys: dict[str, list[str]] = {}
        for k in ordered:
            keys.setdefault(samples[k].split, []).append(k)
        return cls(
            root=root,
            dataset=doc["dataset"],
            target_bytes=doc["target_bytes"],
            shards=tuple(shards),
            _samples=samples,
            _keys={s: tuple(v) for s, v in keys.items()},
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
        """One line for logs, e.g. ``train 26 samples/4 shards, query ... ; 163840 bytes``."""
        parts = []
        for split in self.splits():
            n = sum(1 for s in self.shards if s.split == split)
            parts.append(f"{split} {len(self._keys[split])} samples/{n} shards")
        total = sum(s.bytes for s in self.shards)
        return f"{', '.join(parts) or 'no samples'}; {total} bytes in {self.root}"

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
