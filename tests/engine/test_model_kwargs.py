"""``model.kwargs`` is keyed by model name, so switching ``model.name`` switches the arguments too."""

from pathlib import Path

from reid.engine.trainer import TrainSpec
from reid.params import ModelParams, load_params

REPO = Path(__file__).resolve().parents[2]


def _spec(model: ModelParams, image_size=(128, 64)) -> TrainSpec:
    p = load_params(REPO / "params.yaml")
    return TrainSpec(shards_dir=Path("s"), out_dir=Path("o"), image_size=image_size, sampler=p.sampler,
                     loader=p.loader, model=model, loss=p.loss, optim=p.optim, engine=p.engine)


KWARGS = {"resnet_bnneck": {"depth": 18, "last_stride": 1}, "sag": {"depth": 3}}


def test_selected_model_gets_its_own_kwargs():
    assert _spec(ModelParams(name="resnet_bnneck", kwargs=KWARGS)).model_kwargs() == {"depth": 18, "last_stride": 1}
    assert _spec(ModelParams(name="sag", kwargs=KWARGS)).model_kwargs() == {"depth": 3}
    assert _spec(ModelParams(name="pan", kwargs=KWARGS)).model_kwargs() == {}  # paper defaults
    flat = _spec(ModelParams(name="sag", kwargs=KWARGS)).training_params()
    assert flat["model.name"] == "sag" and flat["model.kwargs.depth"] == 3
    assert not any(k.startswith("model.kwargs.resnet_bnneck") for k in flat)  # other models' kwargs don't count


def test_input_size_follows_the_dataset_for_models_that_take_it():
    assert _spec(ModelParams(name="apnet_s"), (128, 64)).model_kwargs() == {"input_size": [128, 64]}
    given = ModelParams(name="apnet_s", kwargs={"apnet_s": {"input_size": [256, 128]}})
    assert _spec(given, (128, 64)).model_kwargs() == {"input_size": [256, 128]}
    assert "input_size" not in _spec(ModelParams(name="apnet_c")).model_kwargs()
