import numpy as np
import pytest

from reid.evaluation.evaluate import _aggregate, flat_metrics


def _round(r1, mAP, cmc):
    return {"rank1": r1, "rank5": 1.0, "rank10": 1.0, "mAP": mAP, "mINP": mAP / 2, "num_query": 6,
            "num_gallery": 3, "num_valid_queries": 6, "num_excluded_queries": 0, "cmc": np.array(cmc)}


def test_rounds_average_with_population_std():
    out = _aggregate([_round(0.5, 0.4, [0.5, 1.0]), _round(1.0, 0.8, [1.0, 1.0])])
    assert out["rank1"] == pytest.approx(0.75) and out["rank1_std"] == pytest.approx(0.25)
    assert out["mAP"] == pytest.approx(0.6) and out["mAP_std"] == pytest.approx(0.2)
    assert out["cmc"] == pytest.approx([0.75, 1.0])
    assert out["num_rounds"] == 2 and out["num_query"] == 6 and out["num_gallery"] == 3


def test_single_round_has_no_std_and_flattens_for_mlflow():
    out = _aggregate([_round(0.5, 0.4, [0.5, 1.0])])
    assert "rank1_std" not in out and out["num_rounds"] == 1
    flat = flat_metrics({"query_gallery": out}, "untrained.")
    assert flat["untrained.query_gallery.mAP"] == pytest.approx(0.4)
    assert not any(k.endswith(".cmc") for k in flat)
