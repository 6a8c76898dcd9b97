"""Parser for the official Vehicle-1M layout.

On-disk format read (``root`` is the ``Vehicle-1M`` folder itself)::

    root/
      image/<vid>/<name>.jpg
      train-test-split/                  (or train_test_split/)
        train_list.txt
        test_1000.txt  test_2000.txt  test_3000.txt
        ... each line "<vid>/<name>.jpg <vehicle_id> <model_id>"

List paths are relative to ``image/``; paths that already start with ``image/`` are accepted too.
Test lists hold every image of their test vehicles; the query/gallery split is drawn per
evaluation round by ``reid.data.protocols`` (VehicleID convention: one gallery image per
vehicle, the rest are queries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

from reid.data.layouts.errors import LayoutError, parse_id, read_list
from reid.data.layouts.rows import add_listed
from reid.data.manifest import Manifest, Row, key_from_relpath
from reid.data.row_table import RowTable, collect

DATASET = "vehicle1m"
IMAGE_DIR = "image"
SPLIT_DIRS = ("train-test-split", "train_test_split")
TRAIN_LIST = "train_list.txt"
#: Vehicle-1M has no camera ids; every row gets this one (evaluation protocols assign query and
#: gallery cameras per draw, see ``reid.data.protocols``).
CAMID = 0


def _split_dir(root: Path) -> Path:
    if not root.is_dir():
        raise LayoutError(root, None, "Vehicle-1M root is not a directory")
    for name in SPLIT_DIRS:
        if (root / name).is_dir():
            return root / name
    hint = f" (did you mean {root / 'Vehicle-1M'}?)" if (root / "Vehicle-1M").is_dir() else ""
    raise LayoutError(root, None, f"no split folder ({' or '.join(SPLIT_DIRS)}) found{hint}")


def available_test_sets(root: str | Path) -> list[str]:
    """Names of the test lists present in ``root``'s split folder (``test_*.txt`` stems), sorted.

    Raises:
        LayoutError: if ``root`` has no ``train-test-split``/``train_test_split`` folder.
    """
    split_dir = _split_dir(Path(root))
    return sorted(p.stem for p in split_dir.glob("test_*.txt") if p.is_file())


def parse(
    root: str | Path,
    test_sets: Optional[Sequence[str]] = None,
    check_images: bool = True,
) -> Manifest:
    """Read a Vehicle-1M folder into a :class:`Manifest` named ``vehicle1m``, in memory.

    Same as :func:`fill` into a temporary :class:`~reid.data.row_table.RowTable`.

    Args:
        root: the ``Vehicle-1M`` folder.
        test_sets: which test lists to read, as stems of ``test_*.txt`` (``test_1000``,
            ``test_2000``, ``test_3000``, ``test_full`` in the official release); None reads every
            list present.
        check_images: also open every image with PIL and ``verify()`` it.

    Returns:
        a Manifest whose rows are, sorted by split (train, test) then ``relpath``:

        * ``train``: every line of ``train_list.txt`` (camid 0);
        * ``test``: every image of the test lists read, once, with ``test_sets`` naming the lists
          that hold it (the official lists are nested, so an image of ``test_1000`` is also in
          ``test_2000``...). camid 0.

        The query/gallery roles of test images are not fixed here: following the VehicleID
        convention, ``reid.data.protocols.draw_galleries`` draws one gallery image per vehicle
        per evaluation round. ``relpath`` is relative to ``root`` (``image/<vid>/<name>.jpg``),
        ``key = key_from_relpath(relpath)``, ``pid`` = vehicle id (Vehicle-1M ids are unique across
        train and test, so no offset), ``model_id`` = the third list field.

    Raises:
        LayoutError: ``"<file>:<line>: <what>"`` for a missing split folder or list file, an
            unknown test list (the message lists the available ones), a malformed line (not
            three fields, non-integer ids, path not ``<vid>/<name>``), a vehicle id that disagrees
            with its folder, a vehicle listed with two different model ids (across all lists read),
            a test vehicle that is also a train vehicle, an image listed twice in one list, a
            missing image, or (with ``check_images``) an image PIL cannot open and verify (the
            image path is named).

    The parser only reads the dataset; it never writes to it.
    """
    return collect(DATASET, fill, root, test_sets=test_sets, check_images=check_images)


def fill(
    table: RowTable,
    root: str | Path,
    test_sets: Optional[Sequence[str]] = None,
    check_images: bool = True,
) -> None:
    """Stream a Vehicle-1M folder into ``table``, one list line at a time. Memory holds one entry
    per vehicle (model id, first train line), never per image. Rows, errors and options as
    :func:`parse`."""
    root = Path(root)
    split_dir = _split_dir(root)
    available = available_test_sets(root)
    names = available if test_sets is None else list(test_sets)
    for name in names:
        if name not in available:
            raise LayoutError(split_dir / f"{name}.txt", None,
                              f"unknown test list {name!r}; available: {', '.join(available) or 'none'}")

    models: dict[int, tuple[int, Path, int]] = {}  # vid -> (model_id, file, line) of first sight
    train_vids: dict[int, tuple[Path, int]] = {}  # vid -> (file, line) of first sight
    train_path = split_dir / TRAIN_LIST
    for relpath, vid, model_id, line in _read(train_path, models):
        train_vids.setdefault(vid, (train_path, line))
        add_listed(table, root, Row(key_from_relpath(relpath), relpath, vid, CAMID, model_id, "train"),
                   train_path, line, check_images)
    for name in names:
        path = split_dir / f"{name}.txt"
        for relpath, vid, model_id, line in _read(path, models):
            if vid in train_vids:
                tpath, tline = train_vids[vid]
                raise LayoutError(path, line, f"test vehicle {vid} is also a train vehicle (at {tpath}:{tline})")
            add_listed(table, root, Row(key_from_relpath(relpath), relpath, vid, CAMID, model_id, "test", (name,)),
                       path, line, check_images)


def _read(list_path: Path, models: dict[int, tuple[int, Path, int]]) -> Iterator[tuple[str, int, int, int]]:
    """Stream one list file as ``(relpath, vid, model_id, line)``, checking each line's fields and
    that a vehicle keeps one model id across every list (``models``: vid -> first sight)."""
    for lineno, fields in read_list(list_path):
        if len(fields) != 3:
            raise LayoutError(
                list_path,
                lineno,
                f"expected 3 fields '<vid>/<name>.jpg <vehicle_id> <model_id>', got {len(fields)}: "
                f"{' '.join(fields)!r}",
            )
        path_in_list, vid_text, model_text = fields
        vid = parse_id(list_path, lineno, vid_text, "vehicle id")
        model_id = parse_id(list_path, lineno, model_text, "model id")
        parts = path_in_list.split("/")
        if parts[0] == IMAGE_DIR and len(parts) == 3:
            parts = parts[1:]
        if len(parts) != 2 or not all(parts):
            raise LayoutError(list_path, lineno, f"image path {path_in_list!r} is not '<vid>/<name>'")
        folder = parts[0]
        if not folder.isascii() or not folder.isdigit() or int(folder) != vid:
            raise LayoutError(list_path, lineno, f"folder {folder!r} disagrees with vehicle id {vid}")
        known = models.get(vid)
        if known is None:
            models[vid] = (model_id, list_path, lineno)
        elif known[0] != model_id:
            raise LayoutError(
                list_path,
                lineno,
                f"vehicle {vid} has model id {model_id} but model id {known[0]} at {known[1]}:{known[2]}",
            )
        yield f"{IMAGE_DIR}/{parts[0]}/{parts[1]}", vid, model_id, lineno
