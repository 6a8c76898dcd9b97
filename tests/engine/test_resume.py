"""Exact resume: stop after epoch 1 + resume == an uninterrupted run, bit for bit on CPU fp32."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.engine.conftest import clean_env, tiny_params

WORKER = Path(__file__).with_name("_train_worker.py")


def _run(params: Path, out: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), str(params), str(out), mode], env=clean_env(),
                          capture_output=True, text=True, timeout=300)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_resume_equals_uninterrupted(tiny_shards, backend):
    params = tiny_params(tiny_shards, epochs=2)
    raw = yaml.safe_load(params.read_text())
    raw["loader"].update(backend=backend, erase_prob=0.5)  # the torch path trains too, augmentations on
    params.write_text(yaml.safe_dump(raw))
    full, split = tiny_shards / f"full-{backend}", tiny_shards / f"split-{backend}"
    _ok(_run(params, full, "full"))
    _ok(_run(params, split, "stop1"))
    assert (split / "checkpoints" / "latest").read_text().strip() == "epoch-0001"
    after_epoch1 = torch.load(split / "model.pt", weights_only=True)
    _ok(_run(params, split, "resume"))
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run really trained epoch 2 (so the equality above is not vacuous)
    assert any(not torch.equal(after_epoch1[k], b[k]) for k in b if b[k].is_floating_point())


def test_resume_refuses_changed_params_and_missing_checkpoint(tiny_shards):
    params = tiny_params(tiny_shards, epochs=2)
    out = tiny_shards / "refuse"
    proc = _run(params, out, "resume")
    assert proc.returncode != 0 and "no checkpoint to resume from" in proc.stderr
    _ok(_run(params, out, "stop1"))
    raw = yaml.safe_load(params.read_text())
    raw["loss"]["triplet"]["margin"] = 0.5
    raw["optim"]["lr"] = 0.002
    params.write_text(yaml.safe_dump(raw))
    proc = _run(params, out, "resume")
    assert proc.returncode != 0
    assert "loss.triplet.margin" in proc.stderr and "optim.lr" in proc.stderr
