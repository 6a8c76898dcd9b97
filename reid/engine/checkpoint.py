"""Per-epoch DeepSpeed checkpoints that are atomic and carry everything exact resume needs.

Layout under ``ckpt_dir``::

    epoch-0003/      DeepSpeed checkpoint (model, optimizer, LR scheduler, ZeRO shards) +
                     client state (sampler state, RNG states, training params)
    latest           text file naming the newest complete tag

A checkpoint is first written as ``<tag>.partial`` by every rank, then rank 0 renames it to
``<tag>`` and rewrites ``latest`` atomically, so a crash mid-save leaves the previous
checkpoint as the latest one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from reid.engine.distributed import barrier
from reid.io import atomic_write_text

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, unreadable or belongs to different training params."""


def save(engine, ckpt_dir: Path, tag: str, client_state: dict, is_main: bool, keep: int = 2) -> Path:
    """Save a checkpoint from every rank (collective call); returns ``ckpt_dir / tag``.

    Keeps the newest ``keep`` complete checkpoints and deletes older ones (rank 0).
    """
    ckpt_dir = Path(ckpt_dir)
    partial = f"{tag}.partial"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / partial, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=partial, client_state=client_state, save_latest=False)
    barrier()
    if is_main:
        final = ckpt_dir / tag
        shutil.rmtree(final, ignore_errors=True)
        os.replace(ckpt_dir / partial, final)
        atomic_write_text(ckpt_dir / LATEST, tag + "\n")
        complete = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
        for old in complete[:-keep]:
            shutil.rmtree(old)
    barrier()
    return ckpt_dir / tag


def latest_tag(ckpt_dir: Path) -> str:
    """The tag named by ``ckpt_dir/latest``.

    Raises:
        CheckpointError: no ``latest`` file, or it names a missing folder.
    """
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"{pointer}: no checkpoint to resume from")
    tag = pointer.read_text().strip()
    if not (Path(ckpt_dir) / tag).is_dir():
        raise CheckpointError(f"{pointer} names {tag!r}, but {Path(ckpt_dir) / tag} is missing")
    return tag


def load(engine, ckpt_dir: Path, expected_params: dict) -> dict:
    """Load the latest checkpoint into ``engine`` (collective call) and return its client state.

    Args:
        expected_params: the flattened training params of this run; resuming a checkpoint
            written with different values is refused.

    Raises:
        CheckpointError: missing/corrupt checkpoint, or changed params (the keys are named).
    """
    tag = latest_tag(ckpt_dir)
    try:
        path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except Exception as err:  # DeepSpeed raises assorted errors for truncated files
        raise CheckpointError(f"{Path(ckpt_dir) / tag}: cannot load checkpoint: {err}") from err
    if path is None or client_state is None:
        raise CheckpointError(f"{Path(ckpt_dir) / tag}: checkpoint is incomplete")
    saved = client_state.get("params", {})
    changed = sorted(k for k in set(saved) | set(expected_params) if saved.get(k) != expected_params.get(k))
    if changed:
        raise CheckpointError(
            f"{Path(ckpt_dir) / tag}: cannot resume, training params changed: {', '.join(changed)}")
    return client_state


#: DeepSpeed's file of the model weights (and client state) in a checkpoint folder (ZeRO 0-2).
MODEL_STATES = "mp_rank_00_model_states.pt"


def module_state_dict(tag_dir: Path) -> dict:
    """The model weights of a checkpoint folder (``<ckpt_dir>/<tag>``), read without an engine.

    ZeRO stages 0-2 shard only optimizer state, so DeepSpeed's ``mp_rank_00_model_states.pt``
    holds every weight (fp32: the engine trains fp32 weights under autocast).

    Raises:
        CheckpointError: the file is missing or unreadable (names it).
    """
    import torch

    path = Path(tag_dir) / MODEL_STATES
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (not a DeepSpeed checkpoint folder)")
    try:
        # DeepSpeed's own file, with numpy RNG state and params in the client state: not weights-only.
        state = torch.load(path, map_location="cpu", weights_only=False)
        return dict(state["module"])
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read the model weights: {err}") from err
