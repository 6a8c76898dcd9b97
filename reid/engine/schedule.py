"""Learning-rate schedules, stepped once per iteration: linear warmup, then

* ``multistep``: decay by ``gamma`` at each milestone epoch (Luo et al., Bag of Tricks, 2019, Sec. 3.1);
* ``cosine``: cosine annealing from the base LR to ``min_factor`` x base LR at the last iteration
  (Loshchilov and Hutter, SGDR, ICLR 2017, eq. 5, one cycle without restarts).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def warmup_multistep_factor(iteration: int, steps_per_epoch: int, warmup_epochs: int,
                            warmup_factor: float, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base LR at a (0-based) iteration.

    During the first ``warmup_epochs`` epochs the factor rises linearly per iteration from
    ``warmup_factor`` to 1; afterwards it is ``gamma ** (number of milestones <= epoch)``, with
    ``epoch = iteration // steps_per_epoch``.

    Raises:
        ValueError: if ``steps_per_epoch < 1``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    warmup_iters = warmup_epochs * steps_per_epoch
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    epoch = iteration // steps_per_epoch
    return gamma ** sum(1 for m in milestones if m <= epoch)


def warmup_cosine_factor(iteration: int, steps_per_epoch: int, warmup_epochs: int, warmup_factor: float,
                         epochs: int, min_factor: float) -> float:
    """Multiplier of the base LR at a (0-based) iteration: the warmup of
    :func:`warmup_multistep_factor`, then ``min_factor + (1 - min_factor) * (1 + cos(pi * t)) / 2``
    with ``t`` going from 0 (end of warmup) to 1 (the iteration ``epochs * steps_per_epoch``).

    Raises:
        ValueError: ``steps_per_epoch < 1``, or ``epochs <= warmup_epochs`` (nothing to anneal).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if epochs <= warmup_epochs:
        raise ValueError(f"cosine schedule needs epochs > warmup_epochs, got {epochs} <= {warmup_epochs}")
    warmup_iters = warmup_epochs * steps_per_epoch
    if iteration < warmup_iters:
        return warmup_multistep_factor(iteration, steps_per_epoch, warmup_epochs, warmup_factor, (), 1.0)
    t = min(1.0, (iteration - warmup_iters) / (epochs * steps_per_epoch - warmup_iters))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_epochs: int,
                    warmup_factor: float, milestones: Sequence[int], gamma: float, kind: str = "multistep",
                    epochs: int = 0, min_factor: float = 0.0):
    """A ``LambdaLR`` stepped once per iteration applying :func:`warmup_multistep_factor`
    (``kind="multistep"``) or :func:`warmup_cosine_factor` (``kind="cosine"``, over ``epochs``).

    Raises:
        ValueError: unknown ``kind``; what the factor functions raise.
    """
    if kind == "multistep":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda it: warmup_multistep_factor(it, steps_per_epoch, warmup_epochs, warmup_factor, milestones, gamma),
        )
    if kind == "cosine":
        warmup_cosine_factor(0, steps_per_epoch, warmup_epochs, warmup_factor, epochs, min_factor)  # validate now
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda it: warmup_cosine_factor(it, steps_per_epoch, warmup_epochs, warmup_factor, epochs, min_factor),
        )
    raise ValueError(f"unknown LR schedule {kind!r}; expected 'multistep' or 'cosine'")
