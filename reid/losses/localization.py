"""TAMR's part-localization loss: prior-knowledge constraints on the STN parameters.

Guo, Zhu, Tang, Wang, "Two-Level Attention Network With Multi-Grain Ranking Loss for Vehicle
Re-Identification", IEEE TIP 2019, Sec. III-A ("Hard Part-Level Attention"), eqs. (2)-(7)
(``/work/shared/papers/tamr-vehicle-two-level-attention-multi-grain-ranking.txt``).

Coordinate convention (the paper's, eq. (1)):
    ``theta = [sx, tx, sy, ty]`` maps output-part coordinates to input-image coordinates,
    ``x_in = sx * x_out + tx``, ``y_in = sy * y_out + ty``, with the image width and height
    normalised to ``[-1, 1]`` (``-1``/``+1`` are the outer pixel *edges*, i.e.
    ``affine_grid(..., align_corners=False)``). **y points up**: ``y = +1`` is the top edge of
    the image, ``y = -1`` the bottom edge. This is what the paper's priors imply: the
    windscreen (above the car head in a front/rear view) has centre ``y = +0.3`` and the car
    head ``y = -0.4``; the rigid-part variant of Sec. IV-C likewise puts the windscreen at
    ``y in [0, 0.6]`` and the car head at ``y in [-0.8, 0]``. ``torch.nn.functional.affine_grid``
    has y pointing *down* (``-1`` = top row), so the model converts with ``ty -> -ty``
    (:func:`reid.models.tamr.theta_to_affine`). x points right in both conventions.

    The part box is therefore ``[tx - sx, tx + sx] x [ty - sy, ty + sy]``: its width is ``sx``
    and its height ``sy`` of the image's, its aspect ratio (width / height, for a square image
    as the paper's 224 x 224) is ``sx / sy`` and its normalised area ``sx * sy``.

The priors (Sec. III-A, from the authors' part detector's averages) are
windscreen: centre ``(0, 0.3)``, ratio ``r = 2.4``, area ``S = 0.2``;
car head: centre ``(0, -0.4)``, ``r = 2``, ``S = 0.3``; thresholds ``alpha = beta = gamma = 0.1``,
``delta = 1.0``, ``mu = 0.1``, weights ``xi_1..xi_4 = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reid.losses.registry import register_loss

__all__ = [
    "PART_NAMES",
    "PRIOR_AREAS",
    "PRIOR_CENTERS",
    "PRIOR_RATIOS",
    "TERMS",
    "LocalizationLoss",
    "localization_terms",
    "prior_theta",
]

#: the two salient parts, in the order of ``outputs["theta"][:, p]``
PART_NAMES = ("windscreen", "carhead")
#: prior centres (Cx, Cy), paper convention (y up), Sec. III-A after eq. (2)
PRIOR_CENTERS = ((0.0, 0.3), (0.0, -0.4))
#: prior aspect ratios r = width / height, Sec. III-A after eq. (3)
PRIOR_RATIOS = (2.4, 2.0)
#: prior normalised areas S, Sec. III-A after eq. (4)
PRIOR_AREAS = (0.2, 0.3)
#: the constraint names, in the order of eq. (7)
TERMS = ("center", "ratio", "area", "inner", "positive")


def prior_theta(center: Sequence[float], ratio: float, area: float) -> tuple[float, float, float, float]:
    """The ``theta = (sx, tx, sy, ty)`` of the prior box (paper convention, y up).

    The box centred on ``center`` with ``sx / sy = ratio`` and ``sx * sy = area``:
    ``sx = sqrt(area * ratio)``, ``sy = sqrt(area / ratio)``, ``(tx, ty) = center``. It makes
    the centre, ratio and area terms of eqs. (2)-(4) exactly zero.

    Raises:
        ValueError: ``ratio`` or ``area`` not positive, or ``center`` not two numbers.
    """
    cx, cy = _center(center, "center")
    if not float(ratio) > 0 or not float(area) > 0:
        raise ValueError(f"prior ratio and area must be > 0, got ratio={ratio!r}, area={area!r}")
    return (math.sqrt(area * ratio), cx, math.sqrt(area / ratio), cy)


def localization_terms(
    theta: Tensor,
    center: Sequence[float],
    ratio: float,
    area: float,
    alpha: float = 0.1,
    beta: float = 0.1,
    gamma: float = 0.1,
    delta: float = 1.0,
    mu: float = 0.1,
) -> dict[str, Tensor]:
    """The five constraints of eqs. (2)-(6) for one part, per sample.

    Args:
        theta: ``(B, 4)`` float, ``[sx, tx, sy, ty]`` per sample (paper convention, y up).
        center: prior centre ``(Cx, Cy)``; ``ratio``: prior ``r``; ``area``: prior ``S``.
        alpha, beta, gamma, delta, mu: the thresholds of eqs. (2)-(6).

    Returns:
        ``{"center", "ratio", "area", "inner", "positive"}`` -> ``(B,)`` float32 (float64 for a
        float64 ``theta``):

        * eq. (2) ``L_cen   = 1/2 max{0, (tx - Cx)^2 + (ty - Cy)^2 - alpha}``
        * eq. (3) ``L_ratio = 1/2 max{0, (sx / sy - r)^2 - beta}``
        * eq. (4) ``L_area  = max{0, |sx * sy - S| - gamma}``
        * eq. (5) ``L_in    = 1/2 sum_{+,-} max{0, (sx +- tx)^2 - delta}
          + 1/2 sum_{+,-} max{0, (sy +- ty)^2 - delta}`` -- the paper's "sx +- tx" read as both
          signs, one hinge each: the box edges ``tx - sx`` and ``tx + sx`` (resp. y) must stay
          inside ``[-sqrt(delta), sqrt(delta)]``, i.e. inside the image for ``delta = 1``.
        * eq. (6) ``L_pos   = max{0, mu - sx} + max{0, mu - sy}``

        Each term is zero exactly when its constraint holds (inside the threshold). In eq. (3)
        the denominator ``sy`` is clamped from below at ``max(mu, 1e-6)``: identical to eq. (3)
        wherever the positive constraint (6) holds, and it keeps the ratio and its gradient
        bounded when ``sy`` collapses to 0 or below (where eq. (6) pushes ``sy`` back up).

    Raises:
        ValueError: ``theta`` not of shape ``(B, 4)``.
    """
    if theta.dim() != 2 or theta.shape[1] != 4:
        raise ValueError(f"expected theta of shape (B, 4) = [sx, tx, sy, ty], got {tuple(theta.shape)}")
    cx, cy = _center(center, "center")
    t = theta if theta.dtype == torch.float64 else theta.float()  # half precision -> float32
    sx, tx, sy, ty = t.unbind(dim=1)
    zero = torch.zeros((), dtype=t.dtype, device=t.device)

    def hinge(x: Tensor) -> Tensor:
        return torch.maximum(x, zero)

    ratio_hat = sx / sy.clamp(min=max(float(mu), 1e-6))
    return {
        "center": 0.5 * hinge((tx - cx) ** 2 + (ty - cy) ** 2 - alpha),
        "ratio": 0.5 * hinge((ratio_hat - ratio) ** 2 - beta),
        "area": hinge((sx * sy - area).abs() - gamma),
        "inner": 0.5 * (hinge((sx + tx) ** 2 - delta) + hinge((sx - tx) ** 2 - delta))
        + 0.5 * (hinge((sy + ty) ** 2 - delta) + hinge((sy - ty) ** 2 - delta)),
        "positive": hinge(mu - sx) + hinge(mu - sy),
    }


@register_loss("tamr_loc")
class LocalizationLoss(nn.Module):
    """TAMR's part-localization loss ``L_loc`` (eq. (7)) on ``outputs["theta"]``.

    ``L_loc = L_cen + xi_1 L_ratio + xi_2 L_area + xi_3 L_in + xi_4 L_pos`` (eqs. (2)-(7), see
    :func:`localization_terms`), per sample and per part with that part's priors, averaged over
    the batch and summed over the parts (each part branch has its own localization network and
    its own constraints).

    Args:
        prior_centers: per part ``(Cx, Cy)`` (y up, see the module docstring); default
            windscreen ``(0, 0.3)``, car head ``(0, -0.4)``.
        prior_ratios: per part ``r`` (width / height), default ``(2.4, 2.0)``.
        prior_areas: per part ``S`` in ``(0, 1]``, default ``(0.2, 0.3)``.
        alpha, beta, gamma: centre / ratio / area thresholds, default 0.1 each.
        delta: boundary threshold of the inner loss, default 1.0.
        mu: positive threshold, default 0.1.
        xi: ``(xi_1, xi_2, xi_3, xi_4)``, default all 1.0.

    Call:
        ``loss(outputs, batch) -> (scalar float32, logs)``; ``outputs["theta"]`` is ``(B, P, 4)``
        float, ``[sx, tx, sy, ty]`` of part ``p`` (``P = len(prior_centers)``; TAMR's order is
        :data:`PART_NAMES`). ``logs``: ``"tamr_loc"`` (the loss), ``"center"``, ``"ratio"``,
        ``"area"``, ``"inner"``, ``"positive"`` (unweighted terms, batch mean, summed over
        parts) and ``"<part>_<sx|tx|sy|ty>"`` (batch mean of theta, parts named by
        :data:`PART_NAMES` when ``P = 2``, else ``part<p>``).

    Raises:
        ValueError: inconsistent or invalid priors, negative thresholds or weights, ``xi`` not
            4 numbers (constructor); ``theta`` not ``(B, P, 4)`` (call).
    """

    name = "tamr_loc"

    def __init__(
        self,
        prior_centers: Sequence[Sequence[float]] = PRIOR_CENTERS,
        prior_ratios: Sequence[float] = PRIOR_RATIOS,
        prior_areas: Sequence[float] = PRIOR_AREAS,
        alpha: float = 0.1,
        beta: float = 0.1,
        gamma: float = 0.1,
        delta: float = 1.0,
        mu: float = 0.1,
        xi: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.prior_centers = tuple(_center(c, f"prior_centers[{i}]") for i, c in enumerate(prior_centers))
        self.prior_ratios = tuple(float(r) for r in prior_ratios)
        self.prior_areas = tuple(float(s) for s in prior_areas)
        n = len(self.prior_centers)
        if n == 0 or len(self.prior_ratios) != n or len(self.prior_areas) != n:
            raise ValueError(
                "prior_centers, prior_ratios and prior_areas must be non-empty and of equal length, got "
                f"{n}, {len(self.prior_ratios)}, {len(self.prior_areas)}"
            )
        if any(not r > 0 for r in self.prior_ratios):
            raise ValueError(f"prior_ratios must be > 0, got {self.prior_ratios}")
        if any(not 0 < s <= 1 for s in self.prior_areas):
            raise ValueError(f"prior_areas must be in (0, 1], got {self.prior_areas}")
        thresholds = {"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta, "mu": mu}
        for key, value in thresholds.items():
            if not float(value) >= 0:
                raise ValueError(f"{key} must be >= 0, got {value!r}")
        self.thresholds = {k: float(v) for k, v in thresholds.items()}
        xi = tuple(float(x) for x in xi)
        if len(xi) != 4 or any(not x >= 0 for x in xi):
            raise ValueError(f"xi must be 4 non-negative numbers (xi_1..xi_4 of eq. (7)), got {xi}")
        self.xi = xi
        self.part_names = PART_NAMES if n == len(PART_NAMES) else tuple(f"part{p}" for p in range(n))

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        theta = outputs["theta"]
        n = len(self.prior_centers)
        if theta.dim() != 3 or theta.shape[1:] != (n, 4):
            raise ValueError(f"expected theta of shape (B, {n}, 4), got {tuple(theta.shape)}")
        weights = dict(zip(TERMS, (1.0, *self.xi)))
        total = theta.new_zeros((), dtype=torch.float32)
        sums = dict.fromkeys(TERMS, 0.0)
        logs: dict[str, float] = {}
        for p in range(n):
            terms = localization_terms(
                theta[:, p], self.prior_centers[p], self.prior_ratios[p], self.prior_areas[p], **self.thresholds
            )
            for key in TERMS:
                mean = terms[key].mean()
                total = total + weights[key] * mean
                sums[key] += mean.item()
            with torch.no_grad():
                for key, value in zip(("sx", "tx", "sy", "ty"), theta[:, p].float().mean(dim=0).tolist()):
                    logs[f"{self.part_names[p]}_{key}"] = value
        logs = {"tamr_loc": total.item(), **sums, **logs}
        return total, logs

    def extra_repr(self) -> str:
        return (
            f"prior_centers={self.prior_centers}, prior_ratios={self.prior_ratios}, "
            f"prior_areas={self.prior_areas}, {', '.join(f'{k}={v}' for k, v in self.thresholds.items())}, "
            f"xi={self.xi}"
        )


def _center(center: Sequence[float], what: str) -> tuple[float, float]:
    try:
        cx, cy = (float(v) for v in center)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers (Cx, Cy), got {center!r}") from None
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"{what} must be finite, got {center!r}")
    return cx, cy
