"""Parser for the official MSMT17 layout (``MSMT17_V1`` and ``MSMT17_V2``).

On-disk format read (``root`` is the ``MSMT17_V1`` or ``MSMT17_V2`` folder itself)::

    root/
      train/<pid:04d>/<file>.jpg          (V2: mask_train_v2/...)
      test/<pid:04d>/<file>.jpg           (V2: mask_test_v2/...)
      list_train.txt  list_val.txt        lines "<pid:04d>/<file> <pid>", relative to train/
      list_query.txt  list_gallery.txt    lines "<pid:04d>/<file> <pid>", relative to test/

File names read ``<pid:04d>_<idx:03d>_<cam:02d>_<date><slot>_<frame:04d>_<n>.jpg``, e.g.
``0000_000_01_0303morning_0015_0.jpg``; the camera field is 1-based (01..15). Test pids restart
at 0, so the parser offsets them past the train pids. ``list_val.txt`` holds images of train
identities; the parser merges it into train (default) or keeps it apart as the ``val`` split.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from reid.data.layouts.errors import LayoutError, check_image, parse_id, read_list
from reid.data.manifest import Manifest, Row, key_from_relpath
from reid.data.row_table import RowTable, collect

DATASET = "msmt17"
#: (train folder, test folder) of V1 and V2, in detection order.
FOLDERS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
#: list file -> (split, which image folder it is relative to); ``val`` becomes ``train`` when merged.
LISTS = (
    ("list_train.txt", "train", 0),
    ("list_val.txt", "val", 0),
    ("list_query.txt", "query", 1),
    ("list_gallery.txt", "gallery", 1),
)
#: values of ``parse``'s ``val`` option.
VAL_MODES = ("merge", "holdout")
FILE_NAME = re.compile(
    r"(?P<pid>\d+)_(?P<idx>\d+)_(?P<cam>\d+)_(?P<date>\d+[A-Za-z]+)_(?P<frame>\d+)_(?P<n>\d+)\.jpg",
    re.IGNORECASE,
)


def _detect_folders(root: Path) -> tuple[str, str]:
    if not root.is_dir():
        raise LayoutError(root, None, "MSMT17 root is not a directory")
    for train_dir, test_dir in FOLDERS:
        if (root / train_dir).is_dir():
            if not (root / test_dir).is_dir():
                raise LayoutError(root, None, f"has {train_dir}/ but no {test_dir}/ folder")
            return train_dir, test_dir
    hint = ""
    for name in ("MSMT17_V1", "MSMT17_V2"):
        if (root / name).is_dir():
            hint = f" (did you mean {root / name}?)"
            break
    raise LayoutError(
        root,
        None,
        "neither MSMT17_V1 folders (train/, test/) nor MSMT17_V2 folders "
        f"(mask_train_v2/, mask_test_v2/) found{hint}",
    )


def parse(root: str | Path, check_images: bool = True, val: str = "merge") -> Manifest:
    """Read an MSMT17_V1 or MSMT17_V2 folder into a :class:`Manifest` named ``msmt17``, in memory.

    Same as :func:`fill` into a temporary :class:`~reid.data.row_table.RowTable`.

    The version is detected from the image folders: ``train/`` + ``test/`` (V1, preferred when
    both exist) or ``mask_train_v2/`` + ``mask_test_v2/`` (V2).

    Args:
        root: the ``MSMT17_V1`` or ``MSMT17_V2`` folder.
        check_images: also open every image with PIL and ``verify()`` it.
        val: what to do with ``list_val.txt``: ``"merge"`` (its rows are train rows, as torchreid
            does) or ``"holdout"`` (its rows get split ``val``, with their train pids).

    Returns:
        a Manifest whose rows are

        * ``train``: ``list_train.txt``, plus ``list_val.txt`` when ``val="merge"``;
        * ``val``: ``list_val.txt`` when ``val="holdout"`` (none otherwise);
        * ``query`` / ``gallery``: ``list_query.txt`` / ``list_gallery.txt``;

        sorted by split (train, val, query, gallery) then ``relpath``. ``relpath`` is relative to
        ``root`` (e.g. ``train/0001/0001_000_01_0303morning_0015_0.jpg``),
        ``key = key_from_relpath(relpath)``, ``pid`` is the list pid (test pids offset by
        ``max train/val pid + 1`` so they never collide with train pids, and are the same for both
        ``val`` modes), ``camid`` is the camera field of the file name minus 1 (0-based),
        ``model_id`` is -1.

    Raises:
        LayoutError: ``"<file>:<line>: <what>"`` for a root without V1/V2 folders, a missing list
            file, a malformed line (not two fields, non-integer pid, path not ``<pid>/<file>``),
            a file name not in MSMT17 form or with camera 00, a pid that disagrees between list,
            folder and file name, an image listed twice, a missing image, or (with
            ``check_images``) an image PIL cannot open and ``verify()`` (the image path is named).
        ValueError: if ``val`` is not one of ``"merge"``, ``"holdout"``.

    The parser only reads the dataset; it never writes to it.
    """
    return collect(DATASET, fill, root, check_images=check_images, val=val)


def fill(table: RowTable, root: str | Path, check_images: bool = True, val: str = "merge") -> None:
    """Stream an MSMT17_V1/V2 folder into ``table``, one list line at a time (flat memory).

    Rows, errors and options as :func:`parse`.
    """
    if val not in VAL_MODES:
        raise ValueError(f"val must be one of {VAL_MODES}, got {val!r}")
    root = Path(root)
    folders = _detect_folders(root)
    max_train_pid = -1
    for list_name, split, which in LISTS:
        list_path = root / list_name
        image_dir = folders[which]
        split = "train" if split == "val" and val == "merge" else split
        for lineno, fields in read_list(list_path):
            relpath, pid, camid = _parse_line(root, image_dir, list_path, lineno, fields, check_images)
            first = table.add(Row(key_from_relpath(relpath), relpath, pid, camid, -1, split), list_path, lineno)
            if first is not None:
                what = "listed twice" if first.row.relpath == relpath else f"has the sample key of {first.row.relpath}"
                raise LayoutError(list_path, lineno, f"image {relpath} {what} (first at {first.src}:{first.line})")
            if split in ("train", "val"):
                max_train_pid = max(max_train_pid, pid)
    table.offset_pids(("query", "gallery"), max_train_pid + 1)


def _parse_line(
    root: Path, image_dir: str, list_path: Path, lineno: int, fields: list[str], check_images: bool
) -> tuple[str, int, int]:
    if len(fields) != 2:
        raise LayoutError(
            list_path, lineno, f"expected 2 fields '<pid>/<file> <pid>', got {len(fields)}: {' '.join(fields)!r}"
        )
    path_in_list, pid_text = fields
    pid = parse_id(list_path, lineno, pid_text, "pid")
    parts = path_in_list.split("/")
    if len(parts) != 2 or not all(parts):
        raise LayoutError(list_path, lineno, f"image path {path_in_list!r} is not '<pid>/<file>'")
    folder, file_name = parts
    if not folder.isascii() or not folder.isdigit() or int(folder) != pid:
        raise LayoutError(list_path, lineno, f"folder {folder!r} disagrees with list pid {pid}")
    match = FILE_NAME.fullmatch(file_name)
    if match is None:
        raise LayoutError(
            list_path,
            lineno,
            f"file name {file_name!r} is not in MSMT17 form <pid>_<idx>_<cam>_<date><slot>_<frame>_<n>.jpg",
        )
    if int(match["pid"]) != pid:
        raise LayoutError(
            list_path, lineno, f"file-name pid {match['pid']!r} of {file_name!r} disagrees with list pid {pid}"
        )
    cam = int(match["cam"])
    if cam < 1:
        raise LayoutError(list_path, lineno, f"camera field {match['cam']!r} of {file_name!r} must be >= 01")
    relpath = f"{image_dir}/{path_in_list}"
    check_image(list_path, lineno, os.path.join(root, relpath), check_images)
    return relpath, pid, cam - 1
