"""Batch-hard triplet loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TripletLoss", "pairwise_euclidean", "hard_example_mining"]

_EPS = 1e-12


def pairwise_euclidean(x: Tensor) -> Tensor:
    """Euclidean distance matrix of the rows of ``x``.

    Args:
        x: ``(B, D)`` float.

    Returns:
        ``(B, B)`` float32 with ``d[i, j] = ||x_i - x_j||_2``, computed in float32
        even under autocast, as
        ``sqrt(clamp(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, min=1e-12))`` (the clamp keeps
        the sqrt's gradient finite); the diagonal is then set to exactly 0 (the
        expansion suffers cancellation there) with zero gradient.
    """
    # Autocast would run the matmul in fp16/bf16, where the expansion below
    # loses most of its precision; keep it in float32.
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        sq = x.pow(2).sum(dim=1, keepdim=True)  # (B, 1)
        d2 = (sq + sq.t() - 2.0 * (x @ x.t())).clamp(min=_EPS)
        dist = d2.sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return dist.masked_fill(eye, 0.0)


def hard_example_mining(dist: Tensor, pids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hardest positive and hardest negative distance per anchor.

    Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv:1703.07737, 2017, eq. (5).

    Args:
        dist: ``(B, B)`` float distance matrix with zero diagonal.
        pids: ``(B,)`` int labels.

    Returns:
        ``(d_ap, d_an, valid)``, each ``(B,)``: ``d_ap[a] = max_{p: pid_p = pid_a} dist[a, p]``
        (the anchor itself is in this set, as in eq. (5), so an anchor that is
        the only sample of its identity gets ``d_ap = 0``);
        ``d_an[a] = min_{n: pid_n != pid_a} dist[a, n]`` (``+inf`` where there is
        no negative); ``valid[a]`` (bool) is True iff the anchor has a negative.
    """
    same = pids.unsqueeze(0) == pids.unsqueeze(1)  # (B, B), includes the diagonal
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = (~same).any(dim=1)
    return d_ap, d_an, valid


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on ``outputs["feat"]``.

    Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017, eq. (5) (batch hard) and Sec. 3 (soft margin):

        L = 1/|A| sum_{a in A} [m + max_p D(a, p) - min_n D(a, n)]_+        (margin m > 0)
        L = 1/|A| sum_{a in A} softplus(max_p D(a, p) - min_n D(a, n))     (margin None/0)

    with ``D`` the Euclidean distance (see :func:`pairwise_euclidean`), ``p``
    ranging over the samples sharing the anchor's pid and ``n`` over the others.

    Degenerate anchors (handled explicitly):
      * an anchor with no other sample of its identity has hardest-positive
        distance 0 (``p = a``, as in eq. (5)); it still contributes
        ``[m - min_n D(a, n)]_+``. A PK sampler with K >= 2 never produces it.
      * an anchor with no negative has no triplet and is excluded from the
        mean ``A``. Since that happens only when its pid is the only one in the
        batch, in practice either every anchor is used or the batch holds a
        single identity, which raises ``ValueError``.

    Args:
        margin: ``m >= 0``; ``None`` or ``0`` selects the soft-margin variant.
        normalize: L2-normalise ``feat`` before computing distances.

    Call:
        ``loss(outputs, batch) -> (scalar float32, logs)``; ``outputs["feat"]``
        is ``(B, D)`` float, ``batch["pids"]`` ``(B,)`` int64. ``logs`` has
        ``"triplet"`` (loss), ``"d_ap"`` / ``"d_an"`` (mean hardest positive /
        negative distance over valid anchors) and ``"triplet_active"`` (fraction
        of valid anchors with ``d_ap - d_an + m > 0``; with soft margin,
        ``d_ap > d_an``).

    Raises:
        ValueError: negative margin (constructor); bad shapes, or no anchor
            with a negative in the batch (call).
    """

    name = "triplet"
    #: the outputs compared across samples: in data-parallel training they are gathered from
    #: every rank first (``reid.engine.criterion.Criterion``), so mining sees the global batch
    cross_sample_keys = ("feat",)

    def __init__(self, margin: float | None = 0.3, normalize: bool = False) -> None:
        super().__init__()
        if margin is not None and float(margin) < 0:
            raise ValueError(f"margin must be >= 0 or None, got {margin!r}")
        self.margin = None if margin is None or float(margin) == 0.0 else float(margin)
        self.normalize = bool(normalize)

    @property
    def soft_margin(self) -> bool:
        return self.margin is None

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        feat = outputs["feat"]
        if feat.dim() != 2:
            raise ValueError(f"expected feat of shape (B, D), got {tuple(feat.shape)}")
        pids = batch["pids"].to(feat.device)
        if pids.shape != (feat.shape[0],):
            raise ValueError(f"expected pids of shape ({feat.shape[0]},), got {tuple(pids.shape)}")

        x = feat.float()
        if self.normalize:
            x = F.normalize(x, p=2, dim=1)
        dist = pairwise_euclidean(x)
        d_ap, d_an, valid = hard_example_mining(dist, pids)
        if not bool(valid.any()):
            raise ValueError(
                "batch-hard triplet loss needs at least two identities in the batch; "
                f"got a batch of {feat.shape[0]} with a single pid"
            )
        d_ap, d_an = d_ap[valid], d_an[valid]
        diff = d_ap - d_an
        if self.margin is None:
            losses = F.softplus(diff)
            active = diff > 0
        else:
            losses = F.relu(diff + self.margin)
            active = losses > 0
        loss = losses.mean()
        logs = {
            "triplet": loss.item(),
            "d_ap": d_ap.mean().item(),
            "d_an": d_an.mean().item(),
            "triplet_active": active.float().mean().item(),
        }
        return loss, logs

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize}"
