"""``tune/best_params.yaml``: the best trial's values, in a form ``dvc exp run -S`` takes back.

The file is a DVC output of the ``tune`` stage::

    search: search            # tune.name
    dataset: msmt17
    model: resnet_bnneck
    metric: val.mAP
    value: 0.61               # the metric at the trial's last epoch, in [0, 1]
    epochs: 12
    trial_id: 3f2a1_00002
    mlflow_run_id: ...        # the trial's child run
    params:                   # dotted params.yaml keys -> values
      loss.triplet.margin: 0.27
      optim.lr: 0.00041

``python -m pipeline.tune --best-args`` prints ``-S 'key=value'`` for each entry of ``params``, so
``dvc exp run $(python -m pipeline.tune --best-args)`` trains the pipeline with them.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Mapping

import yaml

from reid.io import atomic_write_text
from reid.params import Params

_FIELDS = ("search", "dataset", "model", "metric", "value", "epochs", "trial_id", "mlflow_run_id", "params")


def write_best_params(path: Path, search: str, dataset: str, model: str, metric: str, value: float, epochs: int,
                      trial_id: str, mlflow_run_id: str, params: Mapping[str, object]) -> None:
    """Write the best trial's summary and values atomically (see the module docstring)."""
    doc = {"search": search, "dataset": dataset, "model": model, "metric": metric, "value": float(value),
           "epochs": int(epochs), "trial_id": trial_id, "mlflow_run_id": mlflow_run_id,
           "params": {k: _plain(v) for k, v in params.items()}}
    header = (f"# Best trial of Ray Tune search {search!r} ({metric} = {value:.4f} after {epochs} epochs).\n"
              "# Train with these values: dvc exp run $(python -m pipeline.tune --best-args)\n")
    atomic_write_text(Path(path), header + yaml.safe_dump(doc, sort_keys=False))


def _plain(value: object) -> object:
    """numpy scalars (Ray and Optuna hand them out) as Python numbers, for YAML."""
    return value.item() if hasattr(value, "item") else value


def read_best_params(path: Path, params: Params) -> dict:
    """Read and check a ``best_params.yaml``: every field present and every value valid when put
    into ``params`` (the current ``params.yaml``).

    Returns:
        the document as a dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, a field missing, or a value ``params.yaml``'s schema rejects (names
            the file and the key).
    """
    from reid.tune.space import apply

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run a search first: python -m pipeline.tune)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    missing = [f for f in _FIELDS if f not in doc]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    if not isinstance(doc["params"], dict) or not doc["params"]:
        raise ValueError(f"{path}: params must be a non-empty mapping of dotted params keys to values")
    for key, value in doc["params"].items():
        try:
            apply(params, {key: value})
        except Exception as err:
            raise ValueError(f"{path}: params.{key} = {value!r} is not valid in params.yaml: {err}") from None
    return doc


def dvc_set_args(doc: Mapping) -> list[str]:
    """``["-S", "key=value", ...]`` for ``dvc exp run`` (values as YAML scalars, which DVC parses back)."""
    args: list[str] = []
    for key, value in doc["params"].items():
        args += ["-S", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return args


def shell_args(doc: Mapping) -> str:
    """:func:`dvc_set_args` as one line for ``dvc exp run $(...)``: a command substitution splits
    on whitespace and does not remove quotes, so the arguments are printed bare.

    Raises:
        ValueError: a value would not survive that (whitespace or shell quoting characters).
    """
    args = dvc_set_args(doc)
    for arg in args:
        if arg != shlex.quote(arg):
            raise ValueError(f"best params: {arg!r} needs shell quoting; pass it to dvc exp run -S by hand")
    return " ".join(args)
