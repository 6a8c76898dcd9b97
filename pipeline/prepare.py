"""DVC stage ``prepare``: parse a dataset's official layout, check it, and write
``manifests/<dataset>.csv``, its stats, its evaluation protocol (``.protocol.json``) and the
data-check report (``.checks.md`` / ``.checks.json``). On any error nothing is written."""

import sys

from pipeline import _cli
from reid.data.layouts import parse
from reid.data.protocols import build_protocol
from reid.data.validation import ValidationConfig, ValidationError, disabled_report, validate, write_report
from reid.io import atomic_write_json


def main() -> None:
    args = _cli.parser(__doc__).parse_args()
    params = _cli.load(args.params)
    ds, checks = params.dataset(args.dataset), params.data_checks
    manifest = parse(ds.layout, ds.root, dataset=args.dataset, test_sets=ds.test_sets, val=ds.val,
                     check_images=ds.check_images)
    if checks.enabled:
        cfg = ValidationConfig(min_images=params.sampler.k, drop_small_ids=checks.drop_small_ids,
                               fatal=checks.fatal, workers=checks.workers, decode=checks.decode)
        try:
            manifest, report = validate(manifest, ds.root, cfg)
        except ValidationError as err:
            sys.exit(f"{args.dataset}: data checks failed (data_checks.fatal is true):\n{err}")
    else:
        report = disabled_report(manifest, ds.root)
    protocol = build_protocol(manifest, ds.num_draws, ds.gallery_seed)
    out = _cli.MANIFESTS / args.dataset
    write_report(report, out.with_suffix(".checks.md"), out.with_suffix(".checks.json"))
    manifest.write(out.with_suffix(".csv"))
    protocol.write(out.with_suffix(".protocol.json"))
    atomic_write_json(out.with_suffix(".stats.json"), manifest.stats())
    print(f"{args.dataset}: {manifest.stats()}; protocol {protocol.kind} over {', '.join(protocol.sets)}; "
          f"data checks: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")


if __name__ == "__main__":
    main()
