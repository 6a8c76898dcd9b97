"""``tune/best_params.yaml``: round trip, validation against params.yaml, and ``dvc exp run`` taking it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reid.params import load_params
from reid.tune.best_params import dvc_set_args, read_best_params, shell_args, write_best_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BEST = dict(search="s1", dataset="msmt17", model="resnet_bnneck", metric="val.mAP", value=0.61, epochs=12,
            trial_id="abc_00002", mlflow_run_id="r1")


def test_round_trip_and_dvc_arguments(tmp_path):
    path = tmp_path / "best_params.yaml"
    import numpy as np

    write_best_params(path, **BEST, params={"loss.triplet.margin": np.float64(0.27), "optim.lr": 4.1e-4,
                                            "loss.mgr_fine.k": np.int64(4)})
    doc = read_best_params(path, load_params(REPO / "params.yaml"))
    assert {k: doc[k] for k in BEST} == BEST
    assert doc["params"] == {"loss.triplet.margin": 0.27, "optim.lr": 4.1e-4, "loss.mgr_fine.k": 4}
    assert dvc_set_args(doc) == ["-S", "loss.triplet.margin=0.27", "-S", "optim.lr=0.00041", "-S", "loss.mgr_fine.k=4"]
    assert shell_args(doc) == "-S loss.triplet.margin=0.27 -S optim.lr=0.00041 -S loss.mgr_fine.k=4"
    assert path.read_text().startswith("# Best trial of Ray Tune search 's1' (val.mAP = 0.6100 after 12 epochs).")


@pytest.mark.parametrize("params, message", [
    ({"loss.ce.epsilon": 1.5}, "params.loss.ce.epsilon = 1.5 is not valid"),
    ({"optim.nope": 1}, "params.optim.nope = 1 is not valid"),
    ({}, "params must be a non-empty mapping"),
])
def test_invalid_best_params_are_named(tmp_path, params, message):
    path = tmp_path / "best_params.yaml"
    write_best_params(path, **BEST, params=params)
    with pytest.raises(ValueError) as err:
        read_best_params(path, load_params(REPO / "params.yaml"))
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_field_and_missing_file(tmp_path):
    path = tmp_path / "best_params.yaml"
    path.write_text(yaml.safe_dump({"search": "s"}))
    with pytest.raises(ValueError, match="missing"):
        read_best_params(path, load_params(REPO / "params.yaml"))
    with pytest.raises(FileNotFoundError, match="run a search first"):
        read_best_params(tmp_path / "none.yaml", load_params(REPO / "params.yaml"))


def test_dvc_exp_run_accepts_the_best_params(tmp_path):
    """A throwaway DVC project with the repository's params.yaml and one stage that validates it:
    ``dvc exp run`` with the printed arguments runs, and the experiment holds the best values."""
    work = tmp_path / "proj"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": {
        "cmd": "python -c \"from reid.params import load_params; p = load_params('params.yaml'); "
               "open('checked.txt', 'w').write(f'{p.loss.triplet.margin} {p.optim.lr}')\"",
        "params": ["loss", "optim"], "outs": ["checked.txt"]}}}))
    best = work / "tune" / "best_params.yaml"
    write_best_params(best, **BEST, params={"loss.triplet.margin": 0.27, "optim.lr": 4.1e-4})
    doc = read_best_params(best, load_params(work / "params.yaml"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "DVC_NO_ANALYTICS": "1"}
    run = lambda *cmd: subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        r = run(*cmd)
        assert r.returncode == 0, r.stderr
    r = run(str(BIN / "dvc"), "exp", "run", *shell_args(doc).split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "checked.txt").read_text() == "0.27 0.00041"
    applied = yaml.safe_load((work / "params.yaml").read_text())
    assert applied["loss"]["triplet"]["margin"] == 0.27 and applied["optim"]["lr"] == 4.1e-4
