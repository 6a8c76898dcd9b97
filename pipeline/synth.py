"""DVC stage ``synth``: write the embedded synthetic MSMT17_V1 and Vehicle-1M datasets."""

from pathlib import Path

from pipeline import _cli
from reid.data import synthetic


def main() -> None:
    args = _cli.parser(__doc__, dataset=False).parse_args()
    s = _cli.load(args.params).synthetic
    out = Path(s.out_dir)
    print("wrote", synthetic.write_msmt17(out, synthetic.MSMT17SynthConfig(**s.msmt17.model_dump()), overwrite=True))
    print("wrote", synthetic.write_vehicle1m(out, synthetic.Vehicle1MSynthConfig(**s.vehicle1m.model_dump()), overwrite=True))


if __name__ == "__main__":
    main()
