"""DVC stage ``evaluate``, and cross-dataset scoring of any trained model.

Stage mode (scores ``runs/<dataset>`` on ``shards/<dataset>``, next to an untrained model of the
same architecture, and logs to the training MLflow run)::

    python -m pipeline.evaluate --params params.yaml --dataset msmt17

Cross-dataset mode (APNet Table VII protocol): any model, as a run folder / ``model.pt`` path or
an MLflow model URI, on the test split of any dataset root in any supported layout::

    python -m pipeline.evaluate --model models:/reid-msmt17/1 \
        --root ../shared/data/cuhk03-msmt17/MSMT17_V1 --layout msmt17 --out eval/cuhk03
"""

import tempfile
from pathlib import Path

from pipeline import _cli
from reid.data.protocols import Protocol
from reid.engine.trainer import load_model
from reid.evaluation.cross_domain import shard_test_split
from reid.evaluation.evaluate import (eval_device, eval_settings, eval_spec_for, first_round_recorder, flat_metrics,
                                      score, untrained_like, write_reports, write_visual_reports)
from reid.tracking.journal import JOURNAL_DIR, read_run_file, sync_command
from reid.tracking.compare import CompareError
from reid.tracking.cross_target import resolve_cross_target
from reid.tracking.mlflow_run import MlflowRun, resolve_tracking_uri
from pipeline.train import RUN_FILE


def _print(label: str, sets: dict) -> None:
    for name, r in sets.items():
        std = (lambda k: f" ± {100 * r[k + '_std']:.1f}") if r["num_rounds"] > 1 else (lambda k: "")
        print(f"{label} {name}: Rank-1 {100 * r['rank1']:.1f}%{std('rank1')}  Rank-5 {100 * r['rank5']:.1f}%  "
              f"mAP {100 * r['mAP']:.1f}%{std('mAP')}  mINP {100 * r['mINP']:.1f}%  "
              f"({r['num_valid_queries']} queries, {r['num_excluded_queries']} without a valid match, "
              f"{r['num_gallery']} gallery, {r['num_rounds']} round(s))")


def stage(args, params) -> None:
    run_dir = _cli.RUNS / args.dataset
    model, meta = load_model(run_dir)
    model.to(eval_device())
    spec = eval_spec_for(meta, _cli.SHARDS / args.dataset, **eval_settings(params.eval, params.loader))
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
    run_info = read_run_file(run_dir / RUN_FILE)  # a training run only in the offline journal continues there
    run = MlflowRun(run_info["tracking_uri"], params.mlflow.experiment, run_id=run_info["run_id"],
                    journal=run_dir / JOURNAL_DIR, journal_id=run_info["journal_id"] if run_info["offline"] else None)
    for label, sets in results.items():
        run.log_metrics(flat_metrics(sets, "" if label == "trained" else f"{label}."))
    for name, path in paths.items():
        run.log_artifact(path, artifact_path="evaluation")
    run.end()
    if run.offline:
        print(f"{args.dataset}: MLflow logged locally, sync with: {sync_command(run_dir / JOURNAL_DIR)}")


def cross(args, params) -> None:
    """Score ``--model`` on ``--root``; a ``models:/`` or ``runs:/`` model also gets the scores in
    its source run as ``cross.<--name>.<set>.<metric>`` (checked before anything is scored)."""
    try:
        target = resolve_cross_target(args.model, args.root, args.name,
                                      resolve_tracking_uri(params.mlflow.tracking_uri))
    except CompareError as err:
        raise SystemExit(str(err)) from None
    model, meta = target.module, target.meta
    model.to(eval_device())
    with tempfile.TemporaryDirectory(prefix="reid-eval-") as tmp:
        protocol = shard_test_split(args.layout, args.root, Path(tmp), num_draws=args.num_draws,
                                    gallery_seed=args.gallery_seed, dataset=Path(args.root).name,
                                    test_sets=args.test_sets, check_images=True)
        spec = eval_spec_for(meta, Path(tmp), **eval_settings(params.eval, params.loader))
        result = score(model, spec, protocol)
    out = Path(args.out)
    write_reports({"trained": result}, out / "metrics.json", out, title=f"CMC: {args.model} on {args.root}")
    _print(f"{args.model} on {args.root}", result)
    if target.log(flat_metrics(result)):
        print(f"logged cross.{target.name}.<set>.<metric> to MLflow run {target.source_run} (source of {args.model})")


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
    p.add_argument("--name", default=None,
                   help="cross mode, models:/ or runs:/ model: the evaluated dataset's name in the metrics "
                        "logged to the model's source run, cross.<name>.<set>.<metric> (default: the folder "
                        "name of --root; no '.' or '/')")
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
