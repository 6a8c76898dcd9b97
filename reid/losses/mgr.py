"""TAMR's Multi-Grain Ranking (MGR) loss, split into its four separately weighted terms.

Guo, Zhu, Tang, Wang, "Two-Level Attention Network With Multi-Grain Ranking Loss for Vehicle
Re-Identification", IEEE TIP 2019, Sec. III-C ("Structured Deep Feature Embedding"), eqs. (9)-(13)
(``/work/shared/papers/tamr-vehicle-two-level-attention-multi-grain-ranking.txt``):

    L_MGR = R_c + eps_1 R_f + eps_2 P + eps_3 C                                          (9)

Eq. (9) is a plain weighted sum, so each term is its own registered loss and the engine's
per-loss weights ``params.loss.<name>.weight`` are the paper's coefficients:

=================  =========================  ==========  =========================
loss name          term                       equation    weight (paper: all 1)
=================  =========================  ==========  =========================
``mgr_coarse``     coarse-grained ranking R_c  (10)       1 (R_c's implicit weight)
``mgr_fine``       fine-grained ranking R_f    (11)       eps_1
``mgr_pair``       pairwise term P             (12)       eps_2
``tamr_ce``        ID classification C         (13)       eps_3
=================  =========================  ==========  =========================

Pairs within a mini-batch of ``N`` images with vehicle ids ``v`` and model ids ``m``:
``P = {(i, j) : v_i = v_j, i != j}`` (same vehicle; the trivial pair ``(i, i)``, ``D = 0``, is
excluded), ``N_v = {(i, j) : v_i != v_j, m_i = m_j}`` (same model, different vehicles),
``N_m = {(i, j) : m_i != m_j}`` (different models). A pair of different vehicles of which one
has an unknown model (``model_id < 0``) is in neither ``N_v`` nor ``N_m`` (the paper filters
such images out of VehicleID, Sec. IV-B). ``D(i, j) = ||f_i - f_j||_2^2`` on L2-normalised
features (``||f|| = 1``, Sec. III-C).

In training, TAMR has two 512-d features, the global one and the fused part one, "followed
with two pairs of loss functions separately" (Sec. III-D): every term here is computed on each
feature (``feat_keys`` / ``logits_keys``) and summed over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.registry import register_loss

__all__ = [
    "CoarseRankingLoss",
    "FineRankingLoss",
    "PairwiseLoss",
    "TAMRCrossEntropy",
    "TAMR_FEAT_KEYS",
    "TAMR_LOGITS_KEYS",
    "nearest_negatives",
    "pair_masks",
    "squared_distances",
]

#: TAMR's training features (global branch, fused part branches), both (B, 512)
TAMR_FEAT_KEYS = ("global_feat", "part_feat")
#: TAMR's classifier outputs on those features, both (B, num_classes)
TAMR_LOGITS_KEYS = ("logits", "part_logits")


def squared_distances(x: Tensor, normalize: bool = True) -> Tensor:
    """``D(i, j) = ||f_i - f_j||_2^2`` of the rows of ``x``, eq. (10)-(12)'s distance.

    Args:
        x: ``(B, D)`` float.
        normalize: L2-normalise the rows first (the paper's ``||f(x)||_2 = 1``).

    Returns:
        ``(B, B)`` float32 (computed in float32 even under autocast) as
        ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` clamped at 0, with the diagonal exactly 0.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        if normalize:
            x = F.normalize(x, p=2, dim=1)
        sq = x.pow(2).sum(dim=1, keepdim=True)
        d = (sq + sq.t() - 2.0 * (x @ x.t())).clamp(min=0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def pair_masks(pids: Tensor, model_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The three pair sets of Sec. III-C as ``(B, B)`` bool masks ``(same_vehicle, N_v, N_m)``.

    ``same_vehicle[i, j]``: ``v_i = v_j`` and ``i != j`` (the set ``P``);
    ``N_v[i, j]``: ``v_i != v_j``, ``m_i = m_j``, both models known (``>= 0``);
    ``N_m[i, j]``: ``m_i != m_j``, both models known.

    Raises:
        ValueError: ``pids`` / ``model_ids`` not both ``(B,)``, or a vehicle id carrying two
            different known model ids (the paper's "if v_i = v_j, there must be m_i = m_j").
    """
    if pids.dim() != 1 or model_ids.shape != pids.shape:
        raise ValueError(
            f"expected pids and model_ids of the same shape (B,), got {tuple(pids.shape)} and {tuple(model_ids.shape)}"
        )
    same_v = pids.unsqueeze(0) == pids.unsqueeze(1)
    known = model_ids >= 0
    both = known.unsqueeze(0) & known.unsqueeze(1)
    same_m = model_ids.unsqueeze(0) == model_ids.unsqueeze(1)
    if bool((same_v & both & ~same_m).any()):
        raise ValueError("a vehicle id has two different model ids in the batch (pids and model_ids disagree)")
    eye = torch.eye(pids.shape[0], dtype=torch.bool, device=pids.device)
    return same_v & ~eye, ~same_v & same_m & both, ~same_m & both


def nearest_negatives(dist: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per anchor, the ``k`` nearest candidates allowed by ``mask`` (the "marginal samples").

    Args:
        dist: ``(B, B)`` float distances.
        mask: ``(B, B)`` bool, ``mask[i, j]``: ``j`` is a candidate for anchor ``i``.
        k: how many to take; clamped per anchor to its number of candidates (a small batch can
            have fewer than the paper's ``K1 = 10`` / ``K2 = 3``): anchor ``i`` gets
            ``min(k, mask[i].sum())`` of them.

    Returns:
        ``(idx, valid)``, both ``(B, min(k, B))``: ``idx[i]`` the candidate columns in increasing
        distance (ties in an unspecified order), ``valid[i, r]`` True for the first
        ``min(k, mask[i].sum())`` entries; entries past them are padding (their ``idx`` is
        meaningless).

    Raises:
        ValueError: ``k < 1`` or shape mismatch.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1] or mask.shape != dist.shape:
        raise ValueError(f"expected square dist and mask of equal shape, got {tuple(dist.shape)}, {tuple(mask.shape)}")
    kk = min(k, dist.shape[1])
    masked = dist.detach().masked_fill(~mask, float("inf"))
    _, idx = masked.topk(kk, dim=1, largest=False, sorted=True)
    count = mask.sum(dim=1, keepdim=True)
    valid = torch.arange(kk, device=dist.device).unsqueeze(0) < count
    return idx, valid


def _ranking(dist: Tensor, pos: Tensor, neg: Tensor, k: int, margin: float) -> tuple[Tensor, int, int]:
    """``sum_i sum_{j: pos[i,j]} sum_{n in K nearest of neg[i]} max{0, D(i,j) - D(i,n) + margin}``,
    returned as ``(sum, number of triplets, number of active triplets)``."""
    idx, valid = nearest_negatives(dist, neg, k)
    d_neg = dist.gather(1, idx)  # (B, k)
    hinge = F.relu(dist.unsqueeze(2) - d_neg.unsqueeze(1) + margin)  # (B, B, k): [i, j, r]
    use = pos.unsqueeze(2) & valid.unsqueeze(1)
    hinge = hinge * use
    return hinge.sum(), int(use.sum()), int((hinge > 0).sum())


class _FeatLoss(nn.Module):
    """Shared argument checks and per-feature loop of the MGR ranking / pairwise terms."""

    name = ""
    needs_models = True  # reads batch["model_ids"]
    ranking = True  # hinge terms: log the fraction of active triplets

    def __init__(self, normalize: bool, feat_keys: Sequence[str]) -> None:
        super().__init__()
        if isinstance(feat_keys, str):
            feat_keys = (feat_keys,)
        self.feat_keys = tuple(feat_keys)
        if not self.feat_keys or not all(isinstance(k, str) and k for k in self.feat_keys):
            raise ValueError(f"feat_keys must be a non-empty sequence of output names, got {feat_keys!r}")
        self.normalize = bool(normalize)

    @property
    def cross_sample_keys(self) -> tuple[str, ...]:
        """The features compared across samples (gathered from every rank in data-parallel training)."""
        return self.feat_keys

    def _labels(self, batch: dict[str, Tensor], b: int, device: torch.device) -> tuple[Tensor, Tensor]:
        pids = batch["pids"].to(device)
        if pids.shape != (b,):
            raise ValueError(f"expected pids of shape ({b},), got {tuple(pids.shape)}")
        if "model_ids" in batch:
            model_ids = batch["model_ids"].to(device)
        elif self.needs_models:
            raise ValueError(f"loss {self.name!r} needs batch['model_ids'] (vehicle model labels)")
        else:
            model_ids = torch.full_like(pids, -1)
        if model_ids.shape != (b,):
            raise ValueError(f"expected model_ids of shape ({b},), got {tuple(model_ids.shape)}")
        return pids, model_ids

    def _term(self, dist: Tensor, masks: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, int, int]:
        raise NotImplementedError

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        total: Tensor | None = None
        logs: dict[str, float] = {}
        count = active = 0
        for key in self.feat_keys:
            feat = outputs[key]
            if feat.dim() != 2:
                raise ValueError(f"expected outputs[{key!r}] of shape (B, D), got {tuple(feat.shape)}")
            pids, model_ids = self._labels(batch, feat.shape[0], feat.device)
            dist = squared_distances(feat, self.normalize)
            summed, n, n_active = self._term(dist, pair_masks(pids, model_ids))
            # no triplet / pair in this batch: a zero that keeps the graph (for backward)
            value = summed / n if n else dist.sum() * 0.0
            total = value if total is None else total + value
            logs[f"{self.name}_{key}"] = value.item()
            count += n
            active += n_active
        assert total is not None  # feat_keys is non-empty
        logs[self.name] = total.item()
        logs[f"{self.name}_count"] = float(count)
        if self.ranking:
            logs[f"{self.name}_active"] = active / count if count else 0.0
        return total, logs


@register_loss("mgr_coarse")
class CoarseRankingLoss(_FeatLoss):
    """Coarse-grained ranking term ``R_c``, eq. (10).

    ``R_c = 1/Z_c sum_i sum_{(i,j) in N_v} sum_{(i,k) in N_m, k in K1-NN(i)} max{0, D(i,j) - D(i,k) + M_c}``

    with ``k`` restricted to the ``K1`` nearest different-model images of anchor ``i`` in the
    batch ("marginal samples"; clamped to the available ones, see :func:`nearest_negatives`)
    and ``Z_c`` = the number of summed triplets (the paper leaves ``Z_c`` unspecified). A batch
    with no triplet (e.g. a single vehicle model) gives 0.

    Args:
        margin: ``M_c >= 0``. The paper gives no value; the default 0.2 is FaceNet's margin for
            the same distance (squared Euclidean on unit vectors, Schroff et al. 2015).
        k: ``K1``, default 10 (Sec. III-C).
        normalize: L2-normalise the features (the paper's ``||f(x)||_2 = 1``), default True.
        feat_keys: the ``outputs`` features the term is computed on, summed; default TAMR's
            ``("global_feat", "part_feat")``.

    Call:
        ``loss(outputs, batch) -> (scalar float32, logs)``; each ``outputs[key]`` is ``(B, D)``
        float; ``batch["pids"]``, ``batch["model_ids"]`` ``(B,)`` int. ``logs``: ``"mgr_coarse"``,
        ``"mgr_coarse_<key>"`` per feature, ``"mgr_coarse_count"`` (triplets),
        ``"mgr_coarse_active"`` (fraction with a positive hinge).

    Raises:
        ValueError: invalid arguments (constructor); bad shapes, missing ``model_ids`` or
            inconsistent labels (call).
    """

    name = "mgr_coarse"

    def __init__(
        self, margin: float = 0.2, k: int = 10, normalize: bool = True, feat_keys: Sequence[str] = TAMR_FEAT_KEYS
    ) -> None:
        super().__init__(normalize, feat_keys)
        self.margin, self.k = _check_margin_k(margin, k, "K1")

    def _term(self, dist, masks):
        _, n_v, n_m = masks
        return _ranking(dist, n_v, n_m, self.k, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, k={self.k}, normalize={self.normalize}, feat_keys={self.feat_keys}"


@register_loss("mgr_fine")
class FineRankingLoss(_FeatLoss):
    """Fine-grained ranking term ``R_f``, eq. (11).

    ``R_f = 1/Z_f sum_i sum_{(i,l) in P} sum_{(i,j) in N_v, j in K2-NN(i)} max{0, D(i,l) - D(i,j) + M_f}``

    with ``j`` restricted to the ``K2`` nearest same-model, different-vehicle images of anchor
    ``i`` (clamped to the available ones) and ``Z_f`` = the number of summed triplets. A batch
    with no triplet gives 0.

    Args:
        margin: ``M_f >= 0``; not given in the paper, default 0.2 (as ``M_c``).
        k: ``K2``, default 3 (Sec. III-C).
        normalize, feat_keys: as :class:`CoarseRankingLoss`.

    Call / Raises: as :class:`CoarseRankingLoss` (logs ``"mgr_fine"``, ``"mgr_fine_<key>"``,
    ``"mgr_fine_count"``, ``"mgr_fine_active"``).
    """

    name = "mgr_fine"

    def __init__(
        self, margin: float = 0.2, k: int = 3, normalize: bool = True, feat_keys: Sequence[str] = TAMR_FEAT_KEYS
    ) -> None:
        super().__init__(normalize, feat_keys)
        self.margin, self.k = _check_margin_k(margin, k, "K2")

    def _term(self, dist, masks):
        same_v, n_v, _ = masks
        return _ranking(dist, same_v, n_v, self.k, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, k={self.k}, normalize={self.normalize}, feat_keys={self.feat_keys}"


@register_loss("mgr_pair")
class PairwiseLoss(_FeatLoss):
    """Pairwise term ``P``, eq. (12): ``P = 1/Z_p sum_i sum_{(i,l) in P} D(i, l)``.

    ``Z_p`` = the number of ordered same-vehicle pairs ``(i, l)``, ``i != l``, i.e. the mean
    squared distance between images of the same vehicle. Needs only ``batch["pids"]``. A batch
    without such a pair gives 0.

    Args:
        normalize, feat_keys: as :class:`CoarseRankingLoss`.

    Call / Raises: as :class:`CoarseRankingLoss` (logs ``"mgr_pair"``, ``"mgr_pair_<key>"``,
    ``"mgr_pair_count"``).
    """

    name = "mgr_pair"
    needs_models = False
    ranking = False

    def __init__(self, normalize: bool = True, feat_keys: Sequence[str] = TAMR_FEAT_KEYS) -> None:
        super().__init__(normalize, feat_keys)

    def _term(self, dist, masks):
        same_v = masks[0]
        return (dist * same_v).sum(), int(same_v.sum()), 0

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, feat_keys={self.feat_keys}"


@register_loss("tamr_ce")
class TAMRCrossEntropy(CrossEntropyLabelSmooth):
    """Classification term ``C``, eq. (13): ``C = 1/N sum_i -log p_{v_i}``, on each classifier.

    :class:`~reid.losses.cross_entropy.CrossEntropyLabelSmooth` applied to every
    ``outputs[key]`` of ``logits_keys`` and summed (TAMR's global and fused-part heads, "two pairs
    of loss functions", Sec. III-D). The paper's C is plain cross-entropy, hence
    ``epsilon = 0`` by default (params' global ``loss.ce`` smooths with 0.1).

    Args:
        num_classes: number of training vehicle ids (given at run time).
        epsilon: label smoothing, default 0 (eq. (13)).
        logits_keys: default ``("logits", "part_logits")``.

    Call:
        ``loss(outputs, batch) -> (scalar, logs)``, each ``outputs[key]`` ``(B, num_classes)``.
        ``logs``: ``"tamr_ce"`` (the sum), ``"ce_<key>"`` and ``"acc_<key>"`` per head.

    Raises:
        ValueError: as :class:`CrossEntropyLabelSmooth`, or empty ``logits_keys``.
    """

    name = "tamr_ce"

    def __init__(self, num_classes: int, epsilon: float = 0.0, logits_keys: Sequence[str] = TAMR_LOGITS_KEYS) -> None:
        super().__init__(num_classes=num_classes, epsilon=epsilon)
        if isinstance(logits_keys, str):
            logits_keys = (logits_keys,)
        self.logits_keys = tuple(logits_keys)
        if not self.logits_keys or not all(isinstance(k, str) and k for k in self.logits_keys):
            raise ValueError(f"logits_keys must be a non-empty sequence of output names, got {logits_keys!r}")

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        total: Tensor | None = None
        logs: dict[str, float] = {}
        for key in self.logits_keys:
            value, parts = super().forward({"logits": outputs[key]}, batch)
            total = value if total is None else total + value
            logs[f"ce_{key}"] = parts["ce"]
            logs[f"acc_{key}"] = parts["acc"]
        assert total is not None
        return total, {"tamr_ce": total.item(), **logs}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, logits_keys={self.logits_keys}"


def _check_margin_k(margin: float, k: int, what: str) -> tuple[float, int]:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not float(margin) >= 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k ({what}) must be a positive int, got {k!r}")
    return float(margin), k
