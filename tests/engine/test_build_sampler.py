"""``sampler.kind`` picks the training sampler."""

import pytest

from reid.data.samplers import HierarchicalSampler, PKSampler
from reid.engine.trainer import batch_size, build_sampler
from reid.params import SamplerParams


class _Index:
    """The part of ShardsIndex that build_sampler reads: labels per key."""

    def __init__(self, rows):
        self.rows = rows

    def labels(self, key):
        pid, camid, model_id = self.rows[key]
        return {"pid": pid, "camid": camid, "model_id": model_id}


# 4 vehicle models x 3 vehicles x 2 images; camera = image number
ROWS = {f"k{m}{v}{i}": (m * 3 + v, i, m) for m in range(4) for v in range(3) for i in range(2)}
KEYS = list(ROWS)
LABELS = [ROWS[k][0] for k in KEYS]


def test_pk_and_hierarchical():
    pk = SamplerParams(p=4, k=2)
    s = build_sampler(pk, _Index(ROWS), KEYS, LABELS, seed=0, rank=0, world_size=1)
    assert isinstance(s, PKSampler) and s.batch_size == batch_size(pk) == 8
    hier = SamplerParams(kind="hierarchical", p=4, k=2, m=2, v=3)
    s = build_sampler(hier, _Index(ROWS), KEYS, LABELS, seed=0, rank=0, world_size=1)
    assert isinstance(s, HierarchicalSampler) and s.batch_size == batch_size(hier) == 12
    batch = s.batch(0, 0)
    models = [ROWS[KEYS[i]][2] for i in batch]
    assert len(set(models)) == 2 and all(models.count(m) == 6 for m in set(models))


def test_cross_camera_is_passed_on():
    sp = SamplerParams(p=4, k=2, cross_camera=True)
    s = build_sampler(sp, _Index(ROWS), KEYS, LABELS, seed=0, rank=0, world_size=1)
    for step in range(s.steps_per_epoch):
        batch = s.batch(0, step)
        for j in range(0, len(batch), 2):
            assert {ROWS[KEYS[i]][1] for i in batch[j:j + 2]} == {0, 1}  # the two cameras


def test_hierarchical_needs_model_ids():
    rows = {k: (pid, cam, -1) for k, (pid, cam, _) in ROWS.items()}
    with pytest.raises(ValueError):
        build_sampler(SamplerParams(kind="hierarchical", p=4, k=2, m=2, v=3), _Index(rows), KEYS, LABELS, 0, 0, 1)
