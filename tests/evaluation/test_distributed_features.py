"""Distributed feature extraction: every rank extracts its share, then all ranks hold all features
in the original sample order (reid.evaluation.features.gather_features / extract_split_features,
and score(distributed=True)).

One tiny synthetic MSMT17 (4 test ids, 15 query + gallery images of 32x16 px, several tars per
split) is sharded once per module. Two gloo ranks on 127.0.0.1 run every distributed case in one
spawn (module fixture ``two_ranks``, with a deadline so a hang fails); the tests compare what each
rank got with a single-process reference computed here. DALI runs on its CPU decoder everywhere.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from reid.data import synthetic
from reid.data.layouts import parse
from reid.data.loaders import AugmentConfig, iterate_eval
from reid.data.protocols import Protocol, build_protocol
from reid.data.shards import ShardsIndex, write_shards
from reid.engine.distributed import free_port
from reid.evaluation.evaluate import EvalSpec, score
from reid.evaluation.features import (Features, PeerExtractionError, extract_features, extract_split_features,
                                      gather_features)
from tests.data.loader_common import cpu_pipelines  # noqa: F401  (DALI on its CPU decoder in this process)

WORLD = 2
SIZE = (32, 16)  # the JPEGs' own size
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
BATCH = 4  # rank shares of 7 and 8 samples: DALI pads the last batch of each
BACKENDS = ("dali", "torch")
CPU = torch.device("cpu")
DEADLINE_S = 240  # the spawned ranks must finish by then (a hang fails instead of blocking CI)


class TinyNet(torch.nn.Module):
    """A small deterministic embedder (``(B, 3, 32, 16) -> {"embed": (B, 6)}``, left-right
    asymmetric so that flip averaging changes it) that counts the images it is given."""

    def __init__(self, fail_on_rank: int | None = None):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # same weights everywhere; the caller's RNG untouched
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
            self.fc = torch.nn.Linear(4 * 2 * 2, 6)
        self.seen = 0
        self.fail_on_rank = fail_on_rank

    def forward(self, x: torch.Tensor) -> dict:
        if self.fail_on_rank is not None and dist.get_rank() == self.fail_on_rank:
            raise RuntimeError(f"boom on rank {self.fail_on_rank}")
        self.seen += x.shape[0]
        h = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), (2, 2)).flatten(1)
        return {"embed": self.fc(h)}


def _cfg() -> AugmentConfig:
    return AugmentConfig(image_size=SIZE, mean=MEAN, std=STD, num_threads=1)


def _key_sets(index: ShardsIndex) -> dict[str, list[str]]:
    """Key lists read by the tests: all 15 samples (odd: rank shares 7 and 8), every other one
    (both ranks hold some), and the first 2 of the 4 queries (only the query split is then read,
    and rank 1's half of it holds none of them)."""
    every = index.keys("query") + index.keys("gallery")
    return {"all": every, "alternate": every[::2], "rank0_only": index.keys("query")[:2]}


def _spec(shards_dir: Path, backend: str) -> EvalSpec:
    return EvalSpec(shards_dir=shards_dir, image_size=SIZE, mean=MEAN, std=STD, batch_size=BATCH, max_rank=5,
                    num_threads=1, backend=backend)


def _as_record(f: Features) -> dict:
    return {"keys": f.keys, "feats": f.feats.clone(), "pids": f.pids, "camids": f.camids}


def _worker(rank: int, port: int, work: str) -> None:
    """One gloo rank: every distributed case; results go to ``work/rank<r>.pt``."""
    from reid.data.loaders import dali

    dali.cuda_device_id = lambda: None  # DALI on its CPU decoder, as in the reference
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        shards_dir = Path(work) / "shards"
        index = ShardsIndex.load(shards_dir)
        out: dict = {"extract": {}, "seen": {}, "score": {}}
        for backend in BACKENDS:
            for name, keys in _key_sets(index).items():
                model = TinyNet()
                f = extract_split_features(model, backend, index, keys, _cfg(), BATCH, CPU, flip=True)
                out["extract"][backend, name] = _as_record(f)
                out["seen"][backend, name] = model.seen
            out["score"][backend] = score(TinyNet(), _spec(shards_dir, backend),
                                          Protocol.read(Path(work) / "protocol.json"), distributed=True)

        # distributed=False inside the group: rank 0 alone reads everything, with no collective
        # (as the training loop's validator, which runs on rank 0 while the others wait)
        if rank == 0:
            model = TinyNet()
            f = extract_split_features(model, "dali", index, _key_sets(index)["all"], _cfg(), BATCH, CPU,
                                       flip=True, distributed=False)
            out["alone"] = {**_as_record(f), "seen": model.seen}
            out["score_alone"] = score(TinyNet(), _spec(shards_dir, "torch"),
                                       Protocol.read(Path(work) / "protocol.json"))
        dist.barrier()

        # a failure on rank 1 reaches every rank (none waits forever in a collective)
        try:
            extract_split_features(TinyNet(fail_on_rank=1), "torch", index, index.keys("query"), _cfg(), BATCH, CPU)
            out["failure"] = None
        except Exception as err:
            out["failure"] = (type(err).__name__, str(err))

        # gather_features on hand-made shares: known answers, an empty rank, a key extracted twice
        shares = {0: Features(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), np.array([10, 30]), np.array([1, 3]),
                              ["c", "a"]),
                  1: Features(torch.tensor([[5.0, 6.0]]), np.array([20]), np.array([2]), ["b"])}
        out["known"] = _as_record(gather_features(shares[rank], ["a", "b", "c"]))
        empty = Features(torch.zeros(0, 0), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
        out["one_empty"] = _as_record(gather_features(shares[0] if rank == 0 else empty, ["a", "c"]))
        twice = Features(torch.ones(2, 2), np.array([1, 2]), np.array([1, 1]), [f"own{rank}", "dup"])
        try:
            gather_features(twice, ["own0", "own1", "dup"])
            out["twice"] = None
        except ValueError as err:
            out["twice"] = str(err)
        torch.save(out, Path(work) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards (``work/shards``, several 8 KiB tars per split) and the fixed protocol of a tiny
    synthetic MSMT17 (5 train ids, 4 test ids: 4 queries + 11 gallery images at 32x16 px)."""
    base = tmp_path_factory.mktemp("dist_features")
    cfg = synthetic.MSMT17SynthConfig(num_train_ids=5, num_test_ids=4, num_cameras=3, cameras_per_id=2,
                                      images_per_id_camera=(1, 3), val_every=0, height=SIZE[0], width=SIZE[1])
    root = synthetic.write_msmt17(base / "data", cfg)
    manifest = parse("msmt17", root)
    write_shards(manifest, root, base / "shards", 8192)
    build_protocol(manifest, num_draws=1, seed=0).write(base / "protocol.json")
    index = ShardsIndex.load(base / "shards")
    assert len(index.keys("query") + index.keys("gallery")) % WORLD == 1  # shares differ in size
    assert len(index.shard_paths("gallery")) > 1
    return base


@pytest.fixture(scope="module")
def two_ranks(work: Path) -> list[dict]:
    """What each of the two gloo ranks recorded (see :func:`_worker`)."""
    ctx = torch.multiprocessing.start_processes(_worker, args=(free_port(), str(work)), nprocs=WORLD,
                                                join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} ranks did not finish within {DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def index(work: Path) -> ShardsIndex:
    return ShardsIndex.load(work / "shards")


def _share(index: ShardsIndex, keys: list[str], rank: int) -> int:
    """How many of ``keys`` rank ``rank`` reads: those in its contiguous part of the order of the
    splits that hold ``keys``."""
    splits = dict.fromkeys(index.labels(k)["split"] for k in keys)
    order = [k for split in splits for k in index.keys(split)]
    n = len(order)
    mine = set(order[n * rank // WORLD: n * (rank + 1) // WORLD])
    return sum(k in mine for k in keys)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["all", "alternate", "rank0_only"])
def test_two_ranks_match_one_process(two_ranks, index, backend, name):
    keys = _key_sets(index)[name]
    ref = extract_split_features(TinyNet(), backend, index, keys, _cfg(), BATCH, CPU, flip=True)
    assert ref.keys == keys
    for rank, got in enumerate(two_ranks):
        rec = got["extract"][backend, name]
        assert rec["keys"] == keys, f"rank {rank}"
        assert rec["feats"].shape == (len(keys), 6) and rec["feats"].dtype == torch.float32
        torch.testing.assert_close(rec["feats"], ref.feats, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(rec["pids"], ref.pids)
        np.testing.assert_array_equal(rec["camids"], ref.camids)
        # each rank ran the model on its own share only (x 2: flip averaging)
        assert got["seen"][backend, name] == 2 * _share(index, keys, rank), f"rank {rank}"
    assert (_share(index, keys, 1) == 0) == (name == "rank0_only")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_process_gives_what_extract_features_gave(index, backend):
    keys = _key_sets(index)["all"]
    old = extract_features(TinyNet(), iterate_eval(backend, index, keys, _cfg(), BATCH, CPU), flip=True)
    new = extract_split_features(TinyNet(), backend, index, keys, _cfg(), BATCH, CPU, flip=True)
    assert new.keys == old.keys == keys
    assert torch.equal(new.feats, old.feats)
    np.testing.assert_array_equal(new.pids, old.pids)
    np.testing.assert_array_equal(new.camids, old.camids)
    assert len(set(new.pids.tolist())) == 4 and not torch.allclose(new.feats[0], new.feats[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_is_the_same_on_every_rank_and_in_one_process(two_ranks, work, backend):
    spec = _spec(work / "shards", backend)
    ref = score(TinyNet(), spec, Protocol.read(work / "protocol.json"))
    r0, r1 = (got["score"][backend] for got in two_ranks)
    assert r0 == r1
    assert r0.keys() == ref.keys() == {"query_gallery"}
    for k, v in ref["query_gallery"].items():
        assert r0["query_gallery"][k] == pytest.approx(v, abs=1e-12), k
    assert r0["query_gallery"]["num_query"] == 4 and r0["query_gallery"]["num_gallery"] == 11


def test_rank0_alone_without_collectives(two_ranks, index, work):
    keys = _key_sets(index)["all"]
    alone = two_ranks[0]["alone"]
    ref = extract_split_features(TinyNet(), "dali", index, keys, _cfg(), BATCH, CPU, flip=True)
    assert alone["keys"] == keys and alone["seen"] == 2 * len(keys)
    torch.testing.assert_close(alone["feats"], ref.feats, atol=1e-6, rtol=0)
    assert two_ranks[0]["score_alone"] == two_ranks[0]["score"]["torch"]
    assert "alone" not in two_ranks[1]


def test_a_failing_rank_fails_every_rank(two_ranks):
    assert two_ranks[1]["failure"] == ("RuntimeError", "boom on rank 1")
    kind, msg = two_ranks[0]["failure"]
    assert kind == PeerExtractionError.__name__ and "rank 1: RuntimeError: boom on rank 1" in msg


def test_gather_known_answer_across_ranks(two_ranks):
    for got in two_ranks:
        k = got["known"]
        assert k["keys"] == ["a", "b", "c"]
        assert torch.equal(k["feats"], torch.tensor([[3.0, 4.0], [5.0, 6.0], [1.0, 2.0]]))
        assert k["pids"].tolist() == [30, 20, 10] and k["camids"].tolist() == [3, 2, 1]
        e = got["one_empty"]
        assert e["keys"] == ["a", "c"] and torch.equal(e["feats"], torch.tensor([[3.0, 4.0], [1.0, 2.0]]))


def test_gather_names_a_key_extracted_on_two_ranks(two_ranks):
    for got in two_ranks:
        assert got["twice"] is not None and "more than once 1 (e.g. ['dup'])" in got["twice"]


# ---- one process: gather_features only validates and reorders


def _local(keys: list[str]) -> Features:
    n = len(keys)
    return Features(torch.arange(2.0 * n).reshape(n, 2), np.arange(n) + 100, np.arange(n) % 2, keys)


def test_gather_reorders_without_a_process_group():
    f = gather_features(_local(["x", "y", "z"]), ["z", "x", "y"])
    assert f.keys == ["z", "x", "y"]
    assert torch.equal(f.feats, torch.tensor([[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]))
    assert f.pids.tolist() == [102, 100, 101] and f.camids.tolist() == [0, 0, 1]


@pytest.mark.parametrize("got,keys,match", [
    (["x", "y", "x"], ["x", "y"], r"more than once 1 \(e.g. \['x'\]\)"),
    (["x"], ["x", "y"], r"missing 1 \(e.g. \['y'\]\)"),
    (["x", "w"], ["x"], r"not in keys 1 \(e.g. \['w'\]\)"),
    (["x", "y"], ["x", "y", "x"], r"repeated: 1 \(e.g. \['x'\]\)"),
])
def test_gather_rejects_mismatched_keys(got, keys, match):
    with pytest.raises(ValueError, match=match):
        gather_features(_local(got), keys)


def test_gather_rejects_misaligned_fields():
    bad = Features(torch.zeros(3, 2), np.zeros(2, np.int64), np.zeros(3, np.int64), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"one length each, got \(3, 2, 3, 3\)"):
        gather_features(bad, ["a", "b", "c"])
