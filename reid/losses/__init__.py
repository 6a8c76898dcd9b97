"""Re-id losses: each ``(outputs: dict, batch: dict) -> (scalar_tensor, {name: float})``.

Importing this package registers every built-in loss (``reid.losses.registry``).
"""

from reid.losses import can, localization, mgr, pan, sag  # noqa: F401  (register the models' losses)
from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.registry import available_losses, build_loss, register_loss
from reid.losses.triplet import TripletLoss

__all__ = ["CrossEntropyLabelSmooth", "TripletLoss", "available_losses", "build_loss", "register_loss"]
