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
#: The repository root (``infra/`` templates live there).
REPO = Path(__file__).resolve().parents[1]


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


def deepspeed_template(params: Params) -> dict:
    """The DeepSpeed config template ``engine.deepspeed_config`` names (default
    ``infra/deepspeed/zero<engine.zero_stage>.json``), read; exits with a message naming the file
    when it is missing or not JSON."""
    from reid.engine.deepspeed_config import load_template

    name = params.engine.deepspeed_config or f"infra/deepspeed/zero{params.engine.zero_stage}.json"
    path = Path(name) if Path(name).is_absolute() else REPO / name
    try:
        return load_template(path)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"engine.deepspeed_config: {err}")
