"""Offline MLflow journal: calls recorded while the server is unreachable, replayed by a sync into a
local sqlite store (the server tests are in test_server.py)."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import reid.tracking.mlflow_run as mlflow_run_mod
from pipeline import mlflow_sync
from reid.models.registry import build
from reid.tracking.journal import JOURNAL_DIR, SYNC_RECORD, JournalError, read_run_file, sync_journals
from reid.tracking.mlflow_run import MlflowRun, load_logged_model
from reid.engine.distributed import free_port


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in tmp (sqlite stores put artifacts in ./mlruns), fail fast on a dead server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"


def journal_lines(run_dir: Path) -> list[dict]:
    (path,) = (run_dir / JOURNAL_DIR).glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_model():
    torch.manual_seed(0)
    meta = {"name": "resnet_bnneck", "kwargs": {"depth": 18, "last_stride": 1}, "num_classes": 4,
            "image_size": [64, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return build(meta["name"], meta["num_classes"], **meta["kwargs"]).eval(), meta


def test_offline_run_round_trip(tmp_path, capsys, monkeypatch):
    run_dir, uri = tmp_path / "runs" / "ds", dead_uri()
    run = MlflowRun(uri, "exp", run_name="ds", tags={"dataset": "ds"}, journal=run_dir / JOURNAL_DIR)
    err = capsys.readouterr().err
    assert run.offline and run.run_id is None
    assert f"MLflow tracking server {uri} is unreachable" in err and "logging locally" in err
    assert str(run.journal_file) in err and f"python -m pipeline.mlflow_sync {run_dir}" in err
    assert run.record == {"run_id": None, "tracking_uri": uri, "offline": True,
                          "journal_id": run.journal_file.stem}

    run.log_params({"lr": 0.001, "depth": 18, "none": None})
    for step, loss in enumerate([3.0, 2.5, 2.25], start=1):
        run.log_metrics({"loss": loss, "val/rank1": step / 10}, step=step)
    report = tmp_path / "report.txt"
    report.write_text("hello")
    run.log_artifact(report, artifact_path="evaluation")
    report.unlink()  # the journal keeps its own copy
    module, meta = tiny_model()
    assert run.log_model(module, meta, "reid-test") is None
    run.end()
    lines = journal_lines(run_dir)
    assert [r["type"] for r in lines] == ["header", "params", "metrics", "metrics", "metrics", "artifact", "model",
                                          "end"]
    header, metric_lines, end = lines[0], lines[2:5], lines[-1]
    assert header["run_id"] is None and header["tags"]["dataset"] == "ds" and "mlflow.user" in header["tags"]

    # a first sync dies at the model line (progress kept); the retry resumes there
    target = f"sqlite:///{tmp_path / 'store.db'}"
    real = mlflow_run_mod.log_pytorch_model
    monkeypatch.setattr(mlflow_run_mod, "log_pytorch_model", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(JournalError, match=r"\.jsonl:7: replay refused by .*boom"):
        sync_journals(run_dir, target)
    progress = json.loads(next((run_dir / JOURNAL_DIR).glob("*.progress.json")).read_text())
    assert progress["lines"] == 6
    monkeypatch.setattr(mlflow_run_mod, "log_pytorch_model", real)
    (result,) = sync_journals(run_dir, target)
    assert result.replayed == 2  # model + end; params/metrics/artifact were not sent again
    assert not (run_dir / JOURNAL_DIR).exists()

    client = MlflowClient(target)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "ds"
    assert r.info.start_time == header["created_ms"] and r.info.end_time == end["timestamp_ms"]
    assert r.data.params == {"lr": "0.001", "depth": "18", "none": "null"}
    assert r.data.tags["dataset"] == "ds" and r.data.tags["reid.journal_id"] == header["journal_id"]
    for key, name in (("loss", "loss"), ("val.rank1", "val.rank1")):
        hist = sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value, m.timestamp) for m in hist] == \
            [(ml["step"], ml["metrics"][name], ml["timestamp_ms"]) for ml in metric_lines]
    local = client.download_artifacts(result.run_id, "evaluation/report.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "hello"
    (version,) = client.search_model_versions("name = 'reid-test'")
    assert str(version.version) == "1" and version.run_id == result.run_id
    mlflow.set_tracking_uri(target)
    loaded, loaded_meta = load_logged_model(result.model_uri)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x)["embed"], module(x)["embed"])
    assert loaded_meta == meta

    # the run file still says offline (it is a DVC output); read_run_file applies the sync record
    (run_dir / "mlflow_run.json").write_text(json.dumps({**run.record, "model_uri": None}))
    info = read_run_file(run_dir / "mlflow_run.json")
    assert info["run_id"] == result.run_id and not info["offline"] and info["journal_id"] is None
    assert info["model_uri"] == result.model_uri and info["tracking_uri"] == target
    assert json.loads((run_dir / SYNC_RECORD).read_text())[header["journal_id"]]["run_id"] == result.run_id


def test_later_process_continues_offline_journal(tmp_path, capsys):
    run_dir, uri = tmp_path / "runs" / "ds", dead_uri()
    train = MlflowRun(uri, "exp", run_name="ds", journal=run_dir / JOURNAL_DIR)
    train.log_metrics({"loss": 1.0}, step=1)
    with pytest.raises(JournalError, match="in use by another process"):
        sync_journals(run_dir, f"sqlite:///{tmp_path / 'store.db'}")  # still being written
    train.end()
    record = train.record
    capsys.readouterr()
    evaluate = MlflowRun(uri, "exp", run_id=record["run_id"], journal=run_dir / JOURNAL_DIR,
                         journal_id=record["journal_id"])
    assert evaluate.offline and evaluate.journal_file == train.journal_file
    assert "continues offline" in capsys.readouterr().err
    evaluate.log_metrics({"mAP": 0.5})
    evaluate.end()
    assert [r["type"] for r in journal_lines(run_dir)] == ["header", "metrics", "end", "reopen", "metrics", "end"]
    (result,) = sync_journals(run_dir, f"sqlite:///{tmp_path / 'store.db'}")
    r = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}").get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.data.metrics == {"loss": 1.0, "mAP": 0.5}
    with pytest.raises(JournalError, match="not found"):  # synced: nothing left to continue
        MlflowRun(uri, "exp", journal=run_dir / JOURNAL_DIR, journal_id=record["journal_id"])


def test_local_store_and_no_journal_never_go_offline(tmp_path):
    run = MlflowRun(f"sqlite:///{tmp_path / 'store.db'}", "exp", run_name="x", journal=tmp_path / JOURNAL_DIR)
    run.log_metrics({"loss": 1.0}, step=1)
    run.end()
    assert not run.offline and run.run_id and not (tmp_path / JOURNAL_DIR).exists()
    with pytest.raises(MlflowException):  # no journal: errors propagate, as before
        MlflowRun(dead_uri(), "exp", run_name="x")


def test_sync_errors_are_named(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "ds"
    with pytest.raises(JournalError, match=r"runs/ds: not a folder"):
        sync_journals(run_dir)
    run_dir.mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"mlflow_sync: .*runs/ds: no MLflow journal to sync"):
        mlflow_sync.main([str(run_dir)])

    uri = dead_uri()
    run = MlflowRun(uri, "exp", run_name="ds", journal=run_dir / JOURNAL_DIR)
    run.log_metrics({"loss": 1.0}, step=1)
    run.end()
    with pytest.raises(SystemExit, match=f"mlflow_sync: MLflow tracking server {uri} is still unreachable"):
        mlflow_sync.main([str(run_dir)])
    assert run.journal_file.is_file()  # kept for a later sync

    with run.journal_file.open("a") as fh:
        fh.write('{"type": "metrics", "metrics": {"loss": 0.5}, "step": 2, "timest\n')  # a torn write
    with pytest.raises(JournalError, match=rf"{run.journal_file}:4: corrupt journal line"):
        sync_journals(run_dir, f"sqlite:///{tmp_path / 'store.db'}")
    assert not (tmp_path / "store.db").exists()  # checked before anything is sent
