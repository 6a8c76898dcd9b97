"""Search spaces: ``tune.space`` distributions to Ray Tune domains, and sampled configs back to params.

A trial's config is flat, keyed by dotted params keys (``{"loss.triplet.margin": 0.27,
"optim.lr": 4e-4}``), so the same keys serve Ray, MLflow params, ``tune/best_params.yaml`` and
``dvc exp run -S key=value``.
"""

from __future__ import annotations

from typing import Mapping

from reid.params import Distribution, Params, TuneParams, deep_merge


def ray_domain(dist: Distribution):
    """The Ray Tune domain of one dimension (``tune.uniform``, ``tune.loguniform``, ``tune.randint``
    with its exclusive upper bound made inclusive, ``tune.choice``)."""
    from ray import tune

    if dist.type == "uniform":
        return tune.uniform(dist.low, dist.high)
    if dist.type == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if dist.type == "randint":
        return tune.randint(int(dist.low), int(dist.high) + 1)
    return tune.choice(list(dist.values))


def model_space(tune_params: TuneParams, model_name: str) -> dict[str, Distribution]:
    """``tune.space[model_name]``.

    Raises:
        KeyError: no search space for the model (names ``tune.space.<model>`` and those present).
    """
    if model_name not in tune_params.space:
        raise KeyError(f"params: tune.space.{model_name}: no search space for model.name = {model_name!r} "
                       f"(spaces exist for {sorted(tune_params.space)})")
    return dict(tune_params.space[model_name])


def nest(config: Mapping[str, object]) -> dict:
    """``{"a.b.c": v}`` -> ``{"a": {"b": {"c": v}}}``."""
    out: dict = {}
    for key, value in config.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply(params: Params, config: Mapping[str, object]) -> Params:
    """``params`` with the trial's sampled values put in (validated like ``params.yaml``).

    Raises:
        pydantic.ValidationError: a value the params schema rejects (names the dotted key).
    """
    return Params.model_validate(deep_merge(params.model_dump(), nest(config)))


def check_space(params: Params, space: Mapping[str, Distribution], points: list[dict]) -> None:
    """Fail before a search starts if a bound, a choice or a point to evaluate is not a valid
    value of its params key (each is put into the params alone and validated).

    Raises:
        ValueError: names ``tune.space.<model>.<key>`` (or ``tune.points_to_evaluate[i]``) and
            the validation message.
    """
    model = params.model.name
    for key, dist in space.items():
        for value in dist.candidates():
            try:
                apply(params, {key: value})
            except Exception as err:  # pydantic.ValidationError; its message names the field
                raise ValueError(f"tune.space.{model}.{key}: value {value!r} is not valid: {err}") from None
    for i, point in enumerate(points):
        if set(point) != set(space):
            raise ValueError(f"tune.points_to_evaluate[{i}]: a point gives a value for every key of tune.space.{model}: "
                             f"has {sorted(point)}, needs {sorted(space)}")
        try:
            apply(params, point)
        except Exception as err:
            raise ValueError(f"tune.points_to_evaluate[{i}]: not valid: {err}") from None
