"""Re-id losses: each ``(outputs: dict, batch: dict) -> (scalar_tensor, {name: float})``."""

from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.registry import available_losses, build_loss, register_loss
from reid.losses.triplet import TripletLoss

__all__ = ["CrossEntropyLabelSmooth", "TripletLoss", "available_losses", "build_loss", "register_loss"]
