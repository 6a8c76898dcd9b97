"""MLflow tracking: one run per dataset that ``train`` opens and ``evaluate`` resumes.

The default store is local sqlite (``sqlite:///mlflow.db``), so
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: Optional[str]) -> str:
    """The tracking URI: ``configured`` if set, else ``$MLFLOW_TRACKING_URI``, else local sqlite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class MlflowRun:
    """A started (or resumed) MLflow run.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: experiment name (created if missing).
        run_name: name of a new run (ignored when ``run_id`` is given).
        run_id: resume this run instead of starting one.
        tags: tags set on the run.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: Optional[str] = None,
                 run_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None):
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=dict(tags or {}))

    @property
    def run_id(self) -> str:
        return self._run.info.run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log flat params (values are stringified by MLflow)."""
        self._mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Log numeric metrics; MLflow metric names may not contain ``/`` on every store, so they become ``.``."""
        self._mlflow.log_metrics({k.replace("/", "."): float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(self, module, meta: Mapping, registered_name: Optional[str]) -> Optional[str]:
        """Log a PyTorch model (with the ``reid`` package as code) and optionally register it.

        ``meta`` (architecture, input size, normalisation) is stored as the model's metadata so
        that ``pipeline.evaluate --model models:/<name>/<version>`` can rebuild the input
        transform. Returns the model URI.
        """
        import reid

        info = self._mlflow.pytorch.log_model(
            module, name="model", registered_model_name=registered_name, metadata=dict(meta),
            # pickle keeps the registry class (train/eval modes, dict outputs); reid/ travels as code.
            serialization_format="pickle",
            code_paths=[str(Path(reid.__file__).parent)],
            pip_requirements=["torch==2.15.0", "torchvision==0.29.2"],
        )
        return info.model_uri

    def end(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


def load_logged_model(model_uri: str):
    """Load a model logged by :meth:`MlflowRun.log_model`: ``(module in eval mode on CPU, meta)``.

    Raises:
        mlflow.exceptions.MlflowException: unknown URI.
    """
    import mlflow

    meta = mlflow.models.get_model_info(model_uri).metadata or {}
    module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return module.eval(), meta
