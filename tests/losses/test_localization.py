"""TAMR's localization loss (eqs. (2)-(7)): each constraint is zero inside its threshold and
positive outside, the priors are the paper's, and eq. (7) combines the terms."""

import math

import pytest
import torch

from reid.losses.localization import (
    PRIOR_AREAS,
    PRIOR_CENTERS,
    PRIOR_RATIOS,
    TERMS,
    LocalizationLoss,
    localization_terms,
    prior_theta,
)
from reid.losses.registry import build_loss

torch.set_num_threads(1)

# windscreen prior box: sx = sqrt(0.48), sy = sqrt(0.2 / 2.4)
WS = prior_theta(PRIOR_CENTERS[0], PRIOR_RATIOS[0], PRIOR_AREAS[0])
WS_CENTER, WS_RATIO, WS_AREA = PRIOR_CENTERS[0], PRIOR_RATIOS[0], PRIOR_AREAS[0]


def test_paper_priors():
    assert PRIOR_CENTERS == ((0.0, 0.3), (0.0, -0.4))
    assert PRIOR_RATIOS == (2.4, 2.0)
    assert PRIOR_AREAS == (0.2, 0.3)
    loss = LocalizationLoss()
    assert loss.thresholds == {"alpha": 0.1, "beta": 0.1, "gamma": 0.1, "delta": 1.0, "mu": 0.1}
    assert loss.xi == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("part", [0, 1])
def test_prior_theta_is_the_prior_box(part):
    c, r, s = PRIOR_CENTERS[part], PRIOR_RATIOS[part], PRIOR_AREAS[part]
    sx, tx, sy, ty = prior_theta(c, r, s)
    assert (tx, ty) == c
    assert sx / sy == pytest.approx(r, rel=1e-12)
    assert sx * sy == pytest.approx(s, rel=1e-12)
    terms = localization_terms(torch.tensor([[sx, tx, sy, ty]]), c, r, s)
    assert all(terms[k].item() == 0.0 for k in TERMS)


def _theta(sx=WS[0], tx=WS[1], sy=WS[2], ty=WS[3]):
    return [sx, tx, sy, ty]


# (term, theta inside the threshold, theta outside it, the outside value by hand)
CASES = [
    # eq. (2): (tx - Cx)^2 + (ty - Cy)^2 vs alpha = 0.1
    ("center", _theta(tx=0.3), _theta(tx=0.35), 0.5 * (0.35**2 - 0.1)),
    ("center", _theta(ty=0.3 - 0.31), _theta(ty=0.3 + 0.33), 0.5 * (0.33**2 - 0.1)),
    ("center", _theta(tx=0.2, ty=0.3 + 0.2), _theta(tx=-0.25, ty=0.3 - 0.2), 0.5 * (0.25**2 + 0.2**2 - 0.1)),
    # eq. (3): (sx / sy - 2.4)^2 vs beta = 0.1
    ("ratio", _theta(sx=2.7 * 0.25, sy=0.25), _theta(sx=2.75 * 0.25, sy=0.25), 0.5 * (0.35**2 - 0.1)),
    ("ratio", _theta(sx=2.1 * 0.25, sy=0.25), _theta(sx=2.0 * 0.25, sy=0.25), 0.5 * (0.4**2 - 0.1)),
    # eq. (4): |sx sy - 0.2| vs gamma = 0.1
    ("area", _theta(sx=0.29 / 0.5, sy=0.5), _theta(sx=0.32 / 0.5, sy=0.5), 0.32 - 0.2 - 0.1),
    ("area", _theta(sx=0.11 / 0.5, sy=0.5), _theta(sx=0.05 / 0.5, sy=0.5), 0.2 - 0.05 - 0.1),
    # eq. (5): (sx +- tx)^2 and (sy +- ty)^2 vs delta = 1 (box edges inside the image)
    ("inner", _theta(sx=0.9, tx=0.05), _theta(sx=0.9, tx=0.2), 0.5 * (1.1**2 - 1.0)),
    ("inner", _theta(sx=0.9, tx=-0.05), _theta(sx=0.9, tx=-0.2), 0.5 * (1.1**2 - 1.0)),
    ("inner", _theta(sy=0.5, ty=0.45), _theta(sy=0.5, ty=0.6), 0.5 * (1.1**2 - 1.0)),
    ("inner", _theta(sy=0.5, ty=-0.45), _theta(sy=0.5, ty=-0.6), 0.5 * (1.1**2 - 1.0)),
    # eq. (6): sx, sy >= mu = 0.1 (no flip)
    ("positive", _theta(sx=0.1), _theta(sx=0.04), 0.06),
    ("positive", _theta(sy=0.1), _theta(sy=-0.2), 0.3),
]


@pytest.mark.parametrize("term, inside, outside, expected", CASES)
def test_term_zero_inside_positive_outside(term, inside, outside, expected):
    terms = localization_terms(torch.tensor([inside, outside], dtype=torch.float64), WS_CENTER, WS_RATIO, WS_AREA)
    value = terms[term]
    assert value.shape == (2,)
    assert value[0].item() == 0.0
    assert value[1].item() > 0.0
    assert value[1].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("term", TERMS)
def test_gradient_points_back_inside(term):
    """Outside its threshold, a gradient step on the term reduces it."""
    outside = {t: o for t, _, o, _ in CASES}[term]
    theta = torch.tensor([outside], dtype=torch.float64, requires_grad=True)
    value = localization_terms(theta, WS_CENTER, WS_RATIO, WS_AREA)[term].sum()
    value.backward()
    stepped = (theta - 1e-3 * theta.grad).detach()
    assert localization_terms(stepped, WS_CENTER, WS_RATIO, WS_AREA)[term].item() < value.item()


def test_ratio_denominator_guard():
    """sy <= 0 does not blow the ratio up: the denominator is held at mu (eq. (6) takes over)."""
    theta = torch.tensor([[0.5, 0.0, 0.0, 0.3], [0.5, 0.0, -0.3, 0.3]])
    terms = localization_terms(theta, WS_CENTER, WS_RATIO, WS_AREA)
    expected = 0.5 * ((0.5 / 0.1 - 2.4) ** 2 - 0.1)
    assert terms["ratio"].tolist() == pytest.approx([expected, expected])
    assert terms["positive"].tolist() == pytest.approx([0.1, 0.4])


def test_loss_is_eq7_mean_over_batch_sum_over_parts():
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(5, 2, 4, generator=g, dtype=torch.float64) * 1.6 - 0.3
    xi = (0.5, 2.0, 3.0, 0.25)
    loss, logs = LocalizationLoss(xi=xi)({"theta": theta}, {})
    expected = 0.0
    for p in range(2):
        for b in range(5):
            sx, tx, sy, ty = theta[b, p].tolist()
            cx, cy = PRIOR_CENTERS[p]
            r, s = PRIOR_RATIOS[p], PRIOR_AREAS[p]
            cen = 0.5 * max(0.0, (tx - cx) ** 2 + (ty - cy) ** 2 - 0.1)
            rat = 0.5 * max(0.0, (sx / max(sy, 0.1) - r) ** 2 - 0.1)
            area = max(0.0, abs(sx * sy - s) - 0.1)
            inner = 0.5 * sum(max(0.0, (sx + sign * tx) ** 2 - 1.0) for sign in (1, -1))
            inner += 0.5 * sum(max(0.0, (sy + sign * ty) ** 2 - 1.0) for sign in (1, -1))
            pos = max(0.0, 0.1 - sx) + max(0.0, 0.1 - sy)
            expected += (cen + xi[0] * rat + xi[1] * area + xi[2] * inner + xi[3] * pos) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logs["tamr_loc"] == pytest.approx(expected, rel=1e-6)
    assert set(TERMS) <= set(logs)
    assert logs["windscreen_sx"] == pytest.approx(theta[:, 0, 0].mean().item())
    assert logs["carhead_ty"] == pytest.approx(theta[:, 1, 3].mean().item())


def test_loss_zero_at_priors_and_registered():
    prior = torch.tensor([prior_theta(c, r, s) for c, r, s in zip(PRIOR_CENTERS, PRIOR_RATIOS, PRIOR_AREAS)])
    theta = prior.unsqueeze(0).repeat(3, 1, 1).requires_grad_(True)
    loss_fn = build_loss("tamr_loc")
    assert isinstance(loss_fn, LocalizationLoss)
    loss, _ = loss_fn({"theta": theta}, {})
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(theta.grad, torch.zeros_like(theta))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior_ratios": (2.4,)},
        {"prior_areas": (0.2, 1.5)},
        {"prior_ratios": (2.4, 0.0)},
        {"prior_centers": ((0.0, 0.3), (0.0,))},
        {"alpha": -0.1},
        {"mu": -1.0},
        {"xi": (1.0, 1.0, 1.0)},
        {"xi": (1.0, -1.0, 1.0, 1.0)},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        LocalizationLoss(**kwargs)


def test_bad_theta_shape():
    with pytest.raises(ValueError, match=r"\(B, 2, 4\)"):
        LocalizationLoss()({"theta": torch.zeros(3, 4)}, {})
    with pytest.raises(ValueError):
        localization_terms(torch.zeros(3, 3), (0, 0), 1.0, 0.5)


def test_prior_theta_errors():
    with pytest.raises(ValueError):
        prior_theta((0.0, 0.3), -1.0, 0.2)
    with pytest.raises(ValueError):
        prior_theta((0.0,), 2.0, 0.2)
    assert prior_theta((0.1, -0.2), 1.0, 0.25) == (0.5, 0.1, 0.5, -0.2)
    assert math.isclose(prior_theta((0, 0), 4.0, 0.25)[0], 1.0)
