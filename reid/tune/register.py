"""The best trial's model: scored with the ``eval`` settings and registered as ``reid-<dataset>``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from reid.tune.search import TrialOutcome
from reid.tune.trial import load_trial_model


def register_best(best: TrialOutcome, run_id: str, tracking_uri: str, experiment: str, registered_name: str,
                  tags: dict[str, str],
                  evaluate: Optional[Callable[[object, dict], dict[str, float]]] = None) -> tuple[str, str]:
    """Log the best trial's model (its last checkpoint) to its MLflow child run and register it.

    Args:
        best: the best trial (with a checkpoint).
        run_id: its MLflow child run.
        tracking_uri, experiment: MLflow tracking URI and experiment.
        registered_name: e.g. ``reid-msmt17``; the model becomes a new version of it.
        tags: set on the model version (e.g. ``search``, ``trial``, the metric's value).
        evaluate: ``(module, meta) -> {metric name: value}``, logged to the run first (the full
            protocol scores, as ``pipeline.evaluate`` logs them for a trained model).

    Returns:
        ``(model URI, registered version)``.

    Raises:
        ValueError: the trial has no checkpoint.
    """
    from mlflow.tracking import MlflowClient

    from reid.tracking.mlflow_run import MlflowRun

    if best.checkpoint is None:
        raise ValueError(f"trial {best.trial_id}: no checkpoint to register")
    with best.checkpoint.as_directory() as d:
        model, meta = load_trial_model(Path(d))
    run = MlflowRun(tracking_uri, experiment, run_id=run_id)
    try:
        if evaluate is not None:
            run.log_metrics(evaluate(model, meta))
        model_uri = run.log_model(model, meta, registered_name)
    finally:
        run.end()
    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name = '{registered_name}' and run_id = '{run_id}'")
    version = max(versions, key=lambda v: int(v.version)).version
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, str(value))
    return model_uri, str(version)
