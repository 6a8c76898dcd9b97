"""Shared setup of the loader tests (DALI path and PyTorch path): the tiny synthetic dataset, the
pipeline settings and small helpers. Import ``cpu_pipelines`` into a test module to run its DALI
pipelines on the CPU decoder (it is an autouse, module-scoped fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reid.data import layouts
from reid.data.loaders import dali
from reid.data.loaders.config import AugmentConfig
from reid.data.manifest import Manifest, contiguous_labels
from reid.data.samplers import PKSampler
from reid.data.shards import ShardsIndex
from reid.data.synthetic import MSMT17SynthConfig, write_msmt17

SIZE = (40, 24)  # (H, W) output: a different scale per axis (64->40, 32->24), so H/W mix-ups show
SOURCE = (64, 32)  # the JPEGs' own size
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
P, K = 3, 2  # 8 train ids -> 2 steps per epoch; 5 batches cross two epoch boundaries
SAMPLER_SEED = 7
N_BATCHES = 5
CPU = torch.device("cpu")
EXACT = 1e-3  # same decoder and ops on both sides: only float rounding of the (un)normalisation


@pytest.fixture(scope="module", autouse=True)
def cpu_pipelines():
    """Run every DALI pipeline of the importing module on the CPU decoder, GPU or not."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dali, "cuda_device_id", lambda: None)
        yield


def synth(base: Path, num_train_ids: int = 8, num_test_ids: int = 4,
          check_images: bool = True) -> tuple[Path, Manifest]:
    """A synthetic MSMT17 of ``SOURCE``-sized JPEGs (2 cameras x 2 images per id) and its manifest."""
    cfg = MSMT17SynthConfig(num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=2,
                            images_per_id_camera=2, val_every=0, height=SOURCE[0], width=SOURCE[1])
    root = write_msmt17(base, cfg)
    return root, layouts.parse("msmt17", root, check_images=check_images)


def dataset(index: ShardsIndex) -> dict:
    """``{"index", "keys", "pid_map", "labels"}`` of the train split. The pid map is contiguous but
    *reversed* (not the identity of 0..n-1), so a loader that forgot the map would give wrong pids."""
    keys = index.keys("train")
    raw = [index.labels(k)["pid"] for k in keys]
    fwd = contiguous_labels(raw)
    pid_map = {pid: len(fwd) - 1 - label for pid, label in fwd.items()}
    assert any(pid_map[p] != p for p in raw)
    return {"index": index, "keys": keys, "pid_map": pid_map, "labels": [pid_map[p] for p in raw]}


def loader_cfg(**kw) -> AugmentConfig:
    """``AugmentConfig`` at ``SIZE`` with augmentation off unless ``kw`` turns it on."""
    kw = {"flip_prob": 0.0, "pad": 0, "image_size": SIZE, **kw}
    return AugmentConfig(mean=MEAN, std=STD, **kw)


def pk_sampler(ds: dict, state: dict | None = None) -> PKSampler:
    s = PKSampler(ds["labels"], P, K, seed=SAMPLER_SEED)
    if state is not None:
        s.load_state_dict({**state, "seed": SAMPLER_SEED})
    return s


def take(loader, n: int) -> list[dict]:
    """The first ``n`` batches of a training loader, which is then closed."""
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


def dali_batches(ds: dict, cfg: AugmentConfig, seed: int = 1, n: int = N_BATCHES,
                 state: dict | None = None) -> list[dict]:
    return take(dali.DaliTrainLoader(ds["index"], ds["keys"], ds["pid_map"], pk_sampler(ds, state), cfg,
                                     seed=seed, device=CPU), n)


def to_255(img: torch.Tensor) -> np.ndarray:
    """A normalised CHW image back to HWC on the 0-255 scale."""
    return img.float().numpy().transpose(1, 2, 0) * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)
