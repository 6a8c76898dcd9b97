"""Tests for reid.data.samplers: PKSampler and HierarchicalSampler."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from reid.data.samplers import HierarchicalSampler, PKSampler


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


def test_three_ranks_disjoint_and_match_single_rank():
    pids = _pids()
    p, k, w = 2, 3, 3
    ranks = [PKSampler(pids, p=p, k=k, seed=4, rank=r, world_size=w) for r in range(w)]
    single = PKSampler(pids, p=p * w, k=k, seed=4)
    assert ranks[0].steps_per_epoch == 23 // 6 == single.steps_per_epoch
    n = 2 * single.steps_per_epoch + 1
    for step_batches, b in zip(zip(*[_take(r, n) for r in ranks]), _take(single, n)):
        ids = [{pids[i] for i in br} for br in step_batches]
        assert [len(x) for x in ids] == [p] * w
        assert len(set().union(*ids)) == p * w  # no identity on two ranks in the same step
        assert sum(step_batches, []) == b


def test_default_sequence_is_pinned():
    """The cross-camera option must not change the default draws (values recorded before it)."""
    pids = _pids()
    assert _take(PKSampler(pids, p=3, k=3, seed=7), 3) == [
        [50, 63, 58, 78, 15, 84, 44, 44, 44],
        [93, 17, 52, 66, 94, 77, 25, 98, 56],
        [64, 64, 82, 65, 65, 65, 34, 34, 36],
    ]
    assert PKSampler(pids, p=2, k=4, seed=1, rank=1, world_size=2).batch(2, 1) == [83, 101, 24, 97, 82, 82, 64, 64]
    # camids given but cross_camera off: the same draws
    cams = [i % 5 for i in range(len(pids))]
    assert _take(PKSampler(pids, p=3, k=3, seed=7, camids=cams), 3) == _take(PKSampler(pids, p=3, k=3, seed=7), 3)


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
        ({"p": 1, "k": 1, "cross_camera": True}, "needs camids"),
        ({"p": 1, "k": 1, "camids": [0, 1]}, "camids must have one entry per image: got 2, pids has 105"),
        ({"p": 1, "k": 1, "camids": [0.5] * 105}, "camids must be ints"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = {"pids": _pids(), "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        PKSampler(**args)


# -- cross-camera ------------------------------------------------------------------------------


def _camera_data():
    """(pids, camids), shuffled dataset order. Cameras per id (images per camera):
    10: 4 cameras (6, 1, 1, 1); 11: 3 cameras (2, 2, 2); 12: 2 cameras (3, 3);
    13: 1 camera (4); 14: 2 cameras (1, 1); 15: 1 image."""
    layout = {10: [6, 1, 1, 1], 11: [2, 2, 2], 12: [3, 3], 13: [4], 14: [1, 1], 15: [1]}
    rows = [(pid, 7 * c + 1) for pid, per_cam in layout.items() for c, n in enumerate(per_cam) for _ in range(n)]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i][0] for i in order], [rows[i][1] for i in order]


def test_cross_camera_covers_cameras():
    pids, cams = _camera_data()
    k = 3
    s = PKSampler(pids, p=3, k=k, seed=1, camids=cams, cross_camera=True)
    n_cams = {pid: len({c for p_, c in zip(pids, cams) if p_ == pid}) for pid in set(pids)}
    n_imgs = {pid: pids.count(pid) for pid in set(pids)}
    seen = set()
    cams_used = {pid: set() for pid in n_imgs}  # over all batches
    twice = set()  # id 12: the camera that gives 2 of the 3 images
    for batch in _take(s, 40 * s.steps_per_epoch):
        for g in _groups(batch, k):
            (pid,) = {pids[i] for i in g}
            seen.add(pid)
            got = [cams[i] for i in g]
            cams_used[pid] |= set(got)
            twice |= {c for c in got if pid == 12 and got.count(c) == 2}
            if n_imgs[pid] >= k:
                assert len(set(g)) == k  # distinct images
            assert len(set(got)) == min(k, n_cams[pid])  # distinct cameras, or all of them
            if pid == 12:  # 2 cameras, 3 images: 2 + 1
                assert sorted(got.count(c) for c in set(got)) == [1, 2]
            if pid == 14:  # 2 images < K: both images, one twice
                assert len(set(g)) == 2
            if pid == 15:
                assert len(set(g)) == 1
    assert seen == set(n_imgs)
    # the cameras are shuffled per draw: id 10's K=3 of 4 cameras vary, so all 4 get used
    assert {pid: len(c) for pid, c in cams_used.items()} == n_cams
    assert twice == {1, 8}
    # and the images within a camera are shuffled: all 6 of id 10's camera-1 images get drawn
    used = {i for b in _take(s, 40 * s.steps_per_epoch) for i in b if pids[i] == 10 and cams[i] == 1}
    assert len(used) == 6


def test_cross_camera_sequence_is_pinned():
    """Regression pin of the documented cross-camera rule (values recorded from it), so that a
    checkpoint resumes to the same sequence across code versions."""
    pids, cams = _camera_data()
    assert _take(PKSampler(pids, p=3, k=3, seed=2, camids=cams, cross_camera=True), 2) == [
        [9, 25, 22, 4, 4, 4, 8, 0, 20],
        [6, 24, 6, 18, 7, 13, 3, 17, 2],
    ]
    # K=5 > images of ids 13 (4), 14 (2), 15 (1): repeats come from fresh passes, each pass
    # holding every image of the id once
    s5 = PKSampler(pids, p=6, k=5, seed=0, camids=cams, cross_camera=True)
    b = s5.batch(0, 0)
    assert b == [25, 22, 9, 11, 22, 14, 20, 16, 27, 0, 4, 4, 4, 4, 4, 24, 6, 6, 24, 24,
                 18, 26, 7, 12, 13, 2, 21, 3, 23, 17]
    assert [pids[i] for i in b[::5]] == [13, 12, 15, 14, 10, 11]
    assert sorted(b[0:4]) == [9, 11, 22, 25] and sorted(b[15:17]) == sorted(b[17:19]) == [6, 24]
    pids, models, cams = _vehicles()
    s = HierarchicalSampler(pids, models, m=2, v=3, k=2, seed=2, camids=cams, cross_camera=True,
                            shortfall="replace")
    assert _take(s, 2) == [
        [34, 52, 44, 18, 50, 50, 49, 49, 57, 17, 53, 4],
        [54, 37, 31, 48, 64, 8, 21, 15, 15, 21, 15, 21],
    ]
    assert _take(HierarchicalSampler(pids, models, m=1, v=2, k=2, seed=2), 3) == [
        [53, 5, 57, 17], [62, 47, 46, 27], [59, 12, 16, 0],
    ]


def test_without_cross_camera_cameras_repeat():
    """The control for the test above: plain draws put id 10's K images on one camera often."""
    pids, cams = _camera_data()
    s = PKSampler(pids, p=3, k=3, seed=1, camids=cams)
    spans = [len({cams[i] for i in g}) for b in _take(s, 40) for g in _groups(b, 3) if pids[g[0]] == 10]
    assert spans and min(spans) < 3


def test_cross_camera_deterministic_and_resumes():
    pids, cams = _camera_data()
    a = PKSampler(pids, p=2, k=3, seed=5, camids=cams, cross_camera=True)
    b = PKSampler(pids, p=2, k=3, seed=5, camids=cams, cross_camera=True)
    c = PKSampler(pids, p=2, k=3, seed=6, camids=cams, cross_camera=True)
    first = _take(a, 10)
    assert first == _take(b, 10)
    assert first != _take(c, 10)
    r = PKSampler(pids, p=2, k=3, seed=5, camids=cams, cross_camera=True)
    r.load_state_dict(a.state_after(4))
    assert _take(r, 6) == first[4:]


# -- hierarchical (TAMR) -----------------------------------------------------------------------


def _vehicles(seed: int = 0):
    """(pids, model_ids, camids), shuffled dataset order.

    Model ``j`` (id ``100 + 5*j``, j = 0..8) has ``1 + j % 5`` vehicles; vehicle ``i`` of it (pid
    ``1000 + 10*j + i``) has ``1 + (i + j) % 4`` images, image ``n`` on camera ``(n + i) % 3``.
    Plus vehicle 9000 with 5 images of unknown model (-1), and one extra image of vehicle 1010
    with model -1. With v=2, k=2, shortfall="drop": models j = 1, 2, 3, 4, 6, 7, 8 are eligible
    (7 models, 2+2+3+3+2+2+3 = 17 vehicles); with "replace": all 9 models, 25 vehicles.
    """
    rows = []
    for j in range(9):
        for i in range(1 + j % 5):
            rows += [(1000 + 10 * j + i, 100 + 5 * j, (n + i) % 3) for n in range(1 + (i + j) % 4)]
    rows += [(9000, -1, n % 3) for n in range(5)] + [(1010, -1, 0)]
    order = np.random.default_rng(seed).permutation(len(rows))
    return tuple([int(rows[i][c]) for i in order] for c in range(3))


def _hier_groups(batch, pids, models, m, v, k):
    """Check the model-major, vehicle-major layout; return [(model, [vehicle, ...]), ...]."""
    assert len(batch) == m * v * k
    assert len(batch) % (v * k) == 0
    out = []
    for chunk in [batch[i: i + v * k] for i in range(0, len(batch), v * k)]:
        (model,) = {models[i] for i in chunk}  # a model's images are consecutive
        vehicles = []
        for g in _groups(chunk, k):
            (vid,) = {pids[i] for i in g}  # a vehicle's K images are consecutive and its own
            vehicles.append(vid)
        out.append((model, vehicles))
    return out


def test_hierarchical_batch_structure():
    pids, models, _ = _vehicles()
    m, v, k = 2, 2, 2
    s = HierarchicalSampler(pids, models, m=m, v=v, k=k, seed=3)
    assert (s.num_models, s.num_vehicles, s.steps_per_epoch, s.batch_size) == (7, 17, 3, 8)
    eligible = {105, 110, 115, 120, 130, 135, 140}
    for batch in _take(s, 4 * s.steps_per_epoch):
        groups = _hier_groups(batch, pids, models, m, v, k)
        assert len({model for model, _ in groups}) == m  # m distinct models
        for model, vehicles in groups:
            assert model in eligible
            assert len(set(vehicles)) == v  # V distinct vehicles of each model
        for i in batch:
            assert models[i] >= 0  # unknown-model rows are never sampled
        for g in _groups(batch, k):
            assert len(set(g)) == k  # drop: every vehicle has >= K images, drawn without repeats


def test_hierarchical_tamr_shape_is_multiple_of_6():
    pids, models, _ = _vehicles()
    s = HierarchicalSampler(pids, models, m=3, v=3, k=2, seed=0, shortfall="replace")
    assert s.batch_size == 18
    for batch in _take(s, 5):
        assert len(batch) % 6 == 0
        _hier_groups(batch, pids, models, 3, 3, 2)


def test_hierarchical_exact_small():
    """Two models with exactly V vehicles of exactly K images: each batch is one model's rows."""
    pids = [1, 1, 2, 2, 3, 3, 4, 4]
    models = [7, 7, 7, 7, 8, 8, 8, 8]
    s = HierarchicalSampler(pids, models, m=1, v=2, k=2, seed=0)
    assert s.steps_per_epoch == 2
    epoch = _take(s, 2)
    assert sorted(map(sorted, epoch)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_hierarchical_epoch_covers_distinct_models():
    pids, models, _ = _vehicles()
    s = HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=8)
    per_epoch = []
    for e in range(3):
        seen = [models[b[i]] for b in _take(s, s.steps_per_epoch) for i in range(0, len(b), 4)]
        assert len(seen) == 6 and len(set(seen)) == 6  # no model twice in an epoch
        assert s.state_dict() == {"epoch": e + 1, "step": 0, "seed": 8}
        per_epoch.append(seen)
    assert per_epoch[0] != per_epoch[1]


def test_hierarchical_deterministic_for_seed():
    pids, models, _ = _vehicles()
    a = _take(HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=5), 9)
    b = _take(HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=5), 9)
    c = _take(HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=6), 9)
    assert a == b
    assert a != c


@pytest.mark.parametrize("world_size", [2, 3])
def test_hierarchical_ranks_disjoint_and_match_single_rank(world_size):
    pids, models, _ = _vehicles()
    m, v, k = 1, 2, 2
    ranks = [HierarchicalSampler(pids, models, m=m, v=v, k=k, seed=9, rank=r, world_size=world_size)
             for r in range(world_size)]
    single = HierarchicalSampler(pids, models, m=m * world_size, v=v, k=k, seed=9)
    assert ranks[0].steps_per_epoch == 7 // world_size == single.steps_per_epoch
    n = 3 * single.steps_per_epoch + 1
    for step_batches, b in zip(zip(*[_take(r, n) for r in ranks]), _take(single, n)):
        rank_models = [{models[i] for i in br} for br in step_batches]
        rank_vehicles = [{pids[i] for i in br} for br in step_batches]
        assert [len(x) for x in rank_models] == [m] * world_size
        assert len(set().union(*rank_models)) == m * world_size  # no model on two ranks
        assert len(set().union(*rank_vehicles)) == sum(map(len, rank_vehicles))  # nor vehicle
        assert sum(step_batches, []) == b  # the ranks together are the 1-rank batch


def test_hierarchical_resume_exact():
    pids, models, _ = _vehicles()
    s = HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=2)
    it = iter(s)
    _ = list(islice(it, 4))  # steps_per_epoch = 3
    state = s.state_dict()
    assert state == {"epoch": 1, "step": 1, "seed": 2}
    expected = list(islice(it, 7))
    fresh = HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=2)
    fresh.load_state_dict(state)
    assert _take(fresh, 7) == expected
    assert s.state_after(4) == state
    other = HierarchicalSampler(pids, models, m=2, v=2, k=2, seed=2)
    other.load_state_dict(other.state_after(6))
    assert _take(other, 5) == expected[2:]
    with pytest.raises(ValueError, match="HierarchicalSampler state has seed 3"):
        other.load_state_dict({"epoch": 0, "step": 0, "seed": 3})
    with pytest.raises(ValueError, match="steps_per_epoch=3"):
        other.load_state_dict({"epoch": 0, "step": 3, "seed": 2})


def _shortfall_data():
    """Model 10: vehicles 1 (3 images), 2 (2), 3 (1). Model 20: vehicles 4 (2), 5 (1).
    Model 30: vehicles 6 (2), 7 (2), 8 (5). Model 40: vehicle 9 (4). Vehicle 99 (6 images): model -1."""
    counts = {(10, 1): 3, (10, 2): 2, (10, 3): 1, (20, 4): 2, (20, 5): 1,
              (30, 6): 2, (30, 7): 2, (30, 8): 5, (40, 9): 4, (-1, 99): 6}
    rows = [(vid, model) for (model, vid), n in counts.items() for _ in range(n)]
    order = np.random.default_rng(1).permutation(len(rows))
    return [rows[i][0] for i in order], [rows[i][1] for i in order]


def _vehicles_seen(sampler, pids, n_batches):
    return {pids[i] for b in _take(sampler, n_batches) for i in b}


def test_shortfall_drop():
    pids, models = _shortfall_data()
    s = HierarchicalSampler(pids, models, m=1, v=2, k=2, seed=0, shortfall="drop")
    # vehicles 3 and 5 dropped (< 2 images); then model 20 has 1 vehicle and model 40 has 1: dropped
    assert (s.num_models, s.num_vehicles, s.steps_per_epoch) == (2, 5, 2)
    assert _vehicles_seen(s, pids, 40) == {1, 2, 6, 7, 8}
    for batch in _take(s, 20):
        (model, vehicles), = _hier_groups(batch, pids, models, 1, 2, 2)
        assert len(set(vehicles)) == 2 and len(set(batch)) == 4  # no repeats at all
    # with v=3 only model 30 is left; m=2 is then too many
    assert HierarchicalSampler(pids, models, m=1, v=3, k=2, seed=0).num_models == 1
    with pytest.raises(ValueError, match=r"m \* world_size = 2 \* 1 = 2 eligible models, got 1 \(of 4"):
        HierarchicalSampler(pids, models, m=2, v=3, k=2, seed=0)


def test_shortfall_replace():
    pids, models = _shortfall_data()
    s = HierarchicalSampler(pids, models, m=1, v=2, k=2, seed=0, shortfall="replace")
    assert (s.num_models, s.num_vehicles, s.steps_per_epoch) == (4, 9, 4)
    assert _vehicles_seen(s, pids, 80) == set(range(1, 10))  # 99 (unknown model) never
    img_of = {vid: [i for i, p in enumerate(pids) if p == vid] for vid in set(pids)}
    for batch in _take(s, 40):
        (model, vehicles), = _hier_groups(batch, pids, models, 1, 2, 2)
        if model == 40:
            assert vehicles == [9, 9]  # one vehicle fills both slots
        if model == 20:
            assert sorted(vehicles) == [4, 5]  # 2 vehicles for 2 slots: each once
        for vid, g in zip(vehicles, _groups(batch, 2)):
            if vid in (3, 5):
                assert g == img_of[vid] * 2  # one image, drawn twice
            else:
                assert len(set(g)) == 2
    # v=3: model 20 (2 vehicles) uses both, one of them twice; model 40 uses vehicle 9 thrice
    s3 = HierarchicalSampler(pids, models, m=4, v=3, k=2, seed=4, shortfall="replace")
    for batch in _take(s3, 5):
        got = dict(_hier_groups(batch, pids, models, 4, 3, 2))
        assert sorted(set(got[20])) == [4, 5]
        assert got[40] == [9, 9, 9]
        assert sorted(got[10]) == [1, 2, 3] and sorted(got[30]) == [6, 7, 8]


def test_hierarchical_cross_camera():
    pids, models, cams = _vehicles()
    k = 2
    s = HierarchicalSampler(pids, models, m=2, v=2, k=k, seed=1, camids=cams, cross_camera=True,
                            shortfall="replace")
    n_cams = {pid: len({c for p_, c in zip(pids, cams) if p_ == pid}) for pid in set(pids)}
    checked = 0
    for batch in _take(s, 60):
        for g in _groups(batch, k):
            assert len({cams[i] for i in g}) == min(k, n_cams[pids[g[0]]])
            checked += n_cams[pids[g[0]]] >= k
    assert checked > 50
    plain = HierarchicalSampler(pids, models, m=2, v=2, k=k, seed=1, camids=cams, shortfall="replace")
    assert _take(plain, 5) == _take(HierarchicalSampler(pids, models, m=2, v=2, k=k, seed=1, shortfall="replace"), 5)
    assert _take(plain, 5) != _take(s, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model_ids": [1, 2]}, "model_ids must have one entry per image: got 2, pids has 67"),
        ({"model_ids": []}, "model_ids must be a non-empty"),
        ({"pids": [1.5] * 67}, "pids must be ints"),
        ({"shortfall": "pad"}, r"shortfall must be one of \('drop', 'replace'\), got 'pad'"),
        ({"v": 0}, "v must be >= 1"),
        ({"m": 0}, "m must be >= 1"),
        ({"k": 0}, "k must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"rank": 3, "world_size": 3}, r"rank must be in \[0, 3\)"),
        ({"cross_camera": True}, "cross_camera=True needs camids"),
        ({"camids": [0] * 66}, "camids must have one entry per image: got 66"),
        ({"m": 4, "world_size": 2}, r"m \* world_size = 4 \* 2 = 8 eligible models, got 7 \(of 9 .*'drop'"),
        ({"model_ids": [-1] * 67}, r"no rows with a known model_id"),
    ],
)
def test_hierarchical_invalid_arguments(kwargs, match):
    pids, models, _ = _vehicles()
    args = {"pids": pids, "model_ids": models, "m": 1, "v": 2, "k": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        HierarchicalSampler(**args)


def test_hierarchical_vehicle_with_two_models():
    with pytest.raises(ValueError, match=r"vehicle 2 has more than one model_id \(\[7, 8\]\)"):
        HierarchicalSampler([1, 1, 2, 2, 2], [7, 7, 7, 8, 8], m=1, v=1, k=1, seed=0)
    # an unknown-model row does not count as a second model
    s = HierarchicalSampler([1, 1, 2, 2, 2], [7, 7, 8, 8, -1], m=2, v=1, k=2, seed=0)
    assert (s.num_models, s.num_vehicles) == (2, 2)
    assert sorted(next(iter(s))) == [0, 1, 2, 3]
