"""Search-space params: validation, Ray domains, sampled configs put back into params."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from reid.params import Distribution, ParamsError, load_params
from reid.tune.space import apply, check_space, model_space, nest, ray_domain

REPO = Path(__file__).resolve().parents[2]


def _params(tmp_path, mutate=lambda raw: None):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_every_model_in_the_registry_has_a_space_of_real_params_keys():
    from reid.models import available

    p = load_params(REPO / "params.yaml")
    assert set(p.tune.space) == set(available())
    for model in p.tune.space:
        check_space(p, model_space(p.tune, model), [])


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["tune"]["space"]["resnet_bnneck"].update({"loss.triplet.margn": {"type": "uniform", "low": 0, "high": 1}}),
     "tune.space.resnet_bnneck: 'loss.triplet.margn' is not a params key"),
    (lambda r: r["tune"].update(dataset="market"), "tune.dataset: 'market' is not a key of datasets"),
    (lambda r: r["tune"]["space"]["resnet_bnneck"].update({"optim.lr": {"type": "loguniform", "low": 0, "high": 1}}),
     "loguniform needs low > 0"),
    (lambda r: r["tune"]["space"]["resnet_bnneck"].update({"optim.lr": {"type": "uniform", "low": 2, "high": 1}}),
     "low must be below high"),
    (lambda r: r["tune"]["space"]["resnet_bnneck"].update({"optim.lr": {"type": "choice", "low": 1, "values": [1]}}),
     "type choice takes a non-empty `values` list"),
    (lambda r: r["tune"].update(points_to_evaluate=[{"optim.lrr": 0.1}]), "points_to_evaluate[0]: 'optim.lrr'"),
    (lambda r: r["tune"]["scheduler"].update(grace_period=20), "grace_period (20) must be <= max_epochs (12)"),
    (lambda r: r["tune"].update(nme="x"), "tune.nme"),
])
def test_bad_tune_params_are_named(tmp_path, mutate, message):
    with pytest.raises(ParamsError) as err:
        _params(tmp_path, mutate)
    assert message in str(err.value)


def test_ray_domains_cover_exactly_the_declared_ranges():
    rng_samples = lambda d, n=2000: np.array([ray_domain(d).sample() for _ in range(n)])  # noqa: E731
    u = rng_samples(Distribution(type="uniform", low=0.1, high=0.6))
    assert u.min() >= 0.1 and u.max() <= 0.6 and u.max() - u.min() > 0.45
    lu = rng_samples(Distribution(type="loguniform", low=1e-4, high=1e-2))
    assert lu.min() >= 1e-4 and lu.max() <= 1e-2
    # log-uniform: half the mass below the geometric mean 1e-3
    assert 0.4 < np.mean(lu < 1e-3) < 0.6
    ri = rng_samples(Distribution(type="randint", low=1, high=3), 300)
    assert set(ri.tolist()) == {1, 2, 3}  # high is included (Ray's randint excludes it)
    ch = rng_samples(Distribution(type="choice", values=[3, 50]), 200)
    assert set(ch.tolist()) == {3, 50}


def test_sampled_config_goes_into_the_nested_params():
    assert nest({"a.b.c": 1, "a.b.d": 2, "e": 3}) == {"a": {"b": {"c": 1, "d": 2}}, "e": 3}
    p = load_params(REPO / "params.yaml")
    q = apply(p, {"loss.triplet.margin": 0.42, "optim.lr": 5e-4, "loss.mgr_fine.k": 4})
    assert (q.loss.triplet.margin, q.optim.lr, q.loss.model_extra["mgr_fine"].k) == (0.42, 5e-4, 4)
    assert q.loss.ce == p.loss.ce and q.model == p.model  # everything else unchanged
    with pytest.raises(Exception, match="epsilon"):
        apply(p, {"loss.ce.epsilon": 1.5})


def test_check_space_rejects_values_params_reject_and_incomplete_points():
    p = load_params(REPO / "params.yaml")
    bad = {"loss.ce.epsilon": Distribution(type="uniform", low=0.0, high=1.5)}
    with pytest.raises(ValueError, match=r"tune.space.resnet_bnneck.loss.ce.epsilon: value 1.5 is not valid"):
        check_space(p, bad, [])
    space = {"optim.lr": Distribution(type="loguniform", low=1e-4, high=1e-3),
             "loss.triplet.margin": Distribution(type="uniform", low=0.1, high=0.5)}
    check_space(p, space, [{"optim.lr": 3e-4, "loss.triplet.margin": 0.3}])
    with pytest.raises(ValueError, match=r"points_to_evaluate\[0\]: a point gives a value for every key"):
        check_space(p, space, [{"optim.lr": 3e-4}])
    with pytest.raises(ValueError, match=r"points_to_evaluate\[1\]: not valid"):
        check_space(p, space, [{"optim.lr": 3e-4, "loss.triplet.margin": 0.3},
                               {"optim.lr": -1.0, "loss.triplet.margin": 0.3}])
    with pytest.raises(KeyError, match="tune.space.nomodel"):
        model_space(p.tune, "nomodel")
