"""The model contract, checked for every registered model (``reid.models.available()``).

Each model is built with its default keyword arguments at a small input size and trained one
step with the losses it declares (weights and settings from the repository's ``params.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from reid.engine.criterion import Criterion
from reid.models import available, build
from reid.models.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 4
#: 2 vehicle models x 2 ids x 3 images (multiple of 6 for TAMR's batches; P x K for the others)
PIDS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
MODEL_IDS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


def _input_size(name: str) -> tuple[int, int]:
    return getattr(MODELS.get(name), "test_input_size", (64, 64))


def _loss_settings() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())["loss"]


@pytest.mark.parametrize("name", available())
def test_model_contract(name: str):
    torch.manual_seed(0)
    model = build(name, NUM_CLASSES)
    h, w = _input_size(name)
    images = torch.randn(len(PIDS), 3, h, w)
    batch = {"images": images, "pids": PIDS, "model_ids": MODEL_IDS, "camids": torch.zeros_like(PIDS)}
    assert isinstance(model.losses, tuple) and model.losses

    model.train()
    out = model(images)
    assert out["embed"].dim() == 2 and out["embed"].shape[0] == len(PIDS)
    assert out["logits"].shape == (len(PIDS), NUM_CLASSES)
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), key
    criterion = Criterion(model.losses, _loss_settings(), {"num_classes": NUM_CLASSES})
    loss, logs = criterion(out, batch)
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"{name}: parameters without a finite gradient: {missing[:10]}"
    # every parameter is covered by exactly one optimizer group
    groups = model.param_groups(1e-3)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all("name" in g and g["lr"] > 0 for g in groups)

    model.eval()
    with torch.no_grad():
        a, b = model(images[:4]), model(images[:4])
    assert set(a) == {"embed"} or "embed" in a
    assert a["embed"].shape == (4, out["embed"].shape[1])
    assert torch.equal(a["embed"], b["embed"])  # eval mode is deterministic
    assert torch.isfinite(a["embed"]).all()
