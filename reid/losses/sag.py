"""SAG's identity loss: plain (not label-smoothed) cross-entropy.

Ainam, Qin, Liu, "Self Attention Grid for Person Re-Identification"
(``/work/shared/papers/sag-self-attention-grid.txt``), Sec. 3.1, eq. (2).
"""

from __future__ import annotations

from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.registry import register_loss

__all__ = ["SAGCrossEntropy"]


@register_loss("sag_ce")
class SAGCrossEntropy(CrossEntropyLabelSmooth):
    """SAG's identity loss: plain cross-entropy on ``outputs["logits"]`` (SAG eq. 2).

    The shared :class:`~reid.losses.cross_entropy.CrossEntropyLabelSmooth` with the paper's
    default ``epsilon = 0`` (SAG uses no label smoothing), registered under its own name so
    that the global ``loss.ce.epsilon`` does not apply to it. Same call, logs and errors as
    the parent class.
    """

    name = "sag_ce"

    def __init__(self, num_classes: int, epsilon: float = 0.0) -> None:
        super().__init__(num_classes, epsilon)
