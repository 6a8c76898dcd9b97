"""MLflow tracking of a search: one parent run per search, one nested child run per trial.

Ray's own ``MLflowLoggerCallback`` keeps its trial -> run map in memory, so a search resumed with
``Tuner.restore`` would open a second run for every resumed trial; it also logs Ray's bookkeeping
(pid, hostname, timestamps) as metrics. :class:`TrialRuns` is the same kind of Ray
``LoggerCallback`` (it runs on the driver, so trials need no MLflow access), but finds a trial's
run again by its tags, logs only what the trial reported, and marks trials that ASHA stopped.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS

from reid.tracking.journal import log_batches, now_ms
from reid.tracking.mlflow_run import metric_name

#: Tags of the runs a search creates.
KIND_TAG = "reid.kind"
SEARCH_TAG = "reid.search"
TRIAL_TAG = "ray.trial_id"
PARENT_TAG = "mlflow.parentRunId"
STOPPED_EARLY_TAG = "ray.stopped_early"
#: Reported keys that are Ray's bookkeeping, not metrics.
_NOT_METRICS = frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint",
                                              "time_this_iter_s", "experiment_id"}


def parent_run(client, experiment_id: str, search: str, resume: bool, tags: Mapping[str, str]) -> str:
    """The search's parent run id: a new run, or with ``resume`` the newest run of the same search
    (set back to RUNNING), so a restored search keeps one parent.

    Raises:
        ValueError: ``resume`` but no earlier run of this search in the experiment.
    """
    if resume:
        runs = client.search_runs([experiment_id], filter_string=(
            f"tags.`{KIND_TAG}` = 'search' and tags.`{SEARCH_TAG}` = '{search}'"),
            order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise ValueError(f"resume: no MLflow run of search {search!r} in experiment {experiment_id}")
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=search,
                            tags={KIND_TAG: "search", SEARCH_TAG: search, **dict(tags)})
    return run.info.run_id


def child_runs(client, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """``{trial id: child run id}`` of a search's parent run."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=10000)
    return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}


class TrialRuns(LoggerCallback):
    """A Ray Tune callback logging each trial to a child run of ``parent_run_id``.

    Child runs carry the trial's sampled values as params (dotted params keys), every reported
    number per epoch as metrics (step = ``training_iteration`` = epoch), and at the end the status
    ``FINISHED`` or ``FAILED`` (with the error in the tag ``ray.error``); a trial ASHA stopped
    before ``max_epochs`` is ``FINISHED`` with the tag ``ray.stopped_early = true``.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment_id: the experiment of the parent run.
        parent_run_id: the search's run.
        search: the search's name (tag ``reid.search``).
        max_epochs: epochs of a trial that is never stopped.
        dataset, model: tag ``dataset`` and param ``model.name`` of every child run (as
            ``pipeline.train`` sets them, so ``pipeline.compare`` reads a trial's model like any).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, search: str, max_epochs: int,
                 dataset: str, model: str):
        self.tracking_uri = tracking_uri
        self.dataset = dataset
        self.model = model
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.search = search
        self.max_epochs = max_epochs
        self._client = None
        self._runs: dict[str, str] = {}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict:  # Ray pickles callbacks into the experiment state
        return {**self.__dict__, "_client": None}

    def run_id(self, trial) -> str:
        """The child run of ``trial``: found by its tags (a restored search), else created."""
        trial_id = trial.trial_id
        if trial_id not in self._runs:
            found = self.client.search_runs([self.experiment_id], filter_string=(
                f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"), max_results=1)
            if found:
                self._runs[trial_id] = found[0].info.run_id
            else:
                run = self.client.create_run(self.experiment_id, run_name=str(trial), tags={
                    PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, SEARCH_TAG: self.search,
                    KIND_TAG: "trial", "dataset": self.dataset})
                self._runs[trial_id] = run.info.run_id
        return self._runs[trial_id]

    def log_trial_start(self, trial) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status="RUNNING")
        logged = self.client.get_run(run_id).data.params
        from mlflow.entities import Param

        values = {**trial.config, "model.name": self.model}
        new = [Param(k, str(v)) for k, v in values.items() if k not in logged]
        log_batches(self.client, run_id, params=new)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", iteration))
        stamp = int(1000 * result.get("timestamp", 0)) or None
        metrics = [Metric(metric_name(k), float(v), stamp or now_ms(), step) for k, v in result.items()
                   if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))]
        log_batches(self.client, self.run_id(trial), metrics=metrics)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self.run_id(trial)
        if failed:
            self.client.set_tag(run_id, "ray.error", _error_text(trial)[-5000:])
        else:
            last: Optional[dict] = trial.last_result or {}
            epochs = int(last.get("training_iteration", 0))
            self.client.set_tag(run_id, STOPPED_EARLY_TAG, str(epochs < self.max_epochs).lower())
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def _error_text(trial) -> str:
    """The trial's error trace (Ray writes it to the trial's local ``error.txt`` before the callbacks run)."""
    from pathlib import Path

    path = trial.error_file
    return Path(path).read_text() if path and Path(path).is_file() else "trial failed (no error file)"
