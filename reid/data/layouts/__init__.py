"""Parsers for official on-disk dataset layouts.

Each submodule ``reid.data.layouts.<name>`` exposes ``fill(table, root: Path, ...)``, which streams
one official layout into a :class:`~reid.data.row_table.RowTable` one list line (or directory
entry) at a time, so memory stays flat for a million images, and ``parse(root, ...) -> Manifest``,
the same rows in memory. Each reads one official layout (``msmt17`` for the ``MSMT17_V1``/``MSMT17_V2`` folders, ``vehicle1m``
for ``Vehicle-1M``, ``market1501`` for Market-1501 / DukeMTMC-reID style folders, ``veri776`` for
``VeRi``, ``vehicleid`` for ``VehicleID_V1.0``) and raises :class:`LayoutError`
(``"<file>:<line>: <what>"``) on anything that does not follow it. Parsers never write to disk.
:func:`fill` and :func:`parse` dispatch on the layout name.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from reid.data.layouts.errors import LayoutError
from reid.data.manifest import Manifest
from reid.data.row_table import RowTable, collect

__all__ = ["LayoutError", "get_parser", "parse", "fill", "LAYOUT_OPTIONS"]

#: Options a caller may pass to :func:`parse` for every layout; a layout whose parser does not
#: take one of them ignores it (e.g. ``test_set``/``gallery_seed``/``test_sets`` for ``msmt17``,
#: ``val`` for everything but ``msmt17``).
LAYOUT_OPTIONS = frozenset({"check_images", "test_sets", "val"})


def _module(name: str) -> ModuleType:
    if not name.isidentifier() or name.startswith("_") or name in ("errors", "rows"):
        raise ValueError(f"unknown dataset layout {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise ValueError(f"unknown dataset layout {name!r}") from None
        raise
    if not callable(getattr(module, "parse", None)) or not callable(getattr(module, "fill", None)):
        raise ValueError(f"layout module {module.__name__} has no parse() and fill()")
    return module


def get_parser(name: str) -> Callable[..., Manifest]:
    """Return ``reid.data.layouts.<name>.parse`` (imported on demand).

    Raises:
        ValueError: if there is no layout module of that name (or it has no ``parse``/``fill``).
    """
    return _module(name).parse


def _options(layout: str, fill_fn: Callable[..., None], options: dict[str, Any]) -> dict[str, Any]:
    accepted = set(inspect.signature(fill_fn).parameters) - {"table", "root"}
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in accepted:
            kwargs[key] = value
        elif key not in LAYOUT_OPTIONS:
            raise TypeError(f"layout {layout!r} does not take option {key!r}; it takes {sorted(accepted)}")
    return kwargs


def fill(layout: str, table: RowTable, root: str | Path, **options: Any) -> None:
    """Stream the dataset folder ``root`` in the official ``layout`` into ``table`` (flat memory).

    Options are filtered as in :func:`parse`. Raises what :func:`parse` raises.
    """
    fill_fn = _module(layout).fill
    fill_fn(table, Path(root), **_options(layout, fill_fn, options))


def parse(layout: str, root: str | Path, dataset: str | None = None, **options: Any) -> Manifest:
    """Parse the dataset folder ``root`` in the official ``layout`` (``msmt17``, ``vehicle1m``, ...)
    into memory (``prepare`` streams with :func:`fill` instead).

    Args:
        layout: layout module name under ``reid.data.layouts``.
        root: the dataset folder itself (e.g. ``.../MSMT17_V1``, ``.../Vehicle-1M``).
        dataset: name to give the returned manifest (default: the layout parser's own name).
        **options: keyword options of the layout's ``parse``. Options whose value is ``None`` are
            dropped (the parser's default applies); options in :data:`LAYOUT_OPTIONS` that this
            layout's parser does not take are ignored, so one set of dataset params fits every layout.

    Returns:
        the layout parser's :class:`Manifest`, renamed to ``dataset`` if given.

    Raises:
        ValueError: unknown layout.
        TypeError: an option that is neither taken by the layout's parser nor in ``LAYOUT_OPTIONS``.
        LayoutError: whatever the layout parser raises (``"<file>:<line>: <what>"``).
    """
    module = _module(layout)
    name = module.DATASET if dataset is None else dataset
    return collect(name, module.fill, Path(root), **_options(layout, module.fill, options))
