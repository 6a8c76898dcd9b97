"""Weighted sum of the losses a model declares (``model.losses``), with weights from params."""

from __future__ import annotations

from typing import Mapping

import torch

from reid.losses import build_loss


class Criterion:
    """``total = sum_i weight_i * loss_i(outputs, batch)`` over the model's declared losses.

    Args:
        names: the loss names the model declares, e.g. ``("ce", "triplet")``.
        settings: per loss name, a mapping with ``weight`` and the loss's own keyword arguments
            (e.g. ``{"weight": 1.0, "epsilon": 0.1}``).
        extra_kwargs: per loss name, arguments known only at run time (``num_classes`` for ce).

    Raises:
        KeyError: a declared loss has no settings (names the loss and the known settings).
    """

    def __init__(self, names: tuple[str, ...], settings: Mapping[str, Mapping],
                 extra_kwargs: Mapping[str, Mapping] | None = None):
        self.terms = []
        for name in names:
            if name not in settings:
                raise KeyError(f"model needs loss {name!r} but params.loss has only {sorted(settings)}")
            cfg = dict(settings[name])
            weight = float(cfg.pop("weight"))
            cfg.update((extra_kwargs or {}).get(name, {}))
            self.terms.append((name, weight, build_loss(name, **cfg)))

    def __call__(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the weighted total (scalar tensor) and every logged value, prefixed by loss name."""
        total = None
        logs: dict[str, float] = {}
        for name, weight, fn in self.terms:
            value, parts = fn(outputs, batch)
            total = weight * value if total is None else total + weight * value
            for k, v in parts.items():
                logs[k if k.startswith(name) else f"{name}/{k}"] = float(v)
        logs["loss"] = float(total.detach())
        return total, logs
