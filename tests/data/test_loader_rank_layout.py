"""Augmented training pixels are a function of (seed, sampler position, global slot) only, for both
loader backends: two ranks together see exactly the batch one rank sees with twice the identities,
and a loader started mid-epoch continues the sequence of one started at the beginning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.data.loaders import train_loader
from reid.data.loaders.source import AUGMENT_DRAWS, augment_draws
from reid.data.samplers import PKSampler
from reid.data.shards import ShardsIndex, write_shards
from tests.data.loader_common import CPU, cpu_pipelines, dataset, loader_cfg, synth, take  # noqa: F401

AUG = dict(pad=4, flip_prob=0.5, color_jitter=0.3, erase_prob=0.5)
SEED = 3


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("rank_layout")
    root, manifest = synth(base / "data")
    write_shards(manifest, root, base / "shards", 1 << 20)
    return dataset(ShardsIndex.load(base / "shards"))


def _batches(ds: dict, backend: str, p: int, rank: int = 0, world_size: int = 1, state: dict | None = None,
             n: int = 3, augment: bool = True) -> list[dict]:
    sampler = PKSampler(ds["labels"], p, 2, seed=5, rank=rank, world_size=world_size)
    if state is not None:
        sampler.load_state_dict({**sampler.state_dict(), **state})
    cfg = loader_cfg(num_threads=1, **(AUG if augment else {}))
    return take(train_loader(backend, ds["index"], ds["keys"], ds["pid_map"], sampler, cfg, SEED, CPU), n)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_two_ranks_see_the_pixels_of_one_rank(ds, backend):
    one = _batches(ds, backend, p=4)
    ranks = [_batches(ds, backend, p=2, rank=r, world_size=2) for r in (0, 1)]
    for step, full in enumerate(one):
        parts = [r[step] for r in ranks]
        assert full["keys"] == parts[0]["keys"] + parts[1]["keys"]
        torch.testing.assert_close(full["images"], torch.cat([b["images"] for b in parts]), rtol=0, atol=0)
    # the augmentations are on (the test would pass trivially without them)
    plain = _batches(ds, backend, p=4, n=1, augment=False)[0]
    assert plain["keys"] == one[0]["keys"] and not torch.equal(plain["images"], one[0]["images"])


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_loader_started_mid_epoch_continues_the_sequence(ds, backend):
    steps = PKSampler(ds["labels"], 3, 2, seed=5).steps_per_epoch
    assert steps == 2
    start = _batches(ds, backend, p=3, n=4)
    resumed = _batches(ds, backend, p=3, state={"epoch": 1, "step": 1}, n=1)
    assert resumed[0]["keys"] == start[3]["keys"]
    torch.testing.assert_close(resumed[0]["images"], start[3]["images"], rtol=0, atol=0)


def test_augment_draws_are_per_global_batch_and_slot():
    a = augment_draws(1, 7, 8)
    assert a.shape == (8, len(AUGMENT_DRAWS)) and a.dtype == np.float32
    assert ((a >= 0) & (a < 1)).all()
    np.testing.assert_array_equal(a, augment_draws(1, 7, 8))
    assert not np.array_equal(a, augment_draws(1, 8, 8)) and not np.array_equal(a, augment_draws(2, 7, 8))
    # a larger global batch extends the smaller one row by row
    np.testing.assert_array_equal(augment_draws(1, 7, 16)[:8], a)
    with pytest.raises(ValueError, match="global_batch_size"):
        augment_draws(1, 7, 0)
