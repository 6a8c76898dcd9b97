from pathlib import Path

import pytest
import yaml

from reid.params import ParamsError, flatten, load_params

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, mutate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert set(p.datasets) == {"msmt17", "vehicle1m"}
    v = p.dataset("vehicle1m")
    assert (v.test_sets, v.num_draws, v.gallery_seed) == (None, 10, 0)


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["sampler"].update(q=1), "sampler.q"),
    (lambda r: r["datasets"]["msmt17"].update(rooot="x"), "datasets.msmt17.rooot"),
    (lambda r: r.update(extra_section={}), "extra_section"),
    (lambda r: r["engine"].update(zero_stage=3), "engine.zero_stage"),
    (lambda r: r["loss"]["ce"].pop("epsilon"), "loss.ce.epsilon"),
    (lambda r: r["datasets"]["vehicle1m"].update(test_set="test_1000"), "datasets.vehicle1m.test_set"),
    (lambda r: r["datasets"]["vehicle1m"].update(num_draws=0), "datasets.vehicle1m.num_draws"),
    (lambda r: r["datasets"]["msmt17"].update(val="keep"), "datasets.msmt17.val"),
    (lambda r: r["shard"].update(workers=0), "shard.workers"),
    (lambda r: r["shard"].update(workers=True), "shard.workers"),
    (lambda r: r["shard"].update(workers="2"), "shard.workers"),
])
def test_bad_params_name_file_and_key(tmp_path, mutate, key):
    path = _write(tmp_path, mutate)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_shard_workers(tmp_path):
    assert load_params(REPO / "params.yaml").shard.workers == 2
    assert load_params(_write(tmp_path, lambda r: r["shard"].pop("workers"))).shard.workers == 2  # default
    with pytest.raises(ParamsError, match=r"shard\.workers: .*must be an int >= 1 .*got 0"):
        load_params(_write(tmp_path, lambda r: r["shard"].update(workers=0)))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_unknown_dataset_lists_known():
    with pytest.raises(KeyError, match="msmt17"):
        load_params(REPO / "params.yaml").dataset("market")


def test_overrides_merge_deeply():
    p = load_params(REPO / "params.yaml", overrides={"loss": {"triplet": {"margin": 0.5}}})
    assert p.loss.triplet.margin == 0.5 and p.loss.triplet.weight == 1.0


def test_flatten():
    assert flatten({"a": {"b": 1, "c": (1, 2)}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}
