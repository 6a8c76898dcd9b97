"""Exact resume: stop after epoch 1 + resume == an uninterrupted run, bit for bit on CPU fp32."""

import json

import pytest
import torch
import yaml

from tests.engine.conftest import run_worker, tiny_params


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_resume_equals_uninterrupted(tiny_shards, backend):
    params = tiny_params(tiny_shards, epochs=2)
    raw = yaml.safe_load(params.read_text())
    raw["loader"].update(backend=backend, erase_prob=0.5)  # the torch path trains too, augmentations on
    params.write_text(yaml.safe_dump(raw))
    full, split = tiny_shards / f"full-{backend}", tiny_shards / f"split-{backend}"
    _ok(run_worker(params, full, "full"))
    _ok(run_worker(params, split, "stop1"))
    assert (split / "checkpoints" / "latest").read_text().strip() == "epoch-0001"
    after_epoch1 = torch.load(split / "model.pt", weights_only=True)
    _ok(run_worker(params, split, "resume"))
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
    proc = run_worker(params, out, "resume")
    assert proc.returncode != 0 and "no checkpoint to resume from" in proc.stderr
    _ok(run_worker(params, out, "stop1"))
    raw = yaml.safe_load(params.read_text())
    raw["loss"]["triplet"]["margin"] = 0.5
    raw["optim"]["lr"] = 0.002
    params.write_text(yaml.safe_dump(raw))
    proc = run_worker(params, out, "resume")
    assert proc.returncode != 0
    assert "loss.triplet.margin" in proc.stderr and "optim.lr" in proc.stderr


def test_sigterm_mid_epoch_checkpoints_and_resume_equals_uninterrupted(tiny_shards):
    params = tiny_params(tiny_shards, epochs=2)
    raw = yaml.safe_load(params.read_text())
    raw["loader"].update(erase_prob=0.5, color_jitter=0.2)
    params.write_text(yaml.safe_dump(raw))
    full, split = tiny_shards / "sigterm-full", tiny_shards / "sigterm-split"
    _ok(run_worker(params, full, "full"))
    steps_full = json.loads((full / "steps.json").read_text())
    assert [s[:2] for s in steps_full] == [[e, s] for e in (1, 2) for s in (1, 2, 3, 4)]

    killed = run_worker(params, split, "sigterm@1:2")  # SIGTERM after step 2 of the 4 of epoch 1
    assert killed.returncode != 0 and "stopped by SIGTERM" in killed.stderr, killed.stderr[-3000:]
    assert (split / "checkpoints" / "latest").read_text().strip() == "epoch-0000-step-000002"
    assert not (split / "model.pt").exists()
    _ok(run_worker(params, split, "resume"))
    steps_resumed = json.loads((split / "steps.json").read_text())
    assert [s[:2] for s in steps_resumed] == [[1, 3], [1, 4], [2, 1], [2, 2], [2, 3], [2, 4]]
    assert steps_resumed == steps_full[2:]  # the same losses, step by step
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the epoch averages of the interrupted epoch include the steps before the kill
    assert json.loads((split / "history.json").read_text())[0]["loss"] == \
        json.loads((full / "history.json").read_text())[0]["loss"]
