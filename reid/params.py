"""Typed schema of ``params.yaml``: one frozen pydantic model per section, unknown keys are errors.

Only ``pipeline/`` reads ``params.yaml`` (through :func:`load_params`); library code receives the
typed sections below. Every model forbids extra keys, so a typo fails with the dotted key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetParams(_Section):
    """``datasets.<name>``: where a dataset lives and how to read it.

    ``root`` is the dataset folder in its official layout (``MSMT17_V1``/``MSMT17_V2`` or
    ``Vehicle-1M``, or the root of a VehicleID, Market-1501 or VeRi-776 copy), relative to the
    repository root or absolute. ``image_size`` is
    ``[height, width]`` in pixels of the network input. ``test_sets`` picks the test lists of
    vehicle layouts (null: all present); each is scored over ``num_draws`` random gallery draws
    seeded by ``gallery_seed``. ``val`` (MSMT17): merge ``list_val`` into train or hold it out.
    """

    layout: Literal["msmt17", "vehicle1m", "vehicleid", "market1501", "veri776"]
    root: str
    image_size: tuple[int, int]
    test_sets: Optional[list[str]] = None
    num_draws: int = Field(default=10, ge=1)
    gallery_seed: int = Field(default=0, ge=0)
    val: Optional[Literal["merge", "holdout"]] = None
    check_images: bool = False  # the data checks read every image; this adds a parse-time PIL verify

    @model_validator(mode="after")
    def _check(self) -> "DatasetParams":
        if min(self.image_size) < 16:
            raise ValueError(f"image_size must be >= 16 px per side, got {self.image_size}")
        return self


class SynthMSMT17Params(_Section):
    """``synthetic.msmt17``: size of the generated MSMT17_V1-layout dataset (``MSMT17SynthConfig``).

    ``images_per_id_camera`` is an int or an inclusive ``[lo, hi]`` range; ``height``/``width`` px.
    """

    num_train_ids: int = Field(gt=0)
    num_test_ids: int = Field(gt=0)
    num_cameras: int = Field(ge=2)
    cameras_per_id: Optional[int] = Field(default=None, ge=2)
    images_per_id_camera: Union[int, tuple[int, int]]
    val_every: int = Field(default=8, gt=0)
    height: int = Field(default=128, ge=16)
    width: int = Field(default=64, ge=16)
    seed: int = 0


class SynthVehicle1MParams(_Section):
    """``synthetic.vehicle1m``: size of the generated Vehicle-1M-layout dataset (``Vehicle1MSynthConfig``).

    ``test_fraction`` of the vehicles go to the test lists; ``size`` is the square image side in px.
    """

    num_models: int = Field(gt=0)
    vehicles_per_model: int = Field(gt=0)
    images_per_vehicle: Union[int, tuple[int, int]]
    test_fraction: float = Field(gt=0, lt=1)
    size: int = Field(default=96, ge=16)
    seed: int = 0


class SyntheticParams(_Section):
    """``synthetic``: the embedded default data, written under ``out_dir``."""

    out_dir: str
    msmt17: SynthMSMT17Params
    vehicle1m: SynthVehicle1MParams


class DataChecksParams(_Section):
    """``data_checks``: the validation pass of ``prepare`` (``reid.data.validation``).

    ``decode``: full JPEG decode (else a header check). ``drop_small_ids``: drop train ids with
    fewer than ``sampler.k`` images (else keep them); reported either way. ``fatal``: errors stop
    ``prepare`` with the list of offending files, and nothing is written. ``workers``: processes.
    """

    enabled: bool
    decode: bool
    drop_small_ids: bool
    fatal: bool
    workers: int = Field(ge=1)


class ShardParams(_Section):
    """``shard``: ``target_bytes``, the WebDataset tar size target in bytes; ``workers``, the
    processes that read images and write tars (int >= 1, default 2; 1 = no pool). The shards
    are byte-identical for any ``workers``."""

    target_bytes: int = Field(gt=0)
    workers: int = 2

    @field_validator("workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> int:
        if type(value) is not int or value < 1:
            raise ValueError(f"must be an int >= 1 (processes writing the shards), got {value!r}")
        return value


class SamplerParams(_Section):
    """``sampler``: how training batches are drawn (per rank), see ``reid.data.samplers``.

    ``kind: pk``: ``p`` identities x ``k`` images each. ``kind: hierarchical`` (TAMR's multi-grain
    ranking loss): ``m`` vehicle models x ``v`` vehicles per model x ``k`` images per vehicle, with
    ``shortfall`` (``drop`` or ``replace``) for models with fewer than ``v`` vehicles and vehicles
    with fewer than ``k`` images. ``cross_camera``: draw an identity's images from as many cameras
    as possible.
    """

    kind: Literal["pk", "hierarchical"] = "pk"
    p: int = Field(gt=0)
    k: int = Field(gt=0)
    m: int = Field(default=4, gt=0)
    v: int = Field(default=3, gt=0)
    shortfall: Literal["drop", "replace"] = "drop"
    cross_camera: bool = False


class LoaderParams(_Section):
    """``loader``: training/evaluation image pipeline knobs (see ``reid.data.loaders.config.AugmentConfig``).

    ``pad`` is the border in pixels added before the random crop; ``mean``/``std`` are per
    channel on the 0-255 scale; ``hw_decoder_load`` is the share of JPEG decoding sent to the
    GPU hardware decoder (mixed device only); ``erase_*`` are random erasing's probability, area
    fraction range and aspect-ratio range (Zhong et al., AAAI 2020); ``color_jitter`` the
    brightness/contrast/saturation strength; ``dtype`` the images' dtype; ``on_corrupt`` what to
    do with an undecodable training JPEG (``error`` or ``skip``: replace and count);
    ``source_workers`` the processes reading shards for DALI (0: the main thread; the batches
    are the same for any count); ``backend`` ``dali`` or ``torch`` (the PyTorch reference path,
    for machines without DALI).
    """

    num_threads: int = Field(gt=0)
    prefetch: int = Field(gt=0)
    flip_prob: float = Field(ge=0, le=1)
    pad: int = Field(ge=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hw_decoder_load: float = Field(ge=0, le=1)
    erase_prob: float = Field(default=0.0, ge=0, le=1)
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.33)
    color_jitter: float = Field(default=0.0, ge=0, lt=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    on_corrupt: Literal["error", "skip"] = "error"
    source_workers: int = Field(default=0, ge=0)
    backend: Literal["dali", "torch"] = "dali"

    @model_validator(mode="after")
    def _ranges(self) -> "LoaderParams":
        lo, hi = self.erase_area
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"erase_area must be [low, high] with 0 < low <= high <= 1, got {self.erase_area}")
        lo, hi = self.erase_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"erase_ratio must be [low, high] with 0 < low <= high, got {self.erase_ratio}")
        return self


class ModelParams(_Section):
    """``model``: the registry ``name`` of the model to train, and ``kwargs``: constructor keyword
    arguments per model name (``kwargs.<name>``), so ``dvc exp run -S model.name=<name>`` switches
    models without touching anything else; a model without an entry gets its paper defaults."""

    name: str
    kwargs: dict[str, dict] = Field(default_factory=dict)

    def selected_kwargs(self) -> dict:
        """The keyword arguments of the selected model (``kwargs.<name>``, or ``{}``)."""
        return dict(self.kwargs.get(self.name, {}))


class CEParams(_Section):
    weight: float = Field(ge=0)
    epsilon: float = Field(ge=0, lt=1)


class TripletParams(_Section):
    weight: float = Field(ge=0)
    margin: float = Field(ge=0)


class LossTerm(BaseModel):
    """``loss.<name>`` of a loss without a typed section: ``weight`` plus the loss's own keyword
    arguments, checked against the loss's constructor when training builds it (an unknown key is
    an error there, naming ``loss.<name>.<key>``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    weight: float = Field(ge=0)


class LossParams(_Section):
    """``loss``: weight and hyper-parameters of each loss a model may declare (``model.losses``).

    ``ce`` and ``triplet`` are typed here; every other section (``loss.mgr``, ``loss.part_ce``,
    ...) is a :class:`LossTerm` named after a loss of ``reid.losses``. The engine builds only the
    losses the model declares, weighted by ``weight``; a model never sees its weights.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, LossTerm]

    ce: CEParams
    triplet: TripletParams


class OptimParams(_Section):
    """``optim``: Adam or SGD with linear warmup, then multistep decay (Bag of Tricks, Luo et al. 2019)
    or cosine annealing.

    ``lr`` is the base learning rate (each model's param groups may scale it); ``warmup_epochs``
    ramps it linearly from ``warmup_factor * lr``; then ``schedule: multistep`` multiplies it by
    ``gamma`` at each epoch in ``milestones``, and ``schedule: cosine`` anneals it to
    ``min_lr_factor * lr`` at the end of the last epoch.
    """

    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    momentum: float = 0.9
    epochs: int = Field(gt=0)
    warmup_epochs: int = Field(ge=0)
    warmup_factor: float = Field(gt=0, le=1)
    milestones: tuple[int, ...] = ()
    gamma: float = Field(gt=0, le=1)
    grad_clip: float = Field(ge=0)
    schedule: Literal["multistep", "cosine"] = "multistep"
    min_lr_factor: float = Field(default=0.0, ge=0, le=1)


class EngineParams(_Section):
    """``engine``: DeepSpeed engine settings. ``zero_stage`` 0, 1 or 2; ``deepspeed_config``: the
    DeepSpeed config template (null: ``infra/deepspeed/zero<zero_stage>.json`` of this repository;
    a relative path is relative to the repository root); its ZeRO stage must be ``zero_stage``.
    ``precision``: ``auto`` (bf16 autocast on GPU, fp32 on CPU), ``bf16`` or ``fp32``;
    ``channels_last``: ``auto`` (GPU only), true or false; ``compile``: ``torch.compile`` through
    DeepSpeed's ``engine.compile()``; ``grad_accum_steps``: batches per optimizer step;
    ``sync_bn``: BatchNorm statistics over all ranks (see ``reid.engine.sync_bn``);
    ``launcher``: the command ``dvc.yaml``'s train stage runs ``pipeline.train`` with
    (``python -m``, or e.g. ``deepspeed --num_gpus 8 --module``)."""

    zero_stage: Literal[0, 1, 2]
    seed: int = 0
    log_every: int = Field(gt=0)
    deepspeed_config: Optional[str] = None
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: Union[Literal["auto"], bool] = "auto"
    compile: bool = False
    grad_accum_steps: int = Field(default=1, gt=0)
    sync_bn: bool = False
    launcher: str = "python -m"


class RerankParams(_Section):
    """``eval.rerank``: k-reciprocal re-ranking (Zhong et al., CVPR 2017; paper defaults k1 = 20,
    k2 = 6, lambda = 0.3). When enabled, every set is also scored re-ranked (``<set>_rerank``)."""

    enabled: bool = False
    k1: int = Field(default=20, gt=0)
    k2: int = Field(default=6, gt=0)
    lambda_value: float = Field(default=0.3, ge=0.0, le=1.0)


class EvalParams(_Section):
    """``eval``: feature extraction and ranking. ``dtype``: the distance matmul's input precision
    (fp32 accumulate); ``query_expansion``: average query expansion over the top-k gallery
    neighbours (0 = off); ``chunk_size``: queries per distance block (memory O(chunk x gallery))."""

    metric: Literal["euclidean", "cosine"]
    flip: bool
    batch_size: int = Field(gt=0)
    max_rank: int = Field(gt=0)
    chunk_size: int = Field(gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"
    query_expansion: int = Field(default=0, ge=0)
    rerank: RerankParams = RerankParams()


class ValidationParams(_Section):
    """``validation``: query/gallery scoring during training, logged per epoch as ``val.*``.

    Runs after every ``period``-th epoch and after the last one; ``period: 0`` turns it off.
    """

    period: int = Field(ge=0)
    metric: Literal["euclidean", "cosine"]
    flip: bool


class Distribution(_Section):
    """One dimension of a Ray Tune search space (``tune.space.<model>.<dotted params key>``).

    ``type``: ``uniform`` / ``loguniform`` (floats in ``[low, high]``; loguniform needs
    ``low > 0``), ``randint`` (ints in ``[low, high]``, both included) or ``choice`` (one of
    ``values``).
    """

    type: Literal["uniform", "loguniform", "randint", "choice"]
    low: Optional[float] = None
    high: Optional[float] = None
    values: Optional[list] = None

    @model_validator(mode="after")
    def _check(self) -> "Distribution":
        if self.type == "choice":
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("type choice takes a non-empty `values` list and no low/high")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"type {self.type} takes `low` and `high` and no values")
        ordered = self.low <= self.high if self.type == "randint" else self.low < self.high
        if not ordered:
            raise ValueError(f"low must be below high, got [{self.low}, {self.high}]")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "randint" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"randint bounds must be integers, got [{self.low}, {self.high}]")
        return self

    def candidates(self) -> list:
        """Values that span the dimension (bounds, or every choice), to check them before a search."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class AshaParams(_Section):
    """``tune.scheduler``: ASHA (Li et al., MLSys 2020). Every trial trains at most ``max_epochs``
    epochs (it replaces ``optim.epochs``); at epochs ``grace_period * reduction_factor**i`` the
    trials below the top ``1 / reduction_factor`` of those that reached that epoch are stopped."""

    max_epochs: int = Field(gt=0)
    grace_period: int = Field(default=1, gt=0)
    reduction_factor: float = Field(default=2.0, gt=1)

    @model_validator(mode="after")
    def _check(self) -> "AshaParams":
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_epochs ({self.max_epochs})")
        return self


class TrialResources(_Section):
    """``tune.resources``: what one trial reserves: ``cpu`` cores and ``gpu`` GPUs (a fraction
    such as 0.5 lets two trials share one GPU)."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)


class TuneParams(_Section):
    """``tune``: a Ray Tune search over ``space[model.name]`` (see ``reid.tune``).

    ``dataset``: the ``datasets`` key trained and validated on. ``name``: the search's name (Ray
    experiment folder ``<storage_path>/<name>``, MLflow parent run, tag of the registered model).
    ``metric``: what every trial reports per epoch and the search maximises (``val.mAP``,
    ``val.rank1``, ``val.mINP``, ``val.rank5``: the ``validation`` scoring, done every epoch in a
    search). ``search_alg``: ``optuna`` (TPE, seeded with ``seed``) or ``random``.
    ``num_samples``: trials; ``max_concurrent``: trials at once. ``points_to_evaluate``: trials
    tried first (e.g. the paper's values), dotted keys of ``space``. ``max_failures``: retries of a
    failed trial (a trial that fails for good is marked failed and the search goes on).
    ``address``: a Ray cluster to join (null: ``$RAY_ADDRESS``, else a local Ray).
    ``storage_path``: where the search state and trial checkpoints live (on a cluster, storage
    every node sees: NFS or ``s3://``). ``register_best``: register the best trial's model as a
    new version of ``reid-<dataset>``. ``space``: per model name, dotted params keys
    (``loss.triplet.margin``, ``optim.lr``, ...) to :class:`Distribution`.
    """

    dataset: str
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    metric: Literal["val.mAP", "val.rank1", "val.rank5", "val.mINP"] = "val.mAP"
    search_alg: Literal["optuna", "random"] = "optuna"
    seed: int = 0
    num_samples: int = Field(gt=0)
    max_concurrent: int = Field(default=1, gt=0)
    points_to_evaluate: list[dict[str, Union[float, int, str, bool]]] = Field(default_factory=list)
    scheduler: AshaParams
    resources: TrialResources = TrialResources()
    max_failures: int = Field(default=0, ge=0)
    address: Optional[str] = None
    storage_path: str = "tune/ray_results"
    register_best: bool = True
    space: dict[str, dict[str, Distribution]]

    @model_validator(mode="after")
    def _check(self) -> "TuneParams":
        for i, point in enumerate(self.points_to_evaluate):
            for key in point:
                if not any(key in dims for dims in self.space.values()):
                    raise ValueError(f"points_to_evaluate[{i}]: {key!r} is not a key of any tune.space entry")
        return self


class MlflowParams(_Section):
    """``mlflow``: ``tracking_uri`` null means ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""

    tracking_uri: Optional[str] = None
    experiment: str
    register_model: bool = True


class Params(_Section):
    """The whole ``params.yaml``."""

    datasets: dict[str, DatasetParams]
    synthetic: SyntheticParams
    data_checks: DataChecksParams
    shard: ShardParams
    sampler: SamplerParams
    loader: LoaderParams
    model: ModelParams
    loss: LossParams
    optim: OptimParams
    engine: EngineParams
    eval: EvalParams
    validation: ValidationParams
    mlflow: MlflowParams
    tune: TuneParams

    def dataset(self, name: str) -> DatasetParams:
        """The ``datasets.<name>`` section. Raises ``KeyError`` listing the known names."""
        if name not in self.datasets:
            raise KeyError(f"params: no datasets.{name}; known: {sorted(self.datasets)}")
        return self.datasets[name]

    @model_validator(mode="after")
    def _check_tune(self) -> "Params":
        if self.tune.dataset not in self.datasets:
            raise ValueError(f"tune.dataset: {self.tune.dataset!r} is not a key of datasets ({sorted(self.datasets)})")
        known = flatten(self.model_dump(exclude={"tune"}))
        for model, dims in self.tune.space.items():
            for key in dims:
                if key not in known:
                    raise ValueError(f"tune.space.{model}: {key!r} is not a params key (a search dimension must name "
                                     "an existing leaf, e.g. loss.triplet.margin)")
        return self


class ParamsError(ValueError):
    """``params.yaml`` is unreadable or invalid; the message names the file and the dotted keys."""


def load_params(path: str | Path, overrides: dict | None = None) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: the YAML file.
        overrides: optional nested dict merged over the file (used by Ray Tune trials and tests).

    Raises:
        ParamsError: file missing, not YAML, or a key unknown/missing/invalid (named as
            ``section.key``).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: invalid params:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {key}: {e['msg']}")
        raise ParamsError("\n".join(lines)) from None


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in recursively (mappings merge, other values replace); inputs unchanged."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """Flatten nested dicts to ``{"a.b.c": value}``; lists and tuples become lists."""
    out: dict = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
