"""Tests for reid.data.loaders.torch_ref: the PyTorch reference loaders, and their parity with DALI.

A tiny synthetic MSMT17 dataset (8 train ids x 2 cameras x 2 images, 64x32 px JPEGs) is written
and sharded once per module (as in test_loader_dali.py). Every DALI pipeline here runs on DALI's
CPU decoder (``cuda_device_id`` is pinned to None).

Parity tolerance (DALI CPU vs PyTorch, augmentation off), measured on these shards:

* Decoders: both decode with libjpeg-turbo (DALI's CPU decoder; torchvision's ``decode_jpeg``)
  with the same IDCT and chroma upsampling: at the source size (64x32, no resize) the two paths
  agree to float rounding of the normalisation (max |diff| 1.4e-5 on the 0-255 scale), so
  ``EXACT`` applies there.
* Resize kernels: DALI's ``INTERP_LINEAR`` + antialias and torchvision's antialiased uint8
  bilinear (Pillow's algorithm) are the same triangle filter with different fixed-point weights
  and rounding; both round to uint8. At 64x32 -> 40x24 we measured a per-image mean |diff| of at
  most 0.24 (0.20 on average) and isolated edge pixels up to 7 (0-255 scale); at 2x reduction
  (32x16) up to 0.35 and 10. Hence ``PARITY_MEAN_TOL`` 0.6 and ``PARITY_MAX_TOL`` 12. A wrong
  filter (nearest: per-image mean >= 2.3), a mirror (>= 6.4), swapped channels (>= 18) or a wrong
  normalisation are all far outside.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.data.loaders.config import AugmentConfig
from reid.data.loaders.dali import iterate_eval
from reid.data.loaders.torch_ref import TorchTrainLoader, iterate_eval_torch
from reid.data.manifest import contiguous_labels
from reid.data.samplers import PKSampler
from reid.data.shards import ShardsError, ShardsIndex, write_shards
from tests.data.loader_common import (CPU, EXACT, K, N_BATCHES, P, SAMPLER_SEED, SIZE, SOURCE,  # noqa: F401
                                      cpu_pipelines, dali_batches, dataset, loader_cfg, pk_sampler, synth,
                                      take, to_255)

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (warned on every call)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

PARITY_MEAN_TOL = 0.6  # per-image mean |DALI - torch| on the 0-255 scale (module docstring)
PARITY_MAX_TOL = 12.0  # any pixel
AUG = {"flip_prob": 0.5, "pad": 3, "erase_prob": 0.5, "color_jitter": 0.2}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("torch_loader")
    root, manifest = synth(base)
    write_shards(manifest, root, base / "shards", 20480)  # several tars per split
    return dataset(ShardsIndex.load(base / "shards"))


def _torch_batches(ds: dict, cfg: AugmentConfig, seed: int = 1, n: int = N_BATCHES, workers: int = 0,
                   state: dict | None = None) -> list[dict]:
    return take(TorchTrainLoader(ds["index"], ds["keys"], ds["pid_map"], pk_sampler(ds, state), cfg,
                                 seed=seed, device=CPU, num_workers=workers), n)


def _assert_parity(a: torch.Tensor, b: torch.Tensor, key: str) -> None:
    diff = np.abs(to_255(a) - to_255(b))
    assert diff.mean() < PARITY_MEAN_TOL and diff.max() < PARITY_MAX_TOL, (key, diff.mean(), diff.max())


@pytest.fixture(scope="module")
def off_batches(ds) -> list[dict]:
    """N_BATCHES torch training batches with augmentation off, in this process."""
    return _torch_batches(ds, loader_cfg())


# -- 1. Batch contract and the (pid, key) sequence -----------------------------------------------


def test_train_batches_follow_batch_contract(ds, off_batches):
    index = ds["index"]
    for batch in off_batches:
        assert set(batch) == {"images", "pids", "camids", "model_ids", "keys"}
        assert batch["images"].shape == (P * K, 3, *SIZE) and batch["images"].dtype == torch.float32
        assert torch.isfinite(batch["images"]).all()
        for name in ("pids", "camids", "model_ids"):
            assert batch[name].dtype == torch.int64 and batch[name].shape == (P * K,), name
        assert isinstance(batch["keys"], list) and len(batch["keys"]) == P * K
        for i, key in enumerate(batch["keys"]):
            lab = index.labels(key)
            assert batch["pids"][i].item() == ds["pid_map"][lab["pid"]]  # contiguous train label
            assert (batch["camids"][i].item(), batch["model_ids"][i].item()) == (lab["camid"], lab["model_id"])


@pytest.mark.parametrize("state", [None, {"epoch": 3, "step": 1}])
def test_same_pid_key_sequence_as_dali_and_sampler(ds, off_batches, state):
    torch_b = off_batches if state is None else _torch_batches(ds, loader_cfg(), state=state)
    dali_b = dali_batches(ds, loader_cfg(), state=state)
    plan = iter(pk_sampler(ds, state))
    for t, d in zip(torch_b, dali_b, strict=True):
        idx = next(plan)
        assert t["keys"] == d["keys"] == [ds["keys"][i] for i in idx]
        assert t["pids"].tolist() == d["pids"].tolist() == [ds["labels"][i] for i in idx]
    assert len({tuple(b["keys"]) for b in torch_b}) == N_BATCHES  # a non-trivial sequence


def test_sampler_is_read_not_advanced(ds):
    sampler = pk_sampler(ds, {"epoch": 1, "step": 1})
    loader = TorchTrainLoader(ds["index"], ds["keys"], ds["pid_map"], sampler, loader_cfg(), seed=1, device=CPU,
                              num_workers=2)
    try:
        got = [next(loader)["keys"] for _ in range(3)]
    finally:
        loader.close()
    assert sampler.state_dict() == {"epoch": 1, "step": 1, "seed": SAMPLER_SEED}
    assert got == [[ds["keys"][i] for i in sampler.batch(e, s)] for e, s in ((1, 1), (2, 0), (2, 1))]


def test_any_iterable_of_index_lists_is_a_sampler(ds):
    plan = [[0, 1, 4, 5], [2, 3, 6, 7]]
    loader = TorchTrainLoader(ds["index"], ds["keys"], ds["pid_map"], iter(plan), loader_cfg(), seed=1, device=CPU,
                              num_workers=0)
    try:
        assert [next(loader)["keys"] for _ in plan] == [[ds["keys"][i] for i in b] for b in plan]
        with pytest.raises(StopIteration):
            next(loader)
    finally:
        loader.close()


def test_augmentation_and_workers_do_not_change_the_sequence(ds, off_batches):
    aug = _torch_batches(ds, loader_cfg(**AUG), seed=5, workers=2)
    assert [b["keys"] for b in aug] == [b["keys"] for b in off_batches]
    assert [b["pids"].tolist() for b in aug] == [b["pids"].tolist() for b in off_batches]


# -- 2. pixel parity with DALI (augmentation off) -----------------------------------------------


def test_train_pixels_match_dali_within_decoder_tolerance(ds, off_batches):
    dali_b = dali_batches(ds, loader_cfg())
    for t, d in zip(off_batches, dali_b):
        for key, a, b in zip(t["keys"], t["images"], d["images"]):
            _assert_parity(a, b, key)


def _eval_images(fn, index: ShardsIndex, keys: list[str], cfg: AugmentConfig, batch_size: int) -> dict:
    return {k: im for b in fn(index, keys, cfg, batch_size, CPU) for k, im in zip(b["keys"], b["images"])}


def test_eval_pixels_match_dali(ds):
    index = ds["index"]
    keys = index.keys("query") + index.keys("gallery")  # as evaluation reads them: across splits
    t = _eval_images(iterate_eval_torch, index, keys, loader_cfg(), 5)
    d = _eval_images(iterate_eval, index, keys, loader_cfg(), 5)
    assert list(t) == list(d) == keys
    for key in keys:
        _assert_parity(t[key], d[key], key)


def test_decoders_agree_exactly_without_resize(ds):
    index, keys = ds["index"], ds["keys"]
    t = _eval_images(iterate_eval_torch, index, keys, loader_cfg(image_size=SOURCE), 8)
    d = _eval_images(iterate_eval, index, keys, loader_cfg(image_size=SOURCE), 8)
    for key in keys:
        np.testing.assert_allclose(to_255(t[key]), to_255(d[key]), atol=EXACT, err_msg=key)


def test_train_off_equals_eval(ds, off_batches):
    evals = _eval_images(iterate_eval_torch, ds["index"], ds["keys"], loader_cfg(), 7)
    for batch in off_batches:
        for key, img in zip(batch["keys"], batch["images"]):
            assert torch.equal(img, evals[key]), key
    # evaluation never augments, whatever the config says
    aug = _eval_images(iterate_eval_torch, ds["index"], ds["keys"], loader_cfg(**AUG), 7)
    assert all(torch.equal(aug[k], evals[k]) for k in ds["keys"])


# -- 3. evaluation iterator ----------------------------------------------------------------------


@pytest.mark.parametrize("split,batch_size,sizes", [
    ("gallery", 5, [5, 5, 2]),
    ("gallery", 20, [12]),
    ("query", 3, [3, 1]),
])
def test_iterate_eval_torch_yields_every_key_once_in_order(ds, split, batch_size, sizes):
    index = ds["index"]
    keys = index.keys(split)
    batches = list(iterate_eval_torch(index, keys, loader_cfg(), batch_size, CPU))
    assert [len(b["keys"]) for b in batches] == sizes
    assert [k for b in batches for k in b["keys"]] == keys
    for batch in batches:
        n = len(batch["keys"])
        assert batch["images"].shape == (n, 3, *SIZE) and batch["images"].dtype == torch.float32
        for i, key in enumerate(batch["keys"]):
            lab = index.labels(key)  # eval pids are the dataset pids, not remapped
            assert (batch["pids"][i].item(), batch["camids"][i].item(), batch["model_ids"][i].item()) == (
                lab["pid"], lab["camid"], lab["model_id"])
            assert batch["pids"].dtype == batch["camids"].dtype == batch["model_ids"].dtype == torch.int64


def test_iterate_eval_torch_subset_in_tar_order(ds):
    index = ds["index"]
    keys = index.keys("train")[1::3]  # crosses tars, skips samples inside them
    full = _eval_images(iterate_eval_torch, index, index.keys("train"), loader_cfg(), 6)
    sub = _eval_images(iterate_eval_torch, index, keys, loader_cfg(), 4)
    assert list(sub) == keys
    assert all(torch.equal(sub[k], full[k]) for k in keys)


@pytest.mark.parametrize("make_keys,batch_size,match", [
    (lambda ix: [], 4, "no keys"),
    (lambda ix: ix.keys("query"), 0, "batch_size"),
    (lambda ix: ix.keys("query") + ["no_such_key"], 4, "no_such_key"),
    (lambda ix: ix.keys("query")[::-1], 4, "shard order"),
    (lambda ix: ix.keys("gallery")[:2] + ix.keys("query") + ix.keys("gallery")[2:], 4, "shard order"),
    (lambda ix: ix.keys("query")[:2] * 2, 4, "shard order"),
])
def test_iterate_eval_torch_rejects_bad_arguments(ds, make_keys, batch_size, match):
    with pytest.raises(ValueError, match=match):
        iterate_eval_torch(ds["index"], make_keys(ds["index"]), loader_cfg(), batch_size, CPU)  # at call time


@pytest.mark.parametrize("rank,world_size", [(2, 2), (-1, 2), (0, 0)])
def test_iterate_eval_torch_rejects_bad_rank(ds, rank, world_size):
    with pytest.raises(ValueError, match="rank"):
        iterate_eval_torch(ds["index"], ds["index"].keys("query"), loader_cfg(), 4, CPU, rank, world_size)


def test_iterate_eval_torch_ranks_get_the_keys_dali_gives_them(ds):
    index = ds["index"]
    keys = (index.keys("query") + index.keys("gallery"))[1:]  # a subset, across splits
    parts = []
    for rank in range(3):
        t = _eval_images(lambda *a: iterate_eval_torch(*a, rank=rank, world_size=3), index, keys, loader_cfg(), 4)
        d = _eval_images(lambda *a: iterate_eval(*a, rank=rank, world_size=3), index, keys, loader_cfg(), 4)
        assert list(t) == list(d)
        for key in t:
            _assert_parity(t[key], d[key], key)
        parts += list(t)
    assert parts == keys  # the ranks' parts, in rank order, are the keys


# -- 4. seeded augmentation ----------------------------------------------------------------------


def test_augmented_pixels_depend_on_seed_only(ds):
    rng_before = torch.get_rng_state()
    a = _torch_batches(ds, loader_cfg(**AUG), seed=11, n=3, workers=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is untouched
    b = _torch_batches(ds, loader_cfg(**AUG), seed=11, n=3, workers=2)
    assert b[0]["images"].shape == (P * K, 3, *SIZE)
    c = _torch_batches(ds, loader_cfg(**AUG), seed=11, n=3, workers=0)  # a second run
    d = _torch_batches(ds, loader_cfg(**AUG), seed=12, n=3, workers=2)
    for x, y, z, w in zip(a, b, c, d):
        assert x["keys"] == y["keys"] == z["keys"] == w["keys"]
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["images"], z["images"])
        assert not torch.equal(x["images"], w["images"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_output_dtype_is_honoured(ds, off_batches, dtype):
    batches = _torch_batches(ds, loader_cfg(dtype=dtype, **AUG), n=2, workers=0)
    ref = _torch_batches(ds, loader_cfg(**AUG), n=2, workers=0)
    for b, r in zip(batches, ref):
        assert b["images"].dtype == getattr(torch, dtype) and b["images"].shape == (P * K, 3, *SIZE)
        assert torch.equal(b["images"], r["images"].to(getattr(torch, dtype)))  # same draws, cast last
    evals = list(iterate_eval_torch(ds["index"], ds["keys"], loader_cfg(dtype=dtype), 5, CPU))
    assert all(e["images"].dtype == getattr(torch, dtype) for e in evals)


def test_flip_prob_one_mirrors_every_image(ds, off_batches):
    flipped = _torch_batches(ds, loader_cfg(flip_prob=1.0), n=2)
    for fb, ob in zip(flipped, off_batches):
        assert fb["keys"] == ob["keys"]
        for f, o in zip(fb["images"], ob["images"]):
            assert torch.equal(f, o.flip(-1))
            assert np.abs(to_255(f) - to_255(o)).mean() > 2.0  # not mirror-symmetric: the check bites


def test_erasing_zeroes_one_rectangle_within_the_configured_area(ds, off_batches):
    cfg = loader_cfg(erase_prob=1.0)
    erased = _torch_batches(ds, cfg, n=3)
    h, w = SIZE
    lo, hi = cfg.erase_area
    n_erased = 0
    for eb, ob in zip(erased, off_batches):
        for e, o in zip(eb["images"], ob["images"]):
            changed = (e != o).any(dim=0)
            if not changed.any():
                continue  # torchvision found no fitting rectangle in 10 draws (rare)
            n_erased += 1
            ys, xs = torch.nonzero(changed, as_tuple=True)
            y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
            rh, rw = y1 - y0, x1 - x0
            assert changed.sum().item() == rh * rw  # one solid rectangle...
            assert (e[:, y0:y1, x0:x1] == 0).all()  # ...set to 0 after normalisation (the mean pixel)
            slack = (rh + rw) / 2 + 1  # h and w are rounded from sqrt(area * ratio), sqrt(area / ratio)
            assert lo * h * w - slack <= rh * rw <= hi * h * w + slack, (rh, rw)
            lr, hr = cfg.erase_ratio
            assert lr * 0.5 <= rh / rw <= hr * 2.0, (rh, rw)
    assert n_erased >= 0.8 * 3 * P * K


def test_pad_crop_shifts_within_pad(ds, off_batches):
    pad = 3
    shifted = _torch_batches(ds, loader_cfg(pad=pad), n=2)
    shifts = set()
    for pb, ob in zip(shifted, off_batches):
        for p_img, o_img in zip(pb["images"], ob["images"]):
            ref = to_255(o_img)
            img = to_255(p_img)
            for dy in range(-pad, pad + 1):
                for dx in range(-pad, pad + 1):
                    want = np.zeros_like(ref)
                    want[max(0, -dy):min(SIZE[0], SIZE[0] - dy), max(0, -dx):min(SIZE[1], SIZE[1] - dx)] = \
                        ref[max(0, dy):min(SIZE[0], SIZE[0] + dy), max(0, dx):min(SIZE[1], SIZE[1] + dx)]
                    if np.allclose(img, want, atol=EXACT):
                        shifts.add((dx, dy))
                        break
                else:
                    continue
                break
            else:
                pytest.fail("padded crop is not a shift of the augment-off image within [-pad, pad]")
    assert len(shifts) > 1


# -- 5. corrupt JPEGs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Shards where the first image of the sampler's first batch is a truncated JPEG.

    ``prepare``'s data checks would reject such a file, so the shards are written directly.
    """
    base = tmp_path_factory.mktemp("torch_loader_corrupt")
    root, manifest = synth(base)
    rows = manifest.split("train")
    raw = [r.pid for r in rows]
    fwd = contiguous_labels(raw)
    pid_map = {pid: len(fwd) - 1 - label for pid, label in fwd.items()}  # as dataset()
    bad = PKSampler([pid_map[p] for p in raw], P, K, seed=SAMPLER_SEED).batch(0, 0)[0]
    path = root / rows[bad].relpath
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    write_shards(manifest, root, base / "shards", 20480)
    out = dataset(ShardsIndex.load(base / "shards"))
    assert out["pid_map"] == pid_map
    return {**out, "bad": rows[bad].key}


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_raises_naming_shard_and_key(corrupt, workers):
    tar = corrupt["index"].location(corrupt["bad"])[0]
    with pytest.raises(ShardsError, match=rf"(?s){tar}.*{corrupt['bad']}"):
        _torch_batches(corrupt, loader_cfg(), n=1, workers=workers)
    with pytest.raises(ShardsError, match=rf"(?s){tar}.*{corrupt['bad']}"):
        list(iterate_eval_torch(corrupt["index"], corrupt["keys"], loader_cfg(), 8, CPU))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_skipped_with_next_image_of_same_identity(corrupt, workers):
    keys, bad = corrupt["keys"], corrupt["bad"]
    loader = TorchTrainLoader(corrupt["index"], keys, corrupt["pid_map"], pk_sampler(corrupt),
                              loader_cfg(on_corrupt="skip"), seed=1, device=CPU, num_workers=workers)
    try:
        batches = [next(loader) for _ in range(N_BATCHES)]
    finally:
        loader.close()
    planned = [[keys[i] for i in idx] for idx, _ in zip(pk_sampler(corrupt), range(N_BATCHES))]
    assert loader.skipped == sum(b.count(bad) for b in planned) >= 1  # every drawn copy, nothing more
    first = planned[0]
    assert first[0] == bad and batches[0]["keys"][0] != bad
    pid = corrupt["index"].labels(bad)["pid"]
    same = [k for k in keys if corrupt["index"].labels(k)["pid"] == pid]
    assert batches[0]["keys"][0] == same[(same.index(bad) + 1) % len(same)]  # the next one, cycling
    assert batches[0]["keys"][1:] == first[1:]
    assert batches[0]["pids"][0].item() == corrupt["pid_map"][pid]
    assert all(torch.isfinite(b["images"]).all() for b in batches)
    assert all(bad not in b["keys"] for b in batches)
