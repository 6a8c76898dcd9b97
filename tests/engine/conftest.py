"""Engine-test helpers: the training worker and params variants (the tiny shards, params and clean
environment live in ``tests/conftest.py``)."""

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import clean_env, tiny_params  # noqa: F401  (re-exported for the engine tests)

WORKER = Path(__file__).with_name("_train_worker.py")


def save_params(work: Path, name: str, raw: dict) -> Path:
    """Write a params variant to ``work/params-<name>.yaml`` (next to the shards the worker reads)."""
    path = work / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_worker(params: Path, out: Path, mode: str = "full", timeout: int = 300) -> subprocess.CompletedProcess:
    """Train in a fresh process with ``_train_worker.py`` (MODE as documented there)."""
    return subprocess.run([sys.executable, str(WORKER), str(params), str(out), mode], env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
