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


def test_warmup_then_cosine_hand_values():
    from reid.engine.schedule import warmup_cosine_factor

    f = lambda it: warmup_cosine_factor(it, steps_per_epoch=10, warmup_epochs=2, warmup_factor=0.1, epochs=6,
                                        min_factor=0.2)
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(0.55)  # the same warmup as multistep
    assert f(20) == pytest.approx(1.0)  # t = 0
    assert f(40) == pytest.approx(0.2 + 0.8 * 0.5)  # t = 1/2: half-way down
    assert f(30) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + 2 ** -0.5))  # t = 1/4: cos(pi/4)
    assert f(60) == pytest.approx(0.2) and f(70) == pytest.approx(0.2)  # the floor, also past the end
    with pytest.raises(ValueError, match="epochs > warmup_epochs"):
        warmup_cosine_factor(0, 10, 2, 0.1, 2, 0.0)


def test_build_scheduler_kinds():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, 1, 0, 1.0, (), 0.1, kind="cosine", epochs=2, min_factor=0.0)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="unknown LR schedule"):
        build_scheduler(opt, 1, 0, 1.0, (), 0.1, kind="linear")
