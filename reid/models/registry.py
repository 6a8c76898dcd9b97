"""Name -> model-factory registry.

The engine builds models by name from the config (``model.name``), so every
model class registers itself here with :func:`register`::

    @register("resnet_bnneck")
    class ResNetBNNeck(nn.Module):
        losses = ("ce", "triplet")
        def __init__(self, num_classes: int, **kwargs): ...

and is built with :func:`build` ``("resnet_bnneck", num_classes=751, depth=50)``.

A :class:`Registry` instance holds the mapping; the module-level functions
operate on the default instance :data:`MODELS`. Tests (or plugins) that need an
isolated namespace can create their own :class:`Registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["MODELS", "Registry", "available", "build", "register"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A mapping from names to callables that build an ``nn.Module``.

    Args:
        kind: Human-readable label used in error messages (e.g. ``"model"``).
    """

    def __init__(self, kind: str = "model") -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Class/function decorator registering the decorated object under ``name``.

        The decorated object is returned unchanged.

        Raises:
            ValueError: ``name`` is empty / not a string, or is already registered.
            TypeError: the decorated object is not callable.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered "
                f"(by {self._entries[name]!r}); names must be unique"
            )

        def decorator(obj: F) -> F:
            if not callable(obj):
                raise TypeError(f"cannot register non-callable {obj!r} as {self.kind} {name!r}")
            # Re-check: the decorator may be applied later than it was created.
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mainly for tests). Raises ``KeyError`` if absent."""
        if name not in self._entries:
            raise KeyError(self._unknown_message(name))
        del self._entries[name]

    def get(self, name: str) -> Callable[..., nn.Module]:
        """Return the factory registered under ``name``.

        Raises:
            KeyError: unknown name; the message lists the available names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self._unknown_message(name)) from None

    def build(self, name: str, num_classes: int, **kwargs: Any) -> nn.Module:
        """Instantiate ``name`` as ``factory(num_classes=num_classes, **kwargs)``.

        Raises:
            KeyError: unknown name; the message lists the available names.
            TypeError: the factory did not return an ``nn.Module``.
        """
        factory = self.get(name)
        module = factory(num_classes=num_classes, **kwargs)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{self.kind} {name!r} factory returned {type(module).__name__}, expected nn.Module"
            )
        return module

    def available(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _unknown_message(self, name: object) -> str:
        names = ", ".join(self.available()) or "<none>"
        return f"unknown {self.kind} {name!r}; available: {names}"


#: Default model registry used by :func:`register`, :func:`build`, :func:`available`.
MODELS = Registry("model")


def register(name: str) -> Callable[[F], F]:
    """Decorator registering a model class/factory under ``name`` in :data:`MODELS`.

    Raises:
        ValueError: ``name`` already registered (the message names it).
    """
    return MODELS.register(name)


def build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with ``num_classes`` training identities.

    Extra keyword arguments are forwarded to the model constructor.

    Raises:
        KeyError: unknown ``name``; the message lists the available names.
    """
    return MODELS.build(name, num_classes, **kwargs)


def available() -> list[str]:
    """Sorted names of all registered models."""
    return MODELS.available()
