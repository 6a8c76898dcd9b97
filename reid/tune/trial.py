"""One Ray Tune trial: ``pipeline.train``'s engine and loaders on the trial's params, scored every epoch.

The trial trains with :func:`reid.engine.trainer.train` exactly as ``pipeline.train`` does (same
:class:`~reid.engine.trainer.TrainSpec`, DeepSpeed engine, sampler and loader), with two changes:
``optim.epochs`` is the search's ``tune.scheduler.max_epochs`` and the ``validation`` scoring runs
after every epoch. After each epoch it calls ``tune.report`` with the epoch's logs (``loss``,
``val.mAP``, ...) and a ``tune.Checkpoint`` holding the epoch's DeepSpeed checkpoint and
``model.json``: ASHA decides on the reported metric, a restored trial resumes from the checkpoint
(same sequence as an uninterrupted trial, see the trainer), and the search registers the best
trial's model from it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from reid.engine.trainer import CHECKPOINTS, MODEL_META
from reid.params import Params

# Inside a trial checkpoint: the trainer's checkpoint folder CHECKPOINTS (one tag + ``latest``) and
# the model meta MODEL_META, named as in a run folder.


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares.

    Attributes:
        params: the whole params (``params.yaml``); a trial puts its sampled values in.
        dataset: the ``datasets`` key trained and validated on.
        shards_dir: that dataset's shard folder, absolute (every Ray node must see it).
        protocol_path: its ``manifests/<dataset>.protocol.json``, absolute.
        deepspeed_template: the DeepSpeed config template (see ``reid.engine.deepspeed_config``).
        max_epochs: epochs of a trial that is never stopped (ASHA's ``max_t``).
        metric: the reported validation metric the search maximises, e.g. ``val.mAP``.
    """

    params: Params
    dataset: str
    shards_dir: Path
    protocol_path: Path
    deepspeed_template: dict
    max_epochs: int
    metric: str

    def trial_params(self, config: Mapping[str, object]) -> Params:
        """The params a trial trains with: the sampled ``config`` (dotted keys), ``max_epochs``
        epochs and validation after every epoch.

        Raises:
            pydantic.ValidationError: a sampled value the params schema rejects.
        """
        from reid.tune.space import apply

        return apply(self.params, {**config, "optim.epochs": self.max_epochs, "validation.period": 1})


def _report_metrics(logs: Mapping[str, object], epoch: int) -> dict:
    """The numbers of an epoch's logs, with the epoch, for ``tune.report``."""
    out = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
    out["epoch"] = epoch
    return out


def run_trial(config: dict, setup: TrialSetup, search_run_id: str) -> None:
    """The Ray Tune function trainable (``tune.with_parameters(run_trial, setup=..., search_run_id=...)``).

    The trial trains in a run folder of its own under the search's scratch root on its node
    (:mod:`reid.tune.scratch`), removed when the trial ends; what persists is the reported
    ``tune.Checkpoint``, which Ray keeps in the search's ``storage_path``.

    Args:
        config: the trial's sampled values, dotted params keys (``{"optim.lr": 4e-4}``).
        setup: what the search shares.
        search_run_id: the search's MLflow parent run (names the scratch root).

    Raises:
        Whatever training raises (an invalid sampled value, a NaN loss as ``FloatingPointError``,
        ...): Ray marks the trial failed (``ERROR``) and the search goes on.
    """
    from ray import tune

    from reid.tune.scratch import run_folder, scratch_root

    params = setup.trial_params(config)
    with run_folder(scratch_root(search_run_id)) as out_dir:
        _train_and_report(setup, params, out_dir, tune.get_checkpoint())


def _train_and_report(setup: TrialSetup, params: Params, out_dir: Path, restored) -> None:
    """Train in the run folder ``out_dir``, from the Ray checkpoint ``restored`` if not None, and
    ``tune.report`` every epoch with a copy of the epoch's checkpoint."""
    from ray import tune

    from reid.data.protocols import Protocol
    from reid.engine import checkpoint
    from reid.engine.trainer import TrainSpec, model_meta, train
    from reid.evaluation.evaluate import periodic_validator, validation_spec
    from reid.io import atomic_write_json

    ckpt_dir = out_dir / CHECKPOINTS
    resume = False
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copytree(Path(d) / CHECKPOINTS, ckpt_dir)
        resume = True
    spec = TrainSpec.from_params(params, setup.dataset, setup.shards_dir, out_dir, setup.deepspeed_template)
    val = params.validation
    validate = periodic_validator(
        validation_spec(setup.shards_dir, spec.image_size, params.loader, val),
        Protocol.read(setup.protocol_path), val.period, params.optim.epochs)
    num_classes = _num_classes(setup.shards_dir)

    def report(logs: dict, epoch: int) -> None:
        tag = checkpoint.latest_tag(ckpt_dir)
        # In the run folder, so it goes with it when the trial is stopped inside tune.report.
        with tempfile.TemporaryDirectory(prefix="report-", dir=out_dir) as tmp:
            shutil.copytree(ckpt_dir / tag, Path(tmp) / CHECKPOINTS / tag)
            shutil.copy2(ckpt_dir / checkpoint.LATEST, Path(tmp) / CHECKPOINTS / checkpoint.LATEST)
            atomic_write_json(Path(tmp) / MODEL_META, model_meta(spec, num_classes))
            tune.report(_report_metrics(logs, epoch), checkpoint=tune.Checkpoint.from_directory(tmp))

    train(spec, resume=resume, log_metrics=report, validate=validate)


def _num_classes(shards_dir: Path) -> int:
    """Training identities in the shards: the classifier size, by the trainer's own label map."""
    from reid.data.manifest import contiguous_labels
    from reid.data.shards import ShardsIndex

    return len(contiguous_labels(ShardsIndex.load(shards_dir).pids("train")))


def load_trial_model(checkpoint_dir: Path):
    """The model of a trial checkpoint (a folder written by :func:`run_trial`'s reports).

    Returns:
        ``(module in eval mode on CPU, meta dict)``; meta as in ``model.json``.

    Raises:
        reid.engine.checkpoint.CheckpointError: no checkpoint or unreadable weights.
        FileNotFoundError: no ``model.json``.
    """
    import json

    from reid.engine import checkpoint
    from reid.engine.trainer import model_from_meta

    checkpoint_dir = Path(checkpoint_dir)
    meta_path = checkpoint_dir / MODEL_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found (not a trial checkpoint)")
    meta = json.loads(meta_path.read_text())
    ckpt_dir = checkpoint_dir / CHECKPOINTS
    return model_from_meta(meta, checkpoint.module_state_dict(ckpt_dir / checkpoint.latest_tag(ckpt_dir))), meta
