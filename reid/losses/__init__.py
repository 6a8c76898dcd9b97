"""Re-id losses: each ``(outputs: dict, batch: dict) -> (scalar_tensor, {name: float})``.

Importing this package registers every built-in loss (``reid.losses.registry``).
"""

from reid.losses import can, pan, sag  # noqa: F401  (register can_triplet, pan_part_ce, pan_orth, sag_ce)
from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.registry import available_losses, build_loss, register_loss
from reid.losses.triplet import TripletLoss

__all__ = ["CrossEntropyLabelSmooth", "TripletLoss", "available_losses", "build_loss", "register_loss"]
