"""Criterion in data-parallel training: 2 gloo ranks, each with half of a batch, give the loss and
(rank-averaged) gradients of 1 rank with the whole batch, cross-sample losses included."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reid.engine.criterion import Criterion
from reid.engine.distributed import free_port

SETTINGS = {"ce": {"weight": 1.0, "epsilon": 0.1}, "triplet": {"weight": 1.0, "margin": 0.3}}
P, K, D, C = 4, 3, 6, 5  # global batch: 4 ids x 3 images; 2 ranks hold 2 ids each


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(P * K, 8, generator=g)
    pids = torch.arange(P).repeat_interleave(K)
    return x, pids


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(8, D), torch.nn.Linear(D, C)


def _step(x, pids):
    embed, head = _model()
    feat = embed(x)
    criterion = Criterion(("ce", "triplet"), SETTINGS, {"num_classes": C})
    loss, logs = criterion({"feat": feat, "logits": head(feat)}, {"pids": pids})
    loss.backward()
    grads = [p.grad.clone() for m in (embed, head) for p in m.parameters()]
    return logs, grads


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, pids = _data()
        half = slice(rank * P * K // 2, (rank + 1) * P * K // 2)
        logs, grads = _step(x[half], pids[half])
        for g in grads:  # what DDP / DeepSpeed do with the gradients
            dist.all_reduce(g)
            g /= 2
        out[rank] = (logs, grads)
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def two_ranks():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(free_port(), out), nprocs=2, join=True)
        return dict(out)


def test_two_ranks_equal_one_rank_with_the_global_batch(two_ranks):
    logs1, grads1 = _step(*_data())
    for rank in (0, 1):
        logs2, grads2 = two_ranks[rank]
        assert logs2.keys() == logs1.keys()
        for k in logs1:
            assert logs2[k] == pytest.approx(logs1[k], rel=1e-5, abs=1e-6), k
        for a, b in zip(grads2, grads1):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mining_on_the_rank_batch_alone_would_differ():
    """The test above can fail: the triplet loss of half the batch is not the global one."""
    x, pids = _data()
    logs_half, _ = _step(x[: P * K // 2], pids[: P * K // 2])
    logs_full, _ = _step(x, pids)
    assert abs(logs_half["triplet"] - logs_full["triplet"]) > 1e-3
