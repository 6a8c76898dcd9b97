"""The per-sample input callback of the DALI training pipeline: sampled keys -> JPEG bytes and
that sample's augmentation draws.

:class:`SampledJpegSource` is what ``fn.external_source(parallel=True, batch=False)`` calls once
per sample, possibly in DALI's Python worker processes. It is stateless between calls: the sample
for ``(iteration, idx_in_batch)`` comes from the sampler's deterministic ``batch(epoch, step)``,
so any number of workers, in any order, feed the same sequence.

The random numbers of the augmentations come from here too (:func:`augment_draws`), not from DALI's
random operators: they are a function of ``(seed, global batch number, global slot)`` only. So a
sample is augmented the same way whatever the rank layout (rank ``r`` of ``W`` holds the slots
``[r B, (r + 1) B)`` of the global batch, as the samplers lay it out), and a run resumed in the
middle of an epoch continues the exact sequence. The source also maps a sample's draws to the
arguments of the DALI operators (:func:`augment_args`: crop offset, mirror flag, jitter factors,
erased rectangle), here in numpy rather than as a dozen small DALI arithmetic operators per batch,
which cost more than the pixel work on a CPU-only host (see ``benchmarks/RESULTS.md``). This module
does not import torch, so spawned workers start quickly.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from reid.data.loaders.config import AugmentConfig
from reid.data.shards import ShardsError, ShardsIndex

__all__ = ["AUGMENT_DRAWS", "BatchPlan", "SampledJpegSource", "augment_args", "augment_draws", "augment_outputs",
           "jpeg_looks_complete"]

#: The uniform draws in ``[0, 1)`` each training sample gets, in this column order (the DALI
#: graph gets them mapped to the ranges of the config by :func:`augment_args`). Every
#: sample gets all of them whatever is enabled, so switching one augmentation on or off does not
#: change the draws of the others.
AUGMENT_DRAWS = ("crop_x", "crop_y", "flip", "brightness", "contrast", "saturation", "erase", "erase_area",
                 "erase_ratio", "erase_y", "erase_x")

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"


class BatchPlan(Protocol):
    """What the source needs from a batch sampler (``PKSampler`` and the hierarchical sampler)."""

    steps_per_epoch: int

    def batch(self, epoch: int, step: int) -> list[int]: ...

    def state_dict(self) -> dict[str, int]: ...


def augment_draws(seed: int, batch: int, global_batch_size: int) -> np.ndarray:
    """The augmentation draws of one global batch: ``(global_batch_size, len(AUGMENT_DRAWS))``
    float32 in ``[0, 1)``; row ``j`` belongs to global slot ``j``.

    Args:
        seed: the loader's augmentation seed (any int >= 0).
        batch: the global batch number since the start of training (``epoch * steps_per_epoch +
            step``), so the draws do not depend on where a run was resumed.
        global_batch_size: images per step over all ranks.

    Raises:
        ValueError: a negative ``seed``/``batch`` or ``global_batch_size < 1``.
    """
    if seed < 0 or batch < 0 or global_batch_size < 1:
        raise ValueError(f"augment_draws: need seed, batch >= 0 and global_batch_size >= 1, "
                         f"got {seed}, {batch}, {global_batch_size}")
    rng = np.random.default_rng([seed, batch])
    return rng.random((global_batch_size, len(AUGMENT_DRAWS)), dtype=np.float32)


def augment_outputs(cfg: AugmentConfig) -> tuple[str, ...]:
    """Names of the per-sample augmentation arguments :func:`augment_args` gives for ``cfg``, in
    order; only the enabled augmentations have one (empty when ``cfg.augments`` is False). They
    do not depend on the draws, so any row gives them."""
    return tuple(augment_args(np.zeros(len(AUGMENT_DRAWS), np.float32), cfg))


def augment_args(draws: np.ndarray, cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """One sample's DALI augmentation arguments from its uniform draws, by name, in the order of
    :func:`augment_outputs`; only the enabled augmentations have one. All arithmetic is float32,
    as DALI's own would be.

    Args:
        draws: ``(len(AUGMENT_DRAWS),)`` float32 in ``[0, 1)`` (a row of :func:`augment_draws`).
        cfg: the pipeline settings; ``cfg.image_size`` is the output ``(H, W)`` in pixels.

    Returns:
        ``crop_anchor``: ``(2,)`` int32, the crop window's top-left corner ``(x, y)`` in pixels
        relative to the image, each ``floor(u (2 pad + 1)) - pad``, i.e. uniform in ``[-pad,
        pad]`` (the window is ``image_size``; outside the image is zero padding).
        ``mirror``: ``()`` int32, 1 with probability ``flip_prob``.
        ``color``: ``(3,)`` float32 brightness, contrast and saturation factors, each uniform in
        ``[1 - s, 1 + s]`` for ``s = color_jitter``.
        ``erase_anchor``, ``erase_shape``: ``(2,)`` float32 ``(y, x)`` and ``(h, w)`` of the erased
        rectangle as fractions of the image (Zhong et al., AAAI 2020, Alg. 1: area ``S_e ~
        U(erase_area) H W`` and aspect ratio ``r_e = H_e / W_e ~ U(erase_ratio)``, so ``H_e =
        sqrt(S_e r_e)`` and ``W_e = sqrt(S_e / r_e)``; instead of the paper's rejection loop the
        sides are clipped to the image, and the corner is uniform among the positions that keep
        the rectangle inside). The shape is ``(0, 0)`` (nothing erased) with probability ``1 -
        erase_prob``.

    Raises:
        ValueError: ``draws`` of the wrong shape.
    """
    d = np.asarray(draws, np.float32)
    if d.shape != (len(AUGMENT_DRAWS),):
        raise ValueError(f"augment_args: draws must have shape ({len(AUGMENT_DRAWS)},), got {d.shape}")
    u = dict(zip(AUGMENT_DRAWS, d))
    f32 = np.float32

    def uniform(name: str, lo: float, hi: float) -> np.float32:
        return f32(lo) + u[name] * f32(hi - lo)

    h, w = cfg.image_size
    out: dict[str, np.ndarray] = {}
    if cfg.pad > 0:
        span = f32(2 * cfg.pad + 1)
        out["crop_anchor"] = (np.array([np.floor(u["crop_x"] * span), np.floor(u["crop_y"] * span)], np.float32)
                              .astype(np.int32) - np.int32(cfg.pad))
    if cfg.flip_prob > 0:
        out["mirror"] = np.array(u["flip"] < f32(cfg.flip_prob), np.int32)
    if cfg.color_jitter > 0:
        lo, hi = 1.0 - cfg.color_jitter, 1.0 + cfg.color_jitter
        out["color"] = np.array([uniform(n, lo, hi) for n in ("brightness", "contrast", "saturation")], np.float32)
    if cfg.erase_prob > 0:
        area = uniform("erase_area", *cfg.erase_area)
        ratio = uniform("erase_ratio", *cfg.erase_ratio)
        eh = min(np.sqrt(area * ratio * f32(w / h)), f32(1.0))
        ew = min(np.sqrt(area / ratio * f32(h / w)), f32(1.0))
        on = f32(u["erase"] < f32(cfg.erase_prob))
        out["erase_anchor"] = np.array([u["erase_y"] * (f32(1.0) - eh), u["erase_x"] * (f32(1.0) - ew)], np.float32)
        out["erase_shape"] = np.array([eh * on, ew * on], np.float32)
    return out


def jpeg_looks_complete(data: bytes) -> bool:
    """Cheap structural check: starts with the SOI marker and ends with EOI (trailing zero
    padding allowed). Catches empty and truncated files, the usual corruption, in O(1)."""
    return data.startswith(_SOI) and data.rstrip(b"\0").endswith(_EOI)


class SampledJpegSource:
    """Per-sample callback: sample ``j`` of batch ``n`` -> ``(jpeg uint8 (L,), index int64 (1,),
    skipped int32 (1,), *args)``, ``args`` being the values of that sample's :func:`augment_args`
    for ``augment``, in :attr:`augment_outputs` order (none without one).

    Args:
        index: the shards (picklable; reads by ``pread`` at the recorded offsets).
        keys: training keys; sampler index ``i`` is ``keys[i]``.
        pids: label of each key (aligned with ``keys``), used to replace a corrupt sample.
        sampler: a batch sampler (see :class:`BatchPlan`); batch ``n`` of this source is the
            sampler's batch ``n`` positions after its :meth:`state_dict` at construction.
        on_corrupt: ``"error"``: a JPEG that fails :func:`jpeg_looks_complete` raises
            :class:`ShardsError` naming the shard tar and key; ``"skip"``: it is replaced by the
            next image of the same identity (cycling through ``keys`` order) that passes, and the
            sample's ``skipped`` output is 1.
        seed: augmentation seed (int >= 0); the draws of sample ``j`` of batch ``n`` are row
            ``rank * B + j`` of ``augment_draws(seed, n_abs, world_size * B)``, with ``n_abs`` the
            sampler position (``epoch * steps_per_epoch + step``) and ``rank``/``world_size`` the
            sampler's (1 rank when it has none).
        augment: the pipeline settings whose :func:`augment_args` each call returns; None (or
            settings without random augmentation): three outputs only.

    Raises:
        ShardsError: a corrupt sample with ``on_corrupt="error"``, or an identity with no
            readable image at all.
    """

    def __init__(self, index: ShardsIndex, keys: Sequence[str], pids: Sequence[int], sampler: BatchPlan,
                 on_corrupt: str = "error", seed: int = 0, augment: AugmentConfig | None = None) -> None:
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.index = index
        self.keys = list(keys)
        self.pids = np.asarray(pids, np.int64)
        self.sampler = sampler
        self.on_corrupt = on_corrupt
        self.seed = seed
        self.augment = augment if augment is not None and augment.augments else None
        #: names of the augmentation outputs after the first three (see :func:`augment_outputs`)
        self.augment_outputs = augment_outputs(self.augment) if self.augment else ()
        self.rank = int(getattr(sampler, "rank", 0))
        self.world_size = int(getattr(sampler, "world_size", 1))
        state = sampler.state_dict()
        self.start = state["epoch"] * sampler.steps_per_epoch + state["step"]
        self._cached: tuple[int, list[int]] | None = None
        self._cached_draws: tuple[int, np.ndarray] | None = None

    def batch_indices(self, n: int) -> list[int]:
        """Sampler indices of this source's batch ``n`` (0-based)."""
        if self._cached is None or self._cached[0] != n:
            epoch, step = divmod(self.start + n, self.sampler.steps_per_epoch)
            self._cached = (n, self.sampler.batch(epoch, step))
        return self._cached[1]

    def draws(self, n: int) -> np.ndarray:
        """This rank's augmentation draws for its batch ``n``: ``(B, len(AUGMENT_DRAWS))`` float32."""
        if self._cached_draws is None or self._cached_draws[0] != n:
            b = len(self.batch_indices(n))
            rows = augment_draws(self.seed, self.start + n, b * self.world_size)
            self._cached_draws = (n, rows[self.rank * b:(self.rank + 1) * b])
        return self._cached_draws[1]

    def describe(self, i: int) -> str:
        """``"key '<key>' in shard <tar path>"`` for sampler index ``i``."""
        key = self.keys[i]
        return f"key {key!r} in shard {self.index.root / self.index.location(key)[0]}"

    def read(self, i: int) -> tuple[np.ndarray, int, int]:
        """``(jpeg bytes as uint8, index actually read, skipped 0/1)`` for sampler index ``i``."""
        data = self.index.read_jpeg(self.keys[i])
        if jpeg_looks_complete(data):
            return np.frombuffer(data, np.uint8), i, 0
        if self.on_corrupt == "error":
            raise ShardsError(f"corrupt JPEG: {self.describe(i)} (loader.on_corrupt: skip replaces it)")
        same = np.flatnonzero(self.pids == self.pids[i])
        start = int(np.searchsorted(same, i))
        for j in np.roll(same, -start)[1:]:
            data = self.index.read_jpeg(self.keys[int(j)])
            if jpeg_looks_complete(data):
                return np.frombuffer(data, np.uint8), int(j), 1
        raise ShardsError(f"corrupt JPEG: {self.describe(i)}, and no other image of its identity is readable")

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:
        """DALI per-sample call: ``info`` is a ``nvidia.dali.types.SampleInfo``."""
        i = self.batch_indices(info.iteration)[info.idx_in_batch]
        jpeg, used, skipped = self.read(i)
        out = (jpeg, np.array([used], np.int64), np.array([skipped], np.int32))
        if self.augment is None:
            return out
        return out + tuple(augment_args(self.draws(info.iteration)[info.idx_in_batch], self.augment).values())
