"""Identity-balanced P x K batch sampling for metric-learning losses (batch-hard triplet etc.).

:class:`PKSampler` yields batches of dataset indices: P identities, K images each, the K images
of an identity consecutive. It is deterministic in ``(seed, epoch, step)``, so a run resumes
exactly from :meth:`PKSampler.state_dict`, and it splits each step's identities between
distributed ranks so that no identity is on two ranks in the same step.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["PKSampler"]

_STATE_KEYS = ("epoch", "step", "seed")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class PKSampler:
    """Infinite batch sampler: each batch is P identities x K images, pid-major.

    Args:
        pids: ``pids[i]`` is the identity of dataset index ``i`` (any ints, e.g. raw pids or
            contiguous labels).
        p: identities per batch (per rank).
        k: images per identity.
        seed: non-negative int; all ranks must use the same seed.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of ranks sharing the identities of a step.

    Sampling:
        * Epoch ``e`` is one pass over the identities: they are shuffled with a generator seeded
          from ``(seed, e)`` and cut into ``steps_per_epoch = n_ids // (p * world_size)`` steps
          of ``p * world_size`` identities; the remainder identities are unused that epoch
          (a different remainder each epoch).
        * In a step, rank ``r`` takes identities ``[r*p : (r+1)*p]`` of the step's list: every
          rank gets whole identities and no identity is on two ranks in the same step.
        * For each identity, K of its images are drawn with a generator seeded from
          ``(seed, epoch, step, identity position)``: without replacement when it has ``>= K``
          images, with replacement (so repeats) when it has fewer.
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
            ``world_size < 1``, ``rank`` outside ``[0, world_size)``, or fewer than
            ``p * world_size`` distinct identities.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.p = _check_int("p", p, 1)
        self.k = _check_int("k", k, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        arr = np.asarray(pids)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"pids must be a non-empty 1-D sequence of ints, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"pids must be ints, got dtype {arr.dtype}")
        ids, inverse = np.unique(arr, return_inverse=True)
        need = self.p * self.world_size
        if len(ids) < need:
            raise ValueError(
                f"PKSampler needs at least p * world_size = {self.p} * {self.world_size} = {need} "
                f"distinct identities, got {len(ids)}"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1]
        self._ids = ids
        self._images: list[np.ndarray] = np.split(order, bounds)  # per id, dataset order
        self._epoch = 0
        self._step = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    # -- structure ----------------------------------------------------------------------------

    @property
    def num_ids(self) -> int:
        """Number of distinct identities."""
        return len(self._ids)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch per rank: ``num_ids // (p * world_size)``."""
        return self.num_ids // (self.p * self.world_size)

    @property
    def batch_size(self) -> int:
        """``p * k``."""
        return self.p * self.k

    # -- deterministic plan -------------------------------------------------------------------

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.num_ids)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def _draw(self, epoch: int, step: int, id_pos: int) -> np.ndarray:
        images = self._images[id_pos]
        rng = np.random.default_rng([self.seed, epoch, step, id_pos])
        pick = rng.choice(len(images), size=self.k, replace=len(images) < self.k)
        return images[pick]

    def batch(self, epoch: int, step: int) -> list[int]:
        """The batch of this rank at ``(epoch, step)``, without changing the sampler's state."""
        epoch = _check_int("epoch", epoch, 0)
        step = _check_int("step", step, 0)
        if step >= self.steps_per_epoch:
            raise ValueError(f"step must be < steps_per_epoch={self.steps_per_epoch}, got {step}")
        group = self.p * self.world_size
        perm = self._epoch_perm(epoch)
        mine = perm[step * group + self.rank * self.p : step * group + (self.rank + 1) * self.p]
        return [int(i) for pos in mine for i in self._draw(epoch, step, int(pos))]

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
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"PKSampler state is missing {missing}; expected keys {_STATE_KEYS}")
        seed = _check_int("state['seed']", state["seed"], 0)
        if seed != self.seed:
            raise ValueError(f"PKSampler state has seed {seed}, this sampler was built with seed {self.seed}")
        epoch = _check_int("state['epoch']", state["epoch"], 0)
        step = _check_int("state['step']", state["step"], 0)
        if step >= self.steps_per_epoch:
            raise ValueError(
                f"PKSampler state step {step} must be < steps_per_epoch={self.steps_per_epoch} "
                "(were p, world_size or the dataset changed?)"
            )
        self._epoch, self._step = epoch, step
