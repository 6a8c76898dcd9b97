import pytest
import torch

from reid.engine.schedule import build_scheduler, warmup_multistep_factor


def test_warmup_then_multistep_hand_values():
    f = lambda it: warmup_multistep_factor(it, steps_per_epoch=10, warmup_epochs=2, warmup_factor=0.1,
                                           milestones=(4, 6), gamma=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(10) == pytest.approx(0.1 * 0.5 + 0.5)  # half-way through the 20 warmup iterations
    assert f(20) == pytest.approx(1.0)
    assert f(39) == pytest.approx(1.0)  # epoch 3
    assert f(40) == pytest.approx(0.1)  # epoch 4 hits the first milestone
    assert f(60) == pytest.approx(0.01)


def test_no_warmup_and_bad_steps():
    assert warmup_multistep_factor(0, 5, 0, 0.1, (), 0.1) == 1.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        warmup_multistep_factor(0, 0, 1, 0.1, (), 0.1)


def test_scheduler_drives_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, steps_per_epoch=2, warmup_epochs=1, warmup_factor=0.5, milestones=(2,), gamma=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.75, 1.0, 1.0, 0.1, 0.1])
