"""NVIDIA DALI loaders over WebDataset shards: training (P x K sampled, augmented) and evaluation.

Sample bytes are read by random access into the tar shards (``ShardsIndex.read_jpeg``, using the
offsets in ``shards.json``) and fed to DALI through ``fn.external_source``. JPEG decoding runs
with ``device="mixed"`` (nvJPEG, on GPU) when CUDA is available and ``device="cpu"`` otherwise;
resize, pad + random crop, horizontal flip and normalisation run in DALI on the same device.

Both loaders yield the project's *Batch* dict (see ``../shared/design/architecture.md``)::

    images    (B, 3, H, W) float32, normalised ((x - mean) / std on the 0-255 scale)
    pids      (B,) int64   contiguous train labels (train) or dataset pids (eval)
    camids    (B,) int64
    model_ids (B,) int64   -1 where unknown
    keys      list[str]    sample keys
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from reid.data.loaders.config import AugmentConfig
from reid.data.samplers import PKSampler
from reid.data.shards import ShardsIndex


def cuda_device_id() -> int | None:
    """The CUDA device DALI should use (``LOCAL_RANK`` on multi-GPU hosts), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.current_device()


def _build_pipeline(source: Callable[[], tuple[list, list]], cfg: AugmentConfig, batch_size: int,
                    train: bool, seed: int, device_id: int | None):
    """Build a DALI pipeline reading (jpeg bytes, sample index) batches from ``source``."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    gpu = device_id is not None
    h, w = cfg.image_size

    @pipeline_def(batch_size=batch_size, num_threads=cfg.num_threads, device_id=device_id,
                  seed=seed, prefetch_queue_depth=cfg.prefetch)
    def pipe():
        jpegs, idx = fn.external_source(source=source, num_outputs=2, batch=True,
                                        dtype=[types.UINT8, types.INT64])
        if gpu:
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB,
                                       hw_decoder_load=cfg.hw_decoder_load)
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, size=[h, w], interp_type=types.INTERP_LINEAR, antialias=True)
        mirror = 0
        if train:
            if cfg.pad > 0:
                anchor = fn.random.uniform(range=(-cfg.pad, cfg.pad), shape=[2], dtype=types.INT32)
                images = fn.slice(images, anchor, np.array([w, h], np.int32), axis_names="WH",
                                  out_of_bounds_policy="pad", fill_values=0)
            mirror = fn.random.coin_flip(probability=cfg.flip_prob)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=list(cfg.mean), std=list(cfg.std), mirror=mirror)
        return images, idx

    p = pipe()
    p.build()
    return p


def _host_array(tensor_list) -> np.ndarray:
    """A dense DALI TensorList (CPU or GPU) as a host numpy array."""
    from nvidia.dali.backend import TensorListGPU

    if isinstance(tensor_list, TensorListGPU):
        tensor_list = tensor_list.as_cpu()
    return np.array(tensor_list.as_tensor())


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copy a dense float32 DALI TensorList into a torch tensor on ``device`` (GPU stays on GPU)."""
    from nvidia.dali.backend import TensorListGPU

    if isinstance(tensor_list, TensorListGPU) and device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(_host_array(tensor_list)).to(device)


class _LabelTable:
    """Per-sample label arrays of one split, indexed by position in ``keys``."""

    def __init__(self, index: ShardsIndex, keys: Sequence[str], pid_map: dict[int, int] | None):
        self.keys = list(keys)
        labels = [index.labels(k) for k in self.keys]
        raw_pids = np.array([lab["pid"] for lab in labels], np.int64)
        self.pids = raw_pids if pid_map is None else np.array([pid_map[p] for p in raw_pids], np.int64)
        self.camids = np.array([lab["camid"] for lab in labels], np.int64)
        self.model_ids = np.array([lab["model_id"] for lab in labels], np.int64)

    def batch(self, idx: np.ndarray, images: torch.Tensor) -> dict:
        return {
            "images": images,
            "pids": torch.from_numpy(self.pids[idx]).to(images.device),
            "camids": torch.from_numpy(self.camids[idx]).to(images.device),
            "model_ids": torch.from_numpy(self.model_ids[idx]).to(images.device),
            "keys": [self.keys[i] for i in idx],
        }


class DaliTrainLoader:
    """Infinite training loader: the P x K sampler picks indices, DALI decodes and augments them.

    Args:
        index: the dataset's shards (``ShardsIndex.load(shards_dir)``).
        keys: training sample keys; position ``i`` is sample index ``i`` for the sampler.
        pid_map: dataset pid -> contiguous train label.
        sampler: a :class:`PKSampler` built over ``[pid_map[pid(k)] for k in keys]``.
        cfg: augmentation and pipeline settings.
        seed: DALI seed for this pipeline (crop offsets and flips).
        device: torch device the batches land on.

    Iterating yields Batch dicts (module docstring) of ``sampler.p * sampler.k`` samples. The
    sampler's state advances as batches are *requested by DALI* (up to ``cfg.prefetch`` ahead);
    use :meth:`close` and rebuild at epoch boundaries for exact resume (the engine does).
    """

    def __init__(self, index: ShardsIndex, keys: Sequence[str], pid_map: dict[int, int],
                 sampler: PKSampler, cfg: AugmentConfig, seed: int, device: torch.device):
        self.table = _LabelTable(index, keys, pid_map)
        self.index = index
        self.device = device
        self._batches = iter(sampler)
        self._pipe = _build_pipeline(self._next_source_batch, cfg, sampler.p * sampler.k,
                                     train=True, seed=seed, device_id=cuda_device_id())

    def _next_source_batch(self):
        idx = next(self._batches)
        jpegs = [np.frombuffer(self.index.read_jpeg(self.table.keys[i]), np.uint8) for i in idx]
        return jpegs, [np.array([i], np.int64) for i in idx]

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        images, idx = self._pipe.run()
        return self.table.batch(_host_array(idx).ravel(), _to_torch(images, self.device))

    def close(self) -> None:
        """Release the DALI pipeline."""
        del self._pipe


def iterate_eval(index: ShardsIndex, keys: Sequence[str], cfg: AugmentConfig, batch_size: int,
                 device: torch.device) -> Iterator[dict]:
    """Yield Batch dicts over ``keys`` in order, without augmentation (resize + normalise only).

    ``pids`` are the dataset pids as stored in the shards. The last batch may be smaller.

    Raises:
        ValueError: if ``keys`` is empty or ``batch_size < 1``.
    """
    if not keys:
        raise ValueError("iterate_eval: no keys to read")
    if batch_size < 1:
        raise ValueError(f"iterate_eval: batch_size must be >= 1, got {batch_size}")
    return _eval_batches(index, keys, cfg, batch_size, device)


def _eval_batches(index: ShardsIndex, keys: Sequence[str], cfg: AugmentConfig, batch_size: int,
                  device: torch.device) -> Iterator[dict]:
    table = _LabelTable(index, keys, None)
    starts = iter(range(0, len(keys), batch_size))

    def source():
        start = next(starts)  # StopIteration ends the epoch
        idx = range(start, min(start + batch_size, len(keys)))
        return ([np.frombuffer(index.read_jpeg(table.keys[i]), np.uint8) for i in idx],
                [np.array([i], np.int64) for i in idx])

    pipe = _build_pipeline(source, cfg, batch_size, train=False, seed=0, device_id=cuda_device_id())
    for _ in range((len(keys) + batch_size - 1) // batch_size):
        images, idx = pipe.run()
        yield table.batch(_host_array(idx).ravel(), _to_torch(images, device))
    del pipe
