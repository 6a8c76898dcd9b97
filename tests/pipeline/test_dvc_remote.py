"""DVC around the shards: ``dvc repro`` of one dataset's stages, no-op re-runs, granular param
invalidation, the run cache, and a ``dvc push`` / ``dvc pull`` round trip through a local remote.

A module-scoped fixture builds a throw-away DVC project in a temporary folder: ``git init``, a copy
of this repository's ``dvc.yaml``, ``.gitignore``, ``pipeline/`` and ``reid/`` (``dvc.yaml`` lists
files of both as stage dependencies, and ``python -m pipeline.<stage>`` run from the project root
imports that copy, i.e. the code under test), ``dvc init`` and a tiny ``params.yaml``. It then runs
``dvc repro shard@msmt17``, which runs ``synth``, ``prepare@msmt17`` and ``shard@msmt17`` only;
train and evaluate never run. The tests each leave the project as they found it (outputs up to date).

DVC runs with the project's venv first on ``PATH`` (``dvc.yaml``'s ``python`` is the venv's), its
site cache in the temporary folder, and its global/system config read from folders of the test (no
analytics, no update check), so a developer's own default remote cannot leak in. The module takes
about 45 s on a busy 2-core host (every dvc command and every stage is a fresh interpreter).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DVC = VENV_BIN / "dvc"
DS = "msmt17"
STAGES = ("synth", f"prepare@{DS}", f"shard@{DS}")
TARGET = f"shard@{DS}"
#: shard.target_bytes: first one tar per split, then small enough for several train tars.
BIG_SHARDS, SMALL_SHARDS = 1_000_000, 24_000
TIMEOUT_S = 180
#: variables that would point the stages (or DVC) at shared state or another launcher's ranks.
LEAKY_ENV = ("MLFLOW_TRACKING_URI", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "PYTEST_CURRENT_TEST", "PYTHONPATH", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME",
             "DVC_EXP_BASELINE_REV", "DVC_STUDIO_TOKEN", "DVC_STUDIO_URL", "DVC_STUDIO_REPO_URL",
             "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")


def tiny_params() -> dict:
    """The repository's params.yaml with very small synthetic data (msmt17: 10 train ids, 4 test ids,
    2 cameras, 64x32 images; vehicle1m, never staged here but written by synth: 12 vehicles)."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["datasets"] = {
        "msmt17": {"layout": "msmt17", "root": "data/synthetic/MSMT17_V1", "image_size": [64, 32],
                   "check_images": True},
        "vehicle1m": {"layout": "vehicle1m", "root": "data/synthetic/Vehicle-1M", "image_size": [32, 32],
                      "num_draws": 2, "gallery_seed": 0, "check_images": True},
    }
    p["synthetic"]["out_dir"] = "data/synthetic"
    p["synthetic"]["msmt17"].update(num_train_ids=10, num_test_ids=4, num_cameras=2, cameras_per_id=2,
                                    images_per_id_camera=2, val_every=5, height=64, width=32, seed=0)
    p["synthetic"]["vehicle1m"].update(num_models=3, vehicles_per_model=4, images_per_vehicle=2,
                                       test_fraction=0.4, size=32, seed=0)
    p["data_checks"]["workers"] = 1
    p["shard"]["target_bytes"] = BIG_SHARDS
    return p


def dvc_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env["PATH"] = os.pathsep.join(p for p in (str(VENV_BIN), env.get("PATH")) if p)
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp / "dvc-site-cache")
    for var, sub in (("DVC_GLOBAL_CONFIG_DIR", "dvc-global"), ("DVC_SYSTEM_CONFIG_DIR", "dvc-system")):
        (tmp / sub).mkdir(exist_ok=True)
        env[var] = str(tmp / sub)
    # no background `dvc updater` daemon looking for a newer DVC release
    (tmp / "dvc-global" / "config").write_text("[core]\n    check_update = false\n    analytics = false\n")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    # byte code outside the project: a __pycache__ inside a dependency folder (reid/data/layouts)
    # would count as a change of that dependency
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:] if text else "(empty)"


@dataclass
class Project:
    root: Path
    env: dict
    remote: Path
    #: ``{relative path: sha256}`` of ``shards/msmt17`` after the first repro
    originals: dict = field(default_factory=dict)

    def cmd(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(a) for a in args], cwd=self.root, env=self.env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
        if check and r.returncode != 0:
            raise AssertionError(f"`{' '.join(map(str, args))}` exited {r.returncode} in {self.root}\n"
                                 f"--- stdout (tail)\n{_tail(r.stdout)}\n--- stderr (tail)\n{_tail(r.stderr)}")
        return r

    def dvc(self, *args, check: bool = True) -> str:
        """``dvc <args>``; returns stdout and stderr together (DVC logs to both)."""
        r = self.cmd(DVC, *args, check=check)
        return r.stdout + r.stderr

    @property
    def shards(self) -> Path:
        return self.root / "shards" / DS

    def set_target_bytes(self, n: int) -> None:
        self.set_shard("target_bytes", n)

    def set_shard(self, key: str, value: int) -> None:
        params = yaml.safe_load((self.root / "params.yaml").read_text())
        params["shard"][key] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def status(self, *targets: str) -> dict:
        out = self.cmd(DVC, "status", "--json", *targets).stdout
        return json.loads(out)


def digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def objects(store: Path) -> list[Path]:
    """The content-addressed objects of a DVC 3 cache or remote (``files/md5/xx/yyyy[.dir]``)."""
    return sorted(p for p in (store / "files" / "md5").rglob("*") if p.is_file()) if store.exists() else []


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def skipped(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines()
            if line.startswith("Stage '") and line.rstrip().endswith("didn't change, skipping")}


def train_tars(project: Project) -> int:
    catalogue = json.loads((project.shards / "shards.json").read_text())
    return catalogue["splits"]["train"]["shards"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    tmp = tmp_path_factory.mktemp("dvc-remote")
    root = tmp / "project"
    root.mkdir()
    p = Project(root=root, env=dvc_env(tmp), remote=tmp / "remote")
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy2(REPO / name, root / name)
    for pkg in ("pipeline", "reid"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    p.cmd("git", "init", "-q")
    p.dvc("init", "-q")

    out = p.dvc("repro", TARGET)
    assert ran(out) == set(STAGES), out
    assert "vehicle1m" not in " ".join(ran(out)), out
    assert not (root / "shards" / "vehicle1m").exists() and not (root / "runs").exists()
    from reid.data.shards import ShardsIndex

    with ShardsIndex.load(p.shards) as index:
        assert index.splits() == ("train", "query", "gallery")
        index.verify()
    assert train_tars(p) == 1
    p.originals = digests(p.shards)
    return p


def test_second_repro_is_a_noop(project: Project):
    before = {f: (project.shards / f).stat().st_mtime_ns for f in project.originals}
    out = project.dvc("repro", TARGET)
    assert ran(out) == set(), out
    assert skipped(out) == set(STAGES), out
    assert "Data and pipelines are up to date." in out, out
    assert project.status("--with-deps", TARGET) == {}
    assert {f: (project.shards / f).stat().st_mtime_ns for f in project.originals} == before


def test_shard_worker_count_is_not_a_dependency(project: Project):
    """The shards are the same bytes for any shard.workers, so changing it reruns nothing."""
    project.set_shard("workers", 1)
    try:
        assert project.status("--with-deps", TARGET) == {}
    finally:
        project.set_shard("workers", 2)


def test_shard_param_change_reruns_only_shard(project: Project):
    project.set_target_bytes(SMALL_SHARDS)
    try:
        status = project.status("--with-deps", TARGET)
        # prepare@msmt17 and synth do not use shard.*
        assert status == {TARGET: [{"changed deps": {"params.yaml": {"shard.target_bytes": "modified"}}}]}, status
        out = project.dvc("repro", TARGET)
        assert ran(out) == {TARGET}, out
        assert skipped(out) == {"synth", f"prepare@{DS}"}, out
        assert train_tars(project) > 1
        assert digests(project.shards) != project.originals
    finally:
        project.set_target_bytes(BIG_SHARDS)
    # back to the first value: DVC's run cache restores the first outputs without running the stage
    out = project.dvc("repro", TARGET)
    assert ran(out) == set(), out
    assert f"Stage '{TARGET}' is cached - skipping run, checking out outputs" in out, out
    assert digests(project.shards) == project.originals
    assert project.status("--with-deps", TARGET) == {}


def test_push_and_pull_through_a_local_remote(project: Project):
    from reid.data.shards import ShardsIndex

    # --local: the remote goes to the git-ignored .dvc/config.local, not the committed .dvc/config
    project.dvc("remote", "add", "--local", "-d", "local", project.remote)
    assert 'remote "local"' not in (project.root / ".dvc" / "config").read_text()
    assert str(project.remote) in (project.root / ".dvc" / "config.local").read_text()

    out = project.dvc("push", TARGET)
    # only the stage's outputs go up: one object per distinct shard file plus the directory listing
    n_contents = len(set(project.originals.values()))
    pushed = objects(project.remote)
    assert len(pushed) == n_contents + 1, (out, pushed)
    assert sum(p.suffix == ".dir" for p in pushed) == 1
    assert f"{n_contents + 1} files pushed" in out, out
    assert "Everything is up to date." in project.dvc("push", TARGET)  # a second push sends nothing

    shutil.rmtree(project.root / "shards")
    shutil.rmtree(project.root / ".dvc" / "cache")
    # DVC reports the missing cache, not the missing workspace folder
    assert project.status(TARGET) == {TARGET: [{"changed outs": {f"shards/{DS}": "not in cache"}}]}

    out = project.dvc("pull", TARGET)
    assert digests(project.shards) == project.originals, out  # byte-identical to what was pushed
    with ShardsIndex.load(project.shards) as index:
        assert index.splits() == ("train", "query", "gallery")
        index.verify()
    # pulling the stage fetched its outputs only (manifests and data stayed out of the cache)
    assert len(objects(project.root / ".dvc" / "cache")) == n_contents + 1
    assert project.status(TARGET) == {}
    # ...so the upstream stages, whose outputs are still in the workspace but no longer in the cache,
    # count as changed: `dvc repro shard@msmt17` would re-run synth and prepare@msmt17 now. On a node
    # that only pulls shards, train with `dvc repro --single-item train@<dataset>` (see infra/dvc).
    upstream = project.status("--with-deps", TARGET)
    assert set(upstream) == {"synth", f"prepare@{DS}"}, upstream
    assert all(set(change) == {"changed outs"} and set(change["changed outs"].values()) == {"not in cache"}
               for changes in upstream.values() for change in changes), upstream
    # `dvc commit` puts the workspace copies back into the cache (hashes match dvc.lock: nothing re-runs)
    project.dvc("commit", "--force", "synth", f"prepare@{DS}")
    assert project.status("--with-deps", TARGET) == {}
