"""score() with the eval extras: bf16 distances, average query expansion, k-reciprocal re-ranking."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reid.data import synthetic
from reid.data.layouts import parse
from reid.data.protocols import Protocol, build_protocol
from reid.data.shards import write_shards
from reid.evaluation.evaluate import EvalSpec, score
from reid.evaluation.rerank import RerankConfig
from tests.data.loader_common import cpu_pipelines  # noqa: F401  (DALI on its CPU decoder)
from tests.evaluation.test_distributed_features import MEAN, SIZE, STD, TinyNet

KEYS = ("rank1", "rank5", "mAP", "mINP")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalSpec, Protocol]:
    base = tmp_path_factory.mktemp("score_options")
    cfg = synthetic.MSMT17SynthConfig(num_train_ids=5, num_test_ids=6, num_cameras=3, cameras_per_id=2,
                                      images_per_id_camera=(2, 3), val_every=0, height=SIZE[0], width=SIZE[1])
    root = synthetic.write_msmt17(base / "data", cfg)
    manifest = parse("msmt17", root)
    write_shards(manifest, root, base / "shards", 1 << 20)
    build_protocol(manifest, num_draws=1, seed=0).write(base / "protocol.json")
    spec = EvalSpec(shards_dir=Path(base / "shards"), image_size=SIZE, mean=MEAN, std=STD, batch_size=8,
                    max_rank=5, chunk_size=3, num_threads=1)
    return spec, Protocol.read(base / "protocol.json")


def test_rerank_adds_rerank_sets_and_lambda_one_keeps_the_plain_ranking(data):
    spec, protocol = data
    plain = score(TinyNet(), spec, protocol)
    assert set(plain) == {"query_gallery"}
    # lambda = 1: the final distance is the original one divided by a per-query constant
    same = score(TinyNet(), replace(spec, rerank=RerankConfig(k1=4, k2=2, lambda_value=1.0)), protocol)
    assert set(same) == {"query_gallery", "query_gallery_rerank"}
    for k in KEYS:
        assert same["query_gallery_rerank"][k] == pytest.approx(plain["query_gallery"][k], abs=1e-12)
    jaccard = score(TinyNet(), replace(spec, rerank=RerankConfig(k1=4, k2=2, lambda_value=0.0)), protocol)
    assert jaccard["query_gallery"] == plain["query_gallery"]
    assert any(jaccard["query_gallery_rerank"][k] != plain["query_gallery"][k] for k in KEYS)


def test_query_expansion_and_bf16_change_only_what_they_should(data):
    spec, protocol = data
    plain = score(TinyNet(), spec, protocol)["query_gallery"]
    expanded = score(TinyNet(), replace(spec, query_expansion=8), protocol)["query_gallery"]
    assert expanded["num_valid_queries"] == plain["num_valid_queries"]
    assert any(expanded[k] != plain[k] for k in KEYS)
    bf16 = score(TinyNet(), replace(spec, dtype="bfloat16"), protocol)["query_gallery"]
    assert bf16["mAP"] == pytest.approx(plain["mAP"], abs=0.1)


def test_visual_reports_of_the_first_round(data, tmp_path):
    from PIL import Image

    from reid.evaluation.evaluate import first_round_recorder, write_visual_reports

    spec, protocol = data
    record, kept = first_round_recorder()
    score(TinyNet(), spec, protocol, on_round=record)
    assert len(kept) == 1 and kept[0].name == "query_gallery" and kept[0].index == 0
    rnd = kept[0]
    assert rnd.qf.shape[0] == len(rnd.q_keys) == len(rnd.q_pids) and rnd.gf.shape[0] == len(rnd.g_keys)
    paths = write_visual_reports(rnd, spec.shards_dir, tmp_path, "trained", "tiny", spec.metric)
    assert sorted(paths) == ["distances_trained.png", "rank_lists_trained.png"]
    for p in paths.values():
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100
