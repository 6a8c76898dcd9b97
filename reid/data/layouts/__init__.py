"""Parsers for official on-disk dataset layouts.

Each submodule ``reid.data.layouts.<name>`` exposes ``parse(root: Path, ...) -> Manifest`` that
reads one official layout (``msmt17`` for the ``MSMT17_V1``/``MSMT17_V2`` folders, ``vehicle1m``
for ``Vehicle-1M``, ``market1501`` for Market-1501 / DukeMTMC-reID style folders, ``veri776`` for
``VeRi``, ``vehicleid`` for ``VehicleID_V1.0``) and raises :class:`LayoutError`
(``"<file>:<line>: <what>"``) on anything that does not follow it. Parsers never write to disk.
:func:`parse` dispatches on the layout name.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any, Callable

from reid.data.layouts.errors import LayoutError
from reid.data.manifest import Manifest

__all__ = ["LayoutError", "get_parser", "parse", "LAYOUT_OPTIONS"]

#: Options a caller may pass to :func:`parse` for every layout; a layout whose parser does not
#: take one of them ignores it (e.g. ``test_set``/``gallery_seed``/``test_sets`` for ``msmt17``,
#: ``val`` for everything but ``msmt17``).
LAYOUT_OPTIONS = frozenset({"check_images", "test_sets", "val"})


def get_parser(name: str) -> Callable[..., Manifest]:
    """Return ``reid.data.layouts.<name>.parse`` (imported on demand).

    Raises:
        ValueError: if there is no layout module of that name (or it has no ``parse``).
    """
    if not name.isidentifier() or name.startswith("_") or name == "errors":
        raise ValueError(f"unknown dataset layout {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise ValueError(f"unknown dataset layout {name!r}") from None
        raise
    parser = getattr(module, "parse", None)
    if parser is None:
        raise ValueError(f"layout module {module.__name__} has no parse()")
    return parser


def parse(layout: str, root: str | Path, dataset: str | None = None, **options: Any) -> Manifest:
    """Parse the dataset folder ``root`` in the official ``layout`` (``msmt17``, ``vehicle1m``, ...).

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
    parser = get_parser(layout)
    accepted = set(inspect.signature(parser).parameters)
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in accepted:
            kwargs[key] = value
        elif key not in LAYOUT_OPTIONS:
            raise TypeError(f"layout {layout!r} does not take option {key!r}; it takes {sorted(accepted - {'root'})}")
    manifest = parser(Path(root), **kwargs)
    return manifest if dataset is None else dataclasses.replace(manifest, dataset=dataset)
