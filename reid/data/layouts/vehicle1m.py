"""Parser for the official Vehicle-1M layout.

On-disk format read (``root`` is the ``Vehicle-1M`` folder itself)::

    root/
      image/<vid>/<name>.jpg
      train-test-split/                  (or train_test_split/)
        train_list.txt
        test_1000.txt  test_2000.txt  test_3000.txt
        ... each line "<vid>/<name>.jpg <vehicle_id> <model_id>"

List paths are relative to ``image/``; paths that already start with ``image/`` are accepted too.
Test lists hold every image of their test vehicles; the query/gallery split is drawn by the
parser following the VehicleID convention (one gallery image per vehicle, the rest are queries).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reid.data.layouts.errors import LayoutError, check_image, parse_id, read_list
from reid.data.manifest import SPLITS, Manifest, Row, key_from_relpath

DATASET = "vehicle1m"
IMAGE_DIR = "image"
SPLIT_DIRS = ("train-test-split", "train_test_split")
TRAIN_LIST = "train_list.txt"
#: camid given to rows: Vehicle-1M has no camera ids (see ``parse``).
TRAIN_CAMID, QUERY_CAMID, GALLERY_CAMID = 0, 0, 1


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
    test_set: str = "test_1000",
    gallery_seed: int = 0,
    check_images: bool = True,
) -> Manifest:
    """Read a Vehicle-1M folder into a :class:`Manifest` named ``vehicle1m``.

    Args:
        root: the ``Vehicle-1M`` folder.
        test_set: which test list to use, the stem of ``test_*.txt`` (``test_1000``, ``test_2000``
            or ``test_3000`` in the official release).
        gallery_seed: seed of the gallery draw (non-negative int).
        check_images: also open every image with PIL and ``verify()`` it.

    Returns:
        a Manifest whose rows are, sorted by split (train, query, gallery) then ``relpath``:

        * ``train``: every line of ``train_list.txt``;
        * ``gallery``: per vehicle of the test list, ONE image drawn at random: the vehicle's
          images are sorted by relpath and an index is drawn with
          ``numpy.random.default_rng([gallery_seed, vehicle_id])``, so the draw is deterministic,
          independent of file order and identical for a vehicle across test sets;
        * ``query``: all other images of the test vehicles (a vehicle with a single image has
          no query).

        ``relpath`` is relative to ``root`` (``image/<vid>/<name>.jpg``),
        ``key = key_from_relpath(relpath)``, ``pid`` = vehicle id (Vehicle-1M ids are already
        unique across train and test, so no offset), ``model_id`` = the third list field.

        Camera ids: Vehicle-1M has none. So that the standard "drop gallery entries with the
        query's pid AND camid" filter never removes a true match, every query row gets camid 0,
        every gallery row camid 1 and every train row camid 0.

    Raises:
        LayoutError: ``"<file>:<line>: <what>"`` for a missing split folder or list file, an
            unknown ``test_set`` (the message lists the available ones), a malformed line (not
            three fields, non-integer ids, path not ``<vid>/<name>``), a vehicle id that disagrees
            with its folder, a vehicle listed with two different model ids (across all lists read),
            a test vehicle that is also a train vehicle, an image listed twice, a missing image, or
            (with ``check_images``) an image PIL cannot open and verify (the image path is named).
        ValueError: if ``gallery_seed`` is negative.

    The parser only reads; it never writes anything.
    """
    root = Path(root)
    if not isinstance(gallery_seed, (int, np.integer)) or gallery_seed < 0:
        raise ValueError(f"gallery_seed must be a non-negative int, got {gallery_seed!r}")
    split_dir = _split_dir(root)
    test_path = split_dir / f"{test_set}.txt"
    if not test_path.is_file():
        available = available_test_sets(root)
        raise LayoutError(
            test_path, None, f"unknown test_set {test_set!r}; available: {', '.join(available) or 'none'}"
        )

    models: dict[int, tuple[int, Path, int]] = {}  # vid -> (model_id, file, line) of first sight
    seen: dict[str, tuple[Path, int]] = {}
    train = _read(root, split_dir / TRAIN_LIST, models, seen, check_images)
    test = _read(root, test_path, models, seen, check_images)

    train_vids = {vid: (path, line) for _, vid, _, path, line in train}
    by_vehicle: dict[int, list[tuple[str, int]]] = {}
    for relpath, vid, model_id, path, line in test:
        if vid in train_vids:
            tpath, tline = train_vids[vid]
            raise LayoutError(path, line, f"test vehicle {vid} is also a train vehicle (at {tpath}:{tline})")
        by_vehicle.setdefault(vid, []).append((relpath, model_id))

    rows: list[Row] = []
    for relpath, vid, model_id, _, _ in train:
        rows.append(Row(key_from_relpath(relpath), relpath, vid, TRAIN_CAMID, model_id, "train"))
    for vid, images in by_vehicle.items():
        images.sort()
        pick = int(np.random.default_rng([int(gallery_seed), vid]).integers(len(images)))
        for i, (relpath, model_id) in enumerate(images):
            split, camid = ("gallery", GALLERY_CAMID) if i == pick else ("query", QUERY_CAMID)
            rows.append(Row(key_from_relpath(relpath), relpath, vid, camid, model_id, split))
    order = {name: i for i, name in enumerate(SPLITS)}
    rows.sort(key=lambda r: (order[r.split], r.relpath))
    return Manifest(dataset=DATASET, rows=tuple(rows))


def _read(
    root: Path,
    list_path: Path,
    models: dict[int, tuple[int, Path, int]],
    seen: dict[str, tuple[Path, int]],
    check_images: bool,
) -> list[tuple[str, int, int, Path, int]]:
    out = []
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
        relpath = f"{IMAGE_DIR}/{parts[0]}/{parts[1]}"
        if relpath in seen:
            first_path, first_line = seen[relpath]
            raise LayoutError(list_path, lineno, f"image {relpath} listed twice (first at {first_path}:{first_line})")
        seen[relpath] = (list_path, lineno)
        check_image(list_path, lineno, root / relpath, check_images)
        out.append((relpath, vid, model_id, list_path, lineno))
    return out
