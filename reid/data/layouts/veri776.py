"""Parser for the official VeRi-776 layout.

On-disk format read (``root`` is the ``VeRi`` folder itself)::

    root/
      image_train/<file>.jpg     training images
      image_query/<file>.jpg     query images
      image_test/<file>.jpg      gallery images
      name_train.txt  name_query.txt  name_test.txt    (optional) one file name per line

File names read ``<vid>_c<cam>_<timestamp>_<n>.jpg``, e.g. ``0002_c002_00030600_0.jpg``; the camera
field is 1-based (``c001``..``c020``).

Each ``name_<x>.txt`` that exists is the authoritative list of its folder ``image_<x>/`` (images
of the folder it does not name are not read); for a list that does not exist the folder is scanned
instead (not recursively; files not ending in ``.jpg``, any case, such as ``Thumbs.db``, and
sub-folders are ignored). The rest of the release (``train_label.xml``/``test_label.xml`` colour
and type labels, ``gt_image.txt``/``jk_image.txt``, ``camera_*``) is not read: the junk list of
the official evaluation is exactly the gallery images with the query's vehicle and camera, which
the evaluator drops anyway.
"""

from __future__ import annotations

import re
from pathlib import Path

from reid.data.layouts.errors import LayoutError, check_image, read_list, require_folders, scan_jpegs
from reid.data.layouts.rows import add_scanned
from reid.data.manifest import Manifest, Row, key_from_relpath
from reid.data.row_table import RowTable, collect

DATASET = "veri776"
#: (image folder, name list, split) in reading order.
FOLDERS = (
    ("image_train", "name_train.txt", "train"),
    ("image_query", "name_query.txt", "query"),
    ("image_test", "name_test.txt", "gallery"),
)
FILE_NAME = re.compile(r"(?P<vid>\d+)_c(?P<cam>\d+)_(?P<time>\d+)_(?P<n>\d+)\.jpg", re.IGNORECASE)
FORM = "<vid>_c<cam>_<timestamp>_<n>.jpg"


def parse(root: str | Path, check_images: bool = True) -> Manifest:
    """Read a VeRi-776 folder into a :class:`Manifest` named ``veri776``, in memory.

    Same as :func:`fill` into a temporary :class:`~reid.data.row_table.RowTable`.

    Args:
        root: the ``VeRi`` folder (holding ``image_train/``, ``image_query/``, ``image_test/``).
        check_images: also open every image with PIL and ``verify()`` it.

    Returns:
        a Manifest whose rows are, sorted by split (train, query, gallery) then ``relpath``:

        * ``train``: ``image_train/`` (as listed in ``name_train.txt`` if present);
        * ``query``: ``image_query/`` (``name_query.txt``);
        * ``gallery``: ``image_test/`` (``name_test.txt``).

        ``relpath`` is relative to ``root`` (e.g. ``image_query/0002_c002_00030600_0.jpg``),
        ``key = key_from_relpath(relpath)``, ``pid`` is the vehicle id of the file name (train and
        test vehicles are disjoint in VeRi-776, so no offset), ``camid`` is the camera number
        minus 1 (0-based), ``model_id`` is -1 (VeRi-776 has colour and type labels, no models).

    Raises:
        LayoutError: ``"<file>:<line>: <what>"`` for a root missing one of the three folders;
            in a name list, a line that is not one bare file name in VeRi form (camera >= 1), a
            name listed twice, or a missing image; in a scanned folder (the image is named, no
            line), a ``.jpg`` not in VeRi form or two images with the same sample key (e.g.
            ``a.jpg`` and ``a.JPG``); and (with ``check_images``) an image PIL cannot open and
            verify (at the list line, or naming the image when scanned).

    The parser only reads the dataset; it never writes to it.
    """
    return collect(DATASET, fill, root, check_images=check_images)


def fill(table: RowTable, root: str | Path, check_images: bool = True) -> None:
    """Stream a VeRi-776 folder into ``table``, one list line or directory entry at a time (flat
    memory; the table orders the rows). Rows, errors and options as :func:`parse`."""
    root = Path(root)
    require_folders(root, [folder for folder, _, _ in FOLDERS], "VeRi-776")
    for folder, list_name, split in FOLDERS:
        list_path = root / list_name
        if list_path.is_file():
            _read_names(table, root, folder, split, list_path, check_images)
        else:
            _scan(table, root, folder, split, check_images)


def _parse_name(file: Path, lineno: int | None, name: str) -> tuple[int, int]:
    match = FILE_NAME.fullmatch(name)
    if match is None:
        raise LayoutError(file, lineno, f"file name {name!r} is not in VeRi-776 form {FORM}")
    cam = int(match["cam"])
    if cam < 1:
        raise LayoutError(file, lineno, f"camera field {match['cam']!r} of {name!r} must be >= 001")
    return int(match["vid"]), cam - 1


def _read_names(table: RowTable, root: Path, folder: str, split: str, list_path: Path,
                check_images: bool) -> None:
    for lineno, fields in read_list(list_path):
        if len(fields) != 1:
            raise LayoutError(
                list_path, lineno, f"expected 1 field '<file name>', got {len(fields)}: {' '.join(fields)!r}"
            )
        name = fields[0]
        vid, camid = _parse_name(list_path, lineno, name)
        relpath = f"{folder}/{name}"
        first = table.add(Row(key_from_relpath(relpath), relpath, vid, camid, -1, split), list_path, lineno)
        if first is not None:
            raise LayoutError(list_path, lineno, f"image {name} listed twice (first at line {first.line})")
        check_image(list_path, lineno, root / folder / name, check_images)


def _scan(table: RowTable, root: Path, folder: str, split: str, check_images: bool) -> None:
    for image in scan_jpegs(root / folder):
        vid, camid = _parse_name(image, None, image.name)
        add_scanned(table, root, folder, image, vid, camid, split, check_images)
