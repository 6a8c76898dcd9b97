"""Validation pass over a parsed :class:`~reid.data.manifest.Manifest` and its image folder.

Run by the ``prepare`` stage after a layout parser. :func:`validate` reads every image the manifest
names (``<images_root>/<row.relpath>``) once and checks:

1. **Image integrity** (errors). ``unreadable_file``: the file is missing or cannot be read.
   ``not_jpeg``: the bytes do not start with the JPEG SOI magic ``FF D8 FF`` (the pipeline decodes
   with DALI's JPEG decoder, so a PNG renamed ``.jpg`` is an error even though PIL reads it).
   ``corrupt_jpeg``: a JPEG PIL cannot decode. With ``decode=True`` the image is fully decoded
   (``Image.open(...).load()``, then ``.convert("RGB")``), which catches a file truncated after its
   header; with ``decode=False`` only ``Image.open(...).verify()`` runs (header/structure check,
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
Only a digest and a status per file are kept in memory, never image bytes beyond the file being
checked. :func:`validate` never writes anything; :func:`write_report` writes the report atomically.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import io
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from PIL import Image, ImageFile
from tqdm import tqdm

from reid.data.manifest import SPLITS, Manifest, Row
from reid.io import atomic_write_json, atomic_write_text

__all__ = [
    "ValidationConfig",
    "Issue",
    "ValidationReport",
    "ValidationError",
    "validate",
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
                im.load()
                im.convert("RGB")
            else:
                im.verify()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        text = _ADDRESS.sub("", str(err))  # e.g. "<_io.BytesIO object at 0x7f..>": not reproducible
        return digest, "corrupt_jpeg", f"{'decode' if decode else 'verify'} failed: {type(err).__name__}: {text}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return digest, None, ""


def _check_all(paths: Sequence[str], decode: bool, workers: int, desc: str) -> Iterator[tuple[bytes | None, str | None, str]]:
    """Yield :func:`_check_file` results for ``paths`` in order, with a progress bar on stderr.

    With ``workers > 1`` the files go to a process pool in chunks, at most ``4 * workers`` chunks
    in flight, so memory stays bounded however long ``paths`` is.
    """
    bar = tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)
    try:
        if workers == 1:
            for p in paths:
                yield _check_file(p, decode)
                bar.update(1)
            return
        chunk = max(1, min(64, len(paths) // (workers * 8) or 1))
        chunks = (paths[i:i + chunk] for i in range(0, len(paths), chunk))
        with cf.ProcessPoolExecutor(workers) as pool:
            pending: collections.deque[cf.Future] = collections.deque()
            for part in chunks:
                pending.append(pool.submit(_check_chunk, part, decode))
                if len(pending) >= 4 * workers:
                    results = pending.popleft().result()
                    yield from results
                    bar.update(len(results))
            while pending:
                results = pending.popleft().result()
                yield from results
                bar.update(len(results))
    finally:
        bar.close()


def _check_chunk(paths: Sequence[str], decode: bool) -> list[tuple[bytes | None, str | None, str]]:
    return [_check_file(p, decode) for p in paths]


# ---------------------------------------------------------------------------------------------


def validate(manifest: Manifest, images_root: str | Path, cfg: ValidationConfig) -> tuple[Manifest, ValidationReport]:
    """Check ``manifest`` and the images under ``images_root`` (see the module docstring).

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
            Nothing is written either way.
    """
    root = Path(images_root)
    rows = manifest.rows

    # 1. per-file checks, once per distinct relpath, results in manifest order.
    relpaths = list(dict.fromkeys(r.relpath for r in rows))
    paths = [str(root / rel) for rel in relpaths]
    digest_of: dict[str, bytes] = {}  # relpath -> sha256 (32 bytes): the only per-file state kept
    file_issues: dict[str, list[Issue]] = {k: [] for k in ("unreadable_file", "not_jpeg", "corrupt_jpeg")}
    results = _check_all(paths, cfg.decode, cfg.workers, f"validate {manifest.dataset}")
    for i, (digest, kind, message) in enumerate(results):  # runs the generator to its end
        rel = relpaths[i]
        if digest is not None:
            digest_of[rel] = digest
        if kind is not None:
            file_issues[kind].append(Issue(kind, (rel,), f"{rel}: {message}"))

    # 2. duplicate content.
    first: dict[bytes, int] = {}  # digest -> index of its first row
    groups: dict[bytes, list[int]] = {}  # row indices, only for digests seen more than once
    for i, r in enumerate(rows):
        digest = digest_of.get(r.relpath)
        if digest is None:
            continue
        j = first.setdefault(digest, i)
        if j != i:
            groups.setdefault(digest, [j]).append(i)
    del first
    dup: dict[str, list[Issue]] = {k: [] for k in ("duplicate_train_test", "duplicate_across_pids", "duplicate_same_pid")}
    for digest, indices in sorted(groups.items(), key=lambda kv: kv[1][0]):  # by first occurrence
        members = [rows[i] for i in indices]
        kind, message = _classify_duplicates(digest.hex(), members)
        dup[kind].append(Issue(kind, tuple(r.relpath for r in members), message,
                               tuple(sorted({r.pid for r in members}))))

    # 3. small train ids.
    train_count = collections.Counter(r.pid for r in rows if r.split == "train")
    small = sorted(pid for pid, n in train_count.items() if n < cfg.min_images)
    small_set = set(small)
    action = "dropped" if cfg.drop_small_ids else "kept"
    small_files: dict[int, list[str]] = {pid: [] for pid in small}
    for r in rows:
        if r.split == "train" and r.pid in small_set:
            small_files[r.pid].append(r.relpath)
    small_issues = [Issue("small_train_id", tuple(small_files[pid]),
                          f"train pid {pid} has {train_count[pid]} image(s) < min_images {cfg.min_images}; {action}",
                          (pid,)) for pid in small]

    # 4. pids in train and a test split.
    by_split_pid: dict[tuple[str, int], list[str]] = {}
    for r in rows:
        by_split_pid.setdefault((r.split, r.pid), []).append(r.relpath)
    test_pids = {pid for (split, pid) in by_split_pid if split in TEST_SPLITS}
    leak_pids = sorted((set(train_count) & test_pids) - EXEMPT_PIDS)
    leak_issues = []
    for pid in leak_pids:
        parts, sample = [], []
        for split in ("train",) + TEST_SPLITS:
            files = by_split_pid.get((split, pid))
            if files:
                parts.append(f"{split} ({len(files)} images)")
                sample += files[:_PID_SAMPLE_FILES]
        leak_issues.append(Issue("pid_train_test", tuple(sample), f"pid {pid} is in {' and '.join(parts)}", (pid,)))

    errors = (file_issues["unreadable_file"] + file_issues["not_jpeg"] + file_issues["corrupt_jpeg"]
              + dup["duplicate_train_test"] + dup["duplicate_across_pids"] + leak_issues)
    warnings = dup["duplicate_same_pid"] + small_issues

    out = manifest
    dropped: tuple[tuple[int, int], ...] = ()
    if cfg.drop_small_ids and small:
        dropped = tuple((pid, train_count[pid]) for pid in small)
        out = Manifest(manifest.dataset, tuple(r for r in rows if not (r.split == "train" and r.pid in small_set)))

    config = asdict(cfg)
    del config["workers"]
    report = ValidationReport(
        dataset=manifest.dataset,
        images_root=str(images_root),
        config=config,
        images=len(rows),
        files=len(relpaths),
        splits=_split_stats(rows),
        errors=tuple(errors),
        warnings=tuple(warnings),
        dropped_ids=dropped,
    )
    if cfg.fatal and report.errors:
        raise ValidationError(report)
    return out, report


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


def _split_stats(rows: Iterable[Row]) -> dict[str, dict[str, int]]:
    images: collections.Counter[str] = collections.Counter()
    pids: dict[str, set[int]] = {}
    for r in rows:
        images[r.split] += 1
        pids.setdefault(r.split, set()).add(r.pid)
    return {s: {"images": images[s], "pids": len(pids[s])} for s in SPLITS if images[s]}


def disabled_report(manifest: Manifest, images_root: str | Path) -> ValidationReport:
    """The report of a run with data checks turned off: no check ran, nothing was found."""
    return ValidationReport(dataset=manifest.dataset, images_root=str(images_root), config={"enabled": False},
                            images=len(manifest.rows), files=0, splits=_split_stats(manifest.rows),
                            errors=(), warnings=())


def write_report(report: ValidationReport, path_txt: str | Path, path_json: str | Path | None = None) -> None:
    """Write ``report.to_text()`` (Markdown, UTF-8) to ``path_txt`` and, if given,
    ``report.to_json()`` (indented, key-sorted) to ``path_json``; each atomically (temp + rename),
    parent folders created."""
    atomic_write_text(path_txt, report.to_text())
    if path_json is not None:
        atomic_write_json(path_json, report.to_json())
