"""Adding a parsed image to the :class:`~reid.data.row_table.RowTable`, with the layout errors for
the conflicts the table reports (an image listed twice, two paths with one sample key). Shared by
the list-based vehicle parsers and the folder-scanning person parsers."""

from __future__ import annotations

import os
from pathlib import Path

from reid.data.layouts.errors import LayoutError, check_image
from reid.data.manifest import Row, key_from_relpath
from reid.data.row_table import RowTable

__all__ = ["add_listed", "add_scanned"]


def add_listed(table: RowTable, root: Path, row: Row, path: Path, line: int, check_images: bool,
               name: str | None = None) -> None:
    """Add an image listed at ``path:line``; a test image already added by an earlier test list
    joins this list too. The image is checked on disk (:func:`check_image`) the first time it is
    listed.

    Args:
        name: how messages name the image (default ``row.relpath``).

    Raises:
        LayoutError: at ``path:line``: the image has the sample key of another path, is listed
            twice in one list (naming the first line), or is missing / unreadable.
    """
    first = table.add(row, path, line)
    if first is None:
        check_image(path, line, os.path.join(root, row.relpath), check_images)
        return
    name = row.relpath if name is None else name
    if first.row.relpath != row.relpath:
        raise LayoutError(path, line, f"image {name} has the sample key of {first.row.relpath} "
                                      f"(at {first.src}:{first.line})")
    again = first if row.split == "train" else table.add_test_sets(row.relpath, row.test_sets, path, line)
    if again is not None:
        raise LayoutError(path, line, f"image {name} listed twice (first at line {again.line})")


def add_scanned(table: RowTable, root: Path, folder: str, image: Path, pid: int, camid: int, split: str,
                check_images: bool) -> None:
    """Add the image file ``image`` found by scanning ``root / folder`` (no list line applies).

    Raises:
        LayoutError: naming ``image``: its sample key is already taken by another file (e.g.
            ``a.jpg`` and ``a.JPG``), or it is unreadable (with ``check_images``).
    """
    relpath = f"{folder}/{image.name}"
    key = key_from_relpath(relpath)
    first = table.add(Row(key, relpath, pid, camid, -1, split), image, None)
    if first is not None:
        raise LayoutError(image, None, f"same sample key {key!r} as {root / first.row.relpath}")
    check_image(image, None, image, check_images)
