"""Feature extraction for evaluation, with optional flip averaging, on one rank or sharded
across the ranks of a ``torch.distributed`` process group."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from reid.data.loaders import AugmentConfig, iterate_eval
from reid.data.shards import ShardsIndex
from reid.engine.distributed import comm_device


@dataclass(frozen=True)
class Features:
    """Embeddings of one split, in loader order (``keys`` order after :func:`gather_features`).

    Attributes:
        feats: ``(N, D) float32`` CPU tensor.
        pids, camids: ``(N,) int64`` numpy arrays.
        keys: the N sample keys.
    """

    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    keys: list[str]


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[dict], flip: bool = False) -> Features:
    """Run ``model`` in eval mode over Batch dicts and collect ``outputs["embed"]``.

    Args:
        model: a registry model; its parameters' device is used for the forward pass.
        batches: Batch dicts (``images (B, 3, H, W) float32``, ``pids``, ``camids``, ``keys``).
        flip: average the embedding of each image with that of its horizontal mirror
            (as in fast-reid's ``TEST.FLIP``).

    Raises:
        ValueError: if ``batches`` is empty.
    """
    model.eval()
    device = next(model.parameters()).device
    feats, pids, camids, keys = [], [], [], []
    for batch in batches:
        images = batch["images"].to(device, torch.float32)
        emb = model(images)["embed"].float()
        if flip:
            emb = (emb + model(torch.flip(images, dims=[3]))["embed"].float()) / 2
        feats.append(emb.cpu())
        pids.append(batch["pids"].cpu().numpy())
        camids.append(batch["camids"].cpu().numpy())
        keys.extend(batch["keys"])
    if not feats:
        raise ValueError("extract_features: no batches")
    return Features(torch.cat(feats), np.concatenate(pids), np.concatenate(camids), keys)


# --------------------------------------------------------------------------------------------
# several ranks: each extracts its share, then the shares are all-gathered in the original order


class PeerExtractionError(RuntimeError):
    """Feature extraction failed on another rank (this rank's share may be fine).

    Raised by :func:`extract_split_features` on every rank whose own share succeeded when some
    other rank's failed; the failing rank re-raises its own error. Every rank raises, so none is
    left waiting in a collective.
    """


def _world(distributed: bool = True) -> tuple[int, int]:
    """``(rank, world size)`` of the default ``torch.distributed`` process group, or ``(0, 1)``
    without one (or with ``distributed=False``)."""
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _empty() -> Features:
    """A rank's share when it holds no sample: ``feats`` is ``(0, 0) float32``."""
    return Features(torch.zeros(0, 0), np.zeros(0, np.int64), np.zeros(0, np.int64), [])


def _inconsistency(f: Features) -> str | None:
    """Why ``f`` is malformed (a description), or None when its four fields agree."""
    if f.feats.dim() != 2:
        return f"feats must be 2-D (N, D), got shape {tuple(f.feats.shape)}"
    n = (f.feats.shape[0], len(f.pids), len(f.camids), len(f.keys))
    if len(set(n)) > 1:
        return f"feats, pids, camids and keys must have one length each, got {n}"
    return None


def _examples(items: list[str]) -> str:
    return f"{len(items)} (e.g. {items[:3]})"


def _in_order(feats: torch.Tensor, pids: np.ndarray, camids: np.ndarray, got: list[str],
              keys: list[str]) -> Features:
    """The extracted samples ``got`` (aligned with ``feats``/``pids``/``camids``) in ``keys`` order.

    Raises:
        ValueError: ``keys`` repeats a key, or ``got`` misses a key of ``keys``, holds one that
            is not in ``keys``, or holds one more than once (each named by examples).
    """
    counts = Counter(keys)
    repeated = [k for k, c in counts.items() if c > 1]
    if repeated:
        raise ValueError(f"gather_features: keys must be distinct; repeated: {_examples(repeated)}")
    found = Counter(got)
    missing = [k for k in keys if k not in found]
    extra = [k for k in found if k not in counts]
    twice = [k for k, c in found.items() if c > 1]
    if missing or extra or twice:
        raise ValueError(f"gather_features: the {len(got)} extracted samples do not match the {len(keys)} keys: "
                         f"missing {_examples(missing)}, not in keys {_examples(extra)}, "
                         f"extracted more than once {_examples(twice)}")
    position = {k: i for i, k in enumerate(got)}
    order = np.array([position[k] for k in keys], np.int64)
    return Features(feats.to("cpu", torch.float32)[torch.from_numpy(order)], np.asarray(pids, np.int64)[order],
                    np.asarray(camids, np.int64)[order], list(keys))


def _local_in_order(local: Features, keys: list[str]) -> Features:
    """``local`` validated and put in ``keys`` order, with no collective (the one-rank case)."""
    problem = _inconsistency(local)
    if problem:
        raise ValueError(f"gather_features: {problem}")
    return _in_order(local.feats, local.pids, local.camids, list(local.keys), keys)


def _gather(local: Features, keys: list[str], failure: str | None) -> Features:
    """:func:`gather_features` with this rank's extraction ``failure`` (a description) reported
    to all ranks in the same collective, so that every rank raises together."""
    _, world = _world()
    if world == 1:
        return _local_in_order(local, keys)
    problem = failure or _inconsistency(local)

    digest = hashlib.sha256("\0".join(keys).encode()).hexdigest()
    meta = {"keys": list(local.keys), "pids": np.asarray(local.pids, np.int64),
            "camids": np.asarray(local.camids, np.int64), "shape": tuple(local.feats.shape),
            "problem": problem, "failed": failure is not None, "digest": digest}
    metas: list = [None] * world
    torch.distributed.all_gather_object(metas, meta)
    # from here on every rank sees the same metas, so every rank takes the same branch
    failed = [f"rank {r}: {m['problem']}" for r, m in enumerate(metas) if m["failed"]]
    if failed:
        raise PeerExtractionError(f"feature extraction failed on {len(failed)} of {world} ranks: {'; '.join(failed)}")
    bad = [f"rank {r}: {m['problem']}" for r, m in enumerate(metas) if m["problem"]]
    if bad:
        raise ValueError(f"gather_features: malformed local features on {'; '.join(bad)}")
    if len({m["digest"] for m in metas}) > 1:
        raise ValueError(f"gather_features: the ranks passed different key lists (this rank: {len(keys)} keys, "
                         f"e.g. {keys[:3]})")
    counts = [m["shape"][0] for m in metas]
    dims = sorted({m["shape"][1] for m in metas if m["shape"][0] > 0})
    if len(dims) > 1:
        raise ValueError(f"gather_features: ranks extracted features of different widths {dims}")
    dim = dims[0] if dims else 0
    feats = torch.zeros(0, dim)
    if max(counts) > 0:
        device = comm_device()
        padded = torch.zeros(max(counts), dim, dtype=torch.float32, device=device)
        if counts[torch.distributed.get_rank()]:
            padded[: local.feats.shape[0]] = local.feats.to(device, torch.float32)
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded)
        feats = torch.cat([p[:n].cpu() for p, n in zip(parts, counts)])
    return _in_order(feats, np.concatenate([m["pids"] for m in metas]),
                     np.concatenate([m["camids"] for m in metas]), [k for m in metas for k in m["keys"]], keys)


def gather_features(local: Features, keys: Sequence[str]) -> Features:
    """All ranks' features, in the order of ``keys``, on every rank.

    With an initialised ``torch.distributed`` process group of world size ``W > 1`` this is a
    collective: every rank of the default group must call it, with the same ``keys``. Labels and
    keys travel by ``all_gather_object``; the ``(n_r, D) float32`` feature rows by one
    ``all_gather`` of tensors zero-padded to the largest ``n_r`` (on the current GPU under NCCL,
    on the CPU otherwise), so large feature sets are not pickled. A rank may hold no sample
    (``n_r = 0``; its ``feats`` may then be ``(0, 0)``). Without a process group, or with
    ``W == 1``, ``local`` is only validated and reordered.

    Args:
        local: this rank's share: ``feats (n_r, D)`` float (any device), ``pids``/``camids``
            ``(n_r,)`` integer arrays, ``keys`` the ``n_r`` sample keys, in any order.
        keys: the wanted samples, in the wanted order (e.g. the original sample order).

    Returns:
        Features with ``feats (len(keys), D) float32`` on the CPU, ``pids``/``camids``
        ``(len(keys),) int64`` and ``keys`` equal to ``list(keys)``; identical on every rank.

    Raises:
        ValueError: (on every rank alike) ``keys`` repeats a key; the gathered samples miss a key,
            hold a key not in ``keys``, or hold a key twice (e.g. loader padding that was not
            dropped), each named by examples; a rank's ``local`` fields disagree in length or
            its ``feats`` is not 2-D; ranks passed different ``keys`` or features of different
            widths ``D``.
    """
    return _gather(local, list(keys), None)


def extract_split_features(model: torch.nn.Module, backend: str, index: ShardsIndex, keys: Sequence[str],
                           cfg: AugmentConfig, batch_size: int, device: torch.device, flip: bool = False,
                           distributed: bool = True) -> Features:
    """Features of ``keys``, in ``keys`` order, each rank extracting only its share.

    With ``distributed`` and an initialised ``torch.distributed`` process group of world size
    ``W``, rank ``r`` reads only its part of the samples with
    ``iterate_eval(backend, index, keys, cfg, batch_size, device, rank=r, world_size=W)``
    (both backends give rank ``r`` the keys among the contiguous part ``[N r / W, N (r+1) / W)``
    of the ``N`` samples of the splits holding ``keys``; DALI's ``pad_last_batch`` repeats are
    dropped there), runs :func:`extract_features` on it, and :func:`gather_features` collects
    every rank's share. This is then a collective: all ranks must call it with the same
    arguments (a rank whose share holds none of ``keys`` still takes part). Without a group,
    with ``W == 1`` or ``distributed=False``, this process reads every key (same numbers as
    ``extract_features(model, iterate_eval(...), flip)``).

    Args:
        model, flip: as :func:`extract_features` (the model is put in eval mode).
        backend, index, keys, cfg, batch_size, device: as
            :func:`reid.data.loaders.iterate_eval`; ``keys`` in shard order.
        distributed: use the process group when there is one; False reads everything here.

    Returns:
        Features of ``keys`` in ``keys`` order (``feats (len(keys), D) float32`` CPU), identical
        on every rank.

    Raises:
        ValueError: what :func:`reid.data.loaders.iterate_eval` or :func:`gather_features`
            raise (every rank alike).
        PeerExtractionError: (``W > 1``) on the ranks whose share was extracted while another
            rank's failed; the failing rank re-raises its own error (e.g. ``ShardsError``).
    """
    keys = list(keys)
    rank, world = _world(distributed)
    if world == 1:
        batches = iterate_eval(backend, index, keys, cfg, batch_size, device)
        return _local_in_order(extract_features(model, batches, flip), keys)  # no collective
    failure: BaseException | None = None
    try:
        batches = iter(iterate_eval(backend, index, keys, cfg, batch_size, device, rank=rank, world_size=world))
        first = next(batches, None)
        if first is None:  # this rank's part of the splits holds none of the keys
            model.eval()
            local = _empty()
        else:
            local = extract_features(model, itertools.chain([first], batches), flip)
    except Exception as err:  # reported to the other ranks, which would otherwise wait forever
        failure, local = err, _empty()
    try:
        return _gather(local, keys, None if failure is None else f"{type(failure).__name__}: {failure}")
    except PeerExtractionError:
        if failure is None:
            raise
    raise failure  # this rank's own error, with its own traceback
