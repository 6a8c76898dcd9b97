"""PyTorch reference loaders over WebDataset shards: training (P x K sampled, augmented) and evaluation.

The path for machines without NVIDIA DALI, and the parity reference for
:mod:`reid.data.loaders.dali`. It applies the image pipeline of
:class:`~reid.data.loaders.config.AugmentConfig` with ``torchvision.transforms.v2``, in this
order (bracketed steps only in training, and only when enabled)::

    decode (torchvision.io.decode_jpeg, RGB, uint8 CHW)
    -> Resize(image_size, bilinear, antialias=True)               uint8, rounded
    -> [Pad(pad, fill 0) + RandomCrop(image_size)]                offset uniform in [-pad, pad] px per axis
    -> [RandomHorizontalFlip(flip_prob)]
    -> [ColorJitter(brightness=s, contrast=s, saturation=s)]      factors uniform in [1 - s, 1 + s]
    -> ToDtype(float32, scale=False)                              0-255 scale
    -> Normalize(mean, std)                                       (x - mean) / std, per RGB channel
    -> [RandomErasing(p=erase_prob, scale=erase_area, ratio=erase_ratio, value=0)]
    -> cast to cfg.dtype

Random erasing follows Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, Alg. 1: with
probability ``erase_prob`` one rectangle of area ``S_e ~ U(erase_area) * H * W`` and aspect ratio
``r_e = h/w`` drawn in ``erase_ratio`` (log-uniform, as torchvision) is set to 0 after
normalisation, i.e. to the mean pixel (as torchreid and fast-reid do). torchvision tries 10 draws
for a rectangle that fits and leaves the image unchanged if none does.

Both loaders yield the project's *Batch* dict, as the DALI loaders do::

    images    (B, 3, H, W) cfg.dtype, normalised ((x - mean) / std on the 0-255 scale)
    pids      (B,) int64   contiguous train labels (train) or dataset pids (eval)
    camids    (B,) int64
    model_ids (B,) int64   -1 where unknown
    keys      list[str]    sample keys

Parity with DALI: given the same sampler state, :class:`TorchTrainLoader` yields the same
``(pid, key)`` sequence as :class:`~reid.data.loaders.dali.DaliTrainLoader`. The random draws
differ (torch's generator, not DALI's), so augmented pixels do not match DALI's; with
augmentation off the pixels agree within JPEG-decoder and resize-kernel tolerance (both decode with
libjpeg-turbo; torchvision's antialiased uint8 bilinear resize and DALI's ``INTERP_LINEAR`` +
antialias use different fixed-point weights; see ``tests/data/test_loader_torch.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from reid.data.loaders.config import AugmentConfig
from reid.data.shards import ShardsError, ShardsIndex

__all__ = ["TorchTrainLoader", "build_transform", "iterate_eval_torch"]

_SEED_MASK = (1 << 64) - 1


def build_transform(cfg: AugmentConfig, train: bool) -> v2.Compose:
    """The torchvision v2 pipeline of ``cfg`` (module docstring), from a decoded image on.

    Input: a uint8 ``(3, h, w)`` RGB tensor of any size. Output: a ``(3, H, W)`` tensor in
    ``cfg.dtype`` with ``(H, W) = cfg.image_size``, normalised on the 0-255 scale. With
    ``train=False`` no random step is included, whatever ``cfg`` says. The random steps draw from
    torch's global CPU generator (callers fork and seed it per sample).
    """
    h, w = cfg.image_size
    steps: list[Any] = [v2.Resize((h, w), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
    if train:
        if cfg.pad > 0:
            steps += [v2.Pad(cfg.pad, fill=0), v2.RandomCrop((h, w))]
        if cfg.flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(cfg.flip_prob))
        if cfg.color_jitter > 0:
            s = cfg.color_jitter
            steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    steps += [v2.ToDtype(torch.float32, scale=False), v2.Normalize(list(cfg.mean), list(cfg.std))]
    if train and cfg.erase_prob > 0:
        steps.append(v2.RandomErasing(p=cfg.erase_prob, scale=tuple(cfg.erase_area),
                                      ratio=tuple(cfg.erase_ratio), value=0))
    steps.append(v2.ToDtype(getattr(torch, cfg.dtype), scale=False))
    return v2.Compose(steps)


def _decode(index: ShardsIndex, key: str) -> torch.Tensor:
    """Read and decode one sample: uint8 ``(3, h, w)`` RGB.

    Raises:
        ShardsError: the JPEG cannot be decoded (names the shard tar and the key), or the
            bytes cannot be read (from :meth:`ShardsIndex.read_jpeg`).
    """
    data = index.read_jpeg(key)
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        raise _corrupt(index, key, err) from err


def _corrupt(index: ShardsIndex, key: str, err: BaseException) -> ShardsError:
    shard = index.location(key)[0]
    return ShardsError(f"{index.root / shard}: cannot decode the JPEG of sample {key!r}: "
                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}")


def _sample_seed(seed: int, batch: int, slot: int) -> int:
    """The torch seed of one sample: a function of (loader seed, batch number, slot) only."""
    state = np.random.SeedSequence([seed & _SEED_MASK, batch, slot]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1]) << 32)


class _LabelTable:
    """Per-sample label arrays of one split, indexed by position in ``keys``."""

    def __init__(self, index: ShardsIndex, keys: Sequence[str], pid_map: dict[int, int] | None):
        self.keys = list(keys)
        labels = [index.labels(k) for k in self.keys]
        self.raw_pids = np.array([lab["pid"] for lab in labels], np.int64)
        self.pids = self.raw_pids if pid_map is None else np.array([pid_map[p] for p in self.raw_pids], np.int64)
        self.camids = np.array([lab["camid"] for lab in labels], np.int64)
        self.model_ids = np.array([lab["model_id"] for lab in labels], np.int64)

    def batch(self, idx: np.ndarray, images: torch.Tensor, non_blocking: bool = False) -> dict:
        dev = images.device
        return {
            "images": images,
            "pids": torch.from_numpy(self.pids[idx]).to(dev, non_blocking=non_blocking),
            "camids": torch.from_numpy(self.camids[idx]).to(dev, non_blocking=non_blocking),
            "model_ids": torch.from_numpy(self.model_ids[idx]).to(dev, non_blocking=non_blocking),
            "keys": [self.keys[i] for i in idx],
        }


class _TrainDataset(Dataset):
    """Map-style dataset whose items are ``(batch number, slot, sample index)`` triples.

    ``__getitem__`` returns ``(image, index actually used, skipped 0/1)``: the image is the
    transformed ``(3, H, W)`` tensor; with ``on_corrupt="skip"`` a sample whose JPEG does not
    decode is replaced by the next image of the same identity in ``keys`` that decodes (cycling
    through ``keys`` order), and ``skipped`` is 1.
    """

    def __init__(self, index: ShardsIndex, keys: Sequence[str], raw_pids: np.ndarray,
                 cfg: AugmentConfig, seed: int):
        self.index = index
        self.keys = list(keys)
        self.cfg = cfg
        self.seed = seed
        self.transform = build_transform(cfg, train=True)
        groups: dict[int, list[int]] = {}
        for i, pid in enumerate(raw_pids.tolist()):
            groups.setdefault(pid, []).append(i)
        self._group_of = {i: g for g in groups.values() for i in g}

    def __len__(self) -> int:
        return len(self.keys)

    def _load(self, i: int) -> tuple[torch.Tensor, int, int]:
        try:
            return _decode(self.index, self.keys[i]), i, 0
        except ShardsError as err:
            if self.cfg.on_corrupt == "error":
                raise
            first_err = err
        group = self._group_of[i]
        pos = group.index(i)
        for j in group[pos + 1:] + group[:pos]:
            try:
                return _decode(self.index, self.keys[j]), j, 1
            except ShardsError:
                pass
        raise ShardsError(f"{first_err}; no other image of its identity decodes either "
                          f"({len(group)} images tried, on_corrupt='skip')")

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        batch, slot, i = item
        image, used, skipped = self._load(int(i))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, batch, slot))
            out = self.transform(image)
        return out, used, skipped


def _collate(samples: list[tuple[torch.Tensor, int, int]]) -> dict[str, torch.Tensor]:
    images, used, skipped = zip(*samples)
    return {"images": torch.stack(images), "index": torch.tensor(used, dtype=torch.int64),
            "skipped": torch.tensor(sum(skipped), dtype=torch.int64)}


def _is_plan(sampler: Any) -> bool:
    return all(hasattr(sampler, a) for a in ("batch", "steps_per_epoch", "state_dict"))


class _NumberedBatches:
    """The DataLoader's batch sampler: yields ``[(batch number, slot, index), ...]`` lazily.

    For a planned sampler (``batch(epoch, step)``, ``steps_per_epoch``, ``state_dict()``: a
    :class:`~reid.data.samplers.PKSampler` or the hierarchical sampler), the loader's batch ``n``
    is the sampler's batch ``n`` positions after its state at construction, and the sampler object
    is not advanced (as :class:`~reid.data.loaders.dali.DaliTrainLoader`); the batch number
    yielded is the sampler position ``epoch * steps_per_epoch + step`` and the slot is the global
    one, ``rank * B + j`` (the sampler's ``rank``), so the per-sample augmentation seed does not
    depend on where the loader started or on the rank layout. Any other iterable of index lists
    is iterated (and so advanced) as the DataLoader requests batches, numbered from 0.
    """

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.start: int | None = None
        if _is_plan(sampler):
            state = sampler.state_dict()
            self.start = state["epoch"] * sampler.steps_per_epoch + state["step"]

    def _batches(self) -> Iterator[Sequence[int]]:
        if self.start is None:
            yield from self.sampler
            return
        for n in itertools.count(self.start):
            yield self.sampler.batch(*divmod(n, self.sampler.steps_per_epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        first = self.start or 0
        rank = int(getattr(self.sampler, "rank", 0))
        for n, batch in enumerate(self._batches(), start=first):
            yield [(n, rank * len(batch) + j, int(i)) for j, i in enumerate(batch)]


class TorchTrainLoader:
    """Infinite training loader: the P x K sampler picks indices, DataLoader workers decode and augment.

    Same contract as :class:`reid.data.loaders.dali.DaliTrainLoader`.

    Args:
        index: the dataset's shards (``ShardsIndex.load(shards_dir)``); pickled to the workers.
        keys: training sample keys; position ``i`` is sample index ``i`` for the sampler.
        pid_map: dataset pid -> contiguous train label.
        sampler: a :class:`~reid.data.samplers.PKSampler` (or any sampler with ``batch(epoch,
            step)``, ``steps_per_epoch``, ``state_dict()``) over ``[pid_map[pid(k)] for k in keys]``:
            batch ``n`` of the loader is the sampler's batch ``n`` positions after its state at
            construction, and the sampler object itself is not advanced (as DALI's loader). Any
            other iterable of index lists also works; it is iterated lazily (infinite is fine).
        cfg: augmentation and pipeline settings (module docstring for the order of the steps).
        seed: augmentation seed (any int; taken modulo 2**64). Sample ``j`` of the batch at
            sampler position ``n`` (``epoch * steps_per_epoch + step``) is transformed under
            ``torch.manual_seed(f(seed, n, rank * B + j))`` (in a forked RNG state, so the caller's
            global RNG is untouched): the same seed gives the same pixels whatever the number of
            workers, the rank layout or the position the loader started at.
        device: torch device the batches land on (pinned host memory and non-blocking copies
            when it is CUDA).
        num_workers: DataLoader worker processes (default ``cfg.num_threads``; 0 = decode in
            this process).

    Iterating yields Batch dicts (module docstring) of ``len(batch)`` samples (``p * k`` for a
    PKSampler), images in ``cfg.dtype``. With ``cfg.on_corrupt="skip"`` a sample whose JPEG does
    not decode is replaced by the next image of the same identity in ``keys`` that decodes
    (cycling through ``keys`` order), and the batch reports that image's key, camid and model_id
    (same pid); :attr:`skipped` counts the samples replaced so far in the batches yielded (not in
    batches still prefetched). The DataLoader prepares up to ``num_workers * cfg.prefetch``
    batches ahead of training.

    Raises (while iterating):
        ShardsError: with ``on_corrupt="error"``, a JPEG that does not decode (the message names
            the shard tar and the key); with ``"skip"``, an identity none of whose images decode.
    """

    def __init__(self, index: ShardsIndex, keys: Sequence[str], pid_map: dict[int, int],
                 sampler: Any, cfg: AugmentConfig, seed: int, device: torch.device,
                 num_workers: int | None = None):
        workers = cfg.num_threads if num_workers is None else num_workers
        if workers < 0:
            raise ValueError(f"TorchTrainLoader: num_workers must be >= 0, got {workers}")
        self.table = _LabelTable(index, keys, pid_map)
        self.device = torch.device(device)
        self.cfg = cfg
        self.skipped = 0
        self._pinned = self.device.type == "cuda"
        dataset = _TrainDataset(index, keys, self.table.raw_pids, cfg, seed)
        self._loader = DataLoader(
            dataset, batch_sampler=_NumberedBatches(sampler), collate_fn=_collate,
            num_workers=workers, prefetch_factor=cfg.prefetch if workers > 0 else None,
            pin_memory=self._pinned, persistent_workers=workers > 0,
            # the DataLoader draws its workers' base seed from this, not from the global RNG
            generator=torch.Generator().manual_seed(_sample_seed(seed, _SEED_MASK, 0)),
        )
        self._it: Iterator[dict] | None = iter(self._loader)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            raise RuntimeError("TorchTrainLoader is closed")
        raw = next(self._it)
        self.skipped += int(raw["skipped"])
        images = raw["images"].to(self.device, non_blocking=self._pinned)
        return self.table.batch(raw["index"].numpy(), images, non_blocking=self._pinned)

    def close(self) -> None:
        """Stop the DataLoader workers (idempotent)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def iterate_eval_torch(index: ShardsIndex, keys: Sequence[str], cfg: AugmentConfig, batch_size: int,
                       device: torch.device, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Yield Batch dicts over ``keys`` in order, without augmentation (resize + normalise only).

    The PyTorch counterpart of :func:`reid.data.loaders.dali.iterate_eval`, same arguments and
    checks: the tars holding ``keys`` are read *sequentially* with
    ``webdataset.WebDataset(urls, shardshuffle=False)`` (one pass, no random access; tars without
    a wanted key are not opened), the samples named in ``keys`` are picked in order, then decoded
    (``torchvision.io.decode_jpeg``) and transformed by ``cfg.num_threads`` threads. ``pids`` are
    the dataset pids as stored in the shards; images are ``(B, 3, H, W)`` in ``cfg.dtype``.
    Batches hold ``batch_size`` samples, the last one may be smaller.

    ``keys`` must be in shard order (``index.keys(split)``, a subsequence of it, or several splits
    one after another, each in shard order, as evaluation reads query then gallery). With
    ``world_size > 1``, rank ``r`` gets the keys among the contiguous part ``[N r / W,
    N (r + 1) / W)`` of the ``N`` samples of those splits (DALI's shard rule, so both paths give a
    rank the same keys).

    Raises:
        ValueError: at call time, if ``keys`` is empty, unknown, or not in shard order (or
            repeated); ``batch_size < 1``; a bad ``rank``/``world_size``. While iterating, if a
            key is not found in its tar.
        ShardsError: while iterating, a JPEG that does not decode (names the tar and the key).
    """
    if not keys:
        raise ValueError("iterate_eval_torch: no keys to read")
    if batch_size < 1:
        raise ValueError(f"iterate_eval_torch: batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"iterate_eval_torch: need 0 <= rank < world_size, got rank {rank}, "
                         f"world_size {world_size}")
    unknown = [k for k in keys if k not in index]
    if unknown:
        raise ValueError(f"iterate_eval_torch: {len(unknown)} key(s) not in {index.root}, e.g. {unknown[:3]}")
    splits = list(dict.fromkeys(index.labels(k)["split"] for k in keys))  # first-seen order
    order = [k for split in splits for k in index.keys(split)]
    position = {k: i for i, k in enumerate(order)}
    pos = [position[k] for k in keys]
    if any(b <= a for a, b in zip(pos, pos[1:])):
        raise ValueError("iterate_eval_torch: keys must be in shard order (split by split, as "
                         "ShardsIndex.keys gives them), without repeats")
    first, last = len(order) * rank // world_size, len(order) * (rank + 1) // world_size
    mine = [k for k, p in zip(keys, pos) if first <= p < last]
    needed = {index.location(k)[0] for k in mine}
    urls = [str(p) for split in splits for p in index.shard_paths(split) if p.name in needed]
    return _eval_batches(index, mine, urls, cfg, batch_size, torch.device(device))


def _eval_samples(keys: list[str], urls: list[str]) -> Iterator[tuple[str, bytes, str]]:
    """``(key, jpg bytes, tar path)`` for each of ``keys``, in order, streamed from ``urls``."""
    import webdataset as wds

    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None,
                        empty_check=False, select_files=lambda name: name.endswith(".jpg"))
    want = iter(keys)
    nxt = next(want, None)
    for sample in ds:
        if nxt is None:
            return
        if sample["__key__"] == nxt:
            yield nxt, sample["jpg"], sample["__url__"]
            nxt = next(want, None)
    if nxt is not None:
        raise ValueError(f"iterate_eval_torch: key {nxt!r} was not found in the tars {urls}")


def _eval_batches(index: ShardsIndex, keys: list[str], urls: list[str], cfg: AugmentConfig,
                  batch_size: int, device: torch.device) -> Iterator[dict]:
    table = _LabelTable(index, keys, None)
    transform = build_transform(cfg, train=False)
    pinned = device.type == "cuda"

    def one(item: tuple[str, bytes, str]) -> torch.Tensor:
        key, data, _ = item
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as err:
            raise _corrupt(index, key, err) from err
        return transform(image)

    if not keys:  # this rank's part of the splits holds none of the keys
        return
    samples = _eval_samples(keys, urls)
    start = 0
    with cf.ThreadPoolExecutor(cfg.num_threads) as pool:
        while True:
            chunk = list(itertools.islice(samples, batch_size))
            if not chunk:
                break
            images = torch.stack(list(pool.map(one, chunk)))
            if pinned:
                images = images.pin_memory()
            idx = np.arange(start, start + len(chunk))
            start += len(chunk)
            yield table.batch(idx, images.to(device, non_blocking=pinned), non_blocking=pinned)
