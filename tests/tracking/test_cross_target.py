"""reid.tracking.cross_target: which ``cross.<name>.*`` name a cross-dataset evaluation logs under,
and the errors ``pipeline.evaluate --model`` reports before scoring anything. Loading real models
and logging their scores is covered end to end in tests/pipeline/test_pipeline_e2e.py."""

from __future__ import annotations

import pytest

from reid.tracking.compare import CompareError
from reid.tracking.cross_target import CrossTarget, cross_target_name, resolve_cross_target


def test_registry_and_run_uris_log_under_the_root_folder_name_by_default(tmp_path):
    root = tmp_path / "Market-1501"
    root.mkdir()
    assert cross_target_name("models:/reid-msmt17/3", root, None, local=False) == "Market-1501"
    assert cross_target_name("runs:/abc/model", root / "sub" / "..", None, local=False) == "Market-1501"
    assert cross_target_name("models:/reid-msmt17@best", root, "CUHK03 labeled", local=False) == "CUHK03 labeled"


def test_models_without_a_source_run_log_nothing():
    assert cross_target_name("/tmp/runs/msmt17", "/data/Market", None, local=True) is None
    assert cross_target_name("file:///tmp/mlruns/0/abc/artifacts/model", "/data/Market", None, local=False) is None


@pytest.mark.parametrize("model,local,match", [
    ("runs/msmt17", True, "runs/msmt17 is a local path"),
    ("file:///x/model", False, "applies to models:/ and runs:/ URIs only, not file:///x/model"),
])
def test_a_name_without_a_source_run_is_an_error(model, local, match):
    with pytest.raises(CompareError, match=match):
        cross_target_name(model, "/data/Market", "Market", local=local)


def test_bad_names_say_where_the_name_came_from(tmp_path):
    with pytest.raises(CompareError, match=r"^--name: cross-dataset target name 'a\.b'"):
        cross_target_name("models:/m/1", tmp_path, "a.b", local=False)
    dotted = tmp_path / "VeRi.776"
    dotted.mkdir()
    with pytest.raises(CompareError, match=r"it is the folder name of --root .*VeRi\.776; pass --name"):
        cross_target_name("models:/m/1", dotted, None, local=False)


def test_unknown_registered_model_is_reported_before_loading(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(CompareError, match=r"^models:/no-such-model/1: "):
        resolve_cross_target("models:/no-such-model/1", tmp_path, None, uri)
    with pytest.raises(CompareError, match="is a local path"):  # a name for a local folder: before loading
        resolve_cross_target(str(tmp_path), tmp_path, "Market", uri)


def test_local_folder_without_a_model_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        resolve_cross_target(str(tmp_path), tmp_path, None, f"sqlite:///{tmp_path / 'unused.db'}")
    assert not (tmp_path / "unused.db").exists()  # a local model never touches MLflow


def test_a_target_without_a_source_run_logs_nothing():
    assert CrossTarget(module=None, meta={}).log({"query_gallery.mAP": 0.5}) == {}
