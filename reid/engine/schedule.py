"""Learning-rate schedule: linear warmup, then multistep decay (Luo et al., Bag of Tricks, 2019, Sec. 3.1)."""

from __future__ import annotations

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


def build_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_epochs: int,
                    warmup_factor: float, milestones: Sequence[int], gamma: float):
    """A ``LambdaLR`` stepped once per iteration applying :func:`warmup_multistep_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: warmup_multistep_factor(it, steps_per_epoch, warmup_epochs, warmup_factor,
                                           milestones, gamma),
    )
