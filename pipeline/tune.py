"""Ray Tune search over the ``tune.space`` of ``model.name`` (margins, loss weights, LR), tracked in MLflow.

Local (a Ray on this machine)::

    python -m pipeline.tune --params params.yaml
    dvc repro tune/dvc.yaml              # the same, as a DVC stage (not in the default dvc repro)

On a Ray cluster (``infra/ray/``): set ``tune.address`` or ``RAY_ADDRESS``, or submit it as a job
that runs in the head node's checkout (shards and manifests are git-ignored, so a ``--working-dir``
upload would not carry them)::

    ray job submit --address http://127.0.0.1:8265 -- \
        bash -c 'cd ~/reid-pipeline && .venv/bin/python -m pipeline.tune --params params.yaml'

Ctrl+C saves the search; ``--resume`` continues it (``Tuner.restore``). At the end it writes
``tune/best_params.yaml``, scores the best trial's model with the ``eval`` settings and registers
it as a new version of ``reid-<dataset>`` (tags ``search``, ``trial``). ``--best-args`` prints the
``-S key=value`` arguments that train the pipeline with the best values::

    dvc exp run $(python -m pipeline.tune --best-args)
"""

import sys
from pathlib import Path

from pipeline import _cli
from reid.data.protocols import Protocol
from reid.evaluation.evaluate import eval_settings, eval_spec_for, flat_metrics, score
from reid.tracking.mlflow_run import resolve_tracking_uri
from reid.tune.best_params import read_best_params, shell_args, write_best_params
from reid.tune.register import register_best
from reid.tune.search import SearchInterrupted, run_search
from reid.tune.trial import TrialSetup

BEST_PARAMS = Path("tune/best_params.yaml")


def main() -> None:
    p = _cli.parser(__doc__, dataset=False)
    p.add_argument("--resume", action="store_true", help="continue the interrupted search tune.name")
    p.add_argument("--best-args", action="store_true",
                   help=f"print `dvc exp run` -S arguments for {BEST_PARAMS} and exit")
    args = p.parse_args()
    params = _cli.load(args.params)
    if args.best_args:
        try:
            print(shell_args(read_best_params(BEST_PARAMS, params)))
        except (FileNotFoundError, ValueError) as err:
            sys.exit(str(err))
        return
    tp = params.tune
    ds = tp.dataset
    shards = (_cli.SHARDS / ds).resolve()
    protocol_path = (_cli.MANIFESTS / f"{ds}.protocol.json").resolve()
    setup = TrialSetup(params=params, dataset=ds, shards_dir=shards, protocol_path=protocol_path,
                       deepspeed_template=_cli.deepspeed_template(params), max_epochs=tp.scheduler.max_epochs,
                       metric=tp.metric)
    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    try:
        outcome = run_search(setup, tp, uri, params.mlflow.experiment, resume=args.resume)
    except SearchInterrupted as err:
        sys.exit(f"{err}\ncontinue with: python -m pipeline.tune --resume --params {args.params}")
    except (KeyError, ValueError, FileExistsError, FileNotFoundError) as err:
        sys.exit(str(err.args[0] if isinstance(err, KeyError) else err))

    for t in outcome.ranked():
        print(t.summary(tp.metric))
    best = outcome.best
    if best is None:
        sys.exit(f"search {tp.name}: no trial finished; nothing to write (see the MLflow runs of the search)")
    run_id = outcome.trial_run_ids[best.trial_id]
    write_best_params(BEST_PARAMS, search=tp.name, dataset=ds, model=params.model.name, metric=tp.metric,
                      value=best.value, epochs=best.epochs, trial_id=best.trial_id, mlflow_run_id=run_id,
                      params=best.config)
    print(f"best: trial {best.trial_id}, {tp.metric} {best.value:.4f}; wrote {BEST_PARAMS}")
    if tp.register_best:
        protocol = Protocol.read(protocol_path)
        settings = eval_settings(params.eval, params.loader)

        def evaluate(model, meta) -> dict:
            return flat_metrics(score(model, eval_spec_for(meta, shards, **settings), protocol))

        model_uri, version = register_best(best, run_id, uri, params.mlflow.experiment, f"reid-{ds}",
                                           tags={"search": tp.name, "trial": best.trial_id, tp.metric: best.value},
                                           evaluate=evaluate)
        print(f"registered {model_uri} as reid-{ds} version {version}")


if __name__ == "__main__":
    main()
