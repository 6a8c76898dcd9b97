"""DVC stage ``prepare``: parse a dataset's official layout into ``manifests/<dataset>.csv``, its
stats, and its evaluation protocol (``manifests/<dataset>.protocol.json``)."""

from pipeline import _cli
from reid.data.layouts import parse
from reid.data.protocols import build_protocol
from reid.io import atomic_write_json


def main() -> None:
    args = _cli.parser(__doc__).parse_args()
    ds = _cli.load(args.params).dataset(args.dataset)
    manifest = parse(ds.layout, ds.root, dataset=args.dataset, test_sets=ds.test_sets, val=ds.val,
                     check_images=ds.check_images)
    protocol = build_protocol(manifest, ds.num_draws, ds.gallery_seed)
    stats = manifest.stats()
    manifest.write(_cli.MANIFESTS / f"{args.dataset}.csv")
    protocol.write(_cli.MANIFESTS / f"{args.dataset}.protocol.json")
    atomic_write_json(_cli.MANIFESTS / f"{args.dataset}.stats.json", stats)
    print(f"{args.dataset}: {stats}; protocol {protocol.kind} over {', '.join(protocol.sets)}")


if __name__ == "__main__":
    main()
