"""reid.data.loaders.source.augment_args: a sample's uniform draws -> the DALI operators' arguments,
checked against hand-worked values and the geometry of Zhong et al.'s random erasing (Alg. 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reid.data.loaders.config import AugmentConfig
from reid.data.loaders.source import AUGMENT_DRAWS, augment_args, augment_outputs

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def cfg(**kw) -> AugmentConfig:
    return AugmentConfig(**{"image_size": (40, 24), "mean": MEAN, "std": STD, "flip_prob": 0.0, "pad": 0, **kw})


def draws(**named: float) -> np.ndarray:
    """A draws row: 0.5 everywhere except the named columns."""
    row = np.full(len(AUGMENT_DRAWS), 0.5, np.float32)
    for name, value in named.items():
        row[AUGMENT_DRAWS.index(name)] = value
    return row


def test_outputs_follow_the_enabled_augmentations_in_order():
    assert augment_outputs(cfg()) == ()
    assert augment_outputs(cfg(flip_prob=0.5)) == ("mirror",)
    every = cfg(pad=2, flip_prob=0.5, color_jitter=0.2, erase_prob=0.5)
    assert augment_outputs(every) == ("crop_anchor", "mirror", "color", "erase_anchor", "erase_shape")
    assert len(augment_args(draws(), every)) == 5
    assert augment_args(draws(), cfg()) == {}


@pytest.mark.parametrize("u,offset", [(0.0, -2), (0.19, -2), (0.2, -1), (0.5, 0), (0.79, 1), (0.8, 2), (0.9999, 2)])
def test_crop_offset_is_uniform_over_the_2_pad_plus_1_integers(u, offset):
    # pad 2: span 5, offset floor(5 u) - 2; crop_y takes the other column
    (anchor,) = augment_args(draws(crop_x=u, crop_y=0.0), cfg(pad=2)).values()
    assert anchor.dtype == np.int32 and anchor.tolist() == [offset, -2]


def test_mirror_and_colour_factors():
    c = cfg(flip_prob=0.3, color_jitter=0.2)
    mirror, color = augment_args(draws(flip=0.29, brightness=0.0, contrast=0.5, saturation=0.75), c).values()
    assert mirror.dtype == np.int32 and int(mirror) == 1
    np.testing.assert_allclose(color, [0.8, 1.0, 1.1], rtol=1e-6)  # 1 - s + u * 2 s
    mirror, _ = augment_args(draws(flip=0.3), c).values()
    assert int(mirror) == 0


def test_erased_rectangle_has_the_drawn_area_and_aspect_ratio():
    # area fraction 0.1 + 0.5 * (0.3 - 0.1) = 0.2, aspect h/w = 0.5 + 0.25 * (2.5 - 0.5) = 1.0 on a 40 x 24 image:
    # a square of 0.2 * 960 = 192 px^2, side sqrt(192) px
    c = cfg(erase_prob=0.5, erase_area=(0.1, 0.3), erase_ratio=(0.5, 2.5))
    anchor, shape = augment_args(draws(erase=0.1, erase_area=0.5, erase_ratio=0.25, erase_y=1.0 - 1e-7,
                                       erase_x=0.0), c).values()
    side = math.sqrt(192)
    np.testing.assert_allclose(shape * [40, 24], [side, side], rtol=1e-6)
    # the corner keeps the rectangle inside: y at the far end of its range, x at 0
    np.testing.assert_allclose(anchor, [1 - side / 40, 0.0], rtol=1e-5, atol=1e-6)
    # any aspect ratio: H_e / W_e = r_e and H_e W_e = S_e (in pixels)
    for r in (0.3, 0.7, 2.0, 3.3):
        c = cfg(erase_prob=0.5, erase_area=(0.05, 0.05), erase_ratio=(r, r))
        _, (h, w) = augment_args(draws(erase=0.0), c).values()
        assert (h * 40) / (w * 24) == pytest.approx(r, rel=1e-5)
        assert (h * 40) * (w * 24) == pytest.approx(0.05 * 960, rel=1e-5)


def test_sides_are_clipped_to_the_image_and_no_erase_is_an_empty_rectangle():
    # area 0.4, aspect 3.3 on 40 x 24: H_e = sqrt(0.4 * 960 * 3.3) = 35.6 px fits, but on a 24 x 40
    # image it is 35.6 > 24 px: clipped to the full height
    c = cfg(image_size=(24, 40), erase_prob=0.5, erase_area=(0.4, 0.4), erase_ratio=(3.3, 3.3))
    anchor, shape = augment_args(draws(erase=0.0), c).values()
    assert shape[0] == 1.0 and anchor[0] == 0.0
    _, shape = augment_args(draws(erase=0.5), c).values()  # not below erase_prob: nothing erased
    assert shape.tolist() == [0.0, 0.0]


def test_draws_of_the_wrong_shape_are_rejected():
    with pytest.raises(ValueError, match="draws must have shape"):
        augment_args(np.zeros(3, np.float32), cfg(pad=1))
