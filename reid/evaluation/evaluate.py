"""Score a model on a dataset's query/gallery shards: features -> rank metrics -> metrics.json + plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reid.data.loaders.dali import AugmentConfig, iterate_eval
from reid.data.shards import ShardsIndex
from reid.evaluation.features import extract_features
from reid.evaluation.plots import plot_cmc, write_cmc_csv
from reid.evaluation.rank_metrics import rank_metrics
from reid.io import atomic_write_json


@dataclass(frozen=True)
class EvalSpec:
    """How to score a model.

    Attributes:
        shards_dir: shard folder holding the ``query`` and ``gallery`` splits.
        image_size: network input ``(height, width)`` px; must match the model's training size.
        mean, std: normalisation per channel on the 0-255 scale.
        metric: ``euclidean`` or ``cosine``.
        flip: flip-averaged features.
        batch_size: images per forward pass.
        max_rank: CMC length.
        chunk_size: queries per distance chunk in :func:`rank_metrics`.
        num_threads: DALI CPU threads.
    """

    shards_dir: Path
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    metric: str = "euclidean"
    flip: bool = True
    batch_size: int = 64
    max_rank: int = 50
    chunk_size: int = 256
    num_threads: int = 2


def score(model: torch.nn.Module, spec: EvalSpec) -> dict:
    """Compute CMC, mAP and mINP of ``model`` on the query/gallery splits.

    Returns:
        ``{"rank1", "rank5", "rank10", "mAP", "mINP"}`` as fractions in [0, 1], the counts
        ``num_query``, ``num_gallery``, ``num_valid_queries``, ``num_excluded_queries``, and
        ``"cmc"``, the full curve as a list of ``max_rank`` floats.

    Raises:
        ShardsError / ValueError: missing splits or no valid query.
    """
    index = ShardsIndex.load(spec.shards_dir)
    cfg = AugmentConfig(image_size=tuple(spec.image_size), mean=tuple(spec.mean), std=tuple(spec.std),
                        num_threads=spec.num_threads)
    device = next(model.parameters()).device
    q = extract_features(model, iterate_eval(index, index.keys("query"), cfg, spec.batch_size, device), spec.flip)
    g = extract_features(model, iterate_eval(index, index.keys("gallery"), cfg, spec.batch_size, device), spec.flip)
    res = rank_metrics(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, metric=spec.metric,
                       max_rank=spec.max_rank, chunk_size=spec.chunk_size)
    cmc = res["cmc"]
    return {
        "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(res["mAP"]), "mINP": float(res["mINP"]),
        "num_query": len(q.keys), "num_gallery": len(g.keys),
        "num_valid_queries": int(res["num_valid_queries"]),
        "num_excluded_queries": int(res["num_excluded_queries"]),
        "cmc": [float(x) for x in cmc],
    }


def write_reports(results: dict[str, dict], metrics_path: Path, plots_dir: Path, title: str) -> dict[str, Path]:
    """Write ``metrics.json`` (everything but the CMC curves), a CMC PNG and one CMC CSV per entry.

    Args:
        results: label (e.g. ``trained``, ``untrained``) -> :func:`score` output.

    Returns:
        ``{"metrics": path, "cmc_png": path, "<label>_cmc_csv": path, ...}``.
    """
    plots_dir = Path(plots_dir)
    paths = {"metrics": Path(metrics_path)}
    atomic_write_json(metrics_path, {label: {k: v for k, v in r.items() if k != "cmc"}
                                     for label, r in results.items()})
    curves = {label: r["cmc"] for label, r in results.items()}
    extra = {label: {"Rank-1": r["rank1"], "mAP": r["mAP"]} for label, r in results.items()}
    paths["cmc_png"] = plot_cmc(curves, plots_dir / "cmc.png", title=title, extra=extra)
    for label, r in results.items():
        paths[f"{label}_cmc_csv"] = plots_dir / f"cmc_{label}.csv"
        write_cmc_csv(r["cmc"], paths[f"{label}_cmc_csv"])
    return paths


def eval_spec_for(meta: dict, shards_dir: Path, metric: str, flip: bool, batch_size: int,
                  max_rank: int, chunk_size: int, num_threads: int = 2) -> EvalSpec:
    """An :class:`EvalSpec` whose input transform is the one the model was trained with (``meta``)."""
    return EvalSpec(shards_dir=Path(shards_dir), image_size=tuple(meta["image_size"]), mean=tuple(meta["mean"]),
                    std=tuple(meta["std"]), metric=metric, flip=flip, batch_size=batch_size,
                    max_rank=max_rank, chunk_size=chunk_size, num_threads=num_threads)


def untrained_like(meta: dict, seed: int) -> torch.nn.Module:
    """The same architecture as a trained model, freshly initialised with ``seed`` (the baseline
    that shows how much training bought)."""
    from reid.models import build

    torch.manual_seed(seed)
    return build(meta["name"], meta["num_classes"], **meta["kwargs"]).eval()


def periodic_validator(spec: EvalSpec, period: int, last_epoch: int):
    """An epoch-end hook for :func:`reid.engine.trainer.train` that scores the model every
    ``period`` epochs and at ``last_epoch``, returning ``{"val.rank1", "val.rank5", "val.mAP", "val.mINP"}``
    (fractions in [0, 1]) on those epochs and ``{}`` otherwise. ``period`` 0 never scores.
    """

    def validate(epoch: int, module: torch.nn.Module) -> dict:
        if period <= 0 or (epoch % period and epoch != last_epoch):
            return {}
        r = score(module, spec)
        return {f"val.{k}": r[k] for k in ("rank1", "rank5", "mAP", "mINP")}

    return validate


def eval_device() -> torch.device:
    """Where evaluation runs: the current CUDA device when there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
