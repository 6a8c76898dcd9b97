"""Cross-entropy (ID) loss with label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossEntropyLabelSmooth"]


class CrossEntropyLabelSmooth(nn.Module):
    """Label-smoothed cross-entropy on ``outputs["logits"]``.

    Szegedy et al., "Rethinking the Inception Architecture for Computer
    Vision", CVPR 2016 (Sec. 7), in the form of Luo et al., "Bag of Tricks and
    A Strong Baseline for Deep Person Re-identification", CVPRW 2019, eq. (1):

        L = -sum_i q_i log p_i,   q_i = 1 - eps + eps/N  if i = y,
                                  q_i = eps/N            otherwise,

    averaged over the batch, with ``p = softmax(logits)`` and ``N = num_classes``.
    ``epsilon = 0`` is plain cross-entropy.

    Args:
        num_classes: ``N``, positive int; must equal ``logits.shape[1]``.
        epsilon: smoothing ``eps`` in ``[0, 1)``.

    Call:
        ``loss(outputs, batch) -> (scalar, {"ce": float, "acc": float})`` where
        ``outputs["logits"]`` is ``(B, N)`` float (any float dtype; computed in
        float32) and ``batch["pids"]`` is ``(B,)`` int64 in ``[0, N)``.
        ``"acc"`` is the batch top-1 ID accuracy (for logging only).

    Raises:
        ValueError: invalid ``num_classes``/``epsilon`` (constructor); wrong
            shapes or an empty batch (call). Labels outside ``[0, N)`` make the
            underlying gather fail (IndexError/RuntimeError; a device assert on CUDA).
    """

    name = "ce"

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not (0.0 <= float(epsilon) < 1.0):
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
        self.num_classes = num_classes
        self.epsilon = float(epsilon)

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        logits = outputs["logits"]
        pids = batch["pids"]
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"expected logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}"
            )
        if logits.shape[0] == 0:
            raise ValueError("empty batch")
        pids = pids.to(device=logits.device, dtype=torch.long)
        if pids.shape != (logits.shape[0],):
            raise ValueError(f"expected pids of shape ({logits.shape[0]},), got {tuple(pids.shape)}")

        log_probs = F.log_softmax(logits.float(), dim=1)  # (B, N)
        nll = -log_probs.gather(1, pids.unsqueeze(1)).squeeze(1)  # -log p_y, (B,)
        uniform = -log_probs.mean(dim=1)  # -(1/N) sum_i log p_i, (B,)
        # -sum_i q_i log p_i = (1 - eps) * (-log p_y) + eps * (-(1/N) sum_i log p_i)
        loss = ((1.0 - self.epsilon) * nll + self.epsilon * uniform).mean()

        with torch.no_grad():
            acc = (logits.argmax(dim=1) == pids).float().mean()
        return loss, {"ce": loss.item(), "acc": acc.item()}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, epsilon={self.epsilon}"
