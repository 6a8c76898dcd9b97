"""DVC stage ``train``: DeepSpeed training on ``shards/<dataset>``, tracked in MLflow.

Single process: ``python -m pipeline.train --params params.yaml --dataset msmt17``.
SIGTERM (e.g. SLURM preemption) saves a mid-epoch checkpoint, marks the MLflow run KILLED and
exits 1; ``--resume`` continues it (same MLflow run, same final weights).
Several ranks: ``deepspeed --num_gpus N --module pipeline.train --params params.yaml --dataset msmt17``
(on a CPU-only host, N ranks run with the gloo backend).
"""

import argparse
import json
import os
import sys

from pipeline import _cli
from reid.data.protocols import Protocol
from reid.engine.trainer import TrainingInterrupted, TrainSpec, model_meta, train
from reid.evaluation.evaluate import EvalSpec, periodic_validator
from reid.io import atomic_write_json
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
    spec = TrainSpec(shards_dir=_cli.SHARDS / args.dataset, out_dir=out_dir, image_size=ds.image_size,
                     sampler=params.sampler, loader=params.loader, model=params.model, loss=params.loss,
                     optim=params.optim, engine=params.engine, deepspeed_template=_cli.deepspeed_template(params))
    run = None
    if int(os.environ.get("RANK", "0")) == 0:
        uri = resolve_tracking_uri(params.mlflow.tracking_uri)
        previous = out_dir / RUN_FILE
        run_id = json.loads(previous.read_text())["run_id"] if args.resume and previous.is_file() else None
        run = MlflowRun(uri, params.mlflow.experiment, run_name=args.dataset, run_id=run_id,
                        tags={"dataset": args.dataset, "layout": ds.layout})
        if run_id is None:
            run.log_params({**spec.training_params(), "dataset": args.dataset, "dataset.root": ds.root})
        atomic_write_json(previous, {"run_id": run.run_id, "tracking_uri": uri})
    val = params.validation
    validate = periodic_validator(EvalSpec(spec.shards_dir, ds.image_size, params.loader.mean, params.loader.std,
                                           metric=val.metric, flip=val.flip,
                                           num_threads=params.loader.num_threads, backend=params.loader.backend),
                                  Protocol.read(_cli.MANIFESTS / f"{args.dataset}.protocol.json"),
                                  val.period, params.optim.epochs)
    try:
        result = train(spec, resume=args.resume, log_metrics=run.log_metrics if run else None, validate=validate)
    except TrainingInterrupted as stopped:
        if run:
            run.end("KILLED")
        sys.exit(f"{args.dataset}: {stopped}; continue with: python -m pipeline.train --resume "
                 f"--params {args.params} --dataset {args.dataset}")
    except BaseException:
        if run:
            run.end("FAILED")
        raise
    if run:
        registered = f"reid-{args.dataset}" if params.mlflow.register_model else None
        model_uri = run.log_model(result.model, model_meta(spec, result.num_classes), registered)
        atomic_write_json(out_dir / RUN_FILE, {"run_id": run.run_id, "tracking_uri": uri, "model_uri": model_uri})
        run.end()
        print(f"{args.dataset}: trained {len(result.history)} epochs, final loss "
              f"{result.history[-1]['loss']:.4f}; MLflow run {run.run_id}, model {model_uri}")


if __name__ == "__main__":
    main()
