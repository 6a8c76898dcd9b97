"""A loss that becomes NaN or infinite stops training with an error naming the epoch, step and terms."""

import yaml

from tests.engine.conftest import run_worker, save_params, tiny_params


def test_infinite_loss_raises_floating_point_error(tiny_shards):
    raw = yaml.safe_load(tiny_params(tiny_shards, epochs=1).read_text())
    raw["loss"]["ce"]["weight"] = 1e39  # finite in params, infinite once multiplied into the fp32 loss
    proc = run_worker(save_params(tiny_shards, "inf-loss", raw), tiny_shards / "inf-loss", "full")
    assert proc.returncode != 0
    assert "FloatingPointError: epoch 1, step 1: the loss is inf (ce " in proc.stderr, proc.stderr[-2000:]
    assert not (tiny_shards / "inf-loss" / "model.pt").exists()
