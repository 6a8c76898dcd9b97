"""Compare the registered models: Rank-1 / mAP / mINP of every model version across datasets and protocols.

Reads the MLflow registry of params.yaml's ``mlflow`` section (every ``reid-*`` model, or ``--models``),
prints the table, writes ``<out>/models.csv`` (fractions) and ``<out>/models.md`` (percent), and logs
both as artifacts of an MLflow run named ``compare`` (tag ``reid.kind=compare``)::

    python -m pipeline.compare --params params.yaml [--models reid-msmt17 ...] [--latest-only] [--out compare]
"""

import sys
from pathlib import Path

from pipeline import _cli
from reid.tracking.compare import DEFAULT_PREFIX, CompareError, collect, print_table, write_table
from reid.tracking.mlflow_run import MlflowRun, resolve_tracking_uri


def main() -> None:
    p = _cli.parser(__doc__, dataset=False)
    p.add_argument("--models", nargs="+", metavar="NAME", default=None,
                   help=f"registered model names (default: every one whose name starts with {DEFAULT_PREFIX})")
    p.add_argument("--latest-only", action="store_true", help="only the highest version of each model")
    p.add_argument("--out", default="compare", help="folder for models.csv and models.md (default: compare)")
    args = p.parse_args()
    params = _cli.load(args.params)
    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    try:
        table = collect(uri, names=args.models, latest_only=args.latest_only)
    except CompareError as err:
        sys.exit(f"compare: {err}")
    print_table(table)
    out = Path(args.out)
    paths = write_table(table, out / "models.csv", out / "models.md")
    run = MlflowRun(uri, params.mlflow.experiment, run_name="compare", tags={"reid.kind": "compare"})
    try:
        run.log_params({"models": " ".join(args.models) if args.models else f"{DEFAULT_PREFIX}*",
                        "latest_only": args.latest_only})
        for path in paths.values():
            run.log_artifact(path)
    except BaseException:
        run.end("FAILED")
        raise
    run.end()
    print(f"compare: {len(table.rows)} model version(s), {len(table.columns)} metric column(s); wrote "
          f"{paths['csv']} and {paths['markdown']}; MLflow run {run.run_id} (experiment {params.mlflow.experiment})")


if __name__ == "__main__":
    main()
