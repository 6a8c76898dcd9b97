"""A real MLflow tracking server (tests.conftest ``mlflow_server``): ``pipeline.train`` logs to it,
read back through the REST API; training with the server down logs locally and
``pipeline.mlflow_sync`` replays it; a server lost mid-run (a TCP proxy in front of it closes) sends
the rest of the run to the journal."""

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml

from reid.tracking.journal import JOURNAL_DIR, SYNC_RECORD, sync_journals
from reid.tracking.mlflow_run import MlflowRun
from reid.engine.distributed import free_port
from tests.conftest import clean_env, tiny_params

TIMEOUT_S = 240


def work_dir(tiny_shards: Path, tmp_path: Path, tracking_uri: str) -> Path:
    """A stage cwd of its own (shards and manifests linked from the shared tiny set), 2-epoch params."""
    for name in ("shards", "manifests"):
        (tmp_path / name).symlink_to(tiny_shards / name)
    raw = yaml.safe_load(tiny_params(tiny_shards, epochs=2).read_text())
    raw["loader"]["backend"] = "torch"
    raw["mlflow"]["tracking_uri"] = tracking_uri
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def run_module(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = clean_env()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-6000:]}"
    return r


def rest(url: str, endpoint: str, **query) -> dict:
    r = requests.get(f"{url}/api/2.0/mlflow/{endpoint}", params=query, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def run_info(url: str, run_id: str) -> dict:
    run = rest(url, "runs/get", run_id=run_id)["run"]
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    return {"status": run["info"]["status"], "params": params}


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    metrics = rest(url, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
    return sorted((int(m["step"]), m["value"]) for m in metrics)


def registered_version(url: str, run_id: str) -> dict:
    versions = rest(url, "model-versions/search", filter="name='reid-msmt17'")["model_versions"]
    (v,) = [v for v in versions if v["run_id"] == run_id]
    return v


def test_train_logs_to_tracking_server(mlflow_server, tiny_shards, tmp_path):
    work = work_dir(tiny_shards, tmp_path, mlflow_server)
    r = ok(run_module(work, "pipeline.train", "--params", "params.yaml", "--dataset", "msmt17"))
    info = json.loads((work / "runs" / "msmt17" / "mlflow_run.json").read_text())
    assert info["tracking_uri"] == mlflow_server and not info["offline"] and info["model_uri"]
    assert f"MLflow run {info['run_id']}" in r.stdout and "unreachable" not in r.stderr
    run = run_info(mlflow_server, info["run_id"])
    assert run["status"] == "FINISHED"
    assert run["params"]["dataset"] == "msmt17" and run["params"]["optim.epochs"] == "2"
    loss = history(mlflow_server, info["run_id"], "loss")
    assert [step for step, _ in loss] == [1, 2] and all(v > 0 for _, v in loss)
    assert registered_version(mlflow_server, info["run_id"])["status"] == "READY"
    assert not (work / "runs" / "msmt17" / JOURNAL_DIR).exists()


def test_offline_train_then_sync(mlflow_server, tiny_shards, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    work = work_dir(tiny_shards, tmp_path, dead)
    r = ok(run_module(work, "pipeline.train", "--params", "params.yaml", "--dataset", "msmt17"))
    assert f"MLflow tracking server {dead} is unreachable" in r.stderr and "logging locally" in r.stderr
    assert "logged locally, sync with: python -m pipeline.mlflow_sync runs/msmt17" in r.stdout
    info = json.loads((work / "runs" / "msmt17" / "mlflow_run.json").read_text())
    assert info["offline"] and info["run_id"] is None and info["model_uri"] is None
    r = ok(run_module(work, "pipeline.evaluate", "--params", "params.yaml", "--dataset", "msmt17"))
    assert "continues offline" in r.stderr and "MLflow logged locally, sync with" in r.stdout

    ok(run_module(work, "pipeline.mlflow_sync", "runs/msmt17", "--tracking-uri", mlflow_server))
    synced = json.loads((work / "runs" / "msmt17" / SYNC_RECORD).read_text())[info["journal_id"]]
    run = run_info(mlflow_server, synced["run_id"])
    assert run["status"] == "FINISHED" and run["params"]["dataset"] == "msmt17"
    assert [step for step, _ in history(mlflow_server, synced["run_id"], "loss")] == [1, 2]
    mAP = json.loads((work / "metrics" / "msmt17.json").read_text())["trained"]["query_gallery"]["mAP"]
    # evaluate's metrics went into the same journal, so into the same run
    assert history(mlflow_server, synced["run_id"], "query_gallery.mAP") == [(0, pytest.approx(mAP))]
    assert registered_version(mlflow_server, synced["run_id"])["source"]
    assert not (work / "runs" / "msmt17" / JOURNAL_DIR).exists()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a local server port until :meth:`close` (the server then looks
    gone to a client of the proxy: open connections drop, new ones are refused)."""

    def __init__(self, target_port: int):
        self.target_port, self.sockets = target_port, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for s in [self.listener, *self.sockets]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_server_lost_mid_run_continues_in_journal(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of ~4 minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    proxy = TcpProxy(int(mlflow_server.rsplit(":", 1)[1]))
    via_proxy = f"http://127.0.0.1:{proxy.port}"
    run_dir = tmp_path / "runs" / "ds"
    run = MlflowRun(via_proxy, "mid-run", run_name="ds", journal=run_dir / JOURNAL_DIR)
    run.log_params({"lr": 0.1})
    run.log_metrics({"loss": 3.0}, step=1)
    assert not run.offline and capsys.readouterr().err == ""

    proxy.close()  # the server is gone for this client
    run.log_metrics({"loss": 2.0}, step=2)
    err = capsys.readouterr().err
    assert run.offline and f"MLflow tracking server {via_proxy} is unreachable" in err
    assert f"run {run.run_id} continues in the local journal" in err
    run.log_metrics({"loss": 1.0}, step=3)
    (tmp_path / "report.txt").write_text("after the outage")
    run.log_artifact(tmp_path / "report.txt")
    run.end()
    assert capsys.readouterr().err == ""  # said once
    assert run.record["run_id"] and run.record["offline"]
    assert run_info(mlflow_server, run.run_id)["status"] == "RUNNING"
    assert history(mlflow_server, run.run_id, "loss") == [(1, 3.0)]

    (result,) = sync_journals(run_dir, mlflow_server)
    assert result.run_id == run.run_id
    assert run_info(mlflow_server, run.run_id) == {"status": "FINISHED", "params": {"lr": "0.1"}}
    assert history(mlflow_server, run.run_id, "loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]
    files = rest(mlflow_server, "artifacts/list", run_id=run.run_id).get("files", [])
    assert [f["path"] for f in files] == ["report.txt"]
