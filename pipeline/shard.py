"""DVC stage ``shard``: write ``shards/<dataset>/`` WebDataset tars, DALI indexes and shards.json."""

from pipeline import _cli
from reid.data.manifest import Manifest
from reid.data.shards import write_shards


def main() -> None:
    args = _cli.parser(__doc__).parse_args()
    params = _cli.load(args.params)
    ds = params.dataset(args.dataset)
    manifest = Manifest.read(_cli.MANIFESTS / f"{args.dataset}.csv", dataset=args.dataset)
    index = write_shards(manifest, ds.root, _cli.SHARDS / args.dataset, params.shard.target_bytes)
    print(f"{args.dataset}: {index.summary()}")


if __name__ == "__main__":
    main()
