"""DVC stage ``shard``: write ``shards/<dataset>/`` WebDataset tars, DALI indexes and shards.json."""

from pipeline import _cli
from reid.data.shards import write_shards


def main() -> None:
    args = _cli.parser(__doc__).parse_args()
    params = _cli.load(args.params)
    ds = params.dataset(args.dataset)
    summary = write_shards(_cli.MANIFESTS / f"{args.dataset}.csv", ds.root, _cli.SHARDS / args.dataset,
                           params.shard.target_bytes, workers=params.shard.workers, dataset=args.dataset)
    print(f"{args.dataset}: {summary.summary()}")


if __name__ == "__main__":
    main()
