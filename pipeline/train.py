"""DVC stage ``train``: DeepSpeed training on ``shards/<dataset>``, tracked in MLflow.

Single process: ``python -m pipeline.train --params params.yaml --dataset msmt17``.
SIGTERM (e.g. SLURM preemption) saves a mid-epoch checkpoint, marks the MLflow run KILLED and
exits 1; ``--resume`` continues it (same MLflow run, same final weights).
Several ranks: ``deepspeed --num_gpus N --module pipeline.train --params params.yaml --dataset msmt17``
(on a CPU-only host, N ranks run with the gloo backend).
"""

import argparse
import os
import sys

from pipeline import _cli
from reid.data.protocols import Protocol
from reid.engine.trainer import TrainingInterrupted, TrainSpec, model_meta, train
from reid.evaluation.evaluate import periodic_validator, validation_spec
from reid.io import atomic_write_json
from reid.tracking.journal import JOURNAL_DIR, read_run_file, sync_command
from reid.tracking.mlflow_run import MlflowRun, resolve_tracking_uri

RUN_FILE = "mlflow_run.json"


def main() -> None:
    p = _cli.parser(__doc__)
    p.add_argument("--resume", action="store_true", help="continue from runs/<dataset>/checkpoints/latest")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = p.parse_args()
    params = _cli.load(args.params)
    ds = params.dataset(args.dataset)
    out_dir = _cli.RUNS / args.dataset
    spec = TrainSpec.from_params(params, args.dataset, _cli.SHARDS / args.dataset, out_dir,
                                 _cli.deepspeed_template(params))
    run = None
    if int(os.environ.get("RANK", "0")) == 0:
        uri = resolve_tracking_uri(params.mlflow.tracking_uri)
        previous = out_dir / RUN_FILE
        # resume: the same run, still in the offline journal if it has not been synced yet
        info = read_run_file(previous) if args.resume and previous.is_file() else None
        run = MlflowRun(uri, params.mlflow.experiment, run_name=args.dataset, run_id=info and info["run_id"],
                        tags={"dataset": args.dataset, "layout": ds.layout}, journal=out_dir / JOURNAL_DIR,
                        journal_id=info["journal_id"] if info and info["offline"] else None)
        if info is None:
            run.log_params({**spec.training_params(), "dataset": args.dataset, "dataset.root": ds.root})
        atomic_write_json(previous, run.record)
    val = params.validation
    validate = periodic_validator(validation_spec(spec.shards_dir, ds.image_size, params.loader, val),
                                  Protocol.read(_cli.MANIFESTS / f"{args.dataset}.protocol.json"),
                                  val.period, params.optim.epochs)
    try:
        result = train(spec, resume=args.resume, log_metrics=run.log_metrics if run else None, validate=validate)
    except TrainingInterrupted as stopped:
        if run:
            run.end("KILLED")
            atomic_write_json(out_dir / RUN_FILE, run.record)  # offline since? --resume continues the journal
        sys.exit(f"{args.dataset}: {stopped}; continue with: python -m pipeline.train --resume "
                 f"--params {args.params} --dataset {args.dataset}")
    except BaseException:
        if run:
            run.end("FAILED")
        raise
    if run:
        registered = f"reid-{args.dataset}" if params.mlflow.register_model else None
        model_uri = run.log_model(result.model, model_meta(spec, result.num_classes), registered)
        run.end()
        atomic_write_json(out_dir / RUN_FILE, {**run.record, "model_uri": model_uri})
        tracked = (f"MLflow run {run.run_id}, model {model_uri}" if not run.offline else
                   f"MLflow server {uri} unreachable, logged locally, sync with: {sync_command(out_dir / JOURNAL_DIR)}")
        print(f"{args.dataset}: trained {len(result.history)} epochs, final loss "
              f"{result.history[-1]['loss']:.4f}; {tracked}")


if __name__ == "__main__":
    main()
