"""Name -> loss registry: ``build_loss("ce", num_classes=751, epsilon=0.1)``.

Every loss is a callable ``(outputs: dict, batch: dict) -> (scalar_tensor, {name: float})``.
Names match the ``losses`` tuples declared by the models (e.g. ``("ce", "triplet")``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.triplet import TripletLoss

__all__ = ["available_losses", "build_loss", "loss_factory", "register_loss"]

F = TypeVar("F", bound=Callable[..., Any])

_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLabelSmooth,
    "triplet": TripletLoss,
}


def register_loss(name: str) -> Callable[[F], F]:
    """Decorator registering a loss class/factory under ``name``.

    Raises:
        ValueError: empty name or ``name`` already registered (the message names it).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"loss name must be a non-empty string, got {name!r}")
    if name in _LOSSES:
        raise ValueError(f"loss {name!r} is already registered")

    def decorator(obj: F) -> F:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = obj
        return obj

    return decorator


def available_losses() -> list[str]:
    """Sorted registered loss names."""
    return sorted(_LOSSES)


def loss_factory(name: str) -> Callable[..., nn.Module]:
    """The class/factory registered as ``name``.

    Raises:
        KeyError: unknown ``name``; the message lists the available names.
    """
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; available: {', '.join(available_losses())}") from None


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the loss registered as ``name`` with ``kwargs``.

    ``"ce"`` -> :class:`CrossEntropyLabelSmooth` (needs ``num_classes``; ``epsilon``),
    ``"triplet"`` -> :class:`TripletLoss` (``margin``, ``normalize``).

    Raises:
        KeyError: unknown ``name``; the message lists the available names.
    """
    return loss_factory(name)(**kwargs)
