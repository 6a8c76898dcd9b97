"""``LayoutError`` and the small helpers the layout parsers use to raise it at a file and line.

Every problem a parser finds in an on-disk dataset layout is reported as a :class:`LayoutError`
whose message reads ``"<file>:<line>: <what>"`` (``"<file>: <what>"`` where no line applies, e.g. a
missing list file), so the user can open the offending list file at the offending line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from PIL import Image


class LayoutError(ValueError):
    """A dataset folder does not follow its official layout.

    Args:
        file: the file (usually a list file) or folder the problem was found in.
        line: 1-based line number in ``file``, or ``None`` where no line applies.
        what: what is wrong, in words.

    Attributes:
        file, line, what: as given. ``str(err)`` is ``"<file>:<line>: <what>"``
        (or ``"<file>: <what>"`` when ``line`` is ``None``).
    """

    def __init__(self, file: str | Path, line: int | None, what: str) -> None:
        self.file = str(file)
        self.line = line
        self.what = what
        loc = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{loc}: {what}")

    def __reduce__(self):  # keep picklable (e.g. across Ray / multiprocessing workers)
        return (type(self), (self.file, self.line, self.what))


def read_list(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Stream a whitespace-separated list file, one line at a time (flat memory).

    Yields:
        ``(lineno, fields)`` for every non-blank line, ``lineno`` 1-based; ``fields`` is the line
        split on whitespace (so CRLF line ends and repeated blanks are tolerated).

    Raises:
        LayoutError: ``"<path>: missing list file"`` if ``path`` is not a file, or at the line that
            is not valid UTF-8.
    """
    if not path.is_file():
        raise LayoutError(path, None, "missing list file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise LayoutError(path, lineno, f"line is not valid UTF-8 ({err})") from None
            fields = text.split()
            if fields:
                yield lineno, fields


def parse_id(path: Path, lineno: int, text: str, what: str) -> int:
    """Parse a non-negative integer id field.

    Returns:
        the int value of ``text``.

    Raises:
        LayoutError: at ``path:lineno`` naming ``what`` if ``text`` is not a non-negative integer.
    """
    if not text.isascii() or not text.isdigit():
        raise LayoutError(path, lineno, f"{what} {text!r} is not a non-negative integer")
    return int(text)


def check_image(path: Path, lineno: int | None, image: str | Path, verify: bool) -> None:
    """Check that the image a list line names exists and (if ``verify``) that PIL can read it.

    ``verify`` opens the file with PIL and calls ``Image.verify()`` (header/structure check; it
    does not decode every pixel, so a JPEG truncated after its header may still pass).

    Raises:
        LayoutError: at ``path:lineno``, naming ``image``, if it is missing or unreadable.
    """
    if not os.path.isfile(image):
        raise LayoutError(path, lineno, f"missing image {image}")
    if verify:
        try:
            with Image.open(image) as im:
                im.verify()
        except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
            raise LayoutError(path, lineno, f"unreadable image {image}: {err}") from None


def scan_jpegs(folder: Path) -> Iterator[Path]:
    """Stream the ``.jpg`` files (suffix in any case) of ``folder``, in directory order.

    Unsorted, so memory stays flat for folders of any size: callers add the images to a
    :class:`~reid.data.row_table.RowTable`, which orders the rows.
    """
    with os.scandir(folder) as entries:
        for entry in entries:
            if Path(entry.name).suffix.lower() == ".jpg" and entry.is_file():
                yield folder / entry.name


def require_folders(root: Path, folders: list[str], what: str) -> None:
    """Check that ``root`` is a directory holding every folder in ``folders``.

    Raises:
        LayoutError: naming ``root``: not a directory (``what`` names the dataset), or the missing
            folders, with a hint when a sub-folder of ``root`` holds the first one (the user gave
            the parent of the dataset folder).
    """
    if not root.is_dir():
        raise LayoutError(root, None, f"{what} root is not a directory")
    missing = [name for name in folders if not (root / name).is_dir()]
    if not missing:
        return
    hint = ""
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and (p / folders[0]).is_dir())
    if candidates:
        hint = f" (did you mean {candidates[0]}?)"
    raise LayoutError(root, None, f"missing folder(s) {', '.join(m + '/' for m in missing)}{hint}")
