"""A real tiny search: ``python -m pipeline.tune`` with Ray on this CPU host, 4 trials x 2 epochs.

The trials are fixed by ``tune.points_to_evaluate`` (run one at a time, in order) so what ASHA and
the failure handling must do is known in advance:

1. ``optim.lr`` 1e-7: first at the epoch-1 rung, so it continues to epoch 2.
2. ``optim.lr`` 3e-3: its epoch-1 val.mAP (0.19 on this machine, deterministic on CPU) is below
   trial 1's (0.25, weights barely moved), the only other value at that rung, so ASHA stops it.
3. ``sampler.p`` 50: more identities than the 12 of the tiny shards; the sampler raises, the
   trial is failed in Ray and MLflow, and the search goes on.
4. ``optim.lr`` 3e-4: runs like the others.

The search logs to a real MLflow tracking server over HTTP (the ``mlflow_server`` fixture), and
one test reads its runs back through the REST API. A second search (local sqlite store) is
interrupted with SIGINT after its first trial has reported epoch 1, then resumed with ``--resume``
(``Tuner.restore``): one parent run, no duplicated child runs or epochs, and its first trial ends
exactly where the same trial of the uninterrupted search ended.

The searches run with their own ``$TMPDIR`` (Ray's session folder goes there too), so one test can
check that the trials leave no run folders behind.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml

from tests.conftest import clean_env, tiny_params

SPACE = {"optim.lr": {"type": "loguniform", "low": 1e-7, "high": 3e-3},
         "sampler.p": {"type": "choice", "values": [3, 50]}}
POINTS = [{"optim.lr": 1e-7, "sampler.p": 3}, {"optim.lr": 3e-3, "sampler.p": 3},
          {"optim.lr": 1e-3, "sampler.p": 50}, {"optim.lr": 3e-4, "sampler.p": 3}]
EXPERIMENT = "tune-test"
TIMEOUT_S = 420


def _work(tiny_shards: Path, tmp_path_factory, name: str, num_samples: int, points: list,
          tracking_uri: str | None = None) -> Path:
    """A folder with the tiny shards linked in and a params.yaml for a search named ``name``
    (MLflow: ``tracking_uri``, else a sqlite store in the folder)."""
    work = tmp_path_factory.mktemp(name)
    for sub in ("shards", "manifests"):
        (work / sub).symlink_to(tiny_shards / sub)
    raw = yaml.safe_load(tiny_params(tiny_shards, epochs=2).read_text())
    raw["optim"].update(warmup_epochs=0)
    raw["mlflow"] = {"tracking_uri": tracking_uri or f"sqlite:///{work / 'mlflow.db'}", "experiment": EXPERIMENT,
                     "register_model": True}
    raw["tune"].update(dataset="msmt17", name=name, num_samples=num_samples, max_concurrent=1, seed=0,
                       points_to_evaluate=points, max_failures=0, storage_path="tune/ray_results",
                       scheduler={"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
                       resources={"cpu": 1, "gpu": 0})
    raw["tune"]["space"]["resnet_bnneck"] = SPACE
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return work


def _env(tmp: Path) -> dict:
    """The searches' environment: a local Ray, with ``tmp`` as ``$TMPDIR`` (Ray's session folder and
    the trials' temporary run folders go there)."""
    env = clean_env()
    env.pop("RAY_ADDRESS", None)
    env["TMPDIR"] = str(tmp)
    return env


def _tune(work: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.tune", "--params", "params.yaml", *extra], cwd=work,
                          env=_env(tmp), capture_output=True, text=True, timeout=TIMEOUT_S)


def _client(work: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(yaml.safe_load((work / "params.yaml").read_text())["mlflow"]["tracking_uri"])


def _runs(work: Path, search: str) -> tuple[list, list]:
    """(parent runs, child runs) of ``search``."""
    c = _client(work)
    exp = c.get_experiment_by_name(EXPERIMENT)
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`reid.search` = '{search}'", max_results=100)
    parents = [r for r in runs if r.data.tags.get("reid.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("reid.kind") == "trial"]
    return parents, children


def _reported_val(db: Path) -> bool:
    """Whether some run of the store has a val.mAP (read-only sqlite, so the search's own MLflow
    store set-up is not raced by a second client creating the tables)."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM metrics WHERE key = 'val.mAP'").fetchone()[0] > 0
    except sqlite3.OperationalError:  # tables not created yet, or locked
        return False


def _history(work: Path, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(work).get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def search_tmp() -> Iterator[Path]:
    """A fresh ``$TMPDIR`` for this module's searches, removed afterwards. Short and under /tmp, not
    under pytest's folder: Ray puts its sockets in it, and a socket path must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def search(tiny_shards, tmp_path_factory, mlflow_server, search_tmp):
    work = _work(tiny_shards, tmp_path_factory, "tiny", 4, POINTS, tracking_uri=mlflow_server)
    proc = _tune(work, search_tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work, proc


def test_search_completes_with_asha_stops_and_a_failed_trial(search):
    work, proc = search
    parents, children = _runs(work, "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.data.tags["dataset"] == "msmt17" and c.data.params["model.name"] == "resnet_bnneck" for c in children)
    by_lr = {(float(c.data.params["optim.lr"]), int(c.data.params["sampler.p"])): c for c in children}
    assert set(by_lr) == {(p["optim.lr"], p["sampler.p"]) for p in POINTS}

    failed = by_lr[(1e-3, 50)]
    assert failed.info.status == "FAILED"
    assert "PKSampler needs at least" in failed.data.tags["ray.error"]
    assert _history(work, failed, "val.mAP") == []

    first, stopped, last = by_lr[(1e-7, 3)], by_lr[(3e-3, 3)], by_lr[(3e-4, 3)]
    for run in (first, stopped, last):
        assert run.info.status == "FINISHED"
    assert stopped.data.tags["ray.stopped_early"] == "true"
    assert [s for s, _ in _history(work, stopped, "val.mAP")] == [1]
    assert _history(work, stopped, "val.mAP")[0][1] < _history(work, first, "val.mAP")[0][1]
    assert first.data.tags["ray.stopped_early"] == "false"
    assert [s for s, _ in _history(work, first, "val.mAP")] == [1, 2]
    assert [s for s, _ in _history(work, first, "loss")] == [1, 2]  # every reported epoch log
    m = parent.data.metrics
    assert (m["trials"], m["trials_failed"]) == (4, 1) and m["trials_stopped_early"] >= 1

    # Ray's own record agrees: one trial errored, the others terminated.
    from ray.tune import ExperimentAnalysis

    statuses = sorted(t.status for t in ExperimentAnalysis(str(work / "tune" / "ray_results" / "tiny")).trials)
    assert statuses == ["ERROR", "TERMINATED", "TERMINATED", "TERMINATED"]
    assert "stopped early" in proc.stdout and "failed" in proc.stdout


def test_trials_leave_no_run_folders_behind(search, search_tmp):
    """No run folder (DeepSpeed checkpoints) of a finished, stopped or failed trial is left: the
    search removes its scratch root; the only checkpoints left are those Ray keeps in storage_path."""
    work, _ = search
    assert (search_tmp / "ray").is_dir()  # Ray's session folder did go under $TMPDIR
    left = [p for p in search_tmp.rglob("*") if p.name.endswith("model_states.pt") or p.name.startswith("reid-")]
    assert left == []
    kept = list((work / "tune" / "ray_results" / "tiny").rglob("*model_states.pt"))
    assert len(kept) == 3  # num_to_keep=1 for each of the three trials that reported


def test_best_params_are_the_best_finished_trial_and_dvc_ready(search, search_tmp):
    from reid.params import load_params
    from reid.tune.best_params import read_best_params

    work, _ = search
    doc = read_best_params(work / "tune" / "best_params.yaml", load_params(work / "params.yaml"))
    _, children = _runs(work, "tiny")
    finished = [c for c in children if c.info.status == "FINISHED"]
    last_value = {c.info.run_id: _history(work, c, "val.mAP")[-1][1] for c in finished}
    best_run = max(finished, key=lambda c: (last_value[c.info.run_id], len(_history(work, c, "val.mAP"))))
    assert doc["mlflow_run_id"] == best_run.info.run_id
    assert doc["value"] == pytest.approx(last_value[best_run.info.run_id], abs=1e-12)
    assert doc["params"] == {"optim.lr": float(best_run.data.params["optim.lr"]),
                             "sampler.p": int(best_run.data.params["sampler.p"])}
    proc = subprocess.run([sys.executable, "-m", "pipeline.tune", "--params", "params.yaml", "--best-args"],
                          cwd=work, env=_env(search_tmp), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args[::2] == ["-S", "-S"]
    assert {a.split("=")[0]: yaml.safe_load(a.split("=")[1]) for a in args[1::2]} == doc["params"]


def test_best_model_is_scored_and_registered_with_the_search_tags(search):
    work, _ = search
    doc = yaml.safe_load((work / "tune" / "best_params.yaml").read_text())
    c = _client(work)
    versions = [v for v in c.search_model_versions("name = 'reid-msmt17'") if v.tags.get("search") == "tiny"]
    assert len(versions) == 1
    v = versions[0]
    assert v.run_id == doc["mlflow_run_id"]
    assert v.tags["search"] == "tiny" and v.tags["trial"] == doc["trial_id"]
    metrics = c.get_run(v.run_id).data.metrics
    assert 0.0 <= metrics["query_gallery.mAP"] <= 1.0 and "query_gallery.rank1" in metrics


def test_search_runs_read_back_through_the_rest_api(search, mlflow_server):
    work, _ = search
    api = f"{mlflow_server}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": EXPERIMENT}, timeout=30)
    assert exp.status_code == 200, exp.text
    found = requests.post(f"{api}/runs/search", timeout=30, json={
        "experiment_ids": [exp.json()["experiment"]["experiment_id"]],
        "filter": "tags.`reid.search` = 'tiny'", "max_results": 100}).json()["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    parents = [r for r, t in zip(found, tags) if t["reid.kind"] == "search"]
    children = [(r, t) for r, t in zip(found, tags) if t["reid.kind"] == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0]["info"]["run_id"]
    assert all(t["mlflow.parentRunId"] == parent_id for _, t in children)
    assert sorted(r["info"]["status"] for r, _ in children) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    for r, _ in children:
        if r["info"]["status"] == "FINISHED":
            history = requests.get(f"{api}/metrics/get-history", timeout=30, params={
                "run_id": r["info"]["run_id"], "metric_key": "val.mAP"}).json()["metrics"]
            assert sorted(m["step"] for m in history) in ([1], [1, 2])
            assert all(0.0 <= m["value"] <= 1.0 for m in history)


def test_interrupted_search_resumes_with_tuner_restore(search, search_tmp, tiny_shards, tmp_path_factory):
    base, _ = search
    work = _work(tiny_shards, tmp_path_factory, "resume", 2, [POINTS[0], POINTS[3]])
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.tune", "--params", "params.yaml"], cwd=work,
                            env=_env(search_tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None and not _reported_val(work / "mlflow.db"):
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 1, out[-2000:] + err[-3000:]
    assert "continue with: python -m pipeline.tune --resume" in err
    parents, _ = _runs(work, "resume")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert not (work / "tune" / "best_params.yaml").exists()

    again = _tune(work, search_tmp, "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    parents, children = _runs(work, "resume")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for c in children:  # each epoch logged once, none lost
        assert [s for s, _ in _history(work, c, "val.mAP")] == [1, 2]
    # The interrupted trial ends where the same trial of the uninterrupted search ended.
    _, base_children = _runs(base, "tiny")
    ref = next(c for c in base_children if float(c.data.params["optim.lr"]) == 1e-7)
    resumed = next(c for c in children if float(c.data.params["optim.lr"]) == 1e-7)
    for key, tol in (("loss", 1e-6), ("val.mAP", 1e-9)):
        got, want = _history(work, resumed, key), _history(base, ref, key)
        assert [s for s, _ in got] == [s for s, _ in want] == [1, 2]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=tol), key
    assert (work / "tune" / "best_params.yaml").is_file()
