"""Parser for the official VehicleID layout (PKU VehicleID, ``VehicleID_V1.0``).

On-disk format read (``root`` is the ``VehicleID_V1.0`` folder itself)::

    root/
      image/<image>.jpg
      attribute/model_attr.txt           lines "<vid> <model_id>" (only some vehicles have one)
      train_test_split/
        train_list.txt                   lines "<image> <vid>"
        test_list_800.txt  test_list_1600.txt  test_list_2400.txt  test_list_3200.txt
        test_list_6000.txt test_list_13164.txt ...   lines "<image> <vid>"

``<image>`` is the image name WITHOUT extension (e.g. ``0001234``); the file is
``image/<image>.jpg``. The test lists overlap (the small ones are subsets of the large ones), so a
test image is one row whose ``test_sets`` names every list holding it. Test list names drop the
``_list`` of the file name: ``test_list_800.txt`` is the test set ``test_800`` (matching
Vehicle-1M's ``test_1000`` style). Other files of the release (``attribute/color_attr.txt``,
``attribute/img2vid.txt``) are not read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

from reid.data.layouts.errors import LayoutError, parse_id, read_list
from reid.data.layouts.rows import add_listed
from reid.data.manifest import Manifest, Row, key_from_relpath
from reid.data.row_table import RowTable, collect

DATASET = "vehicleid"
IMAGE_DIR = "image"
SPLIT_DIR = "train_test_split"
MODEL_ATTR = "attribute/model_attr.txt"
TRAIN_LIST = "train_list.txt"
TEST_LIST = re.compile(r"test_list_(?P<size>.+)\.txt")
#: VehicleID has no camera ids; every row gets this one (evaluation protocols assign query and
#: gallery cameras per draw, see ``reid.data.protocols``).
CAMID = 0


def _split_dir(root: Path) -> Path:
    if not root.is_dir():
        raise LayoutError(root, None, "VehicleID root is not a directory")
    if (root / SPLIT_DIR).is_dir():
        return root / SPLIT_DIR
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and (p / SPLIT_DIR).is_dir())
    hint = f" (did you mean {candidates[0]}?)" if candidates else ""
    raise LayoutError(root, None, f"no {SPLIT_DIR}/ folder found{hint}")


def _list_files(split_dir: Path) -> dict[str, Path]:
    """Test-set name -> list file, in size order (numeric sizes first, ascending)."""
    found = {}
    for path in split_dir.iterdir():
        match = TEST_LIST.fullmatch(path.name)
        if match and path.is_file():
            found[f"test_{match['size']}"] = path
    return {name: found[name] for name in sorted(found, key=_size_order)}


def _size_order(name: str) -> tuple[bool, int, str]:
    size = name[len("test_"):]
    return (not size.isdigit(), int(size) if size.isdigit() else 0, name)


def available_test_sets(root: str | Path) -> list[str]:
    """Names of the test lists present in ``root/train_test_split`` (``test_list_800.txt`` ->
    ``test_800``), in ascending size order.

    Raises:
        LayoutError: if ``root`` has no ``train_test_split`` folder.
    """
    return list(_list_files(_split_dir(Path(root))))


def parse(
    root: str | Path,
    test_sets: Optional[Sequence[str]] = None,
    check_images: bool = True,
) -> Manifest:
    """Read a VehicleID folder into a :class:`Manifest` named ``vehicleid``, in memory.

    Same as :func:`fill` into a temporary :class:`~reid.data.row_table.RowTable`.

    Args:
        root: the ``VehicleID_V1.0`` folder.
        test_sets: which test lists to read, by test-set name (``test_800``, ``test_1600``,
            ``test_2400``, ``test_3200``, ``test_6000``, ``test_13164`` in the official release;
            a single string is one name); None reads every ``test_list_*.txt`` present.
        check_images: also open every image with PIL and ``verify()`` it.

    Returns:
        a Manifest whose rows are, sorted by split (train, test) then ``relpath``:

        * ``train``: every line of ``train_list.txt``;
        * ``test``: every image of the test lists read, once, with ``test_sets`` the sorted tuple
          of the names of the lists holding it (e.g. ``("test_1600", "test_800")``: plain string
          order, as everywhere in the manifest).

        ``relpath`` is ``image/<image>.jpg``, ``key = key_from_relpath(relpath)``, ``pid`` = the
        vehicle id (VehicleID's train and test vehicles are disjoint, so no offset), ``camid`` 0
        (VehicleID has no camera ids), ``model_id`` from ``attribute/model_attr.txt``, or -1 for
        a vehicle it does not list. Query/gallery roles of test images are not fixed here:
        ``reid.data.protocols`` draws one gallery image per vehicle per evaluation round.

    Raises:
        LayoutError: ``"<file>:<line>: <what>"`` for a missing ``train_test_split/`` folder,
            ``model_attr.txt`` or train list; no test list at all, or an unknown name in
            ``test_sets`` (the message lists the available ones); a malformed line (not two
            fields, non-integer ids, an image name with a path or ``.jpg`` extension); a vehicle
            with two different model ids in ``model_attr.txt``; the same image twice in one list;
            an image in the train list and a test list, or in two test lists with different
            vehicle ids; a test vehicle that is also a train vehicle; a missing image; or (with
            ``check_images``) an image PIL cannot open and verify (the image path is named).
        ValueError: if ``test_sets`` is empty.

    The parser only reads the dataset; it never writes to it.
    """
    return collect(DATASET, fill, root, test_sets=test_sets, check_images=check_images)


def fill(
    table: RowTable,
    root: str | Path,
    test_sets: Optional[Sequence[str]] = None,
    check_images: bool = True,
) -> None:
    """Stream a VehicleID folder into ``table``, one list line at a time. Memory holds one entry
    per vehicle (model id, first train line), never per image. Rows, errors and options as
    :func:`parse`."""
    root = Path(root)
    split_dir = _split_dir(root)
    lists = _list_files(split_dir)
    if not lists:
        raise LayoutError(split_dir, None, "no test list (test_list_<size>.txt) found")
    if test_sets is None:
        names = list(lists)
    else:
        wanted = {test_sets} if isinstance(test_sets, str) else set(test_sets)
        if not wanted:
            raise ValueError("test_sets must name at least one test list (None reads them all)")
        for name in sorted(wanted):
            if name not in lists:
                raise LayoutError(
                    split_dir, None, f"unknown test list {name!r}; available: {', '.join(lists)}"
                )
        names = [name for name in lists if name in wanted]

    models = _read_models(root / MODEL_ATTR)
    train_path = split_dir / TRAIN_LIST
    train_vids: dict[int, int] = {}  # vid -> first line
    for relpath, vid, line in _read(train_path):
        train_vids.setdefault(vid, line)
        row = Row(key_from_relpath(relpath), relpath, vid, CAMID, models.get(vid, -1), "train")
        add_listed(table, root, row, train_path, line, check_images, name=_image_name(relpath))
    for name in names:
        path = lists[name]
        for relpath, vid, line in _read(path):
            first = table.get(relpath)
            if first is not None and first.row.split == "train":
                raise LayoutError(path, line, f"image {relpath} is also a train image (at {train_path}:"
                                              f"{first.line})")
            if vid in train_vids:
                raise LayoutError(path, line, f"test vehicle {vid} is also a train vehicle (at {train_path}:"
                                              f"{train_vids[vid]})")
            if first is not None and first.row.pid != vid:
                raise LayoutError(path, line, f"image {relpath} has vehicle id {vid} but vehicle id "
                                              f"{first.row.pid} at {first.src}:{first.line}")
            row = Row(key_from_relpath(relpath), relpath, vid, CAMID, models.get(vid, -1), "test", (name,))
            add_listed(table, root, row, path, line, check_images, name=_image_name(relpath))


def _image_name(relpath: str) -> str:
    """The list's bare image name of ``image/<name>.jpg``, as messages name it."""
    return relpath[len(IMAGE_DIR) + 1:-len(".jpg")]


def _read_models(path: Path) -> dict[int, int]:
    models: dict[int, tuple[int, int]] = {}  # vid -> (model_id, line)
    for lineno, fields in read_list(path):
        if len(fields) != 2:
            raise LayoutError(path, lineno, f"expected 2 fields '<vid> <model_id>', got {len(fields)}: "
                                            f"{' '.join(fields)!r}")
        vid = parse_id(path, lineno, fields[0], "vehicle id")
        model_id = parse_id(path, lineno, fields[1], "model id")
        known = models.get(vid)
        if known is None:
            models[vid] = (model_id, lineno)
        elif known[0] != model_id:
            raise LayoutError(path, lineno, f"vehicle {vid} has model id {model_id} but model id {known[0]} "
                                            f"at line {known[1]}")
    return {vid: model_id for vid, (model_id, _) in models.items()}


def _read(list_path: Path) -> Iterator[tuple[str, int, int]]:
    """Stream one list file as ``(relpath, vid, line)``, checking each line's fields."""
    for lineno, fields in read_list(list_path):
        if len(fields) != 2:
            raise LayoutError(list_path, lineno, f"expected 2 fields '<image> <vid>', got {len(fields)}: "
                                                 f"{' '.join(fields)!r}")
        image, vid_text = fields
        vid = parse_id(list_path, lineno, vid_text, "vehicle id")
        if "/" in image or "\\" in image:
            raise LayoutError(list_path, lineno, f"image name {image!r} must be a bare name (no folder)")
        if image.lower().endswith(".jpg"):
            raise LayoutError(list_path, lineno, f"image name {image!r} must not carry the .jpg extension")
        yield f"{IMAGE_DIR}/{image}.jpg", vid, lineno
