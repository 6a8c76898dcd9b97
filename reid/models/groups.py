"""Optimizer parameter groups, the form every model's ``param_groups(base_lr)`` returns."""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn

__all__ = ["lr_groups"]


def lr_groups(entries: Iterable[tuple[str, nn.Module, float]]) -> list[dict[str, Any]]:
    """``[{"name", "params", "lr"}, ...]`` from ``(name, module, lr)`` entries, in order: each
    module's trainable parameters (``requires_grad``) at ``lr``; a group without any is omitted.
    The engine's schedule scales every group's ``lr`` by the same factor."""
    out: list[dict[str, Any]] = []
    for name, module, lr in entries:
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            out.append({"name": name, "params": params, "lr": lr})
    return out
