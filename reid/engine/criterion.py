"""Weighted sum of the losses a model declares (``model.losses``), with weights from params."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

from reid.engine.distributed import all_gather_cat, all_reduce_mean, world_size
from reid.losses import build_loss
from reid.losses.registry import loss_factory

#: batch labels gathered along with the cross-sample outputs
_LABEL_KEYS = ("pids", "camids", "model_ids")


class Criterion:
    """``total = sum_i weight_i * loss_i(outputs, batch)`` over the model's declared losses.

    Data-parallel training: a loss that compares samples with each other (batch-hard triplet, the
    MGR ranking terms; it names the outputs it compares in ``cross_sample_keys``) is computed on
    the *global* batch: those outputs and the labels are gathered from every rank in rank order
    (differentiably) and every rank computes the same value. Per-sample losses (cross-entropy)
    stay on the rank's own batch. After DeepSpeed averages the gradients over ranks, both give the
    gradient of the loss of one rank holding the whole global batch; the logged values are means
    over ranks, i.e. the global batch's. Batch-hard mining thus sees all ``P * world_size``
    identities of a step, as fast-reid does, instead of only the rank's ``P``.

    Args:
        names: the loss names the model declares, e.g. ``("ce", "triplet")``.
        settings: per loss name (``params.loss``), a mapping with ``weight`` and the loss's own
            keyword arguments (e.g. ``{"weight": 1.0, "epsilon": 0.1}``).
        runtime: values known only at run time (e.g. ``num_classes``), passed to every declared
            loss whose constructor takes an argument of that name.

    Raises:
        KeyError: a declared loss has no settings (names the loss and the known settings).
        ValueError: a setting the loss's constructor does not take (names ``loss.<name>.<key>``).
    """

    def __init__(self, names: tuple[str, ...], settings: Mapping[str, Mapping],
                 runtime: Mapping[str, Any] | None = None):
        self.terms = []
        for name in names:
            if name not in settings:
                raise KeyError(f"model needs loss {name!r} but params.loss has only {sorted(settings)}")
            cfg = dict(settings[name])
            weight = float(cfg.pop("weight"))
            accepted = inspect.signature(loss_factory(name)).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
            unknown = [k for k in cfg if k not in accepted and not takes_any]
            if unknown:
                raise ValueError(f"params.yaml: loss.{name}.{unknown[0]}: not a setting of loss {name!r} "
                                 f"(it takes {sorted(k for k in accepted if k not in (runtime or {}))})")
            cfg.update({k: v for k, v in (runtime or {}).items() if k in accepted})
            self.terms.append((name, weight, build_loss(name, **cfg)))

    def __call__(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the weighted total (scalar tensor) and every logged value, prefixed by loss name
        (means over ranks in data-parallel training; a collective call then)."""
        total = None
        logs: dict[str, float] = {}
        distributed = world_size() > 1
        global_batch = None
        for name, weight, fn in self.terms:
            keys = tuple(getattr(fn, "cross_sample_keys", ()))
            if distributed and keys:
                if global_batch is None:
                    global_batch = {k: all_gather_cat(batch[k]) for k in _LABEL_KEYS if k in batch}
                gathered = {k: all_gather_cat(outputs[k], grad=True) for k in keys}
                value, parts = fn({**outputs, **gathered}, global_batch)
            else:
                value, parts = fn(outputs, batch)
            total = weight * value if total is None else total + weight * value
            for k, v in parts.items():
                logs[k if k.startswith(name) else f"{name}/{k}"] = float(v)
        logs["loss"] = float(total.detach())
        return total, all_reduce_mean(logs) if distributed else logs
