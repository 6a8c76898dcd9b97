"""CAN's triplet loss: batch-hard triplet with margin 0.1.

"Cascade Attention Network for Person Re-identification" (CAN), Sec. 3.4, eq. (1)
(``/work/shared/papers/can-cascade-attention-network.txt``): the batch-hard triplet loss of
Hermans et al. [22] with margin ``alpha = 0.1`` on the 3x2048 descriptor; it is CAN's only
training loss (Sec. 4.2, "to minimize the triplet loss with batch hard mining").
"""

from __future__ import annotations

from torch import Tensor

from reid.losses.registry import register_loss
from reid.losses.triplet import TripletLoss

__all__ = ["CANTripletLoss"]


@register_loss("can_triplet")
class CANTripletLoss(TripletLoss):
    """:class:`~reid.losses.triplet.TripletLoss` with CAN's margin ``alpha = 0.1`` (eq. (1)).

    Reads ``outputs["feat"]`` ``(B, D)`` and ``batch["pids"]`` ``(B,)``; returns
    ``(scalar, logs)`` with the loss logged as ``"can_triplet"`` (plus ``d_ap``, ``d_an``,
    ``triplet_active`` as :class:`TripletLoss`).

    Raises:
        ValueError: as :class:`TripletLoss`.
    """

    name = "can_triplet"

    def __init__(self, margin: float | None = 0.1, normalize: bool = False) -> None:
        super().__init__(margin=margin, normalize=normalize)

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, logs = super().forward(outputs, batch)
        logs["can_triplet"] = logs.pop("triplet")
        return loss, logs
