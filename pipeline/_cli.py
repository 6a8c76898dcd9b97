"""Shared command-line plumbing of the DVC stages: ``--params`` and ``--dataset``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reid.params import Params, ParamsError, load_params

MANIFESTS = Path("manifests")
SHARDS = Path("shards")
RUNS = Path("runs")
METRICS = Path("metrics")
PLOTS = Path("plots")


def parser(description: str, dataset: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if dataset:
        p.add_argument("--dataset", required=True, help="a key of params.yaml's datasets section")
    return p


def load(path: str) -> Params:
    """Load params or exit with the validation message (naming the file and keys)."""
    try:
        return load_params(path)
    except ParamsError as err:
        sys.exit(str(err))
