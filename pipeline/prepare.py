"""DVC stage ``prepare``: parse a dataset's official layout, check it, and write
``manifests/<dataset>.csv``, its stats, its evaluation protocol (``.protocol.json``) and the
data-check report (``.checks.md`` / ``.checks.json``). On any error nothing is written.

Rows stream through an on-disk table (``reid.data.row_table``), so memory stays flat whatever the
dataset's size."""

import sys

from pipeline import _cli
from reid.data.layouts import fill
from reid.data.manifest import write_rows
from reid.data.protocols import write_protocol
from reid.data.row_table import RowTable
from reid.data.validation import (ValidationConfig, ValidationError, disabled_report, validate_table,
                                  write_report)
from reid.io import atomic_write_json


def main() -> None:
    args = _cli.parser(__doc__).parse_args()
    params = _cli.load(args.params)
    ds, checks = params.dataset(args.dataset), params.data_checks
    out = _cli.MANIFESTS / args.dataset
    with RowTable(args.dataset) as table:
        fill(ds.layout, table, ds.root, test_sets=ds.test_sets, val=ds.val, check_images=ds.check_images)
        if checks.enabled:
            cfg = ValidationConfig(min_images=params.sampler.k, drop_small_ids=checks.drop_small_ids,
                                   fatal=checks.fatal, workers=checks.workers, decode=checks.decode)
            try:
                report = validate_table(table, ds.root, cfg)
            except ValidationError as err:
                sys.exit(f"{args.dataset}: data checks failed (data_checks.fatal is true):\n{err}")
        else:
            report = disabled_report(table, ds.root)
        kind, sets = write_protocol(table, out.with_suffix(".protocol.json"), ds.num_draws, ds.gallery_seed)
        write_report(report, out.with_suffix(".checks.md"), out.with_suffix(".checks.json"))
        write_rows(out.with_suffix(".csv"), table.rows())
        stats = table.stats()
        atomic_write_json(out.with_suffix(".stats.json"), stats)
    print(f"{args.dataset}: {stats}; protocol {kind} over {', '.join(sets)}; "
          f"data checks: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")


if __name__ == "__main__":
    main()
