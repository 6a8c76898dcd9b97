"""Tiny synthetic MSMT17 shards and params shared by the engine tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reid.data import synthetic
from reid.data.layouts import parse
from reid.data.protocols import build_protocol
from reid.data.shards import write_shards

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_train_worker.py")
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """shards/msmt17 (+ manifests/msmt17.protocol.json) of a 12-id, 3-camera synthetic MSMT17 at 64x32 px, under a fresh work dir."""
    work = tmp_path_factory.mktemp("engine")
    cfg = synthetic.MSMT17SynthConfig(num_train_ids=12, num_test_ids=4, num_cameras=3, cameras_per_id=2,
                                      images_per_id_camera=2, height=64, width=32, seed=1)
    root = synthetic.write_msmt17(work / "data", cfg)
    manifest = parse("msmt17", root)
    write_shards(manifest, root, work / "shards" / "msmt17", 1 << 20)
    build_protocol(manifest, num_draws=1, seed=0).write(work / "manifests" / "msmt17.protocol.json")
    return work


def tiny_params(work: Path, epochs: int = 2, **sections) -> Path:
    """Write a params.yaml into ``work`` for a tiny, fast run; ``sections`` override whole sections."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["datasets"]["msmt17"].update(root=str(work / "data" / "MSMT17_V1"), image_size=[64, 32])
    p["sampler"] = {"p": 3, "k": 2}
    p["loader"].update(num_threads=1, pad=4)
    p["optim"].update(epochs=epochs, warmup_epochs=1, milestones=[], lr=0.001)
    p["mlflow"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    p.update(sections)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def clean_env() -> dict:
    """The environment without distributed-launch variables or MLflow overrides."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and k != "MLFLOW_TRACKING_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def save_params(work: Path, name: str, raw: dict) -> Path:
    """Write a params variant to ``work/params-<name>.yaml`` (next to the shards the worker reads)."""
    path = work / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_worker(params: Path, out: Path, mode: str = "full", timeout: int = 300) -> subprocess.CompletedProcess:
    """Train in a fresh process with ``_train_worker.py`` (MODE as documented there)."""
    return subprocess.run([sys.executable, str(WORKER), str(params), str(out), mode], env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
