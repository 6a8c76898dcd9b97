"""DeepSpeed configuration from a JSON template (``infra/deepspeed/zero<stage>.json``).

A template is a DeepSpeed config whose run-dependent values are ``"auto"``; :func:`fill_template`
replaces them with values from params:

* ``train_micro_batch_size_per_gpu``: the sampler's batch per rank (``p * k`` or ``m * v * k``);
* ``gradient_accumulation_steps``: ``engine.grad_accum_steps``;
* ``gradient_clipping``: ``optim.grad_clip`` (0 disables).

Everything else (ZeRO stage and its buckets, logging) is taken from the template as written, so a
team tunes ZeRO in one reviewed file. The ZeRO stage of the template must be the ``engine.zero_stage``
the run asked for.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

__all__ = ["AUTO_KEYS", "fill_template", "load_template"]

#: Top-level keys whose ``"auto"`` value :func:`fill_template` replaces.
AUTO_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


def load_template(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed config template.

    Raises:
        FileNotFoundError: no such file (names it).
        ValueError: not a JSON object (names the file and the JSON error).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no DeepSpeed config template (see infra/deepspeed/)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a DeepSpeed config must be a JSON object, got {type(raw).__name__}")
    return raw


def fill_template(template: dict[str, Any], micro_batch: int, grad_clip: float, zero_stage: int,
                  grad_accum: int = 1, source: str = "template") -> dict[str, Any]:
    """A copy of ``template`` with its ``"auto"`` values filled in.

    Args:
        template: the parsed template.
        micro_batch: images per rank per step.
        grad_accum: micro batches per optimizer step.
        grad_clip: gradient-norm clipping threshold (0 disables).
        zero_stage: the stage params ask for; must equal the template's ``zero_optimization.stage``.
        source: where the template came from, for error messages.

    Raises:
        ValueError: ``"auto"`` anywhere but :data:`AUTO_KEYS`; a ZeRO stage other than
            ``zero_stage``; a ``train_batch_size`` (it would fight the per-rank micro batch); a
            fixed ``gradient_accumulation_steps`` other than ``grad_accum``.
    """
    out = copy.deepcopy(template)
    stray = [k for k in _auto_paths(out) if k not in AUTO_KEYS]
    if stray:
        raise ValueError(f"{source}: 'auto' is only filled in for {AUTO_KEYS}, not {stray}")
    if "train_batch_size" in out:
        raise ValueError(f"{source}: remove train_batch_size; the per-rank micro batch comes from the sampler")
    stage = out.get("zero_optimization", {}).get("stage", 0)
    if stage != zero_stage:
        raise ValueError(f"{source}: zero_optimization.stage is {stage}, but engine.zero_stage is {zero_stage}")
    fills = {"train_micro_batch_size_per_gpu": int(micro_batch), "gradient_accumulation_steps": int(grad_accum),
             "gradient_clipping": float(grad_clip)}
    fixed = out.get("gradient_accumulation_steps", "auto")
    if fixed != "auto" and fixed != grad_accum:
        raise ValueError(f"{source}: gradient_accumulation_steps is {fixed}, but engine.grad_accum_steps is "
                         f"{grad_accum}; set it to \"auto\"")
    for key, value in fills.items():
        if out.get(key, "auto") == "auto":
            out[key] = value
    return out


def _auto_paths(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _auto_paths(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")]
    return [prefix] if obj == "auto" else []
