"""DVC stage ``evaluate``, and cross-dataset scoring of any trained model.

Stage mode (scores ``runs/<dataset>`` on ``shards/<dataset>``, next to an untrained model of the
same architecture, and logs to the training MLflow run)::

    python -m pipeline.evaluate --params params.yaml --dataset msmt17

Cross-dataset mode (APNet Table VII protocol): any model, as a run folder / ``model.pt`` path or
an MLflow model URI, on the test split of any dataset root in any supported layout::

    python -m pipeline.evaluate --model models:/reid-msmt17/1 \
        --root ../shared/data/cuhk03-msmt17/MSMT17_V1 --layout msmt17 --out eval/cuhk03
"""

import json
import tempfile
from pathlib import Path

from pipeline import _cli
from reid.data.protocols import Protocol
from reid.engine.trainer import load_model
from reid.evaluation.cross_domain import shard_test_split
from reid.evaluation.rerank import RerankConfig
from reid.evaluation.evaluate import (eval_device, eval_spec_for, first_round_recorder, flat_metrics, score,
                                      untrained_like, write_reports, write_visual_reports)
from reid.tracking.mlflow_run import MlflowRun, load_logged_model, resolve_tracking_uri
from pipeline.train import RUN_FILE


def _print(label: str, sets: dict) -> None:
    for name, r in sets.items():
        std = (lambda k: f" ± {100 * r[k + '_std']:.1f}") if r["num_rounds"] > 1 else (lambda k: "")
        print(f"{label} {name}: Rank-1 {100 * r['rank1']:.1f}%{std('rank1')}  Rank-5 {100 * r['rank5']:.1f}%  "
              f"mAP {100 * r['mAP']:.1f}%{std('mAP')}  mINP {100 * r['mINP']:.1f}%  "
              f"({r['num_valid_queries']} queries, {r['num_excluded_queries']} without a valid match, "
              f"{r['num_gallery']} gallery, {r['num_rounds']} round(s))")


def _eval_settings(params) -> dict:
    """``eval_spec_for`` keyword arguments from the ``eval`` and ``loader`` params."""
    e = params.eval
    rerank = RerankConfig(e.rerank.k1, e.rerank.k2, e.rerank.lambda_value) if e.rerank.enabled else None
    return dict(metric=e.metric, flip=e.flip, batch_size=e.batch_size, max_rank=e.max_rank,
                chunk_size=e.chunk_size, num_threads=params.loader.num_threads, backend=params.loader.backend,
                dtype=e.dtype, query_expansion=e.query_expansion, rerank=rerank)


def stage(args, params) -> None:
    run_dir = _cli.RUNS / args.dataset
    model, meta = load_model(run_dir)
    model.to(eval_device())
    spec = eval_spec_for(meta, _cli.SHARDS / args.dataset, **_eval_settings(params))
    protocol = Protocol.read(_cli.MANIFESTS / f"{args.dataset}.protocol.json")
    models = {"trained": model, "untrained": untrained_like(meta, params.engine.seed).to(eval_device())}
    results, rounds = {}, {}
    for label, m in models.items():
        record, rounds[label] = first_round_recorder()
        results[label] = score(m, spec, protocol, on_round=record)
    paths = write_reports(results, _cli.METRICS / f"{args.dataset}.json", _cli.PLOTS / args.dataset,
                          title=f"CMC: {args.dataset}")
    for label, (rnd,) in rounds.items():
        paths.update(write_visual_reports(rnd, spec.shards_dir, _cli.PLOTS / args.dataset, label,
                                          f"{args.dataset} {label}", spec.metric, seed=params.engine.seed))
    for label, r in results.items():
        _print(f"{args.dataset} {label}", r)
    run_info = json.loads((run_dir / RUN_FILE).read_text())
    run = MlflowRun(run_info["tracking_uri"], params.mlflow.experiment, run_id=run_info["run_id"])
    for label, sets in results.items():
        run.log_metrics(flat_metrics(sets, "" if label == "trained" else f"{label}."))
    for name, path in paths.items():
        run.log_artifact(path, artifact_path="evaluation")
    run.end()


def cross(args, params) -> None:
    target = Path(args.model)
    if target.exists():
        model, meta = load_model(target if target.is_dir() else target.parent)
    else:
        import mlflow

        mlflow.set_tracking_uri(resolve_tracking_uri(params.mlflow.tracking_uri))
        model, meta = load_logged_model(args.model)
    model.to(eval_device())
    with tempfile.TemporaryDirectory(prefix="reid-eval-") as tmp:
        protocol = shard_test_split(args.layout, args.root, Path(tmp), num_draws=args.num_draws,
                                    gallery_seed=args.gallery_seed, dataset=Path(args.root).name,
                                    test_sets=args.test_sets, check_images=True)
        spec = eval_spec_for(meta, Path(tmp), **_eval_settings(params))
        result = score(model, spec, protocol)
    out = Path(args.out)
    write_reports({"trained": result}, out / "metrics.json", out, title=f"CMC: {args.model} on {args.root}")
    _print(f"{args.model} on {args.root}", result)


def main() -> None:
    p = _cli.parser(__doc__, dataset=False)
    p.add_argument("--dataset", help="stage mode: a key of params.yaml's datasets section")
    p.add_argument("--model", help="cross mode: run folder, model.pt path or MLflow model URI")
    p.add_argument("--root", help="cross mode: dataset root in its official layout")
    p.add_argument("--layout", help="cross mode: layout of --root (msmt17, vehicle1m, vehicleid, market1501, veri776)")
    p.add_argument("--test-sets", nargs="+", default=None, help="cross mode, vehicle layouts: test lists (default all)")
    p.add_argument("--num-draws", type=int, default=10, help="cross mode, vehicle layouts: gallery draws per list")
    p.add_argument("--gallery-seed", type=int, default=0, help="cross mode, vehicle layouts: gallery draw seed")
    p.add_argument("--out", default="eval", help="cross mode: output folder for metrics.json and cmc.png")
    args = p.parse_args()
    params = _cli.load(args.params)
    if args.dataset and not args.model:
        stage(args, params)
    elif args.model and args.root and args.layout and not args.dataset:
        cross(args, params)
    else:
        p.error("give either --dataset (stage mode) or --model, --root and --layout (cross mode)")


if __name__ == "__main__":
    main()
