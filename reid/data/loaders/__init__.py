"""Loaders over the WebDataset shards, one per backend, with one contract.

``backend`` (``loader.backend`` in params): ``"dali"`` (:mod:`reid.data.loaders.dali`: NVIDIA DALI,
GPU decode when CUDA is present) or ``"torch"`` (:mod:`reid.data.loaders.torch_ref`: webdataset +
torchvision + DataLoader, for machines without DALI and as the parity reference). Both yield the
same Batch dicts from the same sampler sequence.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from reid.data.loaders.config import AugmentConfig
from reid.data.shards import ShardsIndex

BACKENDS = ("dali", "torch")

__all__ = ["AugmentConfig", "BACKENDS", "train_loader", "iterate_eval"]


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"loader backend must be one of {BACKENDS}, got {backend!r}")


def train_loader(backend: str, index: ShardsIndex, keys: Sequence[str], pid_map: dict[int, int], sampler: Any,
                 cfg: AugmentConfig, seed: int, device: torch.device, source_workers: int = 0):
    """The training loader of ``backend`` (``DaliTrainLoader`` or ``TorchTrainLoader``; same
    arguments, see those classes). ``source_workers`` is DALI's shard-reading processes; the
    torch backend uses ``cfg.num_threads`` DataLoader workers.

    Raises:
        ValueError: unknown backend.
    """
    _check(backend)
    if backend == "dali":
        from reid.data.loaders.dali import DaliTrainLoader

        return DaliTrainLoader(index, keys, pid_map, sampler, cfg, seed, device, source_workers=source_workers)
    from reid.data.loaders.torch_ref import TorchTrainLoader

    return TorchTrainLoader(index, keys, pid_map, sampler, cfg, seed, device)


def iterate_eval(backend: str, index: ShardsIndex, keys: Sequence[str], cfg: AugmentConfig, batch_size: int,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Evaluation batches of ``backend`` (``dali.iterate_eval`` or ``torch_ref.iterate_eval_torch``;
    same arguments and errors).

    Raises:
        ValueError: unknown backend, or what the backend's function raises.
    """
    _check(backend)
    if backend == "dali":
        from reid.data.loaders.dali import iterate_eval as run
    else:
        from reid.data.loaders.torch_ref import iterate_eval_torch as run
    return run(index, keys, cfg, batch_size, device, rank=rank, world_size=world_size)
