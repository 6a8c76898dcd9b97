"""Editing dataset list files in tests."""

from __future__ import annotations

from pathlib import Path


def set_line(path: Path, lineno: int, new: str | None) -> None:
    """Replace line ``lineno`` (1-based) of ``path`` with ``new``; append it when ``lineno`` is past
    the end; delete the line when ``new`` is None."""
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    elif lineno > len(lines):
        lines.append(new)
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")
