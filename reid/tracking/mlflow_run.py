"""MLflow tracking: one run per dataset that ``train`` opens and ``evaluate`` resumes.

The default store is local sqlite (``sqlite:///mlflow.db``), so
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows every run. A tracking server
(``http(s)://...``) works the same; given a journal folder, :class:`MlflowRun` keeps going when
the server is unreachable (see :mod:`reid.tracking.journal`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional

from reid.tracking.journal import JournalWriter, is_remote, log_batches, now_ms, probe, reopen_run, sync_command

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: Optional[str]) -> str:
    """The tracking URI: ``configured`` if set, else ``$MLFLOW_TRACKING_URI``, else local sqlite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def metric_name(key: str) -> str:
    """The MLflow metric name of a logged key: ``/`` becomes ``.`` (not every store accepts ``/``)."""
    return key.replace("/", ".")


def experiment_id(client, name: str) -> str:
    """The id of the MLflow experiment ``name`` (created if missing), through ``client`` (an ``MlflowClient``)."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


class MlflowRun:
    """A started (or resumed) MLflow run, with an optional local journal for server outages.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: experiment name (created if missing).
        run_name: name of a new run (ignored when ``run_id`` is given).
        run_id: resume this run instead of starting one.
        tags: tags set on the run.
        journal: folder for the offline journal (``runs/<dataset>/mlflow_journal``). Only used with
            a tracking server (http/https URI): if ``GET <uri>/health`` fails at the start
            (:data:`reid.tracking.journal.PROBE_TIMEOUT_S`), or an MLflow call fails later and the
            server then fails that probe too, a warning goes to stderr once and every call from then
            on is recorded in the journal instead (``python -m pipeline.mlflow_sync`` replays it). A
            call the server answers with an error still raises. How long MLflow retries a call before
            it fails is MLflow's ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7, exponential backoff
            of ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` = 2 s: about 4 minutes) and
            ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (default 120 s per request). Without ``journal``, and for
            local stores (sqlite, file), errors propagate.
        journal_id: continue the journal ``<journal>/<journal_id>.jsonl`` (a run that is still only,
            or partly, in that journal: :attr:`record` of the earlier process), offline.

    Raises:
        mlflow.exceptions.MlflowException: the store refused the run (unknown ``run_id``, ...).
        reid.tracking.journal.JournalError: ``journal_id`` names no journal, or one in use.
        ValueError: ``journal_id`` without ``journal``.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: Optional[str] = None,
                 run_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
                 journal: Optional[Path] = None, journal_id: Optional[str] = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self._uri, self._experiment = tracking_uri, experiment
        self._journal_dir = Path(journal) if journal is not None else None
        self._fallback = self._journal_dir is not None and is_remote(tracking_uri)
        self._writer: Optional[JournalWriter] = None
        self._run_id = run_id
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if journal_id is not None:
            if self._journal_dir is None:
                raise ValueError("MlflowRun: journal_id needs the journal folder")
            self._writer = JournalWriter.reopen(self._journal_dir, journal_id)
            self._run_id = self._writer.run_id
            self._writer.append({"type": "reopen", "tags": tags})
            print(f"WARNING: MLflow run continues offline in the local journal {self._writer.path} "
                  f"(it has not been synced yet); sync with: {sync_command(self._journal_dir)}", file=sys.stderr)
            return
        if self._fallback and (reason := probe(tracking_uri)) is not None:
            self._go_offline(reason, run_name, tags if run_id else _context_tags(tags))
            return
        mlflow.set_tracking_uri(tracking_uri)  # log_model and registration use the global URI
        self._client = MlflowClient(tracking_uri)
        try:
            self._start(run_name, tags)
        except Exception as err:
            reason = self._unreachable(err)
            self._go_offline(reason, run_name, tags if self._run_id else _context_tags(tags))

    def _start(self, run_name: Optional[str], tags: dict) -> None:
        client = self._client
        if self._run_id is not None:
            client.get_run(self._run_id)
            reopen_run(client, self._run_id, tags)
            return
        run = client.create_run(experiment_id(client, self._experiment), tags=_context_tags(tags), run_name=run_name)
        self._run_id = run.info.run_id

    def _unreachable(self, err: Exception) -> str:
        """Why the server is gone, after ``err`` from an MLflow call; re-raises ``err`` when there is
        no journal, the store is local, or the server still answers (a real error, not an outage)."""
        if not self._fallback:
            raise err
        reason = probe(self._uri)
        if reason is None:
            raise err
        text = str(err).strip()
        return f"{reason}; the failed call: {text.splitlines()[0][:200] if text else type(err).__name__}"

    def _go_offline(self, reason: str, run_name: Optional[str], tags: Mapping[str, str]) -> None:
        self._writer = JournalWriter.create(self._journal_dir, self._uri, self._experiment, run_name,
                                            self._run_id, tags)
        what = (f"run {self._run_id} continues" if self._run_id else "the run is recorded") + \
            f" in the local journal {self._writer.path}"
        print(f"WARNING: MLflow tracking server {self._uri} is unreachable ({reason}); logging locally: {what}. "
              f"Nothing is lost; once the server is up, sync with: {sync_command(self._journal_dir)}",
              file=sys.stderr)

    def _do(self, online: Callable[[], object], offline: Callable[[], object]):
        """Run ``online`` while connected; on an outage switch to the journal for good and run ``offline``."""
        if self._writer is None:
            try:
                return online()
            except Exception as err:
                self._go_offline(self._unreachable(err), None, {})
        return offline()

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id; None while the run exists only in the offline journal (until synced)."""
        return self._run_id

    @property
    def offline(self) -> bool:
        """Whether calls go to the local journal (the server was unreachable)."""
        return self._writer is not None

    @property
    def journal_file(self) -> Optional[Path]:
        """The journal ``.jsonl`` in use, or None while online."""
        return self._writer.path if self._writer else None

    @property
    def record(self) -> dict:
        """What a later process needs to continue this run (``pipeline.train`` writes it to
        ``mlflow_run.json``): ``run_id``, ``tracking_uri``, ``offline``, ``journal_id``."""
        return {"run_id": self._run_id, "tracking_uri": self._uri, "offline": self.offline,
                "journal_id": self._writer.journal_id if self._writer else None}

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log flat params (values become strings, None becomes ``"null"``)."""
        from mlflow.entities import Param

        flat = {k: "null" if v is None else str(v) for k, v in params.items()}
        items = [Param(k, v) for k, v in flat.items()]
        self._do(lambda: log_batches(self._client, self._run_id, params=items), lambda: self._writer.params(flat))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Log numeric metrics at ``step`` (default 0) with the current time; MLflow metric names may
        not contain ``/`` on every store, so they become ``.``."""
        from mlflow.entities import Metric

        flat = {metric_name(k): float(v) for k, v in metrics.items()}
        ts = now_ms()
        items = [Metric(k, v, ts, step or 0) for k, v in flat.items()]
        self._do(lambda: log_batches(self._client, self._run_id, metrics=items),
                 lambda: self._writer.metrics(flat, step, ts))

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Log one file under ``artifact_path`` (offline: a copy goes into the journal)."""
        self._do(lambda: self._client.log_artifact(self._run_id, str(path), artifact_path),
                 lambda: self._writer.artifact(Path(path), artifact_path))

    def log_model(self, module, meta: Mapping, registered_name: Optional[str]) -> Optional[str]:
        """Log a PyTorch model (with the ``reid`` package as code) and optionally register it.

        ``meta`` (architecture, input size, normalisation) is stored as the model's metadata so
        that ``pipeline.evaluate --model models:/<name>/<version>`` can rebuild the input
        transform. Returns the model URI; None offline, where the module's weights and ``meta``
        (as :func:`reid.engine.trainer.model_meta` builds it, so that ``load_model`` rebuilds the
        module at sync) go into the journal and the sync logs and registers the model.
        """
        return self._do(lambda: log_pytorch_model(module, meta, registered_name, self._run_id),
                        lambda: self._writer.model(module, meta, registered_name))

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``status`` (FINISHED, FAILED, KILLED); offline, record it and release the journal."""
        self._do(lambda: self._client.set_terminated(self._run_id, status),
                 lambda: self._writer.append({"type": "end", "status": status, "timestamp_ms": now_ms()}))
        if self._writer is not None:
            self._writer.close()


def _context_tags(tags: Mapping[str, str]) -> dict:
    """``tags`` plus MLflow's context tags of this process (user, source, git commit), as
    ``mlflow.start_run`` sets them on a new run."""
    from mlflow.tracking.context.registry import resolve_tags

    return {k: str(v) for k, v in resolve_tags(dict(tags)).items()}


def log_pytorch_model(module, meta: Mapping, registered_name: Optional[str], run_id: str) -> str:
    """Log ``module`` into run ``run_id`` of the current tracking URI (``mlflow.set_tracking_uri``),
    pickled with the ``reid`` package as code, ``meta`` as its metadata, registered as
    ``registered_name`` (if not None). Returns the model URI.

    Raises:
        mlflow.exceptions.MlflowException: the server refused or could not be reached.
    """
    import mlflow

    import reid

    info = mlflow.pytorch.log_model(
        module, name="model", registered_model_name=registered_name, metadata=dict(meta),
        # pickle keeps the registry class (train/eval modes, dict outputs); reid/ travels as code.
        serialization_format="pickle",
        code_paths=[str(Path(reid.__file__).parent)],
        pip_requirements=["torch==2.15.0", "torchvision==0.29.2"],
        run_id=run_id,  # Model.log's run id (no active fluent run is needed)
    )
    return info.model_uri


def load_logged_model(model_uri: str):
    """Load a model logged by :meth:`MlflowRun.log_model`: ``(module in eval mode on CPU, meta)``.

    Raises:
        mlflow.exceptions.MlflowException: unknown URI.
    """
    import mlflow

    meta = mlflow.models.get_model_info(model_uri).metadata or {}
    module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return module.eval(), meta
