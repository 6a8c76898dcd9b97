"""DVC stage ``prepare``: parse a dataset's official layout into ``manifests/<dataset>.csv`` (+ stats)."""

from pipeline import _cli
from reid.data.layouts import parse
from reid.io import atomic_write_json


def main() -> None:
    args = _cli.parser(__doc__).parse_args()
    ds = _cli.load(args.params).dataset(args.dataset)
    manifest = parse(ds.layout, ds.root, dataset=args.dataset, test_set=ds.test_set,
                     gallery_seed=ds.gallery_seed, check_images=ds.check_images)
    manifest.write(_cli.MANIFESTS / f"{args.dataset}.csv")
    stats = manifest.stats()
    atomic_write_json(_cli.MANIFESTS / f"{args.dataset}.stats.json", stats)
    print(f"{args.dataset}: {stats}")


if __name__ == "__main__":
    main()
