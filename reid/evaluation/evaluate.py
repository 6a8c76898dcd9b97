"""Score a model on a dataset's query/gallery shards: features -> rank metrics -> metrics.json + plots."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from reid.data.loaders import AugmentConfig
from reid.data.protocols import GALLERY_CAMID, QUERY_CAMID, Protocol, ProtocolError
from reid.data.shards import ShardsIndex
from reid.evaluation.features import Features, extract_split_features
from reid.evaluation.plots import (DISTANCE_LABELS, plot_cmc, plot_distance_histograms, sample_pair_distances,
                                   write_cmc_table)
from reid.evaluation.rank_lists import write_rank_lists
from reid.evaluation.query_expansion import average_query_expansion
from reid.evaluation.rank_metrics import rank_metrics, rank_metrics_from_distances
from reid.evaluation.rerank import RerankConfig, rerank_distance_chunks
from reid.io import atomic_write_json
from reid.params import EvalParams, LoaderParams, ValidationParams


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
        num_threads: DALI CPU threads / DataLoader decode threads.
        backend: loader backend, ``dali`` or ``torch`` (see ``reid.data.loaders``).
        dtype: distance matmul input precision, ``float32`` or ``bfloat16`` (fp32 accumulate).
        query_expansion: average query expansion over this many top gallery neighbours (0: off).
        rerank: k-reciprocal re-ranking settings; when given, every set is also scored re-ranked
            under the name ``<set>_rerank``.
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
    backend: str = "dali"
    dtype: str = "float32"
    query_expansion: int = 0
    rerank: Optional[RerankConfig] = None


METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")


@dataclass(frozen=True)
class RoundData:
    """What one scored round ranked (for reports: rank lists, distance histograms).

    Attributes:
        name, index: the set (``query_gallery``, ``test_1000``, ...) and the 0-based round.
        qf, gf: ``(Q, D)`` / ``(G, D)`` float32 CPU features as ranked (after query expansion).
        q_pids, g_pids, q_camids, g_camids: ``(Q,)`` / ``(G,)`` int64 labels as ranked (drawn rounds:
            query camid 0, gallery camid 1).
        q_keys, g_keys: the sample keys (to read the images from the shards).
    """

    name: str
    index: int
    qf: torch.Tensor
    gf: torch.Tensor
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    q_keys: list[str]
    g_keys: list[str]


def _round_metrics(res: dict, num_query: int, num_gallery: int) -> dict:
    cmc = res["cmc"]
    return {
        "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(res["mAP"]), "mINP": float(res["mINP"]),
        "num_query": num_query, "num_gallery": num_gallery,
        "num_valid_queries": int(res["num_valid_queries"]),
        "num_excluded_queries": int(res["num_excluded_queries"]),
        "cmc": np.asarray(cmc, np.float64),
    }


def _aggregate(rounds: list[dict]) -> dict:
    """One set's result: a single round as is; several rounds as mean, plus ``<metric>_std``
    (population std over rounds) and ``num_rounds``; counts are per round (means)."""
    out = {k: float(np.mean([r[k] for r in rounds])) for k in METRICS}
    if len(rounds) > 1:
        out.update({f"{k}_std": float(np.std([r[k] for r in rounds])) for k in METRICS})
    for k in ("num_query", "num_gallery", "num_valid_queries", "num_excluded_queries"):
        values = [r[k] for r in rounds]
        out[k] = values[0] if len(set(values)) == 1 else float(np.mean(values))
    out["num_rounds"] = len(rounds)
    out["cmc"] = [float(x) for x in np.mean([r["cmc"] for r in rounds], axis=0)]
    return out


def score(model: torch.nn.Module, spec: EvalSpec, protocol: Protocol, distributed: bool = False,
          on_round: Optional[Callable[[RoundData], None]] = None) -> dict[str, dict]:
    """Compute CMC, mAP and mINP of ``model`` for every set of ``protocol``.

    Features are extracted once (``query`` + ``gallery`` shards for a fixed protocol, ``test``
    shards for gallery draws); each round is then ranked with :func:`rank_metrics`. In drawn
    rounds queries get camid 0 and the gallery camid 1, so no true match is filtered out.

    With ``distributed=True`` and an initialised ``torch.distributed`` process group, each rank
    extracts only its share of the images and the features are all-gathered in shard order
    (:func:`~reid.evaluation.features.extract_split_features`): every rank of the group must then
    call ``score`` with the same arguments, and every rank ranks the same features and returns
    the same metrics. The default (``False``) extracts everything in this process even inside a
    process group, as the training loop needs: it runs its validator on rank 0 only while the
    other ranks wait at a barrier, where a collective would never complete. A single process
    gives the same numbers either way.

    Returns:
        set name (``query_gallery``, or a test list such as ``test_1000``; plus ``<set>_rerank``
        with ``spec.rerank``) -> ``{"rank1",
        "rank5", "rank10", "mAP", "mINP"}`` as fractions in [0, 1] (means over rounds), their
        ``<metric>_std`` over rounds when there are several, ``num_rounds``, the per-round counts
        ``num_query``, ``num_gallery``, ``num_valid_queries``, ``num_excluded_queries``, and
        ``"cmc"``: the (mean) curve as a list of ``max_rank`` floats.

    Raises:
        ShardsError / ProtocolError / ValueError: missing shards, a protocol that does not match
            them, or a round without a valid query.
        PeerExtractionError: (``distributed``) on the ranks whose share was read while another
            rank's extraction failed.

    ``on_round``, if given, is called with each round's :class:`RoundData` after it is scored.
    """
    index = ShardsIndex.load(spec.shards_dir)
    cfg = AugmentConfig(image_size=tuple(spec.image_size), mean=tuple(spec.mean), std=tuple(spec.std),
                        num_threads=spec.num_threads)
    splits = ("query", "gallery") if protocol.kind == "fixed" else ("test",)
    keys = [k for split in splits for k in index.keys(split)]
    device = next(model.parameters()).device
    f = extract_split_features(model, spec.backend, index, keys, cfg, spec.batch_size, device, spec.flip,
                               distributed=distributed)
    pos = {k: i for i, k in enumerate(f.keys)}
    per_set: dict[str, list[dict]] = {}
    for rnd in protocol.rounds(index.keys):
        missing = [k for k in (*rnd.query, *rnd.gallery) if k not in pos]
        if missing:
            raise ProtocolError(f"{spec.shards_dir}: round {rnd.name}/{rnd.index} names keys not in the shards, "
                                f"e.g. {missing[:3]}")
        qi = torch.tensor([pos[k] for k in rnd.query])
        gi = torch.tensor([pos[k] for k in rnd.gallery])
        if protocol.kind == "fixed":
            q_cam, g_cam = f.camids[qi.numpy()], f.camids[gi.numpy()]
        else:
            q_cam, g_cam = np.full(len(qi), QUERY_CAMID), np.full(len(gi), GALLERY_CAMID)
        qf, gf = f.feats[qi], f.feats[gi]
        q_pids, g_pids = f.pids[qi.numpy()], f.pids[gi.numpy()]
        if spec.query_expansion:
            qf = average_query_expansion(qf, gf, k=spec.query_expansion, chunk_size=spec.chunk_size,
                                         metric=spec.metric)
        res = rank_metrics(qf, gf, q_pids, g_pids, q_cam, g_cam, metric=spec.metric, max_rank=spec.max_rank,
                           chunk_size=spec.chunk_size, dtype=spec.dtype)
        per_set.setdefault(rnd.name, []).append(_round_metrics(res, len(qi), len(gi)))
        if spec.rerank is not None:
            r = spec.rerank
            chunks = rerank_distance_chunks(qf, gf, k1=r.k1, k2=r.k2, lambda_value=r.lambda_value,
                                            chunk_size=spec.chunk_size, metric=spec.metric)
            res = rank_metrics_from_distances(chunks, q_pids, g_pids, q_cam, g_cam, max_rank=spec.max_rank)
            per_set.setdefault(f"{rnd.name}_rerank", []).append(_round_metrics(res, len(qi), len(gi)))
        if on_round is not None:
            on_round(RoundData(rnd.name, rnd.index, qf.cpu(), gf.cpu(), q_pids, g_pids, np.asarray(q_cam),
                               np.asarray(g_cam), list(rnd.query), list(rnd.gallery)))
    return {name: _aggregate(rounds) for name, rounds in per_set.items()}


def write_reports(results: dict[str, dict[str, dict]], metrics_path: Path, plots_dir: Path,
                  title: str) -> dict[str, Path]:
    """Write ``metrics.json`` (everything but the CMC curves), a CMC PNG of every curve and, per
    label, a CMC CSV (``cmc_<label>.csv``: a ``rank`` column, then one column per set).

    Args:
        results: label (e.g. ``trained``, ``untrained``) -> :func:`score` output.

    Returns:
        ``{"metrics": path, "cmc_png": path, "<label>_cmc_csv": path, ...}``.
    """
    plots_dir = Path(plots_dir)
    paths = {"metrics": Path(metrics_path)}
    atomic_write_json(metrics_path, {label: {name: {k: v for k, v in r.items() if k != "cmc"}
                                             for name, r in sets.items()}
                                     for label, sets in results.items()})
    curves = {f"{label} {name}": r["cmc"] for label, sets in results.items() for name, r in sets.items()}
    extra = {f"{label} {name}": {"Rank-1": r["rank1"], "mAP": r["mAP"]}
             for label, sets in results.items() for name, r in sets.items()}
    paths["cmc_png"] = plot_cmc(curves, plots_dir / "cmc.png", title=title, extra=extra)
    for label, sets in results.items():
        paths[f"{label}_cmc_csv"] = write_cmc_table({name: r["cmc"] for name, r in sets.items()},
                                                    plots_dir / f"cmc_{label}.csv")
    return paths


def first_round_recorder() -> tuple[Callable[[RoundData], None], list[RoundData]]:
    """An ``on_round`` hook for :func:`score` that keeps the first round it sees (round 0 of the
    first set), and the list it is kept in."""
    kept: list[RoundData] = []

    def record(rnd: RoundData) -> None:
        if not kept:
            kept.append(rnd)

    return record, kept


def write_visual_reports(rnd: RoundData, shards_dir: Path, plots_dir: Path, label: str, title: str,
                         metric: str, seed: int = 0) -> dict[str, Path]:
    """Rank lists and distance histograms of one scored round.

    Writes ``plots_dir/rank_lists_<label>.png`` (8 sampled queries with a valid match, each with its
    top-10 gallery images: green border = same pid, red = another; distance under each) and
    ``plots_dir/distances_<label>.png`` (density histograms of positive vs negative query-gallery
    distances, up to 200,000 pairs of each, sampled with ``seed``), atomically.

    Returns:
        ``{"rank_lists_<label>.png": path, "distances_<label>.png": path}``.

    Raises:
        ShardsError: an image cannot be read from ``shards_dir``.
    """
    index = ShardsIndex.load(shards_dir)
    query = Features(rnd.qf, rnd.q_pids, rnd.q_camids, rnd.q_keys)
    gallery = Features(rnd.gf, rnd.g_pids, rnd.g_camids, rnd.g_keys)
    lists = write_rank_lists(index, query, gallery, Path(plots_dir) / f"rank_lists_{label}.png", n_queries=8, k=10,
                             seed=seed, metric=metric, title=f"{title}: {rnd.name} top-10")
    pos, neg = sample_pair_distances(rnd.qf, rnd.gf, rnd.q_pids, rnd.g_pids, rnd.q_camids, rnd.g_camids,
                                     seed=seed, metric=metric)
    hist = Path(plots_dir) / f"distances_{label}.png"
    plot_distance_histograms(pos, neg, hist, f"{title}: {rnd.name} distances", xlabel=DISTANCE_LABELS[metric])
    return {lists.name: lists, hist.name: hist}


def flat_metrics(sets: dict[str, dict], prefix: str = "") -> dict[str, float]:
    """``{"<prefix><set>.<metric>": value}`` for every scalar of a :func:`score` result (for MLflow)."""
    return {f"{prefix}{name}.{k}": float(v) for name, r in sets.items() for k, v in r.items() if k != "cmc"}


def eval_spec_for(meta: dict, shards_dir: Path, metric: str, flip: bool, batch_size: int,
                  max_rank: int, chunk_size: int, num_threads: int = 2, backend: str = "dali",
                  dtype: str = "float32", query_expansion: int = 0,
                  rerank: Optional[RerankConfig] = None) -> EvalSpec:
    """An :class:`EvalSpec` whose input transform is the one the model was trained with (``meta``)."""
    return EvalSpec(shards_dir=Path(shards_dir), image_size=tuple(meta["image_size"]), mean=tuple(meta["mean"]),
                    std=tuple(meta["std"]), metric=metric, flip=flip, batch_size=batch_size,
                    max_rank=max_rank, chunk_size=chunk_size, num_threads=num_threads, backend=backend,
                    dtype=dtype, query_expansion=query_expansion, rerank=rerank)


def untrained_like(meta: dict, seed: int) -> torch.nn.Module:
    """The same architecture as a trained model, freshly initialised with ``seed`` (the baseline
    that shows how much training bought)."""
    from reid.models import build

    torch.manual_seed(seed)
    return build(meta["name"], meta["num_classes"], **meta["kwargs"]).eval()


def periodic_validator(spec: EvalSpec, protocol: Protocol, period: int, last_epoch: int):
    """An epoch-end hook for :func:`reid.engine.trainer.train` that scores the model every
    ``period`` epochs and at ``last_epoch`` on the protocol's first set (``query_gallery``, or the
    smallest test list), returning ``{"val.rank1", "val.rank5", "val.mAP", "val.mINP"}`` (fractions
    in [0, 1], means over rounds) on those epochs and ``{}`` otherwise. ``period`` 0 never scores.
    """
    first = next(iter(protocol.sets))
    protocol = replace(protocol, sets={first: protocol.sets[first]},
                       members={first: protocol.members[first]} if protocol.members else {})

    def validate(epoch: int, module: torch.nn.Module) -> dict:
        if period <= 0 or (epoch % period and epoch != last_epoch):
            return {}
        r = score(module, spec, protocol)[first]
        return {f"val.{k}": r[k] for k in ("rank1", "rank5", "mAP", "mINP")}

    return validate


def eval_settings(evaluation: EvalParams, loader: LoaderParams) -> dict:
    """:func:`eval_spec_for` keyword arguments from the ``eval`` and ``loader`` params."""
    e = evaluation
    rerank = RerankConfig(e.rerank.k1, e.rerank.k2, e.rerank.lambda_value) if e.rerank.enabled else None
    return dict(metric=e.metric, flip=e.flip, batch_size=e.batch_size, max_rank=e.max_rank,
                chunk_size=e.chunk_size, num_threads=loader.num_threads, backend=loader.backend,
                dtype=e.dtype, query_expansion=e.query_expansion, rerank=rerank)


def validation_spec(shards_dir: Path, image_size: tuple[int, int], loader: LoaderParams,
                    validation: ValidationParams) -> EvalSpec:
    """The :class:`EvalSpec` of the scoring during training (``validation`` params; decoding
    threads, backend and normalisation from ``loader``)."""
    return EvalSpec(Path(shards_dir), tuple(image_size), loader.mean, loader.std, metric=validation.metric,
                    flip=validation.flip, num_threads=loader.num_threads, backend=loader.backend)


def eval_device() -> torch.device:
    """Where evaluation runs: the current CUDA device when there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
