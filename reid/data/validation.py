"""Validation pass over a parsed :class:`~reid.data.manifest.Manifest` and its image folder.

Run by the ``prepare`` stage after a layout parser, on the streamed rows (:func:`validate_table`;
:func:`validate` runs the same on an in-memory manifest). Every image the rows name
(``<images_root>/<row.relpath>``) is read once, and:

1. **Image integrity** (errors). ``unreadable_file``: the file is missing or cannot be read.
   ``not_jpeg``: the bytes do not start with the JPEG SOI magic ``FF D8 FF`` (the pipeline decodes
   with DALI's JPEG decoder, so a PNG renamed ``.jpg`` is an error even though PIL reads it).
   ``corrupt_jpeg``: a JPEG PIL cannot decode. With ``decode=True`` every entropy-coded block of the image
   is decoded (PIL ``draft`` at 1/8 scale, then ``load()``: libjpeg still Huffman-decodes every
   coefficient but skips the IDCT, upsampling and colour conversion), which catches a file
   truncated or cut after its header; with ``decode=False`` only ``Image.open(...).verify()`` runs (header/structure check,
   faster, but a JPEG cut in its entropy-coded data usually passes).
2. **Duplicate content**: files with the same SHA-256 of their bytes. ``duplicate_train_test``
   (error, data leakage): a group with files in ``train`` and in a test split (``query``,
   ``gallery``, ``test``). ``duplicate_across_pids`` (error, contradictory labels): a group under
   two or more pids. ``duplicate_same_pid`` (warning): every file of the group has the same pid
   (usually one split; also e.g. ``train`` + ``val`` or ``query`` + ``gallery``). One issue per
   group, each kind decided in that order.
3. ``small_train_id`` (warning): a ``train`` pid with fewer than ``min_images`` images (a P x K
   sampler needs ``K`` per id). Dropped from the returned manifest when ``drop_small_ids``.
4. ``pid_train_test`` (error): a pid in ``train`` and in a test split (``query``/``gallery``/``test``),
   junk pid ``-1`` and distractor pid ``0`` excepted.

Per-file work (read bytes, hash, magic check, decode) runs in ``workers`` processes; results are
consumed in manifest order, so the report and the returned manifest do not depend on ``workers``.
Digests go to the on-disk :class:`~reid.data.row_table.RowTable` and the other checks are queries
on it, so memory does not grow with the number of images (only with the issues found).
:func:`validate` never writes anything; :func:`write_report` writes the report atomically.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import io
import itertools
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from PIL import Image, ImageFile
from tqdm import tqdm

from reid.data.manifest import SPLITS, Manifest, Row
from reid.data.row_table import ROW_COLUMNS as _ROW_COLUMNS, RowTable, row_from_sql
from reid.io import atomic_write_json, atomic_write_text

__all__ = [
    "ValidationConfig",
    "Issue",
    "ValidationReport",
    "ValidationError",
    "validate",
    "validate_table",
    "write_report",
    "ERROR_KINDS",
    "WARNING_KINDS",
    "JPEG_MAGIC",
]

#: First bytes of every JPEG file (SOI marker + the first byte of the next marker).
JPEG_MAGIC = b"\xff\xd8\xff"
#: Splits whose pids must not appear in ``train`` (evaluation splits).
TEST_SPLITS = ("query", "gallery", "test")
#: Pids exempt from the train/test overlap check: gallery junk (-1) and Market-1501 distractors (0).
EXEMPT_PIDS = frozenset({-1, 0})

#: Issue kinds reported as errors, in report order.
ERROR_KINDS = (
    "unreadable_file",
    "not_jpeg",
    "corrupt_jpeg",
    "duplicate_train_test",
    "duplicate_across_pids",
    "pid_train_test",
)
#: Issue kinds reported as warnings, in report order.
WARNING_KINDS = ("duplicate_same_pid", "small_train_id")

_CHECK_TITLES = {
    "unreadable_file": "file missing or unreadable",
    "not_jpeg": "not a JPEG (magic bytes)",
    "corrupt_jpeg": "JPEG fails to decode",
    "duplicate_train_test": "same content in train and a test split (leakage)",
    "duplicate_across_pids": "same content under different pids",
    "pid_train_test": "pid in train and a test split",
    "duplicate_same_pid": "same content, same pid",
    "small_train_id": "train id with < min_images images",
}
_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
_MAX_LISTED = 50  # files listed in a ValidationError message / per issue in to_text()
_PID_SAMPLE_FILES = 3  # files listed per split for a pid_train_test issue


@dataclass(frozen=True)
class ValidationConfig:
    """Options of :func:`validate`.

    Attributes:
        min_images: a ``train`` pid with fewer images than this is reported (``small_train_id``);
            set it to the sampler's K. ``<= 1`` disables the check.
        drop_small_ids: drop those pids' rows from the returned manifest (``True``) or keep them
            (``False``); reported either way.
        fatal: make :func:`validate` raise :class:`ValidationError` when there is any error.
        workers: processes for the per-file work (``1``: in this process). Must be ``>= 1``.
        decode: full decode of every image (``True``) or PIL header/structure check only (``False``).
    """

    min_images: int
    drop_small_ids: bool
    fatal: bool
    workers: int = 1
    decode: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"ValidationConfig.workers must be an int >= 1, got {self.workers!r}")
        if not isinstance(self.min_images, int) or self.min_images < 0:
            raise ValueError(f"ValidationConfig.min_images must be an int >= 0, got {self.min_images!r}")


@dataclass(frozen=True)
class Issue:
    """One problem found by :func:`validate`.

    Attributes:
        kind: one of :data:`ERROR_KINDS` or :data:`WARNING_KINDS`.
        files: the files involved, as manifest ``relpath`` strings (relative to the images root),
            in manifest order. For ``pid_train_test`` a sample (first few per split).
        message: what is wrong, in words (names pids, splits, counts, digests as relevant).
        pids: the pids involved (sorted), empty for per-file image issues.
    """

    kind: str
    files: tuple[str, ...]
    message: str
    pids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": list(self.files), "message": self.message, "pids": list(self.pids)}


@dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`validate` found.

    Attributes:
        dataset: the manifest's dataset name.
        images_root: the images folder as given to :func:`validate` (``str``).
        config: the :class:`ValidationConfig` used, as a dict (``workers`` excluded: it does not
            change the result).
        images: number of manifest rows checked.
        files: number of distinct files read (rows sharing a ``relpath`` are read once).
        splits: per split present: ``{"images": n, "pids": n}`` of the input manifest.
        errors: error issues, grouped by kind in :data:`ERROR_KINDS` order, each kind in manifest
            (or pid) order.
        warnings: warning issues, likewise in :data:`WARNING_KINDS` order.
        dropped_ids: ``(pid, images)`` of the train ids dropped from the returned manifest, by pid
            (empty unless ``drop_small_ids``).
    """

    dataset: str
    images_root: str
    config: dict[str, Any]
    images: int
    files: int
    splits: dict[str, dict[str, int]]
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...]
    dropped_ids: tuple[tuple[int, int], ...] = ()

    @property
    def ok(self) -> bool:
        """``True`` when there are no errors (warnings allowed)."""
        return not self.errors

    @property
    def dropped_images(self) -> int:
        """Number of rows dropped with :attr:`dropped_ids`."""
        return sum(n for _, n in self.dropped_ids)

    def counts(self) -> dict[str, int]:
        """Issue count per kind, every kind listed (zero where none)."""
        out = {kind: 0 for kind in ERROR_KINDS + WARNING_KINDS}
        for issue in self.errors + self.warnings:
            out[issue.kind] += 1
        return out

    def error_files(self) -> tuple[str, ...]:
        """Distinct files named by the errors, in first-mention order."""
        return tuple(dict.fromkeys(f for issue in self.errors for f in issue.files))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``dataset``, ``images_root``, ``config``, ``summary`` (images, files,
        per-split stats, error/warning totals, count per kind), ``errors`` / ``warnings`` (lists of
        ``{kind, files, message, pids}``) and ``dropped`` (``{"ids": [{pid, images}], "images": n}``).
        Deterministic for equal input."""
        return {
            "dataset": self.dataset,
            "images_root": self.images_root,
            "config": dict(self.config),
            "summary": {
                "images": self.images,
                "files": self.files,
                "splits": {k: dict(v) for k, v in self.splits.items()},
                "errors": len(self.errors),
                "warnings": len(self.warnings),
                "by_kind": self.counts(),
                "ok": self.ok,
            },
            "errors": [i.to_json() for i in self.errors],
            "warnings": [i.to_json() for i in self.warnings],
            "dropped": {
                "ids": [{"pid": pid, "images": n} for pid, n in self.dropped_ids],
                "images": self.dropped_images,
            },
        }

    def to_text(self) -> str:
        """Human-readable Markdown report: settings, a summary table with one line per check
        (severity, count), then every error and warning with its message and files (at most 50
        files per issue, then a count), then the dropped train ids."""
        cfg = self.config
        if not cfg.get("enabled", True):
            return (f"# Data validation: {self.dataset}\n\n- images root: `{self.images_root}`\n"
                    f"- manifest rows: {self.images}\n\n**Not run: data checks are disabled.**\n")
        mode = "full decode" if cfg.get("decode", True) else "header-only (PIL verify)"
        small = "dropped" if cfg.get("drop_small_ids") else "kept"
        lines = [
            f"# Data validation: {self.dataset}",
            "",
            f"- images root: `{self.images_root}`",
            f"- manifest rows: {self.images}; files read: {self.files}",
            f"- image check: {mode}; min_images per train id: {cfg.get('min_images')} (small ids {small})",
            "- splits: " + (", ".join(f"{s} {v['images']} images / {v['pids']} ids"
                                      for s, v in self.splits.items()) or "none"),
            "",
            f"**Result: {'FAILED' if self.errors else 'OK'}: {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
            + (f"; dropped {len(self.dropped_ids)} train id(s) ({self.dropped_images} images)"
               if self.dropped_ids else "") + "**",
            "",
            "## Summary",
            "",
            "| check | severity | count |",
            "|---|---|---|",
        ]
        counts = self.counts()
        for kind in ERROR_KINDS + WARNING_KINDS:
            severity = "error" if kind in ERROR_KINDS else "warning"
            lines.append(f"| {kind}: {_CHECK_TITLES[kind]} | {severity} | {counts[kind]} |")
        for title, issues in (("Errors", self.errors), ("Warnings", self.warnings)):
            if not issues:
                continue
            lines += ["", f"## {title}"]
            current = None
            for issue in issues:
                if issue.kind != current:
                    current = issue.kind
                    lines += ["", f"### {issue.kind} ({counts[issue.kind]}): {_CHECK_TITLES[issue.kind]}", ""]
                lines.append(f"- {issue.message}")
                for f in issue.files[:_MAX_LISTED]:
                    lines.append(f"  - `{f}`")
                if len(issue.files) > _MAX_LISTED:
                    lines.append(f"  - ... and {len(issue.files) - _MAX_LISTED} more")
        if self.dropped_ids:
            lines += ["", "## Dropped train ids", "", "| pid | images |", "|---|---|"]
            lines += [f"| {pid} | {n} |" for pid, n in self.dropped_ids]
        return "\n".join(lines) + "\n"


class ValidationError(ValueError):
    """:func:`validate` found errors and ``cfg.fatal`` is set.

    Args:
        report: the full :class:`ValidationReport` (also available as ``err.report``, e.g. to
            write it with :func:`write_report` before re-raising).

    ``str(err)`` names the dataset, the error count per kind and the offending files (all of them,
    or the first 50 and how many more), each with the kind of its first error.
    """

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        by_file: dict[str, str] = {}
        for issue in report.errors:
            for f in issue.files:
                by_file.setdefault(f, issue.kind)
        kinds = ", ".join(f"{k} {n}" for k, n in report.counts().items() if n and k in ERROR_KINDS)
        lines = [f"data validation of {report.dataset!r} ({report.images_root}) failed: "
                 f"{len(report.errors)} error(s) ({kinds}) in {len(by_file)} file(s):"]
        lines += [f"  {f} [{k}]" for f, k in list(by_file.items())[:_MAX_LISTED]]
        if len(by_file) > _MAX_LISTED:
            lines.append(f"  ... and {len(by_file) - _MAX_LISTED} more file(s)")
        self.files = tuple(by_file)
        super().__init__("\n".join(lines))

    def __reduce__(self):  # keep picklable (multiprocessing / Ray workers)
        return (type(self), (self.report,))


# ---------------------------------------------------------------------------------------------
# Per-file work (runs in worker processes when workers > 1; must stay a picklable top-level fn).


def _check_file(path: str, decode: bool) -> tuple[bytes | None, str | None, str]:
    """Read one file, hash it and check it is a decodable JPEG.

    Returns:
        ``(sha256 digest (32 bytes) or None, problem kind or None, message)``; the digest is ``None`` only when
        the file cannot be read (``unreadable_file``).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        return None, "unreadable_file", f"cannot read: {err.strerror or err}"
    digest = hashlib.sha256(data).digest()
    if not data.startswith(JPEG_MAGIC):
        try:
            with Image.open(io.BytesIO(data)) as im:
                what = f"PIL reads it as {im.format}"
        except Exception:
            what = "not an image PIL can identify"
        return digest, "not_jpeg", f"not a JPEG: starts with {data[:4].hex(' ') or 'nothing (empty file)'} ({what})"
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whatever a caller set
    try:
        with Image.open(io.BytesIO(data)) as im:
            if decode:
                # Every entropy-coded block is decoded (a truncated or cut file fails), at 1/8 scale
                # in the DCT domain: no IDCT, upsampling or colour conversion (~1.5x faster).
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            else:
                im.verify()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        text = _ADDRESS.sub("", str(err))  # e.g. "<_io.BytesIO object at 0x7f..>": not reproducible
        return digest, "corrupt_jpeg", f"{'decode' if decode else 'verify'} failed: {type(err).__name__}: {text}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return digest, None, ""


def _check_all(relpaths: Iterable[str], root: Path, total: int, decode: bool, workers: int,
               desc: str) -> Iterator[tuple[str, bytes | None, str | None, str]]:
    """Yield ``(relpath, *_check_file(root / relpath))`` for ``relpaths`` in order, with a progress
    bar on stderr.

    ``relpaths`` is consumed lazily in chunks; with ``workers > 1`` the chunks go to a process
    pool, at most ``4 * workers`` chunks in flight, so memory stays bounded however many files.
    """
    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)
    chunk = max(1, min(64, total // (workers * 8) or 1))
    it = iter(relpaths)
    chunks = iter(lambda: list(itertools.islice(it, chunk)), [])
    try:
        if workers == 1:
            for part in chunks:
                yield from ((r, *res) for r, res in zip(part, _check_chunk([str(root / r) for r in part], decode)))
                bar.update(len(part))
            return
        with cf.ProcessPoolExecutor(workers) as pool:
            pending: collections.deque[tuple[list[str], cf.Future]] = collections.deque()
            for part in chunks:
                pending.append((part, pool.submit(_check_chunk, [str(root / r) for r in part], decode)))
                if len(pending) >= 4 * workers:
                    done, future = pending.popleft()
                    yield from ((r, *res) for r, res in zip(done, future.result()))
                    bar.update(len(done))
            while pending:
                done, future = pending.popleft()
                yield from ((r, *res) for r, res in zip(done, future.result()))
                bar.update(len(done))
    finally:
        bar.close()


def _check_chunk(paths: Sequence[str], decode: bool) -> list[tuple[bytes | None, str | None, str]]:
    return [_check_file(p, decode) for p in paths]


# ---------------------------------------------------------------------------------------------


def validate(manifest: Manifest, images_root: str | Path, cfg: ValidationConfig) -> tuple[Manifest, ValidationReport]:
    """Check an in-memory ``manifest`` and the images under ``images_root`` (see the module docstring).

    The same checks as :func:`validate_table` (which ``prepare`` runs on the streamed table), on a
    temporary table built from ``manifest``.

    Args:
        manifest: a parsed manifest; image ``i`` is the file ``images_root / row.relpath``.
        images_root: the folder the manifest's ``relpath`` values are relative to.
        cfg: options.

    Returns:
        ``(manifest_to_use, report)``: the input manifest with the small ``train`` ids removed when
        ``cfg.drop_small_ids`` (the same object when nothing is dropped; other rows and their order
        unchanged; images that fail a check are NOT removed), and the :class:`ValidationReport`.
        Both are identical for any ``cfg.workers``.

    Raises:
        ValidationError: if ``cfg.fatal`` and the report has errors (it carries ``.report``).
        ManifestError: two rows name the same image file.
            Nothing is written either way.
    """
    with RowTable.from_rows(manifest.dataset, manifest.rows) as table:
        report = validate_table(table, images_root, cfg)
    if not report.dropped_ids:
        return manifest, report
    dropped = {pid for pid, _ in report.dropped_ids}
    kept = tuple(r for r in manifest.rows if not (r.split == "train" and r.pid in dropped))
    return Manifest(manifest.dataset, kept), report


def validate_table(table: RowTable, images_root: str | Path, cfg: ValidationConfig) -> ValidationReport:
    """Check the rows of ``table`` and the images under ``images_root`` (see the module docstring),
    in flat memory: every file is read once, in manifest order, and only its SHA-256 goes into the
    table; duplicates, small ids and leaked pids are found by queries. Only the issues found are
    held in memory.

    Args:
        table: the streamed rows; with ``cfg.drop_small_ids`` the small train ids are deleted from it.
        images_root: the folder the rows' ``relpath`` values are relative to.
        cfg: options.

    Returns:
        the :class:`ValidationReport`, identical for any ``cfg.workers``. Issues are in manifest
        order (split order, then ``relpath``) within each kind.

    Raises:
        ValidationError: if ``cfg.fatal`` and the report has errors (it carries ``.report``).
            Nothing is written either way (the table is scratch space).
    """
    root = Path(images_root)
    total = len(table)
    splits = _split_stats(table)

    # 1. per-file checks, in manifest order; only the digest is kept (in the table).
    file_issues: dict[str, list[Issue]] = {k: [] for k in ("unreadable_file", "not_jpeg", "corrupt_jpeg")}
    relpaths = (rel for (rel,) in table.execute("SELECT relpath FROM rows ORDER BY rank, relpath"))
    results = _check_all(relpaths, root, total, cfg.decode, cfg.workers, f"validate {table.dataset}")
    digests: list[tuple[str, bytes]] = []
    for rel, digest, kind, message in results:
        if digest is not None:
            digests.append((rel, digest))
            if len(digests) >= 4096:
                table.set_digests(digests)
                digests.clear()
        if kind is not None:
            file_issues[kind].append(Issue(kind, (rel,), f"{rel}: {message}"))
    table.set_digests(digests)

    # 2. duplicate content.
    dup: dict[str, list[Issue]] = {k: [] for k in ("duplicate_train_test", "duplicate_across_pids", "duplicate_same_pid")}
    groups = []
    for (digest,) in table.execute("SELECT digest FROM digests GROUP BY digest HAVING COUNT(*) > 1").fetchall():
        members = list(table.execute(f"SELECT r.rank, {_ROW_COLUMNS} FROM digests d JOIN rows r USING (relpath) "
                                     "WHERE d.digest = ? ORDER BY r.rank, r.relpath", (digest,)))
        groups.append((members[0][:3], digest, [row_from_sql(m[1:]) for m in members]))
    for _, digest, members in sorted(groups, key=lambda g: g[0]):  # by first occurrence
        kind, message = _classify_duplicates(digest.hex(), members)
        dup[kind].append(Issue(kind, tuple(r.relpath for r in members), message,
                               tuple(sorted({r.pid for r in members}))))

    # 3. small train ids.
    small = table.execute("SELECT pid, COUNT(*) FROM rows WHERE split = 'train' GROUP BY pid HAVING COUNT(*) < ? "
                          "ORDER BY pid", (cfg.min_images,)).fetchall()
    action = "dropped" if cfg.drop_small_ids else "kept"
    small_issues = [Issue("small_train_id", _files(table, "train", pid),
                          f"train pid {pid} has {n} image(s) < min_images {cfg.min_images}; {action}", (pid,))
                    for pid, n in small]

    # 4. pids in train and a test split.
    leak_pids = [pid for (pid,) in table.execute(
        f"SELECT DISTINCT pid FROM rows WHERE split = 'train' AND pid NOT IN ({','.join(map(str, sorted(EXEMPT_PIDS)))}) "
        f"AND pid IN (SELECT pid FROM rows WHERE split IN ({','.join(repr(s) for s in TEST_SPLITS)})) ORDER BY pid")]
    leak_issues = []
    for pid in leak_pids:
        parts, sample = [], []
        for split in ("train",) + TEST_SPLITS:
            (n,) = table.execute("SELECT COUNT(*) FROM rows WHERE split = ? AND pid = ?", (split, pid)).fetchone()
            if n:
                parts.append(f"{split} ({n} images)")
                sample += _files(table, split, pid, _PID_SAMPLE_FILES)
        leak_issues.append(Issue("pid_train_test", tuple(sample), f"pid {pid} is in {' and '.join(parts)}", (pid,)))

    errors = (file_issues["unreadable_file"] + file_issues["not_jpeg"] + file_issues["corrupt_jpeg"]
              + dup["duplicate_train_test"] + dup["duplicate_across_pids"] + leak_issues)
    warnings = dup["duplicate_same_pid"] + small_issues
    config = asdict(cfg)
    del config["workers"]
    report = ValidationReport(
        dataset=table.dataset,
        images_root=str(images_root),
        config=config,
        images=total,
        files=total,
        splits=splits,
        errors=tuple(errors),
        warnings=tuple(warnings),
        dropped_ids=tuple((pid, n) for pid, n in small) if cfg.drop_small_ids else (),
    )
    if cfg.fatal and report.errors:
        raise ValidationError(report)
    if cfg.drop_small_ids:
        table.delete_train_pids(pid for pid, _ in small)
    return report


def _files(table: RowTable, split: str, pid: int, limit: int = -1) -> tuple[str, ...]:
    """relpaths of one split's rows of ``pid``, in manifest order (at most ``limit``; -1: all)."""
    return tuple(rel for (rel,) in table.execute(
        "SELECT relpath FROM rows WHERE split = ? AND pid = ? ORDER BY rank, relpath LIMIT ?", (split, pid, limit)))


def _classify_duplicates(digest: str, members: list[Row]) -> tuple[str, str]:
    splits = sorted({r.split for r in members}, key=SPLITS.index)
    pids = sorted({r.pid for r in members})
    where = ", ".join(f"{r.split} pid {r.pid}" for r in members)
    head = f"sha256 {digest[:16]}: {len(members)} files with the same content ({where})"
    if "train" in splits and any(s in TEST_SPLITS for s in splits):
        return "duplicate_train_test", f"{head}; in train and {'/'.join(s for s in splits if s in TEST_SPLITS)}: leakage"
    if len(pids) > 1:
        return "duplicate_across_pids", f"{head}; under pids {', '.join(map(str, pids))}"
    return "duplicate_same_pid", f"{head}; same pid {pids[0]}"


def _split_stats(table: RowTable) -> dict[str, dict[str, int]]:
    out = {}
    for split, images, pids in table.execute("SELECT split, COUNT(*), COUNT(DISTINCT pid) FROM rows GROUP BY split"):
        out[split] = {"images": images, "pids": pids}
    return {s: out[s] for s in SPLITS if s in out}


def disabled_report(table: RowTable | Manifest, images_root: str | Path) -> ValidationReport:
    """The report of a run with data checks turned off: no check ran, nothing was found."""
    if isinstance(table, Manifest):
        with RowTable.from_rows(table.dataset, table.rows) as t:
            return disabled_report(t, images_root)
    return ValidationReport(dataset=table.dataset, images_root=str(images_root), config={"enabled": False},
                            images=len(table), files=0, splits=_split_stats(table), errors=(), warnings=())


def write_report(report: ValidationReport, path_txt: str | Path, path_json: str | Path | None = None) -> None:
    """Write ``report.to_text()`` (Markdown, UTF-8) to ``path_txt`` and, if given,
    ``report.to_json()`` (indented, key-sorted) to ``path_json``; each atomically (temp + rename),
    parent folders created."""
    atomic_write_text(path_txt, report.to_text())
    if path_json is not None:
        atomic_write_json(path_json, report.to_json())
