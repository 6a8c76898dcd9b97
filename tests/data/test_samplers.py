"""Tests for reid.data.samplers.PKSampler."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from reid.data.samplers import PKSampler


def _pids(seed: int = 0) -> list[int]:
    """23 identities (non-contiguous pids) with 1..9 images each, shuffled dataset order."""
    rng = np.random.default_rng(seed)
    pids = []
    for j in range(23):
        pids += [1000 + 7 * j] * (1 + j % 9)
    return [int(x) for x in rng.permutation(pids)]


def _take(sampler, n):
    return list(islice(iter(sampler), n))


def _groups(batch, k):
    return [batch[i: i + k] for i in range(0, len(batch), k)]


def test_batch_structure():
    pids = _pids()
    p, k = 4, 4
    s = PKSampler(pids, p=p, k=k, seed=3)
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert s.steps_per_epoch == 23 // 4
    for batch in _take(s, 3 * s.steps_per_epoch):
        assert len(batch) == p * k
        groups = _groups(batch, k)
        owners = []
        for g in groups:
            gp = {pids[i] for i in g}
            assert len(gp) == 1  # K consecutive images of one pid
            owners.append(gp.pop())
        assert len(set(owners)) == p  # P distinct pids
        # pid-major: a pid's images never appear outside its own run
        assert [pids[i] for i in batch] == [o for o in owners for _ in range(k)]
        for g, owner in zip(groups, owners):
            if counts[owner] >= k:
                assert len(set(g)) == k  # without replacement
            else:
                assert set(g) <= {i for i, x in enumerate(pids) if x == owner}


def test_small_identities_sampled_with_replacement():
    pids = [1] * 2 + [2] * 2  # both ids have fewer than k images
    s = PKSampler(pids, p=2, k=5, seed=0)
    batch = next(iter(s))
    assert sorted(set(batch[:5]) | set(batch[5:])) == [0, 1, 2, 3]
    assert len(batch) == 10


def test_epoch_covers_distinct_ids():
    pids = _pids()
    s = PKSampler(pids, p=3, k=2, seed=11)
    spe = s.steps_per_epoch
    assert spe == 23 // 3
    seen_epochs = []
    for e in range(3):
        owners = [pids[b[i]] for b in _take(s, spe) for i in range(0, len(b), 2)]
        assert len(owners) == 3 * spe
        assert len(set(owners)) == len(owners)  # no id repeated within an epoch
        seen_epochs.append(owners)
        assert s.state_dict() == {"epoch": e + 1, "step": 0, "seed": 11}
    assert seen_epochs[0] != seen_epochs[1]  # reshuffled per epoch


def test_deterministic_for_seed():
    pids = _pids()
    a = _take(PKSampler(pids, p=4, k=3, seed=5), 12)
    b = _take(PKSampler(pids, p=4, k=3, seed=5), 12)
    c = _take(PKSampler(pids, p=4, k=3, seed=6), 12)
    assert a == b
    assert a != c


def test_two_ranks_disjoint_and_match_single_rank():
    pids = _pids()
    p, k = 3, 2
    r0 = PKSampler(pids, p=p, k=k, seed=9, rank=0, world_size=2)
    r1 = PKSampler(pids, p=p, k=k, seed=9, rank=1, world_size=2)
    single = PKSampler(pids, p=2 * p, k=k, seed=9)
    assert r0.steps_per_epoch == r1.steps_per_epoch == 23 // 6 == single.steps_per_epoch
    n = 2 * r0.steps_per_epoch + 1
    for b0, b1, b in zip(_take(r0, n), _take(r1, n), _take(single, n)):
        ids0 = {pids[i] for i in b0}
        ids1 = {pids[i] for i in b1}
        assert len(ids0) == p and len(ids1) == p
        assert not ids0 & ids1  # no identity on two ranks in the same step
        assert b0 + b1 == b  # the ranks together are the 1-rank batch with p * 2 ids


def test_resume_exact():
    pids = _pids()
    s = PKSampler(pids, p=4, k=3, seed=2)
    n, m = 7, 9  # crosses the epoch boundary (steps_per_epoch = 5)
    it = iter(s)
    _ = list(islice(it, n))
    state = s.state_dict()
    assert state == {"epoch": 1, "step": 2, "seed": 2}
    expected = list(islice(it, m))

    fresh = PKSampler(pids, p=4, k=3, seed=2)
    fresh.load_state_dict(state)
    assert _take(fresh, m) == expected
    assert s.state_after(n) == state

    other = PKSampler(pids, p=4, k=3, seed=2)
    other.load_state_dict(other.state_after(n + 3))
    assert _take(other, m - 3) == expected[3:]


def test_load_state_errors():
    s = PKSampler(_pids(), p=4, k=3, seed=2)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({"epoch": 0, "step": 0, "seed": 3})
    with pytest.raises(ValueError, match="steps_per_epoch"):
        s.load_state_dict({"epoch": 0, "step": s.steps_per_epoch, "seed": 2})
    with pytest.raises(ValueError, match="missing"):
        s.load_state_dict({"epoch": 0})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pids": [], "p": 1, "k": 1}, "non-empty"),
        ({"p": 0, "k": 1}, "p must be >= 1"),
        ({"p": 1, "k": 0}, "k must be >= 1"),
        ({"p": 1, "k": 1, "rank": 2, "world_size": 2}, "rank must be in"),
        ({"p": 1, "k": 1, "rank": -1}, "rank must be >= 0"),
        ({"p": 1, "k": 1, "world_size": 0}, "world_size"),
        ({"p": 1, "k": 1, "seed": -1}, "seed"),
        ({"p": 12, "k": 1, "world_size": 2}, r"at least p \* world_size = 12 \* 2 = 24 .* got 23"),
        ({"pids": [0.5, 1.5], "p": 1, "k": 1}, "ints"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = {"pids": _pids(), "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        PKSampler(**args)
