"""The registered-model comparison (``reid.tracking.compare``, ``python -m pipeline.compare``) and the
cross-dataset metrics ``pipeline.evaluate --model models:/...`` logs into a model's source run.

A module fixture builds a sqlite tracking store in a temporary folder with three registered versions
of ``reid-*`` models and one model outside the filter, whose runs hold metrics the way
``pipeline.train`` / ``pipeline.evaluate`` log them; every expected cell below is worked out by hand
from those numbers. Tests that write to the store work on a copy of it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from reid.tracking.compare import (CompareError, check_target_name, collect, log_cross_metrics, model_source_run,
                                   print_table, write_table)

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "reid"

MSMT_V1 = {  # the trained model on MSMT17 (fixed protocol), and what must not be compared
    "query_gallery.rank1": 0.576, "query_gallery.mAP": 0.656, "query_gallery.mINP": 0.555,
    "query_gallery.rank5": 0.8, "query_gallery.num_query": 59.0,
    "untrained.query_gallery.rank1": 0.017, "untrained.query_gallery.mAP": 0.034,
    "val.rank1": 0.5, "val.mAP": 0.45, "loss": 1.25,
    "cross.Market-1501.query_gallery.rank1": 0.191, "cross.Market-1501.query_gallery.mAP": 0.265,
}
MSMT_V2 = {"query_gallery.rank1": 0.612, "val.rank1": 0.6}  # a search's best model: no mAP/mINP logged
VEHICLE = {  # Vehicle-1M, 10 gallery draws: _std companions (none for mINP)
    "test_1000.rank1": 0.609, "test_1000.rank1_std": 0.037, "test_1000.mAP": 0.794, "test_1000.mAP_std": 0.020,
    "test_1000.mINP": 0.794, "test_3000.rank1": 0.316, "test_3000.rank1_std": 0.033,
    "untrained.test_1000.rank1": 0.266, "untrained.test_1000.rank1_std": 0.01, "val.mAP": 0.7,
}
COLUMNS = ["msmt17.query_gallery.rank1", "msmt17.query_gallery.mAP", "msmt17.query_gallery.mINP",
           "vehicle1m.test_1000.rank1", "vehicle1m.test_1000.mAP", "vehicle1m.test_1000.mINP",
           "vehicle1m.test_3000.rank1",
           "cross.Market-1501.query_gallery.rank1", "cross.Market-1501.query_gallery.mAP"]
#: (name, version) -> display cells, in COLUMNS order.
CELLS = {
    ("reid-msmt17", 1): ["57.6%", "65.6%", "55.5%", "", "", "", "", "19.1%", "26.5%"],
    ("reid-msmt17", 2): ["61.2%", "", "", "", "", "", "", "", ""],
    ("reid-vehicle1m", 1): ["", "", "", "60.9 ± 3.7%", "79.4 ± 2.0%", "79.4%", "31.6 ± 3.3%", "", ""],
}


class Store:
    """The tracking URI of a sqlite store, its experiment's artifact folder, and the source run ids."""

    def __init__(self, folder: Path, runs: dict[str, str]):
        self.folder, self.runs = folder, runs
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)


def _run(client: MlflowClient, exp: str, name: str, dataset: str, model: str, metrics: dict,
         parent: str = "") -> str:
    """A finished run like pipeline.train's (tag dataset, param model.name), or with ``parent`` like a
    Ray Tune trial's child run (neither: its parent search run has them)."""
    run = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent} if parent else
                            {"dataset": dataset})
    rid = run.info.run_id
    if not parent:
        client.log_param(rid, "model.name", model)
    for key, value in metrics.items():
        client.log_metric(rid, key, value, step=0)
    client.set_terminated(rid)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # nothing MLflow creates by default lands in the repository
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        exp = client.create_experiment(EXPERIMENT, artifact_location=str(folder / "artifacts"))
        runs = {"msmt17": _run(client, exp, "msmt17", "msmt17", "bnneck", {**MSMT_V1, "query_gallery.rank1": 0.1}),
                "search": _run(client, exp, "s1", "msmt17", "pan", {}),  # a search's parent run
                "vehicle1m": _run(client, exp, "vehicle1m", "vehicle1m", "tamr", VEHICLE),
                "other": _run(client, exp, "other", "msmt17", "x", {"query_gallery.rank1": 0.9})}
        runs["trial"] = _run(client, exp, "trial", "", "", MSMT_V2, parent=runs["search"])
        # the latest value counts: a later step overrides step 0's 0.1
        client.log_metric(runs["msmt17"], "query_gallery.rank1", 0.576, step=1)
        # registered out of name order, to see the sorting
        client.create_registered_model("reid-vehicle1m")
        client.create_model_version("reid-vehicle1m", f"file://{folder}/artifacts/vehicle", run_id=runs["vehicle1m"])
        client.create_registered_model("reid-msmt17")
        client.create_model_version("reid-msmt17", f"file://{folder}/artifacts/msmt17", run_id=runs["msmt17"])
        client.create_model_version("reid-msmt17", f"file://{folder}/artifacts/search", run_id=runs["trial"],
                                    tags={"search": "s1", "trial": "t7"})
        client.set_registered_model_alias("reid-msmt17", "champion", "1")
        client.create_registered_model("other-model")
        client.create_model_version("other-model", f"file://{folder}/artifacts/other", run_id=runs["other"])
    return Store(folder, runs)


@pytest.fixture
def store_copy(store, tmp_path, monkeypatch) -> Store:
    """A copy of the store to write to (same experiment artifact folder)."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    shutil.copy(store.folder / "mlflow.db", tmp_path / "mlflow.db")
    return Store(tmp_path, store.runs)


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)


def _rows(table) -> dict:
    return {(r.name, r.version): [table.cell_text(r, c) for c in table.columns] for r in table.rows}


def test_rows_columns_and_cells(store):
    table = collect(store.client)
    assert [(r.name, r.version) for r in table.rows] == [("reid-msmt17", 1), ("reid-msmt17", 2),
                                                         ("reid-vehicle1m", 1)]
    assert [c.key for c in table.columns] == COLUMNS  # no untrained.*, val.*, *_std, rank5 or counts
    assert _rows(table) == CELLS
    v1, v2, vehicle = table.rows
    assert (v1.dataset, v1.model_name, v1.run_id, v1.aliases, v1.search, v1.trial) == (
        "msmt17", "bnneck", store.runs["msmt17"], ("champion",), "", "")
    assert (v2.model_name, v2.run_id, v2.aliases, v2.search, v2.trial) == ("pan", store.runs["trial"], (), "s1", "t7")
    assert (vehicle.dataset, vehicle.model_name, vehicle.stage) == ("vehicle1m", "tamr", "")
    assert table.tracking_uri == store.uri


def test_tracking_uri_argument_latest_only_and_name_filter(store):
    latest = collect(store.uri, latest_only=True)
    assert [(r.name, r.version) for r in latest.rows] == [("reid-msmt17", 2), ("reid-vehicle1m", 1)]
    assert _rows(latest) == {k: [v[i] for i, c in enumerate(COLUMNS) if c in [x.key for x in latest.columns]]
                             for k, v in CELLS.items() if k != ("reid-msmt17", 1)}
    assert [c.key for c in latest.columns] == COLUMNS[:1] + COLUMNS[3:7]  # columns only where some row has a value
    one = collect(store.uri, names=["reid-vehicle1m"])
    assert [(r.name, r.version) for r in one.rows] == [("reid-vehicle1m", 1)]
    assert [c.key for c in one.columns] == COLUMNS[3:7]
    explicit = collect(store.uri, names=["reid-vehicle1m", "other-model"])
    assert [r.name for r in explicit.rows] == ["other-model", "reid-vehicle1m"]
    assert [r.name for r in collect(store.uri, prefix="other-").rows] == ["other-model"]


def test_nothing_matches(store):
    with pytest.raises(CompareError, match=r"sqlite:///.*mlflow\.db: no registered model name starts with 'nope-'"):
        collect(store.uri, prefix="nope-")
    with pytest.raises(CompareError, match=r"sqlite:///.*: no registered model named 'reid-market'.*"
                                           r"registered models there: \['other-model', 'reid-msmt17'"):
        collect(store.uri, names=["reid-msmt17", "reid-market"])


def test_outputs(store, tmp_path):
    table = collect(store.client)
    paths = write_table(table, tmp_path / "out" / "models.csv", tmp_path / "out" / "models.md")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    header = list(rows[0])
    assert header == ["name", "version", "aliases", "stage", "dataset", "model.name", "search", "trial", "run_id",
                      "msmt17.query_gallery.rank1", "msmt17.query_gallery.mAP", "msmt17.query_gallery.mINP",
                      "vehicle1m.test_1000.rank1", "vehicle1m.test_1000.rank1_std",
                      "vehicle1m.test_1000.mAP", "vehicle1m.test_1000.mAP_std", "vehicle1m.test_1000.mINP",
                      "vehicle1m.test_3000.rank1", "vehicle1m.test_3000.rank1_std",
                      "cross.Market-1501.query_gallery.rank1", "cross.Market-1501.query_gallery.mAP"]
    assert rows[0]["msmt17.query_gallery.rank1"] == "0.576" and rows[0]["aliases"] == "champion"
    assert rows[1]["search"] == "s1" and rows[1]["msmt17.query_gallery.mAP"] == ""
    assert (rows[2]["vehicle1m.test_1000.mAP"], rows[2]["vehicle1m.test_1000.mAP_std"]) == ("0.794", "0.02")
    assert rows[2]["run_id"] == store.runs["vehicle1m"]
    md = paths["markdown"].read_text().splitlines()
    assert md[2].startswith("| model | version | aliases | dataset | model.name | search | trial | run | "
                            "msmt17 query_gallery Rank-1 |")
    assert md[3].endswith("| ---: |")
    assert md[6] == (f"| reid-vehicle1m | 1 |  | vehicle1m | tamr |  |  | {store.runs['vehicle1m']} "
                     "|  |  |  | 60.9 ± 3.7% | 79.4 ± 2.0% | 79.4% | 31.6 ± 3.3% |  |  |")
    console = io.StringIO()
    print_table(table, file=console)
    text = console.getvalue()
    assert "60.9 ± 3.7%" in text and "cross: Market-1501" in text and store.runs["msmt17"][:8] in text
    assert "untrained" not in text and "1.7%" not in text


def test_run_without_dataset_tag_is_an_error(store_copy):
    client = store_copy.client
    client.delete_tag(store_copy.runs["search"], "dataset")  # the trial run's parent
    with pytest.raises(CompareError, match=rf"reid-msmt17 version 2: source run {store_copy.runs['trial']} has the "
                                           r"metric 'query_gallery.rank1' but neither it nor a parent run has a "
                                           r"'dataset' tag"):
        collect(client)


def test_cross_metrics_go_to_the_source_run(store_copy):
    client = store_copy.client
    rid = store_copy.runs["msmt17"]
    assert model_source_run(client, "models:/reid-msmt17/1") == rid
    assert model_source_run(client, "models:/reid-msmt17@champion") == rid
    assert model_source_run(client, "models:/reid-msmt17/latest") == store_copy.runs["trial"]
    assert model_source_run(client, f"runs:/{rid}/model") == rid
    with pytest.raises(CompareError, match="not an MLflow models:/ or runs:/ URI"):
        model_source_run(client, "runs/msmt17")
    logged = log_cross_metrics(client, model_source_run(client, "models:/reid-msmt17/1"), "CUHK03",
                               {"query_gallery.rank1": 0.3, "query_gallery.mAP": 0.2, "query_gallery.num_query": 200})
    assert logged == {"cross.CUHK03.query_gallery.mAP": 0.2, "cross.CUHK03.query_gallery.num_query": 200.0,
                      "cross.CUHK03.query_gallery.rank1": 0.3}
    run = client.get_run(rid)
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("cross.CUHK03.")} == logged
    assert run.info.status == "FINISHED"
    assert not any(k.startswith("cross.CUHK03") for k in client.get_run(store_copy.runs["trial"]).data.metrics)
    table = collect(client, names=["reid-msmt17"])
    assert [c.key for c in table.columns][-2:] == ["cross.Market-1501.query_gallery.rank1",
                                                   "cross.Market-1501.query_gallery.mAP"]
    assert [c.key for c in table.columns][3:5] == ["cross.CUHK03.query_gallery.rank1", "cross.CUHK03.query_gallery.mAP"]
    assert [table.cell_text(r, table.columns[3]) for r in table.rows] == ["30.0%", ""]


@pytest.mark.parametrize("name", ["MSMT17_V1", "Market-1501", "VeRi 776"])
def test_target_names_accepted(name):
    assert check_target_name(name) == name


@pytest.mark.parametrize("name", ["VehicleID_V1.0", "a/b", "", "x\ty"])
def test_target_names_rejected(name):
    with pytest.raises(CompareError, match="cross-dataset target name"):
        check_target_name(name)


def test_pipeline_compare_end_to_end(store_copy):
    work = store_copy.folder
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"].update(tracking_uri=store_copy.uri, experiment=EXPERIMENT)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pipeline.compare", "--params", "params.yaml", "--out", "cmp"],
                          cwd=work, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("reid-msmt17", "reid-vehicle1m", "57.6%", "61.2%", "60.9 ± 3.7%", "79.4 ± 2.0%", "19.1%",
                 "MLflow run"):
        assert text in proc.stdout
    assert "other-model" not in proc.stdout
    runs = store_copy.client.search_runs([store_copy.client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                         filter_string="tags.`reid.kind` = 'compare'")
    assert len(runs) == 1 and runs[0].info.run_name == "compare" and runs[0].info.status == "FINISHED"
    artifacts = {a.path for a in store_copy.client.list_artifacts(runs[0].info.run_id)}
    assert artifacts == {"models.csv", "models.md"}
    assert (work / "cmp" / "models.csv").read_text() == collect(store_copy.uri).csv_text()
    # nothing matches: a clear message naming the store and the filter, exit status 1
    bad = subprocess.run([sys.executable, "-m", "pipeline.compare", "--params", "params.yaml", "--models", "reid-x"],
                         cwd=work, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert bad.returncode == 1 and f"compare: {store_copy.uri}: no registered model named 'reid-x'" in bad.stderr
