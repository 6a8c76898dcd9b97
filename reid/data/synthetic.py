"""Deterministic generator of small synthetic re-ID datasets in the exact official on-disk layouts.

Two layouts are written, byte-for-byte reproducible from their config (same config and seed =>
identical files; every image is drawn from its own ``numpy`` Generator seeded from
``(seed, split, id, camera, n)``, so an image does not depend on how many other images exist or
in which order they are made). JPEGs are written with PIL at a fixed quality, no EXIF, no
timestamps.

* :func:`write_msmt17` -> ``<root>/MSMT17_V1`` (person re-ID; see :class:`MSMT17SynthConfig`).
* :func:`write_vehicle1m` -> ``<root>/Vehicle-1M`` (vehicle re-ID; see :class:`Vehicle1MSynthConfig`).

Identity is learnable but not trivial:

* persons: each id has upper/lower garment colours, a garment pattern, hair, shoes and a bag, all
  drawn from shared palettes (so many ids share any single cue); every camera has its own
  viewpoint (mirror, horizontal shear, aspect), scale (fraction of the image the person fills),
  illumination (gain and colour cast), blur and background (colours + texture); every image adds
  pose/position/scale/light jitter, background clutter in palette colours and pixel noise.
* vehicles: a vehicle MODEL fixes body shape (width, roof, windscreen, headlights, grille, ...)
  and body colour (shared palette, so models collide on colour); the vehicles of one model differ
  only in small marks: stickers/inspection tags on the windscreen at vehicle-specific positions and
  colours, and optional dashboard items, hanging ornaments and a small mark on the car head. Each
  image has its own scale, shear, rotation, light, windscreen glare, background and noise.

Writing is atomic: the dataset is built in a hidden temp folder beside the target (every file via
:mod:`reid.io`) and renamed into place at the end; nothing is left behind on error.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "MSMT17SynthConfig",
    "Vehicle1MSynthConfig",
    "write_msmt17",
    "write_vehicle1m",
    "MSMT17_DIR",
    "VEHICLE1M_DIR",
    "VEHICLE1M_TEST_SETS",
]

MSMT17_DIR = "MSMT17_V1"
VEHICLE1M_DIR = "Vehicle-1M"
#: official test-list names of Vehicle-1M, smallest first (nested: each holds the previous one).
VEHICLE1M_TEST_SETS = ("test_1000", "test_2000", "test_3000")

# Seed-sequence tags, so that streams for different purposes never coincide.
_TAG_CAMERA, _TAG_PERSON, _TAG_PLAN, _TAG_IMAGE = 11, 12, 13, 14
_TAG_MODEL, _TAG_VEHICLE, _TAG_VIMAGE, _TAG_VSPLIT = 21, 22, 23, 24

# Shared garment palette (RGB): many ids share any one colour.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (25, 25, 28),  # black
    (235, 235, 230),  # white
    (128, 128, 128),  # grey
    (190, 30, 35),  # red
    (40, 70, 170),  # blue
    (25, 35, 80),  # navy
    (40, 130, 60),  # green
    (225, 200, 40),  # yellow
    (120, 80, 45),  # brown
    (230, 130, 170),  # pink
    (210, 190, 150),  # beige
    (110, 50, 140),  # purple
)
_HAIR = ((20, 18, 16), (70, 45, 25), (150, 110, 60), (170, 170, 170))
_SKIN = ((240, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40))
_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots")
# Vehicle body colours (fewer than models, so models collide on colour).
_BODY = (
    (230, 230, 228),  # white
    (30, 30, 34),  # black
    (170, 172, 178),  # silver
    (95, 98, 104),  # grey
    (170, 25, 30),  # red
    (30, 60, 140),  # blue
    (160, 130, 95),  # champagne
    (35, 80, 55),  # dark green
)
_STICKERS = ((245, 245, 245), (40, 110, 220), (50, 170, 80), (240, 210, 40), (220, 50, 40), (245, 140, 30))


# --------------------------------------------------------------------------------------------
# configs


def _ipc_range(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        lo = hi = int(value)
    else:
        lo, hi = (int(v) for v in value)
    if not 1 <= lo <= hi:
        raise ValueError(f"{name} must be an int >= 1 or a (lo, hi) range with 1 <= lo <= hi, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class MSMT17SynthConfig:
    """Size and seed of a synthetic ``MSMT17_V1`` dataset.

    Attributes:
        num_train_ids: persons in ``train/`` (pids ``0..num_train_ids-1``).
        num_test_ids: persons in ``test/`` (pids restart at 0, as in MSMT17).
        num_cameras: cameras in the world (file-name camera field ``01..num_cameras``), 2..99.
        cameras_per_id: cameras each person is seen by (a random subset), 2..num_cameras;
            ``None`` (default) means ``min(3, num_cameras)``.
        images_per_id_camera: images per (person, camera): an int, or an inclusive ``(lo, hi)``
            range drawn per (person, camera).
        val_every: the last image of every ``val_every``-th train person (pid % val_every == 0)
            goes to ``list_val.txt`` instead of ``list_train.txt``; 0 = empty val list.
        height, width: image size in pixels.
        jpeg_quality: PIL JPEG quality (1..95).
        seed: master seed (non-negative int).

    Defaults give 80 train ids, 40 test ids, 4 cameras, 3 cameras per id, 2-3 images per
    (id, camera): about 900 images of 128x64 px.

    Raises:
        ValueError: on out-of-range values.
    """

    num_train_ids: int = 80
    num_test_ids: int = 40
    num_cameras: int = 4
    cameras_per_id: int | None = None
    images_per_id_camera: int | tuple[int, int] = (2, 3)
    val_every: int = 8
    height: int = 128
    width: int = 64
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "images_per_id_camera", _ipc_range(self.images_per_id_camera, "images_per_id_camera"))
        if not 1 <= self.num_train_ids <= 9999 or not 1 <= self.num_test_ids <= 9999:
            raise ValueError("num_train_ids and num_test_ids must be in 1..9999")
        if not 2 <= self.num_cameras <= 99:
            raise ValueError(f"num_cameras must be in 2..99, got {self.num_cameras}")
        if self.cameras_per_id is None:
            object.__setattr__(self, "cameras_per_id", min(3, self.num_cameras))
        if not 2 <= self.cameras_per_id <= self.num_cameras:
            raise ValueError(f"cameras_per_id must be in 2..num_cameras, got {self.cameras_per_id}")
        if self.cameras_per_id * self.images_per_id_camera[1] > 1000:
            raise ValueError("cameras_per_id * max images_per_id_camera must be <= 1000 (3-digit idx field)")
        if self.val_every < 0:
            raise ValueError(f"val_every must be >= 0, got {self.val_every}")
        if self.height < 32 or self.width < 16:
            raise ValueError(f"image size must be at least 32x16, got {self.height}x{self.width}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Vehicle1MSynthConfig:
    """Size and seed of a synthetic ``Vehicle-1M`` dataset.

    Attributes:
        num_models: vehicle models (model ids ``0..num_models-1``).
        vehicles_per_model: vehicles per model; vehicle id = ``model * vehicles_per_model + j``.
        num_test_vehicles: vehicles held out for the test lists (a seeded random choice; the rest
            are train vehicles). ``test_3000`` holds all of them, ``test_2000`` the first
            ``ceil(2n/3)`` and ``test_1000`` the first ``ceil(n/3)`` in a seeded order, so
            ``test_1000 ⊂ test_2000 ⊂ test_3000``. Needs ``3 <= n < num_models*vehicles_per_model``.
        test_fraction: alternative to ``num_test_vehicles``: ``n = round(fraction * total)``
            (at least 3). Giving neither means ``test_fraction = 1/3``; giving both is an error
            unless they agree. After construction ``num_test_vehicles`` always holds ``n``.
        images_per_vehicle: an int, or an inclusive ``(lo, hi)`` range drawn per vehicle.
        size: images are ``size x size`` pixels.
        jpeg_quality: PIL JPEG quality (1..95).
        seed: master seed (non-negative int).

    Defaults give 12 models x 8 vehicles (96 vehicles: 64 train, 32 test), 8 images per vehicle:
    768 images of 96x96 px.

    Raises:
        ValueError: on out-of-range values.
    """

    num_models: int = 12
    vehicles_per_model: int = 8
    num_test_vehicles: int | None = None
    test_fraction: float | None = None
    images_per_vehicle: int | tuple[int, int] = 8
    size: int = 96
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "images_per_vehicle", _ipc_range(self.images_per_vehicle, "images_per_vehicle"))
        if self.num_models < 1 or self.vehicles_per_model < 1:
            raise ValueError("num_models and vehicles_per_model must be >= 1")
        total = self.num_models * self.vehicles_per_model
        if self.test_fraction is not None or self.num_test_vehicles is None:
            fraction = 1 / 3 if self.test_fraction is None else self.test_fraction
            if not 0 < fraction < 1:
                raise ValueError(f"test_fraction must be in (0, 1), got {fraction}")
            n = max(3, round(fraction * total))
            if self.num_test_vehicles is not None and self.num_test_vehicles != n:
                raise ValueError(
                    f"num_test_vehicles={self.num_test_vehicles} disagrees with test_fraction={fraction} ({n})"
                )
            object.__setattr__(self, "num_test_vehicles", n)
        if not 3 <= self.num_test_vehicles < total:
            raise ValueError(f"num_test_vehicles must be in 3..{total - 1}, got {self.num_test_vehicles}")
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# --------------------------------------------------------------------------------------------
# atomic folder build


def _build_atomically(root: Path, name: str, overwrite: bool, build: Callable[[Path], None]) -> Path:
    root = Path(root)
    target = root / name
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise FileExistsError(f"{target} exists and is not a directory")
        if any(target.iterdir()) and not overwrite:
            raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        build(tmp)
        if target.exists():
            old = root / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False)
    return buf.getvalue()


def _finish(canvas: np.ndarray, gain: np.ndarray, noise_sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = canvas * gain + rng.normal(0.0, noise_sigma, size=canvas.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _affine(
    src_centre: tuple[float, float],
    dst_centre: tuple[float, float],
    sx: float,
    sy: float,
    shear: float,
    rot_deg: float = 0.0,
) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input) of: centre src, scale, shear x by y, rotate, move to dst."""
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    # forward linear map M = R @ [[sx, shear*sy], [0, sy]]
    m00, m01 = c * sx, c * shear * sy - s * sy
    m10, m11 = s * sx, s * shear * sy + c * sy
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    dx, dy = dst_centre
    sxc, syc = src_centre
    # input = Minv @ (out - dst) + src
    return (i00, i01, sxc - i00 * dx - i01 * dy, i10, i11, syc - i10 * dx - i11 * dy)


def _warp_layer(layer: Image.Image, size: tuple[int, int], coeffs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Warp an RGBA layer; return (rgb float32 HxWx3, alpha float32 HxWx1 in 0..1)."""
    warped = np.asarray(
        layer.transform(size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR), dtype=np.float32
    )
    return warped[..., :3], warped[..., 3:] / 255.0


# --------------------------------------------------------------------------------------------
# persons


@dataclass(frozen=True)
class _Camera:
    wall: np.ndarray
    floor: np.ndarray
    horizon: float
    texture: int
    period: int
    tex_amp: float
    flip: bool
    shear: float
    aspect: float
    scale: float
    gain: np.ndarray
    blur: float


def _camera(seed: int, cam: int) -> _Camera:
    rng = np.random.default_rng([seed, _TAG_CAMERA, cam])
    return _Camera(
        wall=rng.uniform(50, 200, 3).astype(np.float32),
        floor=rng.uniform(40, 170, 3).astype(np.float32),
        horizon=float(rng.uniform(0.45, 0.8)),
        texture=int(rng.integers(3)),
        period=int(rng.integers(6, 16)),
        tex_amp=float(rng.uniform(8, 30)),
        flip=bool(rng.integers(2)),
        shear=float(rng.uniform(-0.22, 0.22)),
        aspect=float(rng.uniform(0.8, 1.15)),
        scale=float(rng.uniform(0.6, 0.92)),
        gain=(rng.uniform(0.7, 1.25) * rng.uniform(0.85, 1.15, 3)).astype(np.float32),
        blur=float(rng.choice([0.0, 0.0, 0.5, 0.9])),
    )


@dataclass(frozen=True)
class _PersonLook:
    upper: int
    lower: int
    pattern: int
    pattern_colour: int
    period: int
    hair: int
    skin: int
    shoes: int
    bag: int  # 0 none, 1 backpack, 2 shoulder bag
    bag_colour: int
    build: float
    short_sleeves: bool


def _person_look(seed: int, split_code: int, pid: int) -> _PersonLook:
    rng = np.random.default_rng([seed, _TAG_PERSON, split_code, pid])
    n = len(PALETTE)
    upper = int(rng.integers(n))
    return _PersonLook(
        upper=upper,
        lower=int(rng.integers(n)),
        pattern=int(rng.integers(len(_PATTERNS))),
        pattern_colour=int((upper + rng.integers(1, n)) % n),
        period=int(rng.integers(3, 7)),
        hair=int(rng.integers(len(_HAIR))),
        skin=int(rng.integers(len(_SKIN))),
        shoes=int(rng.integers(n)),
        bag=int(rng.integers(3)),
        bag_colour=int(rng.integers(n)),
        build=float(rng.uniform(0.85, 1.15)),
        short_sleeves=bool(rng.integers(2)),
    )


def _person_layer(look: _PersonLook, h: int, w: int, rng: np.random.Generator) -> Image.Image:
    """The person in a canonical pose, drawn as an RGBA layer of h x w (figure fills ~96% of h)."""
    rgb = Image.new("RGB", (w, h))
    alpha = Image.new("L", (w, h), 0)
    torso_mask = Image.new("L", (w, h), 0)
    d, a, t = ImageDraw.Draw(rgb), ImageDraw.Draw(alpha), ImageDraw.Draw(torso_mask)

    def box(xy, colour, torso=False):
        d.rectangle(xy, fill=colour)
        a.rectangle(xy, fill=255)
        if torso:
            t.rectangle(xy, fill=255)

    top, fh = 0.02 * h, 0.96 * h
    cx = w / 2 + rng.uniform(-0.5, 0.5)
    y = lambda f: top + f * fh  # noqa: E731
    half = 0.16 * fh * look.build / 2 * (w / (h / 2))  # torso half-width, scaled for the aspect
    half = min(half, 0.42 * w)
    skin, hair = _SKIN[look.skin], _HAIR[look.hair]
    upper, lower = PALETTE[look.upper], PALETTE[look.lower]
    # legs (walking: random stride)
    stride = rng.uniform(0.0, 0.35) * half
    leg_w = half * 0.42
    for side in (-1, 1):
        lx = cx + side * (half * 0.45 + stride * (side * 0.5 + 0.5) * 0.5)
        box((lx - leg_w, y(0.52), lx + leg_w, y(0.94)), lower)
        box((lx - leg_w - 1, y(0.94), lx + leg_w + 1, y(1.0)), PALETTE[look.shoes])
    # backpack peeks out on one side, shoulder bag hangs on the other
    if look.bag == 1:
        box((cx + half * 0.6, y(0.2), cx + half * 1.25, y(0.45)), PALETTE[look.bag_colour])
    # arms
    arm_w = half * 0.32
    for side in (-1, 1):
        ax = cx + side * (half + arm_w * 0.6)
        sleeve_end = 0.33 if look.short_sleeves else 0.47
        box((ax - arm_w, y(0.17), ax + arm_w, y(sleeve_end)), upper)
        box((ax - arm_w, y(sleeve_end), ax + arm_w, y(0.53)), skin)
    # torso
    box((cx - half, y(0.16), cx + half, y(0.54)), upper, torso=True)
    if look.bag == 2:
        box((cx - half * 1.45, y(0.42), cx - half * 0.7, y(0.6)), PALETTE[look.bag_colour])
        d.line((cx + half * 0.8, y(0.17), cx - half * 0.9, y(0.43)), fill=PALETTE[look.bag_colour], width=2)
    # head + hair
    r = 0.065 * fh
    hy = y(0.085)
    d.ellipse((cx - r * 0.8, hy - r, cx + r * 0.8, hy + r), fill=skin)
    a.ellipse((cx - r * 0.8, hy - r, cx + r * 0.8, hy + r), fill=255)
    d.chord((cx - r * 0.85, hy - r * 1.1, cx + r * 0.85, hy + r * 0.6), 180, 360, fill=hair)
    a.chord((cx - r * 0.85, hy - r * 1.1, cx + r * 0.85, hy + r * 0.6), 180, 360, fill=255)

    arr = np.asarray(rgb).copy()
    pattern = _PATTERNS[look.pattern]
    if pattern != "plain":
        yy, xx = np.mgrid[0:h, 0:w]
        p = look.period
        if pattern == "hstripes":
            on = (yy // p) % 2 == 0
        elif pattern == "vstripes":
            on = (xx // max(2, p - 1)) % 2 == 0
        elif pattern == "checks":
            on = ((yy // p) + (xx // p)) % 2 == 0
        else:  # dots
            on = ((yy % (p + 1)) < 2) & ((xx % (p + 1)) < 2)
        on &= np.asarray(torso_mask) > 0
        arr[on] = PALETTE[look.pattern_colour]
    return Image.fromarray(np.dstack([arr, np.asarray(alpha)]), "RGBA")


def _background(cam: _Camera, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = (cam.horizon + rng.uniform(-0.04, 0.04)) * h
    floor = (yy >= horizon)[..., None]
    bg = np.where(floor, cam.floor, cam.wall).astype(np.float32)
    shift = rng.uniform(0, cam.period)
    if cam.texture == 0:  # vertical posts / shop fronts
        tex = np.sin((xx + shift) * 2 * np.pi / cam.period)
    elif cam.texture == 1:  # floor tiles
        tex = np.sign(np.sin((xx + shift) * np.pi / cam.period) * np.sin((yy + shift) * np.pi / cam.period))
    else:  # smooth blotches
        tex = np.sin(xx / cam.period + shift) * np.cos(yy / (cam.period * 1.7) + shift)
    bg += (cam.tex_amp * tex)[..., None]
    # clutter in garment colours (distractors for colour-only features)
    for _ in range(int(rng.integers(0, 3))):
        cw, ch = rng.uniform(0.1, 0.35) * w, rng.uniform(0.05, 0.2) * h
        x0, y0 = rng.uniform(-0.1, 1.0) * w, rng.uniform(0.0, 1.0) * h
        bg[int(max(0, y0)) : int(y0 + ch), int(max(0, x0)) : int(x0 + cw)] = PALETTE[int(rng.integers(len(PALETTE)))]
    return bg


def _render_person(look: _PersonLook, cam: _Camera, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    layer = _person_layer(look, h, w, rng)
    scale = cam.scale * rng.uniform(0.92, 1.08)
    sx = scale * cam.aspect * rng.uniform(0.95, 1.05) * (-1 if cam.flip else 1)
    sy = scale
    shear = cam.shear + rng.uniform(-0.05, 0.05)
    dst = (w / 2 + rng.uniform(-0.1, 0.1) * w, h - (0.5 * h * scale) - rng.uniform(0.0, 0.08) * h)
    fg, alpha = _warp_layer(layer, (w, h), _affine((w / 2, h / 2), dst, sx, sy, shear))
    canvas = _background(cam, h, w, rng) * (1 - alpha) + fg * alpha
    if cam.blur > 0:
        img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(cam.blur))
        canvas = np.asarray(img, dtype=np.float32)
    gain = cam.gain * rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    return _finish(canvas, gain.astype(np.float32), float(rng.uniform(2.0, 5.0)), rng)


_DATES = ("0113", "0114", "0302", "0303", "0304")
_SLOTS = ("morning", "noon", "afternoon")


def write_msmt17(root: str | Path, cfg: MSMT17SynthConfig | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic person dataset in the exact ``MSMT17_V1`` layout under ``root``.

    On-disk format written (``D = root/MSMT17_V1``)::

        D/train/<pid:04d>/<pid:04d>_<idx:03d>_<cam:02d>_<date><slot>_<frame:04d>_0.jpg
        D/test/<pid:04d>/...                (test pids restart at 0)
        D/list_train.txt  D/list_val.txt    "<pid:04d>/<file> <pid>" per line, relative to D/train
        D/list_query.txt  D/list_gallery.txt  same, relative to D/test

    ``idx`` numbers a person's images 000.. in (camera, n) order; ``cam`` is 1-based; ``frame``
    is a random 4-digit number. ``list_val.txt`` takes the last image of every
    ``cfg.val_every``-th train person (those lines are not in ``list_train.txt``, as in MSMT17).
    Query: per test person, one image from each of a random non-empty proper subset of its
    cameras; gallery: all other test images. At least one of the person's cameras is
    gallery-only, so every query has a same-pid gallery image from another camera.
    Images are ``cfg.height x cfg.width`` RGB JPEGs at ``cfg.jpeg_quality``.

    Args:
        root: parent folder (created if needed).
        cfg: sizes and seed; ``MSMT17SynthConfig()`` if ``None``.
        overwrite: replace an existing non-empty ``root/MSMT17_V1``.

    Returns:
        the dataset folder ``root/MSMT17_V1``.

    Raises:
        FileExistsError: if ``root/MSMT17_V1`` exists, is non-empty (or not a folder) and
            ``overwrite`` is false.
    """
    cfg = cfg or MSMT17SynthConfig()
    h, w = cfg.height, cfg.width
    cams = [_camera(cfg.seed, c) for c in range(cfg.num_cameras)]
    lo, hi = cfg.images_per_id_camera

    def build(out: Path) -> None:
        lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
        for split_code, folder, n_ids in ((0, "train", cfg.num_train_ids), (1, "test", cfg.num_test_ids)):
            for pid in range(n_ids):
                plan = np.random.default_rng([cfg.seed, _TAG_PLAN, split_code, pid])
                pid_cams = sorted(int(c) for c in plan.choice(cfg.num_cameras, cfg.cameras_per_id, replace=False))
                counts = [int(plan.integers(lo, hi + 1)) for _ in pid_cams]
                date = _DATES[int(plan.integers(len(_DATES)))]
                look = _person_look(cfg.seed, split_code, pid)
                names: list[list[str]] = []
                idx = 0
                for cam, count in zip(pid_cams, counts):
                    slot = _SLOTS[int(plan.integers(len(_SLOTS)))]
                    cam_names = []
                    for n in range(count):
                        rng = np.random.default_rng([cfg.seed, _TAG_IMAGE, split_code, pid, cam, n])
                        frame = int(rng.integers(10000))
                        name = f"{pid:04d}/{pid:04d}_{idx:03d}_{cam + 1:02d}_{date}{slot}_{frame:04d}_0.jpg"
                        idx += 1
                        img = _render_person(look, cams[cam], rng, h, w)
                        atomic_write_bytes(out / folder / name, _jpeg(img, cfg.jpeg_quality))
                        cam_names.append(name)
                    names.append(cam_names)
                if split_code == 0:
                    flat = [n for cam_names in names for n in cam_names]
                    to_val = cfg.val_every > 0 and pid % cfg.val_every == 0
                    for i, name in enumerate(flat):
                        lists["val" if to_val and i == len(flat) - 1 else "train"].append(f"{name} {pid}\n")
                else:
                    n_query = int(plan.integers(1, len(pid_cams)))
                    query_cams = set(int(c) for c in plan.choice(len(pid_cams), n_query, replace=False))
                    for ci, cam_names in enumerate(names):
                        pick = int(plan.integers(len(cam_names))) if ci in query_cams else -1
                        for i, name in enumerate(cam_names):
                            lists["query" if i == pick else "gallery"].append(f"{name} {pid}\n")
        for split, lines in lists.items():
            atomic_write_text(out / f"list_{split}.txt", "".join(lines))

    return _build_atomically(Path(root), MSMT17_DIR, overwrite, build)


# --------------------------------------------------------------------------------------------
# vehicles


@dataclass(frozen=True)
class _VehicleModel:
    colour: int
    body_w: float  # fraction of the canvas width
    roof: float  # y of the roof line, fraction of height
    screen_bottom: float
    screen_top_ratio: float
    hood_bottom: float
    bumper: float
    light_style: int
    light_h: float
    grille_style: int
    grille_w: float
    fog: bool
    mirrors: bool


def _vehicle_model(seed: int, model: int) -> _VehicleModel:
    rng = np.random.default_rng([seed, _TAG_MODEL, model])
    roof = float(rng.uniform(0.08, 0.22))
    screen_bottom = float(rng.uniform(0.4, 0.5))
    return _VehicleModel(
        colour=int(rng.integers(len(_BODY))),
        body_w=float(rng.uniform(0.74, 0.94)),
        roof=roof,
        screen_bottom=screen_bottom,
        screen_top_ratio=float(rng.uniform(0.55, 0.88)),
        hood_bottom=float(rng.uniform(0.62, 0.72)),
        bumper=float(rng.uniform(0.83, 0.9)),
        light_style=int(rng.integers(3)),
        light_h=float(rng.uniform(0.04, 0.09)),
        grille_style=int(rng.integers(4)),
        grille_w=float(rng.uniform(0.28, 0.55)),
        fog=bool(rng.integers(2)),
        mirrors=bool(rng.integers(2)),
    )


@dataclass(frozen=True)
class _VehicleMarks:
    stickers: tuple[tuple[float, float, float, int], ...]  # (u, v, size, colour) in windscreen coords
    dash: tuple[float, float, int] | None  # (u, width, colour) item on the dashboard
    ornament: tuple[float, int] | None  # (length, colour) hanging from the mirror
    head: tuple[float, float, int] | None  # (u, v, colour) small mark on the car head


def _vehicle_marks(seed: int, vid: int) -> _VehicleMarks:
    rng = np.random.default_rng([seed, _TAG_VEHICLE, vid])
    n = int(rng.integers(1, 4))
    stickers = tuple(
        (
            float(rng.uniform(0.06, 0.94)),
            float(rng.uniform(0.08, 0.55)),
            float(rng.uniform(0.05, 0.08)),
            int(rng.integers(len(_STICKERS))),
        )
        for _ in range(n)
    )
    dash = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.25)), int(rng.integers(len(PALETTE))))
    orn = (float(rng.uniform(0.15, 0.4)), int(rng.integers(len(_STICKERS))))
    head = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.2, 0.8)), int(rng.integers(len(_STICKERS))))
    flags = rng.integers(2, size=3)
    return _VehicleMarks(
        stickers=stickers,
        dash=dash if flags[0] else None,
        ornament=orn if flags[1] else None,
        head=head if flags[2] else None,
    )


def _vehicle_layer(model: _VehicleModel, marks: _VehicleMarks, s: int, glare: tuple[float, float] | None) -> Image.Image:
    """Canonical front view of one vehicle as an RGBA layer of s x s."""
    rgb = Image.new("RGB", (s, s))
    alpha = Image.new("L", (s, s), 0)
    d, a = ImageDraw.Draw(rgb), ImageDraw.Draw(alpha)
    body = _BODY[model.colour]
    dark = tuple(int(c * 0.45) for c in body)
    cx = s / 2
    half = model.body_w * s / 2
    Y = lambda f: f * s  # noqa: E731

    def poly(points, colour):
        d.polygon(points, fill=colour)
        a.polygon(points, fill=255)

    # wheels, body, cabin
    for side in (-1, 1):
        wx = cx + side * half * 0.72
        poly([(wx - half * 0.17, Y(model.bumper - 0.03)), (wx + half * 0.17, Y(model.bumper - 0.03)),
              (wx + half * 0.17, Y(0.97)), (wx - half * 0.17, Y(0.97))], (20, 20, 20))
    poly([(cx - half, Y(model.screen_bottom)), (cx + half, Y(model.screen_bottom)),
          (cx + half, Y(model.bumper)), (cx - half, Y(model.bumper))], body)
    cab_bot = half * 0.95
    cab_top = cab_bot * model.screen_top_ratio
    poly([(cx - cab_top, Y(model.roof)), (cx + cab_top, Y(model.roof)),
          (cx + cab_bot, Y(model.screen_bottom)), (cx - cab_bot, Y(model.screen_bottom))], body)
    if model.mirrors:
        for side in (-1, 1):
            mx = cx + side * (cab_bot + half * 0.05)
            poly([(mx - half * 0.1, Y(model.screen_bottom - 0.07)), (mx + half * 0.1, Y(model.screen_bottom - 0.07)),
                  (mx + half * 0.1, Y(model.screen_bottom - 0.02)), (mx - half * 0.1, Y(model.screen_bottom - 0.02))],
                 dark)
    # windscreen
    st, sb = model.roof + 0.03, model.screen_bottom - 0.02
    wt, wb = cab_top * 0.88, cab_bot * 0.9
    screen_colour = (48, 58, 70)
    poly([(cx - wt, Y(st)), (cx + wt, Y(st)), (cx + wb, Y(sb)), (cx - wb, Y(sb))], screen_colour)

    def screen_xy(u: float, v: float) -> tuple[float, float]:
        hw = wt + (wb - wt) * v
        return cx - hw + 2 * hw * u, Y(st + (sb - st) * v)

    if marks.ornament is not None:
        length, colour = marks.ornament
        x0, y0 = screen_xy(0.5, 0.0)
        y1 = y0 + length * (Y(sb) - y0)
        d.line((x0, y0, x0, y1), fill=(200, 200, 200), width=1)
        d.ellipse((x0 - 2, y1 - 1, x0 + 2, y1 + 3), fill=_STICKERS[colour])
    if marks.dash is not None:
        u, width, colour = marks.dash
        x, yb = screen_xy(u, 1.0)
        d.rectangle((x - width * wb, yb - 0.04 * s, x + width * wb, yb - 1), fill=PALETTE[colour])
    for u, v, size, colour in marks.stickers:
        x, y = screen_xy(u, v)
        r = size * s / 2
        d.rectangle((x - r, y - r, x + r, y + r), fill=_STICKERS[colour])
    # car head: grille, lights, plate, mark
    hb = model.hood_bottom
    gw = model.grille_w * half
    gt, gb = Y(hb - 0.06), Y(hb + 0.09)
    if model.grille_style == 0:
        for k in range(4):
            yy = gt + (gb - gt) * (k + 0.5) / 4
            d.line((cx - gw, yy, cx + gw, yy), fill=dark, width=2)
    elif model.grille_style == 1:
        d.rectangle((cx - gw, gt, cx + gw, gb), fill=dark)
        for k in range(6):
            xx = cx - gw + 2 * gw * (k + 0.5) / 6
            d.line((xx, gt, xx, gb), fill=body, width=1)
    elif model.grille_style == 2:
        d.rectangle((cx - gw, gt, cx + gw, gb), fill=(15, 15, 18))
    else:
        d.rectangle((cx - gw, gt, cx - 2, gb), fill=dark)
        d.rectangle((cx + 2, gt, cx + gw, gb), fill=dark)
    lh = model.light_h * s
    for side in (-1, 1):
        lx0, lx1 = cx + side * half * 0.62, cx + side * half * 0.95
        lx0, lx1 = min(lx0, lx1), max(lx0, lx1)
        ly = Y(hb - 0.05)
        if model.light_style == 0:
            d.rectangle((lx0, ly, lx1, ly + lh), fill=(235, 235, 215))
        elif model.light_style == 1:
            d.ellipse((lx0, ly, lx1, ly + lh * 1.3), fill=(235, 235, 215))
        else:
            inner = lx1 if side < 0 else lx0
            outer = lx0 if side < 0 else lx1
            d.polygon([(outer, ly), (inner, ly + lh * 0.6), (inner, ly + lh), (outer, ly + lh)], fill=(235, 235, 215))
        if model.fog:
            fx = cx + side * half * 0.75
            d.ellipse((fx - 2, Y(model.bumper - 0.06), fx + 2, Y(model.bumper - 0.03)), fill=(230, 220, 160))
    pw, ph = half * 0.32, 0.045 * s
    py = Y(model.bumper - 0.07)
    d.rectangle((cx - pw, py, cx + pw, py + ph), fill=(30, 70, 180))
    d.rectangle((cx - pw * 0.8, py + ph * 0.35, cx + pw * 0.8, py + ph * 0.65), fill=(215, 215, 225))
    if marks.head is not None:
        u, v, colour = marks.head
        x = cx - half * 0.8 + 1.6 * half * u
        y = Y(model.screen_bottom + 0.02 + v * (hb - 0.1 - model.screen_bottom))
        d.rectangle((x - 0.025 * s, y - 0.02 * s, x + 0.025 * s, y + 0.02 * s), fill=_STICKERS[colour])
    arr = np.asarray(rgb).astype(np.float32)
    if glare is not None:  # diagonal reflection band across the windscreen
        pos, strength = glare
        yy, xx = np.mgrid[0:s, 0:s]
        band = np.abs((xx - yy * 0.8) - pos * s) < 0.1 * s
        band &= (yy >= Y(st)) & (yy <= Y(sb))
        arr[band] = arr[band] * (1 - strength) + 255 * strength
    return Image.fromarray(np.dstack([np.clip(arr, 0, 255).astype(np.uint8), np.asarray(alpha)]), "RGBA")


def _road(s: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    base = rng.uniform(60, 150) * rng.uniform(0.9, 1.1, 3)
    bg = np.broadcast_to(base.astype(np.float32), (s, s, 3)).copy()
    bg += (rng.uniform(-20, 20) * yy / s)[..., None]
    lane_x = rng.uniform(0, s)
    slope = rng.uniform(-0.4, 0.4)
    lane = np.abs(xx - (lane_x + slope * yy)) < 1.5
    bg[lane & ((yy // 8) % 2 == 0)] = rng.choice([[220, 220, 215], [225, 195, 60]])
    return bg


def _render_vehicle(model: _VehicleModel, marks: _VehicleMarks, rng: np.random.Generator, s: int) -> np.ndarray:
    glare = (float(rng.uniform(-0.2, 1.0)), float(rng.uniform(0.12, 0.35))) if rng.random() < 0.5 else None
    layer = _vehicle_layer(model, marks, s, glare)
    scale = rng.uniform(0.78, 1.0)
    sx = scale * rng.uniform(0.9, 1.08)
    dst = (s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.05, 0.05) * s)
    coeffs = _affine((s / 2, s / 2), dst, sx, scale, rng.uniform(-0.12, 0.12), rng.uniform(-4, 4))
    fg, alpha = _warp_layer(layer, (s, s), coeffs)
    canvas = _road(s, rng) * (1 - alpha) + fg * alpha
    gain = (rng.uniform(0.65, 1.3) * rng.uniform(0.87, 1.13, 3)).astype(np.float32)
    return _finish(canvas, gain, float(rng.uniform(2.0, 5.0)), rng)


def write_vehicle1m(root: str | Path, cfg: Vehicle1MSynthConfig | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic vehicle dataset in the exact ``Vehicle-1M`` layout under ``root``.

    On-disk format written (``D = root/Vehicle-1M``)::

        D/image/<vid>/<n>.jpg                   n = 0.., vid = model * vehicles_per_model + j
        D/train-test-split/train_list.txt       "<vid>/<n>.jpg <vehicle_id> <model_id>" per line
        D/train-test-split/test_1000.txt        same format, paths relative to D/image
        D/train-test-split/test_2000.txt
        D/train-test-split/test_3000.txt

    Train and test vehicles are disjoint; ``test_1000 ⊂ test_2000 ⊂ test_3000`` (see
    :class:`Vehicle1MSynthConfig`); test lists hold every image of their vehicles. Lines are
    sorted by (vehicle id, n). Images are ``cfg.size x cfg.size`` RGB JPEGs at ``cfg.jpeg_quality``.

    Args:
        root: parent folder (created if needed).
        cfg: sizes and seed; ``Vehicle1MSynthConfig()`` if ``None``.
        overwrite: replace an existing non-empty ``root/Vehicle-1M``.

    Returns:
        the dataset folder ``root/Vehicle-1M``.

    Raises:
        FileExistsError: if ``root/Vehicle-1M`` exists, is non-empty (or not a folder) and
            ``overwrite`` is false.
    """
    cfg = cfg or Vehicle1MSynthConfig()
    s = cfg.size
    lo, hi = cfg.images_per_vehicle
    total = cfg.num_models * cfg.vehicles_per_model
    order = np.random.default_rng([cfg.seed, _TAG_VSPLIT]).permutation(total)
    test_order = [int(v) for v in order[: cfg.num_test_vehicles]]
    n_test = len(test_order)
    test_sets = {
        "test_1000": set(test_order[: math.ceil(n_test / 3)]),
        "test_2000": set(test_order[: math.ceil(2 * n_test / 3)]),
        "test_3000": set(test_order),
    }
    test_vids = test_sets["test_3000"]

    def build(out: Path) -> None:
        lines: dict[str, list[str]] = {"train_list": [], **{name: [] for name in test_sets}}
        for model_id in range(cfg.num_models):
            model = _vehicle_model(cfg.seed, model_id)
            for j in range(cfg.vehicles_per_model):
                vid = model_id * cfg.vehicles_per_model + j
                marks = _vehicle_marks(cfg.seed, vid)
                count = int(np.random.default_rng([cfg.seed, _TAG_VEHICLE, vid, 1]).integers(lo, hi + 1))
                for n in range(count):
                    rng = np.random.default_rng([cfg.seed, _TAG_VIMAGE, vid, n])
                    rel = f"{vid}/{n}.jpg"
                    atomic_write_bytes(out / "image" / rel, _jpeg(_render_vehicle(model, marks, rng, s), cfg.jpeg_quality))
                    line = f"{rel} {vid} {model_id}\n"
                    if vid in test_vids:
                        for name, vids in test_sets.items():
                            if vid in vids:
                                lines[name].append(line)
                    else:
                        lines["train_list"].append(line)
        for name, text in lines.items():
            atomic_write_text(out / "train-test-split" / f"{name}.txt", "".join(text))

    return _build_atomically(Path(root), VEHICLE1M_DIR, overwrite, build)
