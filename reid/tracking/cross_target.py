"""The model that ``pipeline.evaluate``'s cross-dataset mode scores, and the MLflow run its scores go to.

A model is given as a local run folder / ``model.pt`` path, or as an MLflow model URI. Registry and
run URIs (``models:/...``, ``runs:/...``) have a source run, which receives the scores as
``cross.<name>.<set>.<metric>`` (:func:`reid.tracking.compare.log_cross_metrics`); ``<name>`` is
``--name`` or, by default, the folder name of the evaluated dataset's root. Everything that can be
wrong with the name or the URI is checked by :func:`resolve_cross_target` before anything is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from reid.tracking.compare import CompareError, check_target_name, is_mlflow_model_uri, log_cross_metrics

__all__ = ["CrossTarget", "cross_target_name", "resolve_cross_target"]


def cross_target_name(model: str, root: Union[str, Path], name: Optional[str], local: bool) -> Optional[str]:
    """The ``<name>`` of the ``cross.<name>.*`` metrics for ``model`` scored on ``root``, or None
    when ``model`` has no source run to log them into.

    Args:
        model: the model reference as the user gave it (path or URI).
        root: the evaluated dataset's root folder (its folder name is the default name).
        name: the name asked for (``--name``), or None.
        local: whether ``model`` is a local path.

    Raises:
        CompareError: a name asked for a local path or for an MLflow URI without a source run
            (anything but ``models:/`` and ``runs:/``), or a name :func:`check_target_name` rejects
            (the message says where the name came from).
    """
    if local:
        if name is not None:
            raise CompareError(f"--name names the scores logged into an MLflow model's source run; "
                               f"{model} is a local path")
        return None
    if not is_mlflow_model_uri(model):
        if name is not None:
            raise CompareError(f"--name applies to models:/ and runs:/ URIs only, not {model}")
        return None
    if name is not None:
        try:
            return check_target_name(name)
        except CompareError as err:
            raise CompareError(f"--name: {err}") from None
    try:
        return check_target_name(Path(root).resolve().name)
    except CompareError as err:
        raise CompareError(f"{err}: it is the folder name of --root {root}; pass --name") from None


@dataclass(frozen=True)
class CrossTarget:
    """A loaded model to score on another dataset, and where its scores are logged.

    Attributes:
        module: the model, in eval mode on the CPU (``(B, 3, H, W) float32`` normalised images ->
            embeddings, as every zoo model).
        meta: its ``model.json`` metadata (architecture, input size, normalisation).
        source_run: the MLflow run that logged it (``models:/`` and ``runs:/`` URIs), else None.
        name: the ``<name>`` of the ``cross.<name>.*`` metrics (None without a source run).
        tracking_uri: the MLflow tracking URI the model was read from (None for a local path).
    """

    module: Any
    meta: dict
    source_run: Optional[str] = None
    name: Optional[str] = None
    tracking_uri: Optional[str] = None

    def log(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Log ``{"<set>.<metric>": value}`` into the source run as ``cross.<name>.<set>.<metric>``;
        returns what was logged (nothing without a source run).

        Raises:
            mlflow.exceptions.MlflowException: the tracking server rejects the metrics.
        """
        if self.source_run is None:
            return {}
        return log_cross_metrics(self.tracking_uri, self.source_run, self.name, metrics)


def resolve_cross_target(model: str, root: Union[str, Path], name: Optional[str], tracking_uri: str) -> CrossTarget:
    """Load ``model`` for cross-dataset scoring on ``root`` and find the run its scores go to.

    Args:
        model: a run folder or ``model.pt`` path (an existing path), else an MLflow model URI
            (``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``runs:/<run id>/model``,
            or any URI ``mlflow.pytorch.load_model`` reads).
        root: the evaluated dataset's root folder.
        name: ``--name`` (see :func:`cross_target_name`), or None.
        tracking_uri: the MLflow tracking URI for URIs (``reid.tracking.mlflow_run.resolve_tracking_uri``).

    Raises:
        CompareError: a bad name (:func:`cross_target_name`, checked first), a registered model
            without a source run, or a model, version or alias MLflow does not know (the message
            starts with ``model``).
        FileNotFoundError: a local path without ``model.json`` / ``model.pt`` beside it;
        RuntimeError: weights that do not match the architecture (``reid.engine.trainer.load_model``).
        mlflow.exceptions.MlflowException: an MLflow URI that cannot be loaded.
    """
    from reid.engine.trainer import load_model

    path = Path(model)
    target_name = cross_target_name(model, root, name, local=path.exists())
    if path.exists():
        module, meta = load_model(path if path.is_dir() else path.parent)
        return CrossTarget(module, meta)

    import mlflow

    from reid.tracking.compare import model_source_run
    from reid.tracking.mlflow_run import load_logged_model

    mlflow.set_tracking_uri(tracking_uri)
    source_run = None
    if target_name is not None:
        try:
            source_run = model_source_run(mlflow.MlflowClient(tracking_uri=tracking_uri), model)
        except (CompareError, mlflow.exceptions.MlflowException) as err:
            raise CompareError(f"{model}: {err}") from None
    module, meta = load_logged_model(model)
    return CrossTarget(module, meta, source_run, target_name, tracking_uri)
