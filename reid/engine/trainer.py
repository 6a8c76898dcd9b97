"""DeepSpeed training loop: P x K batches from the DALI loader, declared losses, per-epoch checkpoints.

``train(spec) -> RunResult`` is a plain function: the DVC stage ``pipeline.train`` and (later) the
Ray Tune trainable call the same one. It runs in every rank of a ``deepspeed``/``torchrun``
launch; only rank 0 writes the model files and logs metrics.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import random
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from reid.data.loaders import AugmentConfig, train_loader
from reid.data.manifest import contiguous_labels
from reid.data.samplers import HierarchicalSampler, PKSampler
from reid.data.shards import ShardsIndex
from reid.engine import checkpoint
from reid.engine.criterion import Criterion
from reid.engine.deepspeed_config import fill_template
from reid.engine.distributed import DistInfo, any_rank, barrier, init_distributed
from reid.engine.sync_bn import convert_sync_batchnorm
from reid.engine.schedule import build_scheduler
from reid.io import atomic_open, atomic_write_json
from reid.models import MODELS, build
from reid.params import (EngineParams, LoaderParams, LossParams, ModelParams, OptimParams, Params, SamplerParams,
                         flatten)

MODEL_WEIGHTS = "model.pt"
MODEL_META = "model.json"
#: The DeepSpeed checkpoints of a run, under its ``out_dir``.
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainSpec:
    """Everything one training run needs.

    Attributes:
        shards_dir: the dataset's shard folder (``shards.json`` + tars).
        out_dir: run folder; receives ``checkpoints/``, ``model.pt`` and ``model.json``.
        image_size: network input ``(height, width)`` in px.
        sampler, loader, model, loss, optim, engine: the params sections of the same names.
        deepspeed_template: a DeepSpeed config template (``infra/deepspeed/zero<stage>.json``, see
            :mod:`reid.engine.deepspeed_config`); ``None``: a minimal config with only the ZeRO stage.
    """

    shards_dir: Path
    out_dir: Path
    image_size: tuple[int, int]
    sampler: SamplerParams
    loader: LoaderParams
    model: ModelParams
    loss: LossParams
    optim: OptimParams
    engine: EngineParams
    deepspeed_template: Optional[dict] = None

    @classmethod
    def from_params(cls, params: Params, dataset: str, shards_dir: Path, out_dir: Path,
                    deepspeed_template: Optional[dict] = None) -> "TrainSpec":
        """The spec ``pipeline.train`` and every Ray Tune trial build from the whole params.

        Raises:
            KeyError: ``dataset`` is not a key of ``params.datasets``.
        """
        return cls(shards_dir=Path(shards_dir), out_dir=Path(out_dir), image_size=params.dataset(dataset).image_size,
                   sampler=params.sampler, loader=params.loader, model=params.model, loss=params.loss,
                   optim=params.optim, engine=params.engine, deepspeed_template=deepspeed_template)

    def training_params(self) -> dict:
        """Flat ``section.key -> value`` of every setting that changes the trained weights."""
        return flatten({
            "image_size": list(self.image_size), "sampler": self.sampler.model_dump(),
            "loader": self.loader.model_dump(exclude={"source_workers"}),
            "model": {"name": self.model.name, "kwargs": self.model_kwargs()},
            "loss": self.loss.model_dump(), "optim": self.optim.model_dump(),
            "engine": self.engine.model_dump(exclude={"log_every", "launcher"}),
        })

    def model_kwargs(self) -> dict:
        """Constructor arguments of the selected model: ``model.kwargs.<name>``, plus
        ``input_size = image_size`` for a model whose constructor takes one and is not given it
        (e.g. APNet-S, whose relation attention is built for one feature-map size)."""
        kwargs = self.model.selected_kwargs()
        factory = MODELS.get(self.model.name)
        if "input_size" in inspect.signature(factory).parameters and "input_size" not in kwargs:
            kwargs["input_size"] = list(self.image_size)
        return kwargs

    def augment(self) -> AugmentConfig:
        """The DALI training-pipeline settings."""
        lp = self.loader
        return AugmentConfig(image_size=tuple(self.image_size), mean=lp.mean, std=lp.std,
                             flip_prob=lp.flip_prob, pad=lp.pad, erase_prob=lp.erase_prob,
                             erase_area=lp.erase_area, erase_ratio=lp.erase_ratio, color_jitter=lp.color_jitter,
                             dtype=lp.dtype, num_threads=lp.num_threads, prefetch=lp.prefetch,
                             hw_decoder_load=lp.hw_decoder_load, on_corrupt=lp.on_corrupt)


@dataclass
class RunResult:
    """Outcome of :func:`train`: the trained module (CPU, eval mode) and per-epoch logs."""

    model: torch.nn.Module
    num_classes: int
    model_path: Path
    history: list[dict] = field(default_factory=list)


def _autocast(device: torch.device, precision: str):
    """``precision`` ``"auto"``: bf16 autocast on GPU, fp32 on CPU; ``"bf16"``: bf16 autocast on any
    device; ``"fp32"``: none. The weights and optimizer state stay fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _channels_last(setting: str | bool, device: torch.device) -> bool:
    """``engine.channels_last``: ``"auto"`` = on GPU only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def _loader_seed(seed: int) -> int:
    """Augmentation seed of a run; the loaders derive each sample's draws from it and the sample's
    sampler position and global slot, so resume (even mid-epoch) and the rank layout do not change them."""
    return zlib.crc32(f"augment/{seed}".encode()) & 0x7FFFFFFF


def build_sampler(sp: SamplerParams, index: ShardsIndex, keys: list[str], labels: list[int], seed: int,
                  rank: int, world_size: int) -> PKSampler | HierarchicalSampler:
    """The training batch sampler ``sp.kind`` selects, over ``keys`` (labels = contiguous pids).

    Raises:
        ValueError: what the sampler raises (too few identities or models, ...).
    """
    camids = [index.labels(k)["camid"] for k in keys] if sp.cross_camera else None
    if sp.kind == "hierarchical":
        model_ids = [index.labels(k)["model_id"] for k in keys]
        return HierarchicalSampler(labels, model_ids, sp.m, sp.v, sp.k, seed=seed, rank=rank, world_size=world_size,
                                   shortfall=sp.shortfall, camids=camids, cross_camera=sp.cross_camera)
    return PKSampler(labels, sp.p, sp.k, seed=seed, rank=rank, world_size=world_size, camids=camids,
                     cross_camera=sp.cross_camera)


def batch_size(sp: SamplerParams) -> int:
    """Images per batch per rank: ``p * k`` or ``m * v * k``."""
    return sp.m * sp.v * sp.k if sp.kind == "hierarchical" else sp.p * sp.k


def _deepspeed_config(spec: TrainSpec) -> dict:
    """The DeepSpeed config of a run: its template with the per-rank batch, accumulation and clipping filled in."""
    template = spec.deepspeed_template
    if template is None:
        template = {"zero_optimization": {"stage": spec.engine.zero_stage}, "zero_allow_untested_optimizer": True,
                    "steps_per_print": 10**9}
    return fill_template(template, batch_size(spec.sampler), spec.optim.grad_clip, spec.engine.zero_stage,
                         grad_accum=spec.engine.grad_accum_steps, source="the DeepSpeed template")


def _optimizer(model: torch.nn.Module, optim: OptimParams) -> torch.optim.Optimizer:
    groups = model.param_groups(optim.lr)
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint; ``resume=True`` continues from it.

    Attributes:
        checkpoint: the checkpoint folder written.
    """

    def __init__(self, checkpoint: Path):
        super().__init__(f"stopped by SIGTERM; checkpoint {checkpoint} saved (resume to continue)")
        self.checkpoint = checkpoint


class _StopSignal:
    """Records SIGTERM (SLURM preemption, ``kill``) instead of dying, while training runs.

    Installed only in the main thread (Python delivers signals there); the previous handler is
    restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(spec: TrainSpec, resume: bool = False,
          log_metrics: Optional[Callable[[dict, int], None]] = None,
          stop_after_epochs: Optional[int] = None,
          validate: Optional[Callable[[int, torch.nn.Module], dict]] = None,
          on_step: Optional[Callable[[int, int, dict], None]] = None) -> RunResult:
    """Train a model with DeepSpeed on the ``train`` split of ``spec.shards_dir``.

    An epoch is ``steps_per_epoch`` sampler batches per rank (rounded down to a multiple of
    ``engine.grad_accum_steps``; the optimizer steps once per ``grad_accum_steps`` batches).
    Losses that compare samples see the global batch of all ranks (:class:`Criterion`).

    Checkpoints (``out_dir/checkpoints``, :mod:`reid.engine.checkpoint`) are written after every
    epoch, and when the process receives SIGTERM: training then stops at the next optimizer-step
    boundary (all ranks together), saves a mid-epoch checkpoint and raises
    :class:`TrainingInterrupted`. Resuming from either ends with the same weights as an
    uninterrupted run (exactly on CPU in fp32): the checkpoint holds the model, optimizer, LR
    scheduler, epoch and step (the sampler position; augmentation draws are a function of it),
    the partial epoch sums of the logs, the RNG states and the training params.

    Args:
        spec: the run's settings.
        resume: continue from ``out_dir/checkpoints/latest``.
        log_metrics: called on rank 0 after each epoch with ``({name: value}, epoch)``
            (1-based epoch); e.g. MLflow logging.
        stop_after_epochs: stop after this many completed epochs (still checkpointing), as if
            the job had been interrupted there.
        validate: called on rank 0 after each epoch with ``(epoch, module)`` (1-based epoch,
            the module in train mode; it may switch it to eval, training switches it back);
            returns metrics (possibly empty) merged into that epoch's logs, e.g. ``val.mAP``.
            Other ranks wait at a barrier meanwhile.
        on_step: called on every rank after each batch with ``(epoch, step, logs)`` (1-based
            epoch and step within the epoch; ``logs`` are means over ranks).

    Returns:
        RunResult; rank 0 has also written ``out_dir/model.pt`` (state dict) and
        ``out_dir/model.json`` (name, kwargs, num_classes, image_size, mean, std).

    Raises:
        TrainingInterrupted: SIGTERM was received (after the checkpoint is saved).
        CheckpointError: ``resume`` without a usable checkpoint, or with changed training params.
        ShardsError: missing or corrupt shards.
        ValueError: fewer sampler steps per epoch than ``engine.grad_accum_steps``.
        FloatingPointError: the loss became NaN or infinite (names the epoch, step and loss terms).
    """
    import deepspeed

    dist: DistInfo = init_distributed()
    out_dir = Path(spec.out_dir)
    ckpt_dir = out_dir / CHECKPOINTS
    index = ShardsIndex.load(spec.shards_dir)
    keys = index.keys("train")
    pids = index.pids("train")
    pid_map = contiguous_labels(pids)
    labels = [pid_map[p] for p in pids]
    num_classes = len(pid_map)
    sampler = build_sampler(spec.sampler, index, keys, labels, spec.engine.seed, dist.rank, dist.world_size)
    accum = spec.engine.grad_accum_steps
    if sampler.steps_per_epoch < accum:
        raise ValueError(f"engine.grad_accum_steps = {accum} exceeds the {sampler.steps_per_epoch} sampler steps "
                         "per epoch")
    steps = sampler.steps_per_epoch - sampler.steps_per_epoch % accum

    torch.manual_seed(spec.engine.seed)
    model = build(spec.model.name, num_classes, **spec.model_kwargs())
    if spec.engine.sync_bn and dist.world_size > 1:
        model = convert_sync_batchnorm(model.to(dist.device))
    # channels_last: the batches go NHWC and convolutions follow their input's layout. The weights
    # stay contiguous: DeepSpeed broadcasts and flattens parameters as contiguous buffers.
    channels_last = _channels_last(spec.engine.channels_last, dist.device)
    criterion = Criterion(model.losses, spec.loss.model_dump(), {"num_classes": num_classes})
    optimizer = _optimizer(model, spec.optim)
    scheduler = build_scheduler(optimizer, steps // accum, spec.optim.warmup_epochs, spec.optim.warmup_factor,
                                spec.optim.milestones, spec.optim.gamma, kind=spec.optim.schedule,
                                epochs=spec.optim.epochs, min_factor=spec.optim.min_lr_factor)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=_deepspeed_config(spec))
    if spec.engine.compile:
        engine.compile()
    params = spec.training_params()
    start_epoch, start_step, history, sums = 0, 0, [], {}
    if resume:
        state = checkpoint.load(engine, ckpt_dir, params)
        start_epoch, start_step = state["epoch"], state.get("step", 0)
        history, sums = state["history"], state.get("sums", {})
        _set_rng_state(state["rng"])
    end_epoch = spec.optim.epochs if stop_after_epochs is None else min(spec.optim.epochs, stop_after_epochs)

    def save(tag: str, epoch: int, step: int, sums: dict) -> Path:
        """Checkpoint after ``epoch`` complete epochs and ``step`` more batches (collective call)."""
        return checkpoint.save(engine, ckpt_dir, tag, is_main=dist.is_main, client_state={
            "epoch": epoch, "step": step, "sums": sums, "history": history, "params": params, "rng": _rng_state()})

    sampler.load_state_dict({**sampler.state_dict(), "epoch": start_epoch, "step": start_step})
    loader = train_loader(spec.loader.backend, index, keys, pid_map, sampler, spec.augment(),
                          seed=_loader_seed(spec.engine.seed), device=dist.device,
                          source_workers=spec.loader.source_workers)
    try:
        with _StopSignal() as stop:
            for epoch in range(start_epoch, end_epoch):
                first = start_step if epoch == start_epoch else 0
                if first == 0:
                    sums = {}
                engine.train()
                skipped_before = loader.skipped
                t0 = time.perf_counter()
                img_s = 0.0
                bar = tqdm(range(first, steps), desc=f"epoch {epoch + 1}/{spec.optim.epochs}",
                           disable=not dist.is_main, unit="step", dynamic_ncols=True)
                for step in bar:
                    batch = next(loader)
                    images = batch["images"] if dist.device.type == "cuda" else batch["images"].float()
                    if channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with _autocast(dist.device, spec.engine.precision):
                        outputs = engine(images)
                        loss, logs = criterion(outputs, batch)
                    if not math.isfinite(logs["loss"]):
                        raise FloatingPointError(f"epoch {epoch + 1}, step {step + 1}: the loss is {logs['loss']} "
                                                 f"({', '.join(f'{k} {v:.4g}' for k, v in logs.items())})")
                    engine.backward(loss)
                    engine.step()
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if on_step is not None:
                        on_step(epoch + 1, step + 1, logs)
                    img_s = (step + 1 - first) * len(batch["keys"]) * dist.world_size / (time.perf_counter() - t0)
                    if step % spec.engine.log_every == 0 or step == steps - 1:
                        bar.set_postfix(loss=f"{logs['loss']:.3f}", img_s=f"{img_s:.0f}")
                    if (step + 1) % accum == 0 and step + 1 < steps and any_rank(stop.requested):
                        raise TrainingInterrupted(save(f"epoch-{epoch:04d}-step-{step + 1:06d}", epoch, step + 1, sums))
                for _ in range(sampler.steps_per_epoch - steps):  # batches left over by grad accumulation
                    next(loader)
                epoch_logs = {k: v / steps for k, v in sums.items()}
                epoch_logs.update(img_per_s=img_s, lr=engine.get_lr()[0], epoch_seconds=time.perf_counter() - t0,
                                  world_size=dist.world_size, skipped_images=loader.skipped - skipped_before)
                if dist.is_main and validate is not None:
                    epoch_logs.update(validate(epoch + 1, engine.module))
                barrier()
                history.append({"epoch": epoch + 1, **epoch_logs})
                path = save(f"epoch-{epoch + 1:04d}", epoch + 1, 0, {})
                if dist.is_main and log_metrics is not None:
                    log_metrics(epoch_logs, epoch + 1)
                if epoch + 1 < end_epoch and any_rank(stop.requested):
                    raise TrainingInterrupted(path)
    finally:
        loader.close()

    state = cpu_state_dict(engine.module)
    model_path = out_dir / MODEL_WEIGHTS
    if dist.is_main:
        save_model(state, out_dir, model_meta(spec, num_classes))
    barrier()
    # A plain module (DeepSpeed leaves process-group handles on engine.module, which cannot be pickled).
    model = model_from_meta(model_meta(spec, num_classes), state)
    return RunResult(model=model, num_classes=num_classes, model_path=model_path, history=history)


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict on CPU, floating-point tensors in fp32."""
    return {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
            for k, v in module.state_dict().items()}


def save_model(state: dict[str, torch.Tensor], out_dir: Path, meta: dict) -> None:
    """Write ``model.pt`` (state dict) and ``model.json`` (how to rebuild it, see :func:`model_meta`) atomically."""
    with atomic_open(Path(out_dir) / MODEL_WEIGHTS) as fh:
        torch.save(state, fh)
    atomic_write_json(Path(out_dir) / MODEL_META, meta)


def model_meta(spec: TrainSpec, num_classes: int) -> dict:
    """What a loader needs to rebuild the trained model and its input transform."""
    return {"name": spec.model.name, "kwargs": spec.model_kwargs(), "num_classes": num_classes,
            "image_size": list(spec.image_size), "mean": list(spec.loader.mean), "std": list(spec.loader.std)}


def load_model(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` (weights loaded with ``weights_only=True``).

    Returns:
        (module in eval mode on CPU, meta dict from ``model.json``).

    Raises:
        FileNotFoundError: ``model.pt`` or ``model.json`` missing (names the path).
        RuntimeError: the weights do not match the architecture in ``model.json``.
    """
    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / MODEL_META, run_dir / MODEL_WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (expected a trained model folder)")
    meta = json.loads(meta_path.read_text())
    return model_from_meta(meta, torch.load(weights_path, map_location="cpu", weights_only=True)), meta


def model_from_meta(meta: dict, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The module :func:`model_meta` describes, with the weights ``state`` loaded, in eval mode.

    Raises:
        RuntimeError: the weights do not match the architecture.
    """
    model = build(meta["name"], meta["num_classes"], **meta["kwargs"])
    model.load_state_dict(state)
    return model.eval()
