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

from pathlib import Path

import numpy as np
import pytest
import torch

from reid.data import layouts
from reid.data.loaders import dali
from reid.data.loaders.config import AugmentConfig
from reid.data.loaders.dali import DaliTrainLoader, iterate_eval
from reid.data.loaders.torch_ref import TorchTrainLoader, iterate_eval_torch
from reid.data.manifest import contiguous_labels
from reid.data.samplers import PKSampler
from reid.data.shards import ShardsError, ShardsIndex, write_shards
from reid.data.synthetic import MSMT17SynthConfig, write_msmt17

SIZE = (40, 24)  # (H, W) output: a different scale per axis (64->40, 32->24), so H/W mix-ups show
SOURCE = (64, 32)  # the JPEGs' own size: no resize, decoders compared alone
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
P, K = 3, 2  # 8 train ids -> 2 steps per epoch; 5 batches cross two epoch boundaries
SAMPLER_SEED = 7
N_BATCHES = 5
CPU = torch.device("cpu")

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (warned on every call)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

PARITY_MEAN_TOL = 0.6  # per-image mean |DALI - torch| on the 0-255 scale (module docstring)
PARITY_MAX_TOL = 12.0  # any pixel
EXACT = 1e-3  # same decoder and ops on both sides: only float rounding of the (un)normalisation
AUG = {"flip_prob": 0.5, "pad": 3, "erase_prob": 0.5, "color_jitter": 0.2}


@pytest.fixture(scope="module", autouse=True)
def _cpu_pipelines():
    """Run every DALI pipeline of this module on the CPU decoder, GPU or not."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dali, "cuda_device_id", lambda: None)
        yield


def _synth(base: Path):
    cfg = MSMT17SynthConfig(num_train_ids=8, num_test_ids=4, num_cameras=2, images_per_id_camera=2,
                            val_every=0, height=SOURCE[0], width=SOURCE[1])
    root = write_msmt17(base, cfg)
    return root, layouts.parse("msmt17", root)


def _dataset(index: ShardsIndex) -> dict:
    keys = index.keys("train")
    raw = [index.labels(k)["pid"] for k in keys]
    # A contiguous but *reversed* map, so a loader that forgot the map would give wrong pids.
    fwd = contiguous_labels(raw)
    pid_map = {pid: len(fwd) - 1 - label for pid, label in fwd.items()}
    return {"index": index, "keys": keys, "pid_map": pid_map, "labels": [pid_map[p] for p in raw]}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("torch_loader")
    root, manifest = _synth(base)
    write_shards(manifest, root, base / "shards", 20480)  # several tars per split
    return _dataset(ShardsIndex.load(base / "shards"))


def _cfg(**kw) -> AugmentConfig:
    kw = {"flip_prob": 0.0, "pad": 0, "image_size": SIZE, **kw}
    return AugmentConfig(mean=MEAN, std=STD, **kw)


def _sampler(ds: dict, state: dict | None = None) -> PKSampler:
    s = PKSampler(ds["labels"], P, K, seed=SAMPLER_SEED)
    if state is not None:
        s.load_state_dict({**state, "seed": SAMPLER_SEED})
    return s


def _torch_batches(ds: dict, cfg: AugmentConfig, seed: int = 1, n: int = N_BATCHES, workers: int = 0,
                   state: dict | None = None) -> list[dict]:
    loader = TorchTrainLoader(ds["index"], ds["keys"], ds["pid_map"], _sampler(ds, state), cfg,
                              seed=seed, device=CPU, num_workers=workers)
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


def _dali_batches(ds: dict, cfg: AugmentConfig, seed: int = 1, n: int = N_BATCHES,
                  state: dict | None = None) -> list[dict]:
    loader = DaliTrainLoader(ds["index"], ds["keys"], ds["pid_map"], _sampler(ds, state), cfg,
                             seed=seed, device=CPU)
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


def _to_255(img: torch.Tensor) -> np.ndarray:
    """A normalised CHW image back to HWC on the 0-255 scale."""
    return img.float().numpy().transpose(1, 2, 0) * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)


def _assert_parity(a: torch.Tensor, b: torch.Tensor, key: str) -> None:
    diff = np.abs(_to_255(a) - _to_255(b))
    assert diff.mean() < PARITY_MEAN_TOL and diff.max() < PARITY_MAX_TOL, (key, diff.mean(), diff.max())


@pytest.fixture(scope="module")
def off_batches(ds) -> list[dict]:
    """N_BATCHES torch training batches with augmentation off, in this process."""
    return _torch_batches(ds, _cfg())


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
    torch_b = off_batches if state is None else _torch_batches(ds, _cfg(), state=state)
    dali_b = _dali_batches(ds, _cfg(), state=state)
    plan = iter(_sampler(ds, state))
    for t, d in zip(torch_b, dali_b, strict=True):
        idx = next(plan)
        assert t["keys"] == d["keys"] == [ds["keys"][i] for i in idx]
        assert t["pids"].tolist() == d["pids"].tolist() == [ds["labels"][i] for i in idx]
    assert len({tuple(b["keys"]) for b in torch_b}) == N_BATCHES  # a non-trivial sequence


def test_sampler_is_read_not_advanced(ds):
    sampler = _sampler(ds, {"epoch": 1, "step": 1})
    loader = TorchTrainLoader(ds["index"], ds["keys"], ds["pid_map"], sampler, _cfg(), seed=1, device=CPU,
                              num_workers=2)
    try:
        got = [next(loader)["keys"] for _ in range(3)]
    finally:
        loader.close()
    assert sampler.state_dict() == {"epoch": 1, "step": 1, "seed": SAMPLER_SEED}
    assert got == [[ds["keys"][i] for i in sampler.batch(e, s)] for e, s in ((1, 1), (2, 0), (2, 1))]


def test_any_iterable_of_index_lists_is_a_sampler(ds):
    plan = [[0, 1, 4, 5], [2, 3, 6, 7]]
    loader = TorchTrainLoader(ds["index"], ds["keys"], ds["pid_map"], iter(plan), _cfg(), seed=1, device=CPU,
                              num_workers=0)
    try:
        assert [next(loader)["keys"] for _ in plan] == [[ds["keys"][i] for i in b] for b in plan]
        with pytest.raises(StopIteration):
            next(loader)
    finally:
        loader.close()


def test_augmentation_and_workers_do_not_change_the_sequence(ds, off_batches):
    aug = _torch_batches(ds, _cfg(**AUG), seed=5, workers=2)
    assert [b["keys"] for b in aug] == [b["keys"] for b in off_batches]
    assert [b["pids"].tolist() for b in aug] == [b["pids"].tolist() for b in off_batches]


# -- 2. pixel parity with DALI (augmentation off) -----------------------------------------------


def test_train_pixels_match_dali_within_decoder_tolerance(ds, off_batches):
    dali_b = _dali_batches(ds, _cfg())
    for t, d in zip(off_batches, dali_b):
        for key, a, b in zip(t["keys"], t["images"], d["images"]):
            _assert_parity(a, b, key)


def _eval_images(fn, index: ShardsIndex, keys: list[str], cfg: AugmentConfig, batch_size: int) -> dict:
    return {k: im for b in fn(index, keys, cfg, batch_size, CPU) for k, im in zip(b["keys"], b["images"])}


def test_eval_pixels_match_dali(ds):
    index = ds["index"]
    keys = index.keys("query") + index.keys("gallery")  # as evaluation reads them: across splits
    t = _eval_images(iterate_eval_torch, index, keys, _cfg(), 5)
    d = _eval_images(iterate_eval, index, keys, _cfg(), 5)
    assert list(t) == list(d) == keys
    for key in keys:
        _assert_parity(t[key], d[key], key)


def test_decoders_agree_exactly_without_resize(ds):
    index, keys = ds["index"], ds["keys"]
    t = _eval_images(iterate_eval_torch, index, keys, _cfg(image_size=SOURCE), 8)
    d = _eval_images(iterate_eval, index, keys, _cfg(image_size=SOURCE), 8)
    for key in keys:
        np.testing.assert_allclose(_to_255(t[key]), _to_255(d[key]), atol=EXACT, err_msg=key)


def test_train_off_equals_eval(ds, off_batches):
    evals = _eval_images(iterate_eval_torch, ds["index"], ds["keys"], _cfg(), 7)
    for batch in off_batches:
        for key, img in zip(batch["keys"], batch["images"]):
            assert torch.equal(img, evals[key]), key
    # evaluation never augments, whatever the config says
    aug = _eval_images(iterate_eval_torch, ds["index"], ds["keys"], _cfg(**AUG), 7)
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
    batches = list(iterate_eval_torch(index, keys, _cfg(), batch_size, CPU))
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
    full = _eval_images(iterate_eval_torch, index, index.keys("train"), _cfg(), 6)
    sub = _eval_images(iterate_eval_torch, index, keys, _cfg(), 4)
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
        iterate_eval_torch(ds["index"], make_keys(ds["index"]), _cfg(), batch_size, CPU)  # at call time


@pytest.mark.parametrize("rank,world_size", [(2, 2), (-1, 2), (0, 0)])
def test_iterate_eval_torch_rejects_bad_rank(ds, rank, world_size):
    with pytest.raises(ValueError, match="rank"):
        iterate_eval_torch(ds["index"], ds["index"].keys("query"), _cfg(), 4, CPU, rank, world_size)


def test_iterate_eval_torch_ranks_get_the_keys_dali_gives_them(ds):
    index = ds["index"]
    keys = (index.keys("query") + index.keys("gallery"))[1:]  # a subset, across splits
    parts = []
    for rank in range(3):
        t = _eval_images(lambda *a: iterate_eval_torch(*a, rank=rank, world_size=3), index, keys, _cfg(), 4)
        d = _eval_images(lambda *a: iterate_eval(*a, rank=rank, world_size=3), index, keys, _cfg(), 4)
        assert list(t) == list(d)
        for key in t:
            _assert_parity(t[key], d[key], key)
        parts += list(t)
    assert parts == keys  # the ranks' parts, in rank order, are the keys


# -- 4. seeded augmentation ----------------------------------------------------------------------


def test_augmented_pixels_depend_on_seed_only(ds):
    rng_before = torch.get_rng_state()
    a = _torch_batches(ds, _cfg(**AUG), seed=11, n=3, workers=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is untouched
    b = _torch_batches(ds, _cfg(**AUG), seed=11, n=3, workers=2)
    assert b[0]["images"].shape == (P * K, 3, *SIZE)
    c = _torch_batches(ds, _cfg(**AUG), seed=11, n=3, workers=0)  # a second run
    d = _torch_batches(ds, _cfg(**AUG), seed=12, n=3, workers=2)
    for x, y, z, w in zip(a, b, c, d):
        assert x["keys"] == y["keys"] == z["keys"] == w["keys"]
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["images"], z["images"])
        assert not torch.equal(x["images"], w["images"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_output_dtype_is_honoured(ds, off_batches, dtype):
    batches = _torch_batches(ds, _cfg(dtype=dtype, **AUG), n=2, workers=0)
    ref = _torch_batches(ds, _cfg(**AUG), n=2, workers=0)
    for b, r in zip(batches, ref):
        assert b["images"].dtype == getattr(torch, dtype) and b["images"].shape == (P * K, 3, *SIZE)
        assert torch.equal(b["images"], r["images"].to(getattr(torch, dtype)))  # same draws, cast last
    evals = list(iterate_eval_torch(ds["index"], ds["keys"], _cfg(dtype=dtype), 5, CPU))
    assert all(e["images"].dtype == getattr(torch, dtype) for e in evals)


def test_flip_prob_one_mirrors_every_image(ds, off_batches):
    flipped = _torch_batches(ds, _cfg(flip_prob=1.0), n=2)
    for fb, ob in zip(flipped, off_batches):
        assert fb["keys"] == ob["keys"]
        for f, o in zip(fb["images"], ob["images"]):
            assert torch.equal(f, o.flip(-1))
            assert np.abs(_to_255(f) - _to_255(o)).mean() > 2.0  # not mirror-symmetric: the check bites


def test_erasing_zeroes_one_rectangle_within_the_configured_area(ds, off_batches):
    cfg = _cfg(erase_prob=1.0)
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
    shifted = _torch_batches(ds, _cfg(pad=pad), n=2)
    shifts = set()
    for pb, ob in zip(shifted, off_batches):
        for p_img, o_img in zip(pb["images"], ob["images"]):
            ref = _to_255(o_img)
            img = _to_255(p_img)
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
    root, manifest = _synth(base)
    rows = manifest.split("train")
    raw = [r.pid for r in rows]
    fwd = contiguous_labels(raw)
    pid_map = {pid: len(fwd) - 1 - label for pid, label in fwd.items()}  # as _dataset
    bad = PKSampler([pid_map[p] for p in raw], P, K, seed=SAMPLER_SEED).batch(0, 0)[0]
    path = root / rows[bad].relpath
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    write_shards(manifest, root, base / "shards", 20480)
    out = _dataset(ShardsIndex.load(base / "shards"))
    assert out["pid_map"] == pid_map
    return {**out, "bad": rows[bad].key}


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_raises_naming_shard_and_key(corrupt, workers):
    tar = corrupt["index"].location(corrupt["bad"])[0]
    with pytest.raises(ShardsError, match=rf"(?s){tar}.*{corrupt['bad']}"):
        _torch_batches(corrupt, _cfg(), n=1, workers=workers)
    with pytest.raises(ShardsError, match=rf"(?s){tar}.*{corrupt['bad']}"):
        list(iterate_eval_torch(corrupt["index"], corrupt["keys"], _cfg(), 8, CPU))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_skipped_with_next_image_of_same_identity(corrupt, workers):
    keys, bad = corrupt["keys"], corrupt["bad"]
    loader = TorchTrainLoader(corrupt["index"], keys, corrupt["pid_map"], _sampler(corrupt),
                              _cfg(on_corrupt="skip"), seed=1, device=CPU, num_workers=workers)
    try:
        batches = [next(loader) for _ in range(N_BATCHES)]
    finally:
        loader.close()
    planned = [[keys[i] for i in idx] for idx, _ in zip(_sampler(corrupt), range(N_BATCHES))]
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
