"""A Ray Tune search over margins, loss weights and LR: ASHA + Optuna TPE, tracked in MLflow.

:func:`run_search` runs ``tune.num_samples`` trials of :func:`reid.tune.trial.run_trial` (the
same engine and loaders as ``pipeline.train``), ``tune.max_concurrent`` at a time, each with
``tune.resources``, on a local Ray or the cluster at ``tune.address`` / ``$RAY_ADDRESS``.

- Search algorithm: Optuna's TPE through Ray Tune's ``OptunaSearch`` (Bergstra et al., NeurIPS
  2011), seeded; or random sampling. ``tune.points_to_evaluate`` are tried first.
- Scheduler: ASHA (Li et al., MLSys 2020) on the per-epoch metric, ``time_attr`` = epochs.
- Failures: a trial that raises (a NaN loss included) is retried ``tune.max_failures`` times, then
  marked failed (Ray ``ERROR``, MLflow ``FAILED``); the search goes on.
- Interruption: Ctrl+C (SIGINT) saves the search state; ``resume=True`` continues it with
  ``Tuner.restore`` (finished trials kept, unfinished ones resumed from their last checkpoint).
- MLflow: one parent run per search, one nested child run per trial (:mod:`reid.tune.mlflow_runs`).
- Disk: trials train in run folders under a scratch root removed at the end (:mod:`reid.tune.scratch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from reid.params import TuneParams
from reid.tune.space import check_space, model_space, ray_domain
from reid.tune.trial import TrialSetup, run_trial


class SearchInterrupted(RuntimeError):
    """The search stopped before every trial ended (e.g. Ctrl+C); its state is saved."""


@dataclass(frozen=True)
class TrialOutcome:
    """One trial at the end of a search.

    Attributes:
        trial_id: Ray's trial id.
        config: the sampled values (dotted params keys).
        status: Ray's status, ``TERMINATED`` or ``ERROR``.
        epochs: epochs trained (reported results).
        value: the search metric at the last epoch (NaN if none).
        stopped_early: ended by ASHA before ``max_epochs``.
        checkpoint: the trial's last checkpoint (a Ray ``Checkpoint``) or None.
    """

    trial_id: str
    config: dict
    status: str
    epochs: int
    value: float
    stopped_early: bool
    checkpoint: object

    def summary(self, metric: str) -> str:
        """One console line: ``trial <id>: <metric> <value> after <n> epoch(s), <how it ended>;
        <key>=<value>, ...``; the value to 4 decimals, sampled floats to 4 significant digits, and
        the end is ``finished``, ``stopped early`` (by ASHA) or ``failed``."""
        end = "failed" if self.status == "ERROR" else "stopped early" if self.stopped_early else "finished"
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.config.items())
        return f"trial {self.trial_id}: {metric} {self.value:.4f} after {self.epochs} epoch(s), {end}; {values}"


@dataclass(frozen=True)
class SearchOutcome:
    """What :func:`run_search` returns: every trial, the best one and the MLflow parent run."""

    trials: list[TrialOutcome]
    best: Optional[TrialOutcome]
    parent_run_id: str
    experiment_path: str
    trial_run_ids: dict[str, str]

    def ranked(self) -> list[TrialOutcome]:
        """The trials best first (highest ``value``); those without a value (NaN: failed before
        reporting) last, in their original order."""
        return sorted(self.trials, key=lambda t: (math.isnan(t.value), 0.0 if math.isnan(t.value) else -t.value))


def storage_uri(storage_path: str) -> str:
    """Ray's ``storage_path``: a URI (``s3://...``) as is, a local path made absolute."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def run_search(setup: TrialSetup, tp: TuneParams, tracking_uri: str, experiment: str,
               resume: bool = False) -> SearchOutcome:
    """Run (or with ``resume`` continue) the search ``tp.name``.

    Args:
        setup: what every trial shares (params, dataset, shards, epochs, metric).
        tp: the ``tune`` params.
        tracking_uri, experiment: MLflow tracking URI and experiment of the parent run.
        resume: continue an interrupted search with ``Tuner.restore``.

    Returns:
        SearchOutcome; the parent MLflow run is ended FINISHED (KILLED if interrupted).

    Raises:
        KeyError: no ``tune.space`` for ``model.name``.
        ValueError: a search dimension or point whose values params.yaml rejects.
        FileExistsError: a new search where a search of the same name exists (resume it, or
            choose another ``tune.name``).
        FileNotFoundError: ``resume`` without a saved search.
        SearchInterrupted: the search stopped with trials unfinished (state saved).
    """
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from reid.tracking.journal import log_batches
    from reid.tracking.mlflow_run import experiment_id
    from reid.tune.mlflow_runs import TrialRuns, child_runs, parent_run
    from reid.tune.scratch import remove_root, scratch_root

    space = model_space(tp, setup.params.model.name)
    check_space(setup.params, space, tp.points_to_evaluate)
    storage = storage_uri(tp.storage_path)
    path = f"{storage}/{tp.name}"
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise FileNotFoundError(f"{path}: no saved search {tp.name!r} to resume")
    if not resume and exists:
        raise FileExistsError(f"{path}: search {tp.name!r} exists; resume it (--resume) or set another tune.name")

    client = MlflowClient(tracking_uri)
    exp_id = experiment_id(client, experiment)
    parent = parent_run(client, exp_id, tp.name, resume,
                        tags={"dataset": setup.dataset, "model": setup.params.model.name})
    callback = TrialRuns(tracking_uri, exp_id, parent, tp.name, setup.max_epochs, setup.dataset,
                         setup.params.model.name)
    if not resume:
        log_batches(client, parent, params=_params(tp, setup))

    if not ray.is_initialized():
        ray.init(address=tp.address)  # None: $RAY_ADDRESS if set, else a local Ray
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup, search_run_id=parent),
                                    {"cpu": tp.resources.cpu, "gpu": tp.resources.gpu})
    status = "FAILED"
    try:
        if resume:
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={k: ray_domain(d) for k, d in space.items()},
                tune_config=tune.TuneConfig(metric=setup.metric, mode="max", search_alg=_searcher(tp, setup.metric),
                                            scheduler=_asha(tp), num_samples=tp.num_samples,
                                            max_concurrent_trials=tp.max_concurrent),
                run_config=tune.RunConfig(name=tp.name, storage_path=storage, callbacks=[callback],
                                          failure_config=tune.FailureConfig(max_failures=tp.max_failures),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        grid = tuner.fit()
        ended = grid.num_terminated + grid.num_errors
        if ended < tp.num_samples:
            status = "KILLED"
            raise SearchInterrupted(f"search {tp.name!r} stopped with {ended}/{tp.num_samples} trials ended; "
                                    f"its state is in {path}")
        trials = [_outcome(r, setup) for r in grid]
        done = [t for t in trials if t.status == "TERMINATED" and math.isfinite(t.value)]
        best = max(done, key=lambda t: (t.value, t.epochs), default=None)
        log_batches(client, parent, metrics=_summary(trials, best, setup.metric))
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status=status)
        remove_root(scratch_root(parent))
    return SearchOutcome(trials=trials, best=best, parent_run_id=parent, experiment_path=path,
                         trial_run_ids=child_runs(client, exp_id, parent))


def _searcher(tp: TuneParams, metric: str):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    points = [dict(p) for p in tp.points_to_evaluate] or None
    if tp.search_alg == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode="max", points_to_evaluate=points,
                            sampler=optuna.samplers.TPESampler(seed=tp.seed))
    return BasicVariantGenerator(points_to_evaluate=points, random_state=tp.seed)


def _asha(tp: TuneParams):
    from ray.tune.schedulers import ASHAScheduler

    s = tp.scheduler
    return ASHAScheduler(time_attr="training_iteration", max_t=s.max_epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def _outcome(result, setup: TrialSetup) -> TrialOutcome:
    metrics = result.metrics or {}
    epochs = int(metrics.get("training_iteration", 0))
    failed = result.error is not None
    return TrialOutcome(trial_id=str(metrics.get("trial_id") or Path(result.path).name), config=dict(result.config or {}),
                        status="ERROR" if failed else "TERMINATED", epochs=epochs,
                        value=float(metrics.get(setup.metric, float("nan"))),
                        stopped_early=not failed and epochs < setup.max_epochs, checkpoint=result.checkpoint)


def _params(tp: TuneParams, setup: TrialSetup) -> list:
    from mlflow.entities import Param

    s = tp.scheduler
    flat = {"dataset": setup.dataset, "model.name": setup.params.model.name, "metric": setup.metric,
            "search_alg": tp.search_alg, "seed": tp.seed, "num_samples": tp.num_samples,
            "max_concurrent": tp.max_concurrent, "asha.max_epochs": s.max_epochs,
            "asha.grace_period": s.grace_period, "asha.reduction_factor": s.reduction_factor,
            "resources.cpu": tp.resources.cpu, "resources.gpu": tp.resources.gpu, "max_failures": tp.max_failures}
    for key, dist in tp.space[setup.params.model.name].items():
        flat[f"space.{key}"] = dist.model_dump_json(exclude_none=True)
    return [Param(k, str(v)) for k, v in flat.items()]


def _summary(trials: list[TrialOutcome], best: Optional[TrialOutcome], metric: str) -> list:
    from mlflow.entities import Metric

    from reid.tracking.journal import now_ms

    now = now_ms()
    values = {"trials": len(trials), "trials_failed": sum(t.status == "ERROR" for t in trials),
              "trials_stopped_early": sum(t.stopped_early for t in trials)}
    if best is not None:
        values[f"best.{metric}"] = best.value
    return [Metric(k, float(v), now, 0) for k, v in values.items()]
