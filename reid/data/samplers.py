"""Batch samplers for metric-learning losses, shared by every loader path.

* :class:`PKSampler` yields identity-balanced batches: P identities, K images each, the K images
  of an identity consecutive (batch-hard triplet etc.).
* :class:`HierarchicalSampler` yields TAMR's multi-grain batches: M vehicle models x V vehicles
  per model x K images per vehicle (Guo et al., "Two-level Attention Network with Multi-grain
  Ranking Loss for Vehicle Re-identification", IEEE TIP 2019).

Both are infinite, deterministic in ``(seed, epoch, step)`` so a run resumes exactly from
``state_dict()``, and split each step's units (identities, resp. vehicle models) between
distributed ranks so that no identity is on two ranks in the same step. Both can draw the K
images of an identity from as many different cameras as possible (``cross_camera=True``).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["HierarchicalSampler", "PKSampler"]

_STATE_KEYS = ("epoch", "step", "seed")
_SHORTFALLS = ("drop", "replace")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _int_labels(name: str, values: Sequence[int], length: int | None = None) -> np.ndarray:
    """``values`` as a non-empty 1-D int array (of ``length`` items when given)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of ints, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be ints, got dtype {arr.dtype}")
    if length is not None and arr.size != length:
        raise ValueError(f"{name} must have one entry per image: got {arr.size}, pids has {length}")
    return arr


def _camera_labels(camids: Sequence[int] | None, cross_camera: bool, n: int) -> np.ndarray | None:
    """Validated ``camids`` (``None`` when not given); ``cross_camera`` requires them."""
    if camids is None:
        if cross_camera:
            raise ValueError("cross_camera=True needs camids (one camera id per image, aligned with pids)")
        return None
    return _int_labels("camids", camids, n)


def _group_by(keys: np.ndarray, members: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct ``keys`` (sorted) and, per key, the ``members`` (default: the positions in
    ``keys``) that carry it, in their original order."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
    if members is not None:
        order = members[order]
    return uniq, np.split(order, bounds)


def _fill(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` positions out of ``range(n)``: distinct when ``n >= size``; otherwise passes of
    fresh permutations of all ``n``, concatenated and cut to ``size`` (each position is used
    ``size // n`` or ``size // n + 1`` times)."""
    if n >= size:
        return rng.choice(n, size=size, replace=False)
    passes = -(-size // n)
    return np.concatenate([rng.permutation(n) for _ in range(passes)])[:size]


def _camera_pass(cam_groups: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    """One round-robin pass over all images of an identity, grouped by camera."""
    cams = [cam_groups[c] for c in rng.permutation(len(cam_groups))]
    shuffled = [g[rng.permutation(len(g))] for g in cams]
    depth = max(len(g) for g in shuffled)
    return [int(g[r]) for r in range(depth) for g in shuffled if r < len(g)]


def _draw_images(
    images: np.ndarray, k: int, rng: np.random.Generator, cam_groups: list[np.ndarray] | None
) -> np.ndarray:
    """K images of one identity (the shared image-draw rule, documented on :class:`PKSampler`)."""
    if cam_groups is None:
        return images[rng.choice(len(images), size=k, replace=len(images) < k)]
    out: list[int] = []
    while len(out) < k:
        out += _camera_pass(cam_groups, rng)
    return np.asarray(out[:k], dtype=images.dtype)


def _camera_groups(images: list[np.ndarray], camids: np.ndarray | None) -> list[list[np.ndarray]] | None:
    """Per identity, its images split by camera (cameras sorted, images in dataset order)."""
    if camids is None:
        return None
    return [_group_by(camids[imgs], imgs)[1] for imgs in images]


class _StepSampler:
    """Shared plan, iteration and state of the samplers: epoch ``e`` shuffles the units
    (identities or vehicle models) with a generator seeded from ``(seed, e)`` and cuts them into
    steps of ``per_rank * world_size`` units; rank ``r`` takes units ``[r*per_rank : (r+1)*per_rank]``
    of a step. Subclasses set ``_per_rank`` and define ``_num_units`` and ``_unit_batch``."""

    _per_rank: int
    k: int

    def _init_plan(self, seed: int, rank: int, world_size: int) -> None:
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self._epoch = 0
        self._step = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _init_images(self, images: list[np.ndarray], camids: np.ndarray | None, cross_camera: bool) -> None:
        """Per identity (vehicle), its dataset indices; split by camera for ``cross_camera``."""
        self.cross_camera = bool(cross_camera)
        self._images = images  # per identity, dataset order
        self._cam_groups = _camera_groups(images, camids if self.cross_camera else None)

    def _draw(self, ident: int, rng: np.random.Generator) -> list[int]:
        """K images of identity ``ident`` (a position in ``_images``)."""
        groups = None if self._cam_groups is None else self._cam_groups[ident]
        return [int(i) for i in _draw_images(self._images[ident], self.k, rng, groups)]

    @property
    def _num_units(self) -> int:
        raise NotImplementedError

    def _unit_batch(self, epoch: int, step: int, pos: int) -> list[int]:
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch per rank: ``num_ids // (p * world_size)`` for :class:`PKSampler`,
        ``num_models // (m * world_size)`` for :class:`HierarchicalSampler`."""
        return self._num_units // (self._per_rank * self.world_size)

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self._num_units)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch(self, epoch: int, step: int) -> list[int]:
        """The batch of this rank at ``(epoch, step)``, without changing the sampler's state."""
        epoch = _check_int("epoch", epoch, 0)
        step = _check_int("step", step, 0)
        if step >= self.steps_per_epoch:
            raise ValueError(f"step must be < steps_per_epoch={self.steps_per_epoch}, got {step}")
        n, group = self._per_rank, self._per_rank * self.world_size
        perm = self._epoch_perm(epoch)
        mine = perm[step * group + self.rank * n : step * group + (self.rank + 1) * n]
        return [i for pos in mine for i in self._unit_batch(epoch, step, int(pos))]

    # -- iteration and state ------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            out = self.batch(self._epoch, self._step)
            self._step += 1
            if self._step == self.steps_per_epoch:
                self._epoch += 1
                self._step = 0
            yield out

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "step", "seed"}``: the position of the next batch to be yielded."""
        return {"epoch": self._epoch, "step": self._step, "seed": self.seed}

    def state_after(self, num_batches: int) -> dict[str, int]:
        """The state after ``num_batches`` batches from the start (epoch 0, step 0)."""
        n = _check_int("num_batches", num_batches, 0)
        return {"epoch": n // self.steps_per_epoch, "step": n % self.steps_per_epoch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`.

        Raises:
            ValueError: missing keys, a seed different from this sampler's (the sequence would
                not be the same), or ``step`` outside ``[0, steps_per_epoch)``.
        """
        name = type(self).__name__
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"{name} state is missing {missing}; expected keys {_STATE_KEYS}")
        seed = _check_int("state['seed']", state["seed"], 0)
        if seed != self.seed:
            raise ValueError(f"{name} state has seed {seed}, this sampler was built with seed {self.seed}")
        epoch = _check_int("state['epoch']", state["epoch"], 0)
        step = _check_int("state['step']", state["step"], 0)
        if step >= self.steps_per_epoch:
            raise ValueError(
                f"{name} state step {step} must be < steps_per_epoch={self.steps_per_epoch} "
                "(were the batch shape, world_size or the dataset changed?)"
            )
        self._epoch, self._step = epoch, step


class PKSampler(_StepSampler):
    """Infinite batch sampler: each batch is P identities x K images, pid-major.

    Args:
        pids: ``pids[i]`` is the identity of dataset index ``i`` (any ints, e.g. raw pids or
            contiguous labels).
        p: identities per batch (per rank).
        k: images per identity.
        seed: non-negative int; all ranks must use the same seed.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of ranks sharing the identities of a step.
        camids: ``camids[i]`` is the camera of dataset index ``i`` (ints); needed only for
            ``cross_camera``.
        cross_camera: draw the K images of an identity from as many different cameras as
            possible (rule below).

    Sampling:
        * Epoch ``e`` is one pass over the identities: they are shuffled with a generator seeded
          from ``(seed, e)`` and cut into ``steps_per_epoch = n_ids // (p * world_size)`` steps
          of ``p * world_size`` identities; the remainder identities are unused that epoch
          (a different remainder each epoch).
        * In a step, rank ``r`` takes identities ``[r*p : (r+1)*p]`` of the step's list: every
          rank gets whole identities and no identity is on two ranks in the same step.
        * For each identity, K of its images are drawn with a generator seeded from
          ``(seed, epoch, step, identity position)`` (the position in the sorted distinct pids):

          - ``cross_camera=False``: without replacement when it has ``>= K`` images, with
            replacement (so repeats) when it has fewer.
          - ``cross_camera=True``: the draw is a series of passes over all the identity's images;
            each pass shuffles the identity's cameras, shuffles the images within each camera,
            then takes them round-robin: the 1st image of every camera in the shuffled camera
            order, then the 2nd of every camera that has one, and so on. The K images are the
            first K of the passes. So an identity with ``>= K`` images gets K distinct images on
            ``min(K, n_cameras)`` distinct cameras (with fewer cameras than K, every camera is
            used and the images are spread over the cameras as evenly as their image counts
            allow); only an identity with fewer than K images repeats images (each image once
            per pass, so all its cameras are covered).
        * A batch is ``[id1 img1..imgK, id2 img1..imgK, ...]`` (length ``p*k``), identities in
          step order. The images of an identity are returned in draw order.

        Draws do not depend on ``rank``/``world_size``, so the batches of ranks ``0..W-1`` of a
        step, concatenated, equal the batch of a 1-rank sampler with ``p * W`` identities.

    Resume:
        Iterating continues from the current ``(epoch, step)`` and advances it by one per batch
        yielded. :meth:`state_dict` gives the position of the next batch; a sampler built with
        the same arguments and given it by :meth:`load_state_dict` yields exactly the batches
        the original would have yielded next. Behind a prefetching ``DataLoader`` the sampler
        runs ahead of training; there, restore with :meth:`state_after` of the number of
        batches actually trained on.

    Raises:
        ValueError: on empty ``pids``, non-int pids, ``p < 1``, ``k < 1``, ``seed < 0``,
            ``world_size < 1``, ``rank`` outside ``[0, world_size)``, fewer than
            ``p * world_size`` distinct identities, ``cross_camera`` without ``camids``, or
            ``camids`` not ints of the length of ``pids``.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        camids: Sequence[int] | None = None,
        cross_camera: bool = False,
    ) -> None:
        self.p = _check_int("p", p, 1)
        self.k = _check_int("k", k, 1)
        self._init_plan(seed, rank, world_size)
        self._per_rank = self.p
        arr = _int_labels("pids", pids)
        cams = _camera_labels(camids, cross_camera, arr.size)
        ids, images = _group_by(arr)
        need = self.p * self.world_size
        if len(ids) < need:
            raise ValueError(
                f"PKSampler needs at least p * world_size = {self.p} * {self.world_size} = {need} "
                f"distinct identities, got {len(ids)}"
            )
        self._ids = ids
        self._init_images(images, cams, cross_camera)

    @property
    def num_ids(self) -> int:
        """Number of distinct identities."""
        return len(self._ids)

    @property
    def _num_units(self) -> int:
        return self.num_ids

    @property
    def batch_size(self) -> int:
        """``p * k``."""
        return self.p * self.k

    def _unit_batch(self, epoch: int, step: int, pos: int) -> list[int]:
        return self._draw(pos, np.random.default_rng([self.seed, epoch, step, pos]))


class HierarchicalSampler(_StepSampler):
    """Infinite batch sampler for TAMR's multi-grain ranking (MGR) loss: M vehicle models x V
    vehicles per model x K images per vehicle.

    TAMR (Guo et al., "Two-level Attention Network with Multi-grain Ranking Loss for Vehicle
    Re-identification", IEEE TIP 2019) ranks image pairs at three grains within a mini-batch:
    same vehicle, different vehicles of the same model, different models (Sec. III-C). Its
    Sec. IV-A ("Implementation Details") states the batch construction: "In each mini-batch,
    MGR loss requires every vehicle models contain three vehicles and each vehicle contains two
    images. Therefore, the size of mini-batch must be a multiple of 6 and it is necessary to
    screen over the datasets" — i.e. ``v=3, k=2`` with ``shortfall="drop"`` (batch 24 for the
    attention network, 120 for ResNet18).

    Args:
        pids: ``pids[i]`` is the vehicle id of dataset index ``i`` (ints).
        model_ids: ``model_ids[i]`` is the vehicle model of dataset index ``i`` (ints). Rows
            with ``model_id < 0`` (unknown model) are excluded from sampling. A vehicle must
            have one model: a pid with two different (known) model ids is an error.
        m: vehicle models per batch (per rank).
        v: vehicles per model.
        k: images per vehicle.
        seed: non-negative int; all ranks must use the same seed.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of ranks sharing the models of a step.
        shortfall: what to do with models with fewer than ``v`` vehicles and vehicles with fewer
            than ``k`` images:

            - ``"drop"``: excluded up front: first every vehicle with fewer than ``k`` images
              (rows of known model only), then, counting only the remaining vehicles, every
              model with fewer than ``v`` of them. Every batch then has ``v`` distinct vehicles
              per model and ``k`` distinct images per vehicle.
            - ``"replace"``: kept. A model with ``n < v`` vehicles fills its ``v`` slots with
              passes of fresh permutations of its vehicles (each vehicle ``v // n`` or
              ``v // n + 1`` times, the repeats drawing their images independently); a vehicle
              with fewer than ``k`` images has its images drawn with replacement.
        camids: ``camids[i]`` is the camera of dataset index ``i`` (ints); needed only for
            ``cross_camera``.
        cross_camera: draw a vehicle's K images from as many different cameras as possible.

    Sampling:
        * Epoch ``e`` is one pass over the eligible models (sorted by model id; a model's
          "position" is its index there): shuffled with a generator seeded from ``(seed, e)``
          and cut into ``steps_per_epoch = num_models // (m * world_size)`` steps of
          ``m * world_size`` models; the remainder models are unused that epoch.
        * In a step, rank ``r`` takes models ``[r*m : (r+1)*m]`` of the step's list: whole
          models, hence whole vehicles, per rank; no model and no vehicle is on two ranks in
          the same step.
        * Per model, one generator seeded from ``(seed, epoch, step, model position)`` first
          picks ``v`` of its vehicles (without replacement when it has ``>= v``), then, for each
          picked vehicle in order, K images with the image-draw rule of :class:`PKSampler`
          (with or without ``cross_camera``).
        * A batch is model-major, then vehicle-major: ``[model1 [veh1 img1..imgK, ...,
          vehV img1..imgK], model2 [...], ...]``, length ``m*v*k`` (a multiple of ``v*k``).

        Draws do not depend on ``rank``/``world_size``, so the batches of ranks ``0..W-1`` of a
        step, concatenated, equal the batch of a 1-rank sampler with ``m * W`` models.

    Resume: exactly as :class:`PKSampler` (:meth:`state_dict`, :meth:`load_state_dict`,
    :meth:`state_after`).

    Raises:
        ValueError: on empty or non-int ``pids``/``model_ids``/``camids``, lengths that differ,
            ``m``, ``v`` or ``k`` < 1, ``seed < 0``, ``world_size < 1``, ``rank`` outside
            ``[0, world_size)``, a ``shortfall`` other than ``"drop"``/``"replace"``,
            ``cross_camera`` without ``camids``, a vehicle with two model ids, or fewer than
            ``m * world_size`` eligible models.
    """

    def __init__(
        self,
        pids: Sequence[int],
        model_ids: Sequence[int],
        m: int,
        v: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shortfall: str = "drop",
        camids: Sequence[int] | None = None,
        cross_camera: bool = False,
    ) -> None:
        self.m = _check_int("m", m, 1)
        self.v = _check_int("v", v, 1)
        self.k = _check_int("k", k, 1)
        self._init_plan(seed, rank, world_size)
        self._per_rank = self.m
        if shortfall not in _SHORTFALLS:
            raise ValueError(f"shortfall must be one of {_SHORTFALLS}, got {shortfall!r}")
        self.shortfall = shortfall
        pid_arr = _int_labels("pids", pids)
        model_arr = _int_labels("model_ids", model_ids, pid_arr.size)
        cams = _camera_labels(camids, cross_camera, pid_arr.size)

        rows = np.flatnonzero(model_arr >= 0)
        if rows.size == 0:
            raise ValueError("HierarchicalSampler: no rows with a known model_id (>= 0)")
        vids, images = _group_by(pid_arr[rows], rows)
        pairs = np.unique(np.stack([pid_arr[rows], model_arr[rows]], axis=1), axis=0)
        if len(pairs) != len(vids):
            _, first = np.unique(pairs[:, 0], return_index=True)
            bad = np.setdiff1d(np.arange(len(pairs)), first)
            raise ValueError(
                f"HierarchicalSampler: vehicle {int(pairs[bad[0], 0])} has more than one model_id "
                f"({sorted({int(x) for x in pairs[pairs[:, 0] == pairs[bad[0], 0], 1]})})"
            )
        vmodel = pairs[:, 1]  # aligned with vids (pairs are sorted by pid, one per pid)
        n_models_known = len(np.unique(vmodel))
        if shortfall == "drop":
            keep = np.flatnonzero(np.array([len(x) for x in images]) >= self.k)
        else:
            keep = np.arange(len(vids))
        models, vehicles = _group_by(vmodel[keep], keep) if keep.size else (vmodel[:0], [])
        if shortfall == "drop":
            ok = [i for i, vs in enumerate(vehicles) if len(vs) >= self.v]
            models, vehicles = models[ok], [vehicles[i] for i in ok]
        need = self.m * self.world_size
        if len(models) < need:
            raise ValueError(
                f"HierarchicalSampler needs at least m * world_size = {self.m} * {self.world_size} = "
                f"{need} eligible models, got {len(models)} (of {n_models_known} models with a "
                f"known model_id; shortfall={shortfall!r}, v={self.v}, k={self.k})"
            )
        self._models = models
        self._model_vehicles: list[np.ndarray] = vehicles  # per model, vehicle positions in _vids
        self._vids = vids
        self._init_images(images, cams, cross_camera)

    @property
    def num_models(self) -> int:
        """Number of eligible vehicle models."""
        return len(self._models)

    @property
    def num_vehicles(self) -> int:
        """Number of vehicles of the eligible models."""
        return sum(len(vs) for vs in self._model_vehicles)

    @property
    def _num_units(self) -> int:
        return self.num_models

    @property
    def batch_size(self) -> int:
        """``m * v * k``."""
        return self.m * self.v * self.k

    def _unit_batch(self, epoch: int, step: int, pos: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch, step, pos])
        vehicles = self._model_vehicles[pos]
        out: list[int] = []
        for veh in vehicles[_fill(len(vehicles), self.v, rng)]:
            out += self._draw(int(veh), rng)
        return out
