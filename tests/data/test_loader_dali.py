"""Tests for reid.data.loaders.dali: DALI training and evaluation loaders over WebDataset shards.

A tiny synthetic MSMT17 dataset (8 train ids x 2 cameras x 2 images, 64x32 px JPEGs) is written
and sharded once per module. Every pipeline here runs on DALI's CPU decoder (``cuda_device_id``
is pinned to None), so pixel comparisons between loader paths can be exact and the reference is
PIL (libjpeg-turbo, like DALI's CPU decoder).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from reid.data import layouts
from reid.data.loaders.dali import AugmentConfig, DaliTrainLoader, iterate_eval
from reid.data.manifest import contiguous_labels
from reid.data.samplers import PKSampler
from reid.data.shards import ShardsError, ShardsIndex, write_shards
from tests.data.loader_common import (CPU, EXACT, K, N_BATCHES, P, SIZE, SOURCE, cpu_pipelines, dali_batches,  # noqa: F401
                                      dataset, loader_cfg, pk_sampler, synth, to_255)

# Tolerance against the PIL reference, on the 0-255 scale. Both sides decode with libjpeg-turbo
# (at the source size, 64x32, DALI and PIL agree exactly), and PIL's BILINEAR resize with
# reduction is the same antialiased triangle filter as DALI's INTERP_LINEAR + antialias; they
# differ only in fixed-point weights and rounding: measured per-image mean |diff| <= 0.3 and
# isolated edge pixels up to 7. A wrong filter (nearest: per-image mean >= 2.3), a mirror
# (>= 6.4), swapped channels (>= 18) or a wrong normalisation are all far outside.
REF_MEAN_TOL = 1.0
REF_MAX_TOL = 12.0


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("dali_loader")
    root, manifest = synth(base)
    # 20 KiB shards: several tars per split, so reads cross shard files
    write_shards(manifest, root, base / "shards", 20480)
    return dataset(ShardsIndex.load(base / "shards"))


def _reference(index: ShardsIndex, key: str) -> np.ndarray:
    """HWC 0-255 float reference: PIL decode of the shard's bytes, antialiased bilinear resize."""
    img = Image.open(io.BytesIO(index.read_jpeg(key))).convert("RGB")
    return np.asarray(img.resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR), np.float32)


def _assert_matches_reference(index: ShardsIndex, key: str, img: torch.Tensor) -> None:
    diff = np.abs(to_255(img) - _reference(index, key))
    assert diff.mean() < REF_MEAN_TOL and diff.max() < REF_MAX_TOL, (key, diff.mean(), diff.max())


@pytest.fixture(scope="module")
def off_batches(ds) -> list[dict]:
    """N_BATCHES training batches with augmentation off (flip 0, pad 0)."""
    return dali_batches(ds, loader_cfg())


# -- 1. Batch contract and label/image alignment -----------------------------------------------


def test_train_batches_follow_batch_contract(ds, off_batches):
    index = ds["index"]
    train_keys = set(ds["keys"])
    for batch in off_batches:
        assert set(batch) == {"images", "pids", "camids", "model_ids", "keys"}
        images = batch["images"]
        assert images.shape == (P * K, 3, *SIZE)
        assert images.dtype == torch.float32 and images.device.type == "cpu"
        assert torch.isfinite(images).all()
        for name in ("pids", "camids", "model_ids"):
            assert batch[name].dtype == torch.int64 and batch[name].shape == (P * K,), name
        keys = batch["keys"]
        assert isinstance(keys, list) and len(keys) == P * K
        assert all(isinstance(k, str) and k in train_keys for k in keys)
        # P distinct identities, K consecutive images each (pid-major)
        pids = batch["pids"].tolist()
        groups = [pids[j * K:(j + 1) * K] for j in range(P)]
        assert all(len(set(g)) == 1 for g in groups), pids
        assert len({g[0] for g in groups}) == P, pids
        # every sample's labels and pixels belong to its key (nothing shifted by prefetching)
        for i, key in enumerate(keys):
            lab = index.labels(key)
            assert pids[i] == ds["pid_map"][lab["pid"]]
            assert batch["camids"][i].item() == lab["camid"]
            assert batch["model_ids"][i].item() == lab["model_id"]
            _assert_matches_reference(index, key, images[i])
    assert {c for b in off_batches for c in b["camids"].tolist()} == {0, 1}


# -- 2. the loader yields exactly the sampler's sequence -----------------------------------------


@pytest.mark.parametrize("state", [None, {"epoch": 3, "step": 1}])
def test_train_sequence_equals_sampler(ds, off_batches, state):
    batches = off_batches if state is None else dali_batches(ds, loader_cfg(), state=state)
    plan = iter(pk_sampler(ds, state))
    seen = []
    for batch in batches:
        idx = next(plan)
        assert batch["keys"] == [ds["keys"][i] for i in idx]
        assert batch["pids"].tolist() == [ds["labels"][i] for i in idx]
        seen.append(tuple(batch["keys"]))
    assert len(set(seen)) == len(seen)  # the sampler really moves on: a non-trivial sequence
    if state is not None:
        assert list(batches[0]["keys"]) != list(off_batches[0]["keys"])


# -- 3. pixels with augmentation off; evaluation iterator ----------------------------------------


def _eval_images(index: ShardsIndex, keys: list[str], cfg: AugmentConfig, batch_size: int) -> dict:
    return {k: im for b in iterate_eval(index, keys, cfg, batch_size, CPU)
            for k, im in zip(b["keys"], b["images"])}


def test_eval_matches_reference_and_train_path(ds, off_batches):
    index, keys = ds["index"], ds["keys"]
    evals = _eval_images(index, keys, loader_cfg(), 5)
    assert list(evals) == keys
    for key in keys:
        _assert_matches_reference(index, key, evals[key])
    compared = 0
    for batch in off_batches:
        for key, img in zip(batch["keys"], batch["images"]):
            np.testing.assert_allclose(to_255(img), to_255(evals[key]), atol=EXACT)
            compared += 1
    assert compared == N_BATCHES * P * K
    # evaluation never augments, whatever the config says
    aug = _eval_images(index, keys, loader_cfg(flip_prob=1.0, pad=4), 5)
    for key in keys:
        np.testing.assert_allclose(to_255(aug[key]), to_255(evals[key]), atol=EXACT)


@pytest.mark.parametrize("split,batch_size,sizes", [
    ("gallery", 5, [5, 5, 2]),
    ("gallery", 4, [4, 4, 4]),
    ("gallery", 20, [12]),
    ("query", 3, [3, 1]),
])
def test_iterate_eval_yields_every_key_once_in_order(ds, split, batch_size, sizes):
    index = ds["index"]
    keys = index.keys(split)
    batches = list(iterate_eval(index, keys, loader_cfg(), batch_size, CPU))
    assert [len(b["keys"]) for b in batches] == sizes
    assert [k for b in batches for k in b["keys"]] == keys
    for batch in batches:
        n = len(batch["keys"])
        assert batch["images"].shape == (n, 3, *SIZE) and batch["images"].dtype == torch.float32
        for name in ("pids", "camids", "model_ids"):
            assert batch[name].dtype == torch.int64 and batch[name].shape == (n,), name
        for i, key in enumerate(batch["keys"]):
            lab = index.labels(key)  # eval pids are the dataset pids, not remapped
            assert (batch["pids"][i].item(), batch["camids"][i].item(), batch["model_ids"][i].item()) == (
                lab["pid"], lab["camid"], lab["model_id"])
            _assert_matches_reference(index, key, batch["images"][i])


# -- 4. augmentations ----------------------------------------------------------------------------


def test_flip_prob_one_mirrors_every_image(ds, off_batches):
    flipped = dali_batches(ds, loader_cfg(flip_prob=1.0), n=2)
    for fb, ob in zip(flipped, off_batches):
        assert fb["keys"] == ob["keys"]
        for f, o in zip(fb["images"], ob["images"]):
            np.testing.assert_allclose(to_255(f), to_255(o)[:, ::-1], atol=EXACT)
            # the images are not mirror-symmetric, so the check above has teeth
            assert np.abs(to_255(f) - to_255(o)).mean() > 2.0


def test_flip_prob_half_mixes_flipped_and_plain(ds, off_batches):
    half = dali_batches(ds, loader_cfg(flip_prob=0.5), n=3)
    kinds = []
    for hb, ob in zip(half, off_batches):
        assert hb["keys"] == ob["keys"]
        for h, o in zip(hb["images"], ob["images"]):
            h, o = to_255(h), to_255(o)
            if np.allclose(h, o, atol=EXACT):
                kinds.append("plain")
            else:
                np.testing.assert_allclose(h, o[:, ::-1], atol=EXACT)
                kinds.append("flip")
    assert set(kinds) == {"plain", "flip"}  # 18 coin flips: both outcomes (p of failure 2^-17)


def _shift_of(img: np.ndarray, ref: np.ndarray, pad: int) -> tuple[int, int] | None:
    """(dx, dy) with img[y, x] == ref[y + dy, x + dx] (0 outside ref), or None."""
    h, w = ref.shape[:2]
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            want = np.zeros_like(ref)
            want[max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)] = \
                ref[max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
            if np.allclose(img, want, atol=EXACT):
                return dx, dy
    return None


def test_pad_crop_is_seeded_and_shifts_within_pad(ds, off_batches):
    pad = 3
    a = dali_batches(ds, loader_cfg(pad=pad), seed=11, n=3)
    b = dali_batches(ds, loader_cfg(pad=pad), seed=11, n=3)
    c = dali_batches(ds, loader_cfg(pad=pad), seed=12, n=3)
    for x, y, z in zip(a, b, c):
        assert x["keys"] == y["keys"] == z["keys"]  # the DALI seed does not touch the sampler
        assert torch.equal(x["images"], y["images"])
    assert any(not torch.equal(x["images"], z["images"]) for x, z in zip(a, c))
    # each output is the augment-off image moved by an offset in [-pad, pad]^2, zero-filled
    shifts = []
    for pb, ob in zip(a, off_batches):
        for p_img, o_img in zip(pb["images"], ob["images"]):
            shift = _shift_of(to_255(p_img), to_255(o_img), pad)
            assert shift is not None
            shifts.append(shift)
    assert len(set(shifts)) > 1 and any(s != (0, 0) for s in shifts)


# -- 5. errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keys,batch_size,match", [
    ([], 4, "no keys"),
    (None, 0, "batch_size"),
    (None, -2, "batch_size"),
])
def test_iterate_eval_rejects_bad_arguments(ds, keys, batch_size, match):
    keys = ds["index"].keys("query") if keys is None else keys
    with pytest.raises(ValueError, match=match):
        iterate_eval(ds["index"], keys, loader_cfg(), batch_size, CPU)  # raises at call time, before iterating


def test_iterate_eval_rejects_keys_out_of_shard_order(ds):
    keys = ds["index"].keys("gallery")
    with pytest.raises(ValueError, match="shard order"):
        iterate_eval(ds["index"], keys[::-1], loader_cfg(), 4, CPU)
    with pytest.raises(ValueError, match="not in"):
        iterate_eval(ds["index"], ["nope"], loader_cfg(), 4, CPU)


# -- 6. random erasing, colour jitter, dtype ------------------------------------------------------


def test_random_erasing_zeroes_one_rectangle_in_the_configured_range(ds, off_batches):
    area, ratio = (0.1, 0.3), (0.5, 2.0)
    erased = dali_batches(ds, loader_cfg(erase_prob=1.0, erase_area=area, erase_ratio=ratio), n=2)
    h, w = SIZE
    for eb, ob in zip(erased, off_batches):
        assert eb["keys"] == ob["keys"]
        for e, o in zip(eb["images"], ob["images"]):
            changed = (e != o).any(dim=0).numpy()
            ys, xs = np.nonzero(changed)
            assert len(ys) > 0
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            box = e[:, y0:y1, x0:x1]
            assert torch.all(box == 0)  # filled with 0 after normalisation = the mean pixel
            frac = (y1 - y0) * (x1 - x0) / (h * w)
            # sides are rounded to whole pixels (+-1 px each), and a pixel equal to the mean
            # already may hide at the border: allow that slack around the configured range
            slack = (h + w + 1) / (h * w)
            assert area[0] - slack <= frac <= area[1] + slack, frac
            assert (e[:, ~torch.from_numpy(changed)] == o[:, ~torch.from_numpy(changed)]).all()
    off = dali_batches(ds, loader_cfg(erase_prob=0.0), n=1)
    assert torch.equal(off[0]["images"], off_batches[0]["images"])


def test_colour_jitter_changes_pixels_deterministically(ds, off_batches):
    a = dali_batches(ds, loader_cfg(color_jitter=0.4), seed=5, n=2)
    b = dali_batches(ds, loader_cfg(color_jitter=0.4), seed=5, n=2)
    for x, y, o in zip(a, b, off_batches):
        assert torch.equal(x["images"], y["images"])
        assert (x["images"] - o["images"]).abs().mean() > 0.05


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_output_dtype(ds, off_batches, dtype):
    (batch,) = dali_batches(ds, loader_cfg(dtype=dtype), n=1)
    assert batch["images"].dtype == getattr(torch, dtype)
    torch.testing.assert_close(batch["images"].float(), off_batches[0]["images"], atol=0.05, rtol=0.01)
    (ev,) = list(iterate_eval(ds["index"], ds["index"].keys("query")[:2], loader_cfg(dtype=dtype), 2, CPU))
    assert ev["images"].dtype == getattr(torch, dtype)


# -- 7. parallel external source, sharded evaluation ---------------------------------------------


def test_parallel_source_workers_give_the_same_batches(ds):
    cfg = loader_cfg(flip_prob=0.5, pad=2, erase_prob=0.5)
    serial = dali_batches(ds, cfg, seed=3, n=3)
    loader = DaliTrainLoader(ds["index"], ds["keys"], ds["pid_map"], pk_sampler(ds), cfg, seed=3, device=CPU,
                             source_workers=2)
    try:
        parallel = [next(loader) for _ in range(3)]
    finally:
        loader.close()
    for s, p in zip(serial, parallel):
        assert s["keys"] == p["keys"]
        assert torch.equal(s["images"], p["images"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_evaluation_covers_every_key_once_in_rank_order(ds, world_size):
    index = ds["index"]
    keys = index.keys("query") + index.keys("gallery")
    whole = _eval_images(index, keys, loader_cfg(), 4)
    parts = [[k for b in iterate_eval(index, keys, loader_cfg(), 4, CPU, rank=r, world_size=world_size)
              for k in b["keys"]] for r in range(world_size)]
    assert [k for part in parts for k in part] == keys == list(whole)
    assert all(parts)
    n = len(keys)
    assert [len(p) for p in parts] == [n * (r + 1) // world_size - n * r // world_size for r in range(world_size)]


# -- 7b. samples already at the output size skip the resize (CPU) ------------------------------


def _decoded(index: ShardsIndex, key: str) -> np.ndarray:
    """HWC 0-255 float: PIL decode of the shard's bytes, no resize."""
    return np.asarray(Image.open(io.BytesIO(index.read_jpeg(key))).convert("RGB"), np.float32)


def test_images_at_the_output_size_come_out_as_decoded(ds):
    # output size = the JPEGs' own size: the pixels are the decoded JPEG, normalised, nothing else
    cfg = loader_cfg(image_size=SOURCE)
    index = ds["index"]
    for batch in dali_batches(ds, cfg, n=2):
        assert batch["images"].shape[-2:] == SOURCE
        for key, img in zip(batch["keys"], batch["images"]):
            np.testing.assert_allclose(to_255(img), _decoded(index, key), atol=EXACT)
    keys = index.keys("gallery")
    for key, img in _eval_images(index, keys, cfg, 5).items():
        np.testing.assert_allclose(to_255(img), _decoded(index, key), atol=EXACT)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Like ``ds``, but every other train and gallery JPEG is stored at the output size ``SIZE``,
    so batches mix samples that need the resize with samples that skip it."""
    base = tmp_path_factory.mktemp("dali_mixed")
    root, manifest = synth(base)
    resaved = set()
    for split in ("train", "gallery"):
        for row in manifest.split(split)[::2]:
            path = root / row.relpath
            with Image.open(path) as im:
                im.convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR).save(path, quality=95)
            resaved.add(row.relpath)
    manifest = layouts.parse("msmt17", root)
    write_shards(manifest, root, base / "shards", 20480)
    out = dataset(ShardsIndex.load(base / "shards"))
    out["at_size"] = {k for k in out["index"].keys("train") + out["index"].keys("gallery")
                      if _decoded(out["index"], k).shape[:2] == SIZE}
    assert len(out["at_size"]) == len(resaved)
    return out


def test_batches_mixing_resized_and_unresized_samples_keep_order_and_pixels(mixed):
    index, at_size = mixed["index"], mixed["at_size"]
    seen = set()
    for batch in dali_batches(mixed, loader_cfg(), n=N_BATCHES):
        assert batch["images"].shape == (P * K, 3) + SIZE
        for key, img in zip(batch["keys"], batch["images"]):
            if key in at_size:  # the stored pixels, exactly
                np.testing.assert_allclose(to_255(img), _decoded(index, key), atol=EXACT)
            else:
                _assert_matches_reference(index, key, img)
            seen.add(key in at_size)
    assert seen == {True, False}
    evals = _eval_images(index, index.keys("gallery"), loader_cfg(), 5)
    assert at_size & set(evals) and set(evals) - at_size
    for key, img in evals.items():
        if key in at_size:
            np.testing.assert_allclose(to_255(img), _decoded(index, key), atol=EXACT)
        else:
            _assert_matches_reference(index, key, img)


# -- 8. corrupt JPEG inside a shard --------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("dali_corrupt")
    root, manifest = synth(base, num_train_ids=4, num_test_ids=2, check_images=False)
    bad = manifest.split("train")[1]
    data = (root / bad.relpath).read_bytes()
    (root / bad.relpath).write_bytes(data[: len(data) // 2])  # truncated: what a broken copy leaves
    write_shards(manifest, root, base / "shards", 1 << 20)
    index = ShardsIndex.load(base / "shards")
    keys = index.keys("train")
    labels = [index.labels(k)["pid"] for k in keys]
    pid_map = contiguous_labels(labels)
    return {"index": index, "keys": keys, "pid_map": pid_map, "labels": [pid_map[p] for p in labels],
            "bad": bad.key}


def _corrupt_loader(c: dict, on_corrupt: str) -> DaliTrainLoader:
    # P=4 ids x K=2 of 4 ids with 4 images each: the corrupt image is drawn within a few batches
    sampler = PKSampler(c["labels"], 4, 4, seed=0)
    return DaliTrainLoader(c["index"], c["keys"], c["pid_map"], sampler, loader_cfg(on_corrupt=on_corrupt), seed=0,
                           device=CPU)


def test_corrupt_jpeg_error_names_shard_and_key(corrupt):
    loader = _corrupt_loader(corrupt, "error")
    try:
        with pytest.raises(ShardsError) as err:
            next(loader)  # every id's 4 images are in each batch (K = 4 = images per id)
    finally:
        loader.close()
    assert corrupt["bad"] in str(err.value) and "train-000000.tar" in str(err.value)


def test_corrupt_jpeg_skip_replaces_it_and_counts(corrupt):
    loader = _corrupt_loader(corrupt, "skip")
    try:
        batches = [next(loader) for _ in range(2)]
    finally:
        loader.close()
    assert loader.skipped == 2  # once per batch
    for b in batches:
        assert corrupt["bad"] not in b["keys"] and len(b["keys"]) == 16
        pids = b["pids"].tolist()
        assert all(len(set(pids[j * 4:(j + 1) * 4])) == 1 for j in range(4))  # replaced within its identity
