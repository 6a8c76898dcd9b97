"""engine.grad_accum_steps: the optimizer steps once per N batches, an epoch is rounded down to whole
optimizer steps, and DeepSpeed's accumulation is the param's."""

import json

import torch
import yaml

from tests.engine.conftest import run_worker, save_params, tiny_params


def test_accumulation_steps_the_optimizer_every_n_batches(tiny_shards):
    raw = yaml.safe_load(tiny_params(tiny_shards, epochs=2).read_text())
    raw["engine"]["grad_accum_steps"] = 3  # 12 ids / p=3: 4 sampler steps per epoch -> 3 batches, 1 step
    out = tiny_shards / "accum"
    proc = run_worker(save_params(tiny_shards, "accum", raw), out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads((out / "steps.json").read_text())
    assert [s[:2] for s in steps] == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    tag = (out / "checkpoints" / "latest").read_text().strip()
    state = torch.load(out / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["global_steps"] == 2  # one optimizer step per epoch
    assert state["ds_config"]["gradient_accumulation_steps"] == 3
