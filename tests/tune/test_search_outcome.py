"""``TrialOutcome.summary`` and ``SearchOutcome.ranked``: the lines ``pipeline.tune`` prints, worked by hand."""

import math

from reid.tune.search import SearchOutcome, TrialOutcome


def _trial(trial_id: str, value: float, status: str = "TERMINATED", epochs: int = 2, stopped: bool = False,
           config: dict | None = None) -> TrialOutcome:
    return TrialOutcome(trial_id=trial_id, config=config or {"optim.lr": 3e-4, "sampler.p": 3}, status=status,
                        epochs=epochs, value=value, stopped_early=stopped, checkpoint=None)


def test_summary_lines():
    assert _trial("a1", 0.25).summary("val.mAP") == \
        "trial a1: val.mAP 0.2500 after 2 epoch(s), finished; optim.lr=0.0003, sampler.p=3"
    assert _trial("b2", 0.123456, epochs=1, stopped=True, config={"loss.triplet.margin": 0.318793}).summary(
        "val.rank1") == "trial b2: val.rank1 0.1235 after 1 epoch(s), stopped early; loss.triplet.margin=0.3188"
    assert _trial("c3", math.nan, status="ERROR", epochs=0).summary("val.mAP") == \
        "trial c3: val.mAP nan after 0 epoch(s), failed; optim.lr=0.0003, sampler.p=3"


def test_ranked_best_first_and_unscored_last_in_order():
    trials = [_trial("nan1", math.nan, status="ERROR"), _trial("low", 0.1), _trial("nan2", math.nan, status="ERROR"),
              _trial("high", 0.9), _trial("mid", 0.5)]
    outcome = SearchOutcome(trials=trials, best=trials[3], parent_run_id="p", experiment_path="x", trial_run_ids={})
    assert [t.trial_id for t in outcome.ranked()] == ["high", "mid", "low", "nan1", "nan2"]
    assert [t.trial_id for t in outcome.trials] == ["nan1", "low", "nan2", "high", "mid"]  # not sorted in place
