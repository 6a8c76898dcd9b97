"""DeepSpeed config templates (``infra/deepspeed/zero<stage>.json``) and how params fill them."""

import json
from pathlib import Path

import pytest

from pipeline import _cli
from reid.engine.deepspeed_config import fill_template, load_template
from reid.params import load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_repository_templates_fill_to_a_complete_config(stage):
    template = load_template(REPO / "infra" / "deepspeed" / f"zero{stage}.json")
    cfg = fill_template(template, micro_batch=32, grad_clip=5.0, zero_stage=stage)
    assert cfg["train_micro_batch_size_per_gpu"] == 32 and cfg["gradient_clipping"] == 5.0
    assert cfg["zero_optimization"]["stage"] == stage
    assert "auto" not in json.dumps(cfg)
    assert template["train_micro_batch_size_per_gpu"] == "auto"  # the template itself is untouched


def test_params_pick_the_template_of_the_zero_stage(tmp_path):
    raw = (REPO / "params.yaml").read_text().replace("zero_stage: 0 ", "zero_stage: 2 ")
    (tmp_path / "params.yaml").write_text(raw)
    params = load_params(tmp_path / "params.yaml")
    assert params.engine.zero_stage == 2 and params.engine.deepspeed_config is None
    assert _cli.deepspeed_template(params)["zero_optimization"]["stage"] == 2


def test_fill_errors_name_the_problem():
    base = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 1}}
    with pytest.raises(ValueError, match="engine.zero_stage is 2"):
        fill_template(base, 8, 0.0, zero_stage=2)
    with pytest.raises(ValueError, match=r"zero_optimization\.reduce_bucket_size"):
        fill_template({**base, "zero_optimization": {"stage": 1, "reduce_bucket_size": "auto"}}, 8, 0.0, 1)
    with pytest.raises(ValueError, match="train_batch_size"):
        fill_template({**base, "train_batch_size": 64}, 8, 0.0, 1)
    # an explicit value is kept
    assert fill_template({**base, "gradient_clipping": 1.0}, 8, 0.0, 1)["gradient_clipping"] == 1.0


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_template(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_template(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        load_template(tmp_path / "list.json")


def test_gradient_accumulation_is_filled_and_a_fixed_other_value_refused():
    template = {"gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 1}}
    assert fill_template(template, 12, 0.0, 1, grad_accum=3)["gradient_accumulation_steps"] == 3
    with pytest.raises(ValueError, match="gradient_accumulation_steps is 2.*engine.grad_accum_steps is 3"):
        fill_template({**template, "gradient_accumulation_steps": 2}, 12, 0.0, 1, grad_accum=3)
