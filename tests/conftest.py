"""Fixtures shared across test packages: tiny synthetic MSMT17 shards and params, a clean subprocess
environment, and a real local MLflow tracking server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests
import yaml

from reid.data import synthetic
from reid.data.layouts import parse
from reid.data.protocols import build_protocol
from reid.data.shards import write_shards
from reid.engine.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """shards/msmt17 (+ manifests/msmt17.protocol.json) of a 12-id, 3-camera synthetic MSMT17 at 64x32 px, under a fresh work dir."""
    work = tmp_path_factory.mktemp("tiny")
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


class MlflowServer:
    """A local ``mlflow server`` process (sqlite backend store, proxied artifacts) under ``root``.

    ``url`` is its ``http://127.0.0.1:<port>``; :meth:`stop` ends it (its process group).
    """

    def __init__(self, root: Path, port: Optional[int] = None, timeout: float = 90.0):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        env = clean_env()
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner (huey workers)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                 "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                what = f"exited {self.proc.returncode}" if self.proc.returncode is not None else \
                    f"no healthy answer within {timeout:g} s"
                raise RuntimeError(f"mlflow server on {self.url}: {what}\n--- {self.log}\n"
                                   f"{self.log.read_text(errors='replace')[-6000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind by the server's own shutdown
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """URL (``http://127.0.0.1:<port>``) of a real MLflow tracking server for this test session:
    sqlite backend store and proxied artifacts in a temp folder, one worker."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.url
    finally:
        server.stop()
