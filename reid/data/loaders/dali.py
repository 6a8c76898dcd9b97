"""NVIDIA DALI loaders over WebDataset shards: training (P x K sampled, augmented) and evaluation.

Training: the sampler picks sample indices; :class:`~reid.data.loaders.source.SampledJpegSource`
reads each sample's bytes by random access into the tar shards (``ShardsIndex.read_jpeg``, at the
offsets in ``shards.json``) and feeds them to DALI through ``fn.external_source`` in per-sample
mode, run by ``source_workers`` parallel Python worker processes (0: in the main thread). JPEG
decoding runs with ``device="mixed"`` (nvJPEG on GPU, ``hw_decoder_load`` of it on the hardware
decoder) when CUDA is available and ``device="cpu"`` otherwise; the augmentations of
:class:`~reid.data.loaders.config.AugmentConfig` run in DALI on the same device: resize, pad +
random crop, horizontal flip, colour jitter, normalisation, random erasing (Zhong et al., AAAI
2020, Alg. 1), then the output dtype. On the CPU, samples already at the output size skip the
resize (the result is the same; see :func:`_resize`). The random numbers are not drawn by DALI's
random operators but fed with each sample by the source, already mapped to the operators'
arguments (:func:`~reid.data.loaders.source.augment_draws`, a function of seed, global batch number
and global slot, and :func:`~reid.data.loaders.source.augment_args`), so the augmented pixels do
not depend on the number of ranks and a run resumed mid-epoch sees the same pixels as an
uninterrupted one.

Evaluation: :func:`iterate_eval` reads a split's tars sequentially with
``fn.readers.webdataset`` and the DALI ``.idx`` files, sharded across ranks.

Both loaders yield the project's *Batch* dict (see ``../shared/design/architecture.md``)::

    images    (B, 3, H, W) float32 / float16 / bfloat16 (AugmentConfig.dtype), normalised
              ((x - mean) / std on the 0-255 scale)
    pids      (B,) int64   contiguous train labels (train) or dataset pids (eval)
    camids    (B,) int64
    model_ids (B,) int64   -1 where unknown
    keys      list[str]    sample keys
"""

from __future__ import annotations

import io
import json
from typing import Iterator, Sequence

import numpy as np
import torch

from reid.data.loaders.config import AugmentConfig
from reid.data.loaders.source import BatchPlan, SampledJpegSource
from reid.data.shards import ShardsError, ShardsIndex

__all__ = ["AugmentConfig", "DaliTrainLoader", "iterate_eval", "cuda_device_id"]


def cuda_device_id() -> int | None:
    """The CUDA device DALI should use (``LOCAL_RANK`` on multi-GPU hosts), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.current_device()


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _decode(jpegs, cfg: AugmentConfig, gpu: bool):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    if gpu:
        return fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, hw_decoder_load=cfg.hw_decoder_load)
    return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)


def _resize(images, cfg: AugmentConfig, shapes=None):
    """Antialiased bilinear resize to ``cfg.image_size``. With ``shapes`` (the per-sample ``(H, W,
    C)`` of ``fn.peek_image_shape``, CPU), samples that already have that size skip it (a DALI
    conditional; needs ``enable_conditionals``): resizing an image to its own size gives back the
    same pixels but, on 2 CPU cores, costs more than the JPEG decode (benchmarks/RESULTS.md);
    torchvision's ``Resize`` skips it too."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    h, w = cfg.image_size
    if shapes is None:
        return fn.resize(images, size=[h, w], interp_type=types.INTERP_LINEAR, antialias=True)
    if (shapes[0] != h) | (shapes[1] != w):
        images = fn.resize(images, size=[h, w], interp_type=types.INTERP_LINEAR, antialias=True)
    return images


def _augment(images, cfg: AugmentConfig, args: dict | None = None):
    """Resized HWC uint8 images -> normalised CHW images (module docstring order).

    ``args``: the per-sample augmentation arguments of the source by name
    (:func:`~reid.data.loaders.source.augment_outputs`; training), or ``None`` for evaluation
    (normalise only).
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    h, w = cfg.image_size
    args = args or {}
    if "crop_anchor" in args:  # pad + random crop: a window of image_size at an offset in [-pad, pad]
        images = fn.slice(images, args["crop_anchor"], np.array([w, h], np.int32), axis_names="WH",
                          out_of_bounds_policy="pad", fill_values=0)
    if "color" in args:
        color = args["color"]
        images = fn.color_twist(images, brightness=color[0], contrast=color[1], saturation=color[2])
    dtype = types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT
    images = fn.crop_mirror_normalize(images, dtype=dtype, output_layout="CHW", mean=list(cfg.mean),
                                      std=list(cfg.std), mirror=args.get("mirror", 0))
    if "erase_anchor" in args:  # Zhong et al. 2020, Alg. 1 (source.augment_args draws the rectangle)
        images = fn.erase(images, anchor=args["erase_anchor"], shape=args["erase_shape"], axis_names="HW",
                          normalized_anchor=True, normalized_shape=True, fill_value=0.0)
    return images


def _images(jpegs, cfg: AugmentConfig, gpu: bool, args: dict | None = None):
    """Encoded JPEGs -> decoded, resized, augmented, normalised CHW images. On the CPU the resize
    is skipped for samples already at ``cfg.image_size`` (the pipeline needs
    ``enable_conditionals=not gpu``); on the GPU every sample is resized (cheap there, and the
    conditional is not measured on a GPU yet)."""
    import nvidia.dali.fn as fn

    shapes = None if gpu else fn.peek_image_shape(jpegs)
    return _augment(_resize(_decode(jpegs, cfg, gpu), cfg, shapes), cfg, args)


def _train_pipeline(source: SampledJpegSource, cfg: AugmentConfig, batch_size: int,
                    device_id: int | None, source_workers: int):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    extra = {"py_num_workers": source_workers, "py_start_method": "spawn"} if source_workers else {}
    gpu = device_id is not None
    arg_dtypes = {"crop_anchor": types.INT32, "mirror": types.INT32, "color": types.FLOAT,
                  "erase_anchor": types.FLOAT, "erase_shape": types.FLOAT}

    # seed=0: no DALI random operator runs; the random numbers come with the samples
    @pipeline_def(batch_size=batch_size, num_threads=cfg.num_threads, device_id=device_id, seed=0,
                  prefetch_queue_depth=cfg.prefetch, enable_conditionals=not gpu, **extra)
    def pipe():
        dtypes = [types.UINT8, types.INT64, types.INT32] + [arg_dtypes[n] for n in source.augment_outputs]
        jpegs, idx, skipped, *args = fn.external_source(source=source, num_outputs=len(dtypes), batch=False,
                                                        parallel=source_workers > 0, dtype=dtypes)
        images = _images(jpegs, cfg, gpu, dict(zip(source.augment_outputs, args)))
        return images, idx, skipped

    p = pipe()
    p.build()
    return p


def _host_array(tensor_list) -> np.ndarray:
    """A dense DALI TensorList (CPU or GPU) as a host numpy array."""
    from nvidia.dali.backend import TensorListGPU

    if isinstance(tensor_list, TensorListGPU):
        tensor_list = tensor_list.as_cpu()
    return np.array(tensor_list.as_tensor())


def _to_torch(tensor_list, device: torch.device, dtype: str) -> torch.Tensor:
    """Copy a dense DALI TensorList into a torch tensor of ``dtype`` on ``device`` (GPU stays on GPU)."""
    from nvidia.dali.backend import TensorListGPU

    if isinstance(tensor_list, TensorListGPU) and device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float16 if dtype == "float16" else torch.float32,
                          device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
    else:
        out = torch.from_numpy(_host_array(tensor_list)).to(device)
    return out.to(_TORCH_DTYPES[dtype])


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


def _undecodable(source: SampledJpegSource, n: int) -> str:
    """The samples of batch ``n`` that PIL cannot decode either, described (shard and key)."""
    from PIL import Image

    bad = []
    for i in source.batch_indices(n):
        try:
            with Image.open(io.BytesIO(source.index.read_jpeg(source.keys[i]))) as im:
                im.load()
        except Exception:  # PIL raises many types for a broken file
            bad.append(source.describe(i))
    return "; ".join(bad) or "none of its samples fails to decode with PIL either"


class DaliTrainLoader:
    """Infinite training loader: the batch sampler picks indices, DALI decodes and augments them.

    Args:
        index: the dataset's shards (``ShardsIndex.load(shards_dir)``).
        keys: training sample keys; position ``i`` is sample index ``i`` for the sampler.
        pid_map: dataset pid -> contiguous train label.
        sampler: a :class:`~reid.data.samplers.PKSampler` (or any sampler with ``batch(epoch,
            step)``, ``steps_per_epoch``, ``state_dict()``) over ``[pid_map[pid(k)] for k in keys]``.
            Batch ``n`` of the loader is the sampler's batch ``n`` positions after its state at
            construction; the sampler object itself is not advanced.
        cfg: augmentation and pipeline settings.
        seed: augmentation seed, int >= 0 (crop offsets, flips, jitter, erasing): sample ``j`` of
            global batch ``n`` (the sampler position ``epoch * steps_per_epoch + step``) draws
            row ``rank * B + j`` of ``augment_draws(seed, n, world_size * B)``, so the pixels
            depend neither on the rank layout nor on where the loader started.
        device: torch device the batches land on.
        source_workers: DALI Python worker processes reading the shards (parallel external
            source, spawned); 0 reads in the main thread.

    Iterating yields Batch dicts (module docstring) of ``batch_size`` samples; :attr:`skipped`
    counts samples replaced because their JPEG was corrupt (``cfg.on_corrupt == "skip"``).

    Raises:
        ShardsError: (when iterating) a corrupt JPEG with ``cfg.on_corrupt == "error"``, naming the
            shard and key; or a batch DALI fails to decode, naming the samples PIL cannot decode.
    """

    def __init__(self, index: ShardsIndex, keys: Sequence[str], pid_map: dict[int, int],
                 sampler: BatchPlan, cfg: AugmentConfig, seed: int, device: torch.device,
                 source_workers: int = 0):
        if source_workers < 0:
            raise ValueError(f"source_workers must be >= 0, got {source_workers}")
        self.table = _LabelTable(index, keys, pid_map)
        self.device = device
        self.cfg = cfg
        self.skipped = 0
        self._n = 0
        self.source = SampledJpegSource(index, self.table.keys, self.table.pids, sampler, cfg.on_corrupt, seed=seed,
                                        augment=cfg)
        self.batch_size = len(self.source.batch_indices(0))
        self._pipe = _train_pipeline(self.source, cfg, self.batch_size, cuda_device_id(), source_workers)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        try:
            images, idx, skipped = self._pipe.run()
        except ShardsError:
            raise
        except Exception as err:
            if "corrupt JPEG" in str(err):  # raised by the source in a worker process
                msg = str(err)
                raise ShardsError(msg[msg.index("corrupt JPEG"):].splitlines()[0]) from err
            raise ShardsError(f"DALI failed on training batch {self._n}: {_undecodable(self.source, self._n)} "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
        self._n += 1
        self.skipped += int(_host_array(skipped).sum())
        return self.table.batch(_host_array(idx).ravel(), _to_torch(images, self.device, self.cfg.dtype))

    def close(self) -> None:
        """Release the DALI pipeline (and its worker processes)."""
        del self._pipe


def iterate_eval(index: ShardsIndex, keys: Sequence[str], cfg: AugmentConfig, batch_size: int,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """Yield Batch dicts over ``keys``, in order, without augmentation (resize + normalise only).

    The tars of the splits holding ``keys`` are read sequentially by ``fn.readers.webdataset``
    with their DALI ``.idx`` files (no random access); samples not in ``keys`` are decoded and
    dropped, so pass whole splits for speed. With ``world_size > 1`` the reader is sharded: rank
    ``r`` gets the contiguous part ``[N r / W, N (r + 1) / W)`` of the ``N`` samples (DALI's shard
    rule), in order. ``pids`` are the dataset pids as stored in the shards. Batches may be smaller
    than ``batch_size``.

    Raises:
        ValueError: if ``keys`` is empty, unknown, or not in shard order; ``batch_size < 1``; a bad
            ``rank``/``world_size``.
    """
    if not keys:
        raise ValueError("iterate_eval: no keys to read")
    if batch_size < 1:
        raise ValueError(f"iterate_eval: batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"iterate_eval: need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    unknown = [k for k in keys if k not in index]
    if unknown:
        raise ValueError(f"iterate_eval: {len(unknown)} key(s) not in {index.root}, e.g. {unknown[:3]}")
    splits = list(dict.fromkeys(index.labels(k)["split"] for k in keys))
    order = [k for split in splits for k in index.keys(split)]
    position = {k: i for i, k in enumerate(order)}
    if [position[k] for k in keys] != sorted(position[k] for k in keys):
        raise ValueError("iterate_eval: keys must be in shard order (split by split, as ShardsIndex.keys gives them)")
    return _eval_batches(index, splits, set(keys), cfg, batch_size, device, rank, world_size, len(order))


def _eval_pipeline(index: ShardsIndex, splits: list[str], cfg: AugmentConfig, batch_size: int, rank: int,
                   world_size: int):
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    device_id = cuda_device_id()

    @pipeline_def(batch_size=batch_size, num_threads=cfg.num_threads, device_id=device_id, seed=0,
                  prefetch_queue_depth=cfg.prefetch, enable_conditionals=device_id is None)
    def pipe():
        jpegs, labels = fn.readers.webdataset(
            paths=[str(p) for s in splits for p in index.shard_paths(s)],
            index_paths=[str(p) for s in splits for p in index.index_paths(s)],
            ext=["jpg", "json"], shard_id=rank, num_shards=world_size, random_shuffle=False,
            pad_last_batch=True, name="reader")
        return _images(jpegs, cfg, device_id is not None), labels

    p = pipe()
    p.build()
    return p


def _eval_batches(index: ShardsIndex, splits: list[str], wanted: set[str], cfg: AugmentConfig, batch_size: int,
                  device: torch.device, rank: int, world_size: int, total: int) -> Iterator[dict]:
    pipe = _eval_pipeline(index, splits, cfg, batch_size, rank, world_size)
    first, last = total * rank // world_size, total * (rank + 1) // world_size
    remaining = last - first
    try:
        while remaining > 0:
            images, labels = pipe.run()
            take = min(remaining, batch_size)  # the last batch is padded with repeats
            remaining -= take
            raw = [json.loads(np.array(labels[i]).tobytes()) for i in range(take)]
            keep = [i for i, lab in enumerate(raw) if lab["key"] in wanted]
            if not keep:
                continue
            out = _to_torch(images, device, cfg.dtype)[torch.tensor(keep, device=device)]
            lab = [raw[i] for i in keep]
            yield {
                "images": out,
                "pids": torch.tensor([x["pid"] for x in lab], dtype=torch.int64, device=device),
                "camids": torch.tensor([x["camid"] for x in lab], dtype=torch.int64, device=device),
                "model_ids": torch.tensor([x["model_id"] for x in lab], dtype=torch.int64, device=device),
                "keys": [x["key"] for x in lab],
            }
    finally:
        del pipe
