"""Parser for the Market-1501 layout, also used by DukeMTMC-reID and most custom re-ID datasets.

On-disk format read (``root`` is the dataset folder itself, e.g. ``Market-1501-v15.09.15`` or
``DukeMTMC-reID``)::

    root/
      bounding_box_train/<file>.jpg      training images
      query/<file>.jpg                   query images
      bounding_box_test/<file>.jpg       gallery images

There are no list files: each folder is scanned (not recursively; sub-folders and files not ending
in ``.jpg``, any case, such as ``Thumbs.db``, are ignored). Other folders of the release
(``gt_bbox/``, ``gt_query/``, ...) are not read.

File names start ``<pid>_c<cam>``:

* Market-1501: ``<pid>_c<cam>s<seq>_<frame>_<n>.jpg``, e.g. ``0001_c1s1_001051_00.jpg``;
* DukeMTMC-reID: ``<pid>_c<cam>_f<frame>.jpg``, e.g. ``0005_c2_f0046985.jpg``.

The part after ``_c<cam>`` (``s<seq>`` and/or ``_<anything>``) is not interpreted. ``pid`` is
the leading integer, ``-1`` or non-negative; ``cam`` is 1-based.

Market-1501 id conventions: pid ``-1`` marks junk images (partial or bad detections) and pid
``0`` distractors (background, people not in the dataset).
"""

from __future__ import annotations

import re
from pathlib import Path

from reid.data.layouts.errors import LayoutError, require_folders, scan_jpegs
from reid.data.layouts.rows import add_scanned
from reid.data.manifest import Manifest
from reid.data.row_table import RowTable, collect

DATASET = "market1501"
#: (folder, split) in reading order.
FOLDERS = (("bounding_box_train", "train"), ("query", "query"), ("bounding_box_test", "gallery"))
JUNK_PID, DISTRACTOR_PID = -1, 0
FILE_NAME = re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)(?:s\d+)?(?:_[^/\\]*)?\.jpg", re.IGNORECASE)


def parse(root: str | Path, check_images: bool = True) -> Manifest:
    """Read a Market-1501-style folder into a :class:`Manifest` named ``market1501``, in memory.

    Same as :func:`fill` into a temporary :class:`~reid.data.row_table.RowTable`.

    Args:
        root: the dataset folder (holding ``bounding_box_train/``, ``query/``, ``bounding_box_test/``).
        check_images: also open every image with PIL and ``verify()`` it.

    Returns:
        a Manifest whose rows are, sorted by split (train, query, gallery) then ``relpath``:

        * ``train``: the images of ``bounding_box_train/``, except junk (pid -1) and distractor
          (pid 0) images, which are skipped silently, as torchreid does (there are none in the
          official Market-1501 and DukeMTMC-reID train folders);
        * ``query``: the images of ``query/`` (a junk or distractor pid there is an error);
        * ``gallery``: the images of ``bounding_box_test/``, junk kept with pid -1 (the
          evaluator ignores gallery pid -1) and distractors with pid 0 (negatives for every
          query, since no query has pid 0).

        ``relpath`` is relative to ``root`` (e.g. ``query/0001_c1s1_001051_00.jpg``),
        ``key = key_from_relpath(relpath)``, ``pid`` is the file-name pid as given (train and test
        pids are disjoint in Market-1501 and DukeMTMC-reID, so no offset; -1 stays -1),
        ``camid`` is the camera number minus 1 (0-based), ``model_id`` is -1. Whether train and
        test pids really are disjoint is left to the manifest validation.

    Raises:
        LayoutError: ``"<file>: <what>"`` for a root missing one of the three folders, a ``.jpg``
            whose name is not ``<pid>_c<cam>...`` (pid -1 or non-negative, camera >= 1), a query
            image with pid -1 or 0, two images with the same sample key (e.g. ``a.jpg`` and
            ``a.JPG``), or (with ``check_images``) an image PIL cannot open and verify. The file
            named is the image itself (no line applies).

    The parser only reads the dataset; it never writes to it.
    """
    return collect(DATASET, fill, root, check_images=check_images)


def fill(table: RowTable, root: str | Path, check_images: bool = True) -> None:
    """Stream a Market-1501-style folder into ``table``, one directory entry at a time (flat
    memory; the table orders the rows). Rows, errors and options as :func:`parse`."""
    root = Path(root)
    require_folders(root, [name for name, _ in FOLDERS], "Market-1501")
    for folder, split in FOLDERS:
        for image in scan_jpegs(root / folder):
            pid, camid = _parse_name(image)
            if split == "train" and pid in (JUNK_PID, DISTRACTOR_PID):
                continue
            if split == "query" and pid in (JUNK_PID, DISTRACTOR_PID):
                kind = "junk" if pid == JUNK_PID else "distractor"
                raise LayoutError(image, None, f"query image has {kind} pid {pid}; queries must be real identities")
            add_scanned(table, root, folder, image, pid, camid, split, check_images)


def _parse_name(image: Path) -> tuple[int, int]:
    match = FILE_NAME.fullmatch(image.name)
    if match is None:
        raise LayoutError(
            image,
            None,
            f"file name {image.name!r} is not in Market-1501 form <pid>_c<cam>s<seq>_<frame>_<n>.jpg "
            "or DukeMTMC-reID form <pid>_c<cam>_f<frame>.jpg",
        )
    pid = int(match["pid"])
    if match["pid"].startswith("-") and pid != JUNK_PID:
        raise LayoutError(image, None, f"pid {match['pid']!r} of {image.name!r} must be -1 (junk) or >= 0")
    cam = int(match["cam"])
    if cam < 1:
        raise LayoutError(image, None, f"camera field {match['cam']!r} of {image.name!r} must be >= 1")
    return pid, cam - 1
