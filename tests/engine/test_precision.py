"""engine.precision / channels_last on CPU: bf16 autocast and NHWC train to (nearly) the fp32 loss."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.engine.conftest import run_worker, save_params, tiny_params


def _train(work: Path, name: str, **engine) -> tuple[list, dict]:
    raw = yaml.safe_load(tiny_params(work, epochs=1).read_text())
    raw["engine"].update(engine)
    out = work / name
    proc = run_worker(save_params(work, name, raw), out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "steps.json").read_text()), torch.load(out / "model.pt", weights_only=True)


def test_bf16_channels_last_trains_like_fp32(tiny_shards):
    fp32_steps, _ = _train(tiny_shards, "fp32", precision="fp32", channels_last=False)
    bf16_steps, weights = _train(tiny_shards, "bf16", precision="bf16", channels_last=True)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert all(v.dtype != torch.bfloat16 for v in weights.values())  # fp32 master weights
    # same data and init: the first step's loss agrees to bf16 precision, but is not bit-identical
    first_fp32, first_bf16 = fp32_steps[0][2]["loss"], bf16_steps[0][2]["loss"]
    assert first_bf16 == pytest.approx(first_fp32, rel=3e-2)
    assert first_bf16 != first_fp32
