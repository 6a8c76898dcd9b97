"""Feature extraction for evaluation, with optional flip averaging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch


@dataclass(frozen=True)
class Features:
    """Embeddings of one split, in loader order.

    Attributes:
        feats: ``(N, D) float32`` CPU tensor.
        pids, camids: ``(N,) int64`` numpy arrays.
        keys: the N sample keys.
    """

    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    keys: list[str]


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[dict], flip: bool = False) -> Features:
    """Run ``model`` in eval mode over Batch dicts and collect ``outputs["embed"]``.

    Args:
        model: a registry model; its parameters' device is used for the forward pass.
        batches: Batch dicts (``images (B, 3, H, W) float32``, ``pids``, ``camids``, ``keys``).
        flip: average the embedding of each image with that of its horizontal mirror
            (as in fast-reid's ``TEST.FLIP``).

    Raises:
        ValueError: if ``batches`` is empty.
    """
    model.eval()
    device = next(model.parameters()).device
    feats, pids, camids, keys = [], [], [], []
    for batch in batches:
        images = batch["images"].to(device, torch.float32)
        emb = model(images)["embed"].float()
        if flip:
            emb = (emb + model(torch.flip(images, dims=[3]))["embed"].float()) / 2
        feats.append(emb.cpu())
        pids.append(batch["pids"].cpu().numpy())
        camids.append(batch["camids"].cpu().numpy())
        keys.extend(batch["keys"])
    if not feats:
        raise ValueError("extract_features: no batches")
    return Features(torch.cat(feats), np.concatenate(pids), np.concatenate(camids), keys)
