"""GlobalBatchNorm / convert_sync_batchnorm: 2 gloo ranks on CPU equal 1 process on the global batch."""

import copy
import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from reid.engine.distributed import free_port
from reid.engine.sync_bn import GlobalBatchNorm, convert_sync_batchnorm

WORLD, N, STEPS, LR = 2, 8, 2, 0.1
SPLIT = (3, 5)  # uneven per-rank batch sizes for the single-layer checks
ATOL = 1e-5


# ---------------------------------------------------------------- shared model, data and training


def _net() -> nn.Sequential:
    """Conv2d -> BatchNorm2d -> ReLU -> flatten -> Linear -> BatchNorm1d (cumulative, frozen bias)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6, momentum=None))
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    net[5].bias.requires_grad_(False)  # a BNNeck-style frozen shift
    return net


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (STEPS, N, 3, 4, 4) and loss projections (STEPS, N, 6), float32."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, N, 3, 4, 4, generator=g) * 2 + 1, torch.randn(STEPS, N, 6, generator=g)


def _train(net: nn.Module, lo: int, hi: int, loss_scale: float, average_grads: bool) -> dict:
    """STEPS SGD steps on samples [lo, hi) of every step's batch with loss = loss_scale * sum(out * proj).

    ``average_grads``: all-reduce the parameter gradients (SUM / WORLD) before the step, as DDP does.
    Returns the outputs, input gradients and parameter gradients of every step and the final state.
    """
    x, proj = _data()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    rec = {"out": [], "xgrad": [], "pgrad": []}
    for step in range(STEPS):
        xs = x[step, lo:hi].clone().requires_grad_(True)
        out = net(xs)
        opt.zero_grad()
        (loss_scale * (out * proj[step, lo:hi]).sum()).backward()
        if average_grads:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= WORLD
        rec["out"].append(out.detach())
        rec["xgrad"].append(xs.grad)
        rec["pgrad"].append([p.grad.clone() for p in params])
        opt.step()
    rec["state"] = {k: v.clone() for k, v in net.state_dict().items()}
    return rec


def _offset_data() -> torch.Tensor:
    """(N, 3, 5) float32 with mean 1000 and std 0.1: E[x^2] - E[x]^2 in float32 loses the variance."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(N, 3, 5, generator=g) * 0.1 + 1000


def _plain_data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, 3, 5) and loss weights (N, 3, 5)."""
    g = torch.Generator().manual_seed(3)
    return (torch.randn(N, 3, 5, generator=g) * 2 + 1).to(dtype), torch.randn(N, 3, 5, generator=g)


# ---------------------------------------------------------------- the 2-rank run


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        half = N // WORLD
        lo, hi = rank * half, (rank + 1) * half
        res = {"synced": _train(convert_sync_batchnorm(_net()), lo, hi, 1.0, True),
               "unsynced": _train(_net(), lo, hi, 1.0, True)}
        lo, hi = (0, SPLIT[0]) if rank == 0 else (SPLIT[0], N)

        # affine=False, momentum=None, (N, C, L) input, uneven split, large offset
        bn = GlobalBatchNorm(3, affine=False, momentum=None)
        res["offset_out"] = bn(_offset_data()[lo:hi]).detach()
        res["offset_running"] = (bn.running_mean.clone(), bn.running_var.clone())

        # gradients through the statistics with an uneven split
        x, w = _plain_data()
        xs = x[lo:hi].clone().requires_grad_(True)
        bn = GlobalBatchNorm(3)
        (bn(xs) * w[lo:hi]).sum().backward()
        res["uneven_xgrad"], res["uneven_pgrad"] = xs.grad, (bn.weight.grad, bn.bias.grad)

        # bf16 input: statistics accumulate in float32, output is bf16
        bn = GlobalBatchNorm(3)
        res["bf16_out"] = bn(_plain_data(torch.bfloat16)[0][lo:hi]).detach()
        res["bf16_running_mean"] = bn.running_mean.clone()

        # one value per channel over all ranks: every rank raises (no hang)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            GlobalBatchNorm(3)(torch.randn(1 - rank, 3))
        # what this module exists for: torch's SyncBatchNorm refuses CPU tensors in a process group
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            nn.SyncBatchNorm(3)(torch.randn(4, 3))
        torch.save(res, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Results of _worker on each of WORLD spawned gloo ranks."""
    out = tmp_path_factory.mktemp("sync_bn")
    ctx = mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 180
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("gloo ranks still running after 180 s (a collective hangs?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_two_ranks_equal_one_process_on_the_global_batch(ranks):
    # one process, unconverted torch BN, full batch; loss = mean of the two halves' losses
    ref = _train(_net(), 0, N, 1.0 / WORLD, False)
    half = N // WORLD
    for rank, res in enumerate(ranks):
        got, rows = res["synced"], slice(rank * half, (rank + 1) * half)
        for step in range(STEPS):
            _close(got["out"][step], ref["out"][step][rows])
            # each rank's input gradient is that of the ranks' summed loss = WORLD x the mean loss
            _close(got["xgrad"][step], WORLD * ref["xgrad"][step][rows])
            for g, r in zip(got["pgrad"][step], ref["pgrad"][step], strict=True):
                _close(g, r)
        assert got["state"].keys() == ref["state"].keys()
        for key, value in ref["state"].items():  # parameters, running stats, num_batches_tracked
            _close(got["state"][key].double(), value.double())
    assert ranks[0]["synced"]["state"]["1.num_batches_tracked"] == STEPS


def test_per_rank_batchnorm_differs_so_the_comparison_can_fail(ranks):
    ref = _train(_net(), 0, N, 1.0 / WORLD, False)
    half = N // WORLD
    gaps = [(res["unsynced"]["out"][step] - ref["out"][step][r * half:(r + 1) * half]).abs().max()
            for r, res in enumerate(ranks) for step in range(STEPS)]
    assert min(gaps) > 1e-3


def test_variance_is_accurate_with_a_large_offset_and_uneven_ranks(ranks):
    x = _offset_data()
    x64 = x.double()
    mean, var = x64.mean((0, 2)), x64.var((0, 2), unbiased=False)
    # the data defeats E[x^2] - E[x]^2 in float32, so an accurate result is evidence of care
    naive = (x * x).mean((0, 2)) - x.mean((0, 2)) ** 2
    assert ((naive.double() - var).abs() / var).max() > 0.1
    expect = ((x64 - mean[:, None]) / (var[:, None] + 1e-5).sqrt()).float()
    got = torch.cat([ranks[0]["offset_out"], ranks[1]["offset_out"]])
    _close(got, expect, atol=2e-3)
    for res in ranks:  # momentum=None, first batch: running stats = the batch's (unbiased variance)
        running_mean, running_var = res["offset_running"]
        _close(running_mean.double(), mean, atol=1e-4)
        torch.testing.assert_close(running_var.double(), x64.var((0, 2), unbiased=True), rtol=1e-3, atol=0)


def test_gradients_with_uneven_ranks_match_one_process(ranks):
    x, w = _plain_data()
    xs = x.clone().requires_grad_(True)
    bn = nn.BatchNorm1d(3)
    (bn(xs) * w).sum().backward()
    _close(torch.cat([ranks[0]["uneven_xgrad"], ranks[1]["uneven_xgrad"]]), xs.grad)
    # weight/bias act per sample, so each rank's gradient holds its own loss's part; they add up
    for i, p in enumerate((bn.weight, bn.bias)):
        _close(ranks[0]["uneven_pgrad"][i] + ranks[1]["uneven_pgrad"][i], p.grad)


def test_bf16_input_accumulates_in_float32(ranks):
    x = _plain_data(torch.bfloat16)[0].double()
    mean, var = x.mean((0, 2)), x.var((0, 2), unbiased=False)
    got = torch.cat([ranks[0]["bf16_out"], ranks[1]["bf16_out"]])
    assert got.dtype == torch.bfloat16
    expect = (x - mean[:, None]) / (var[:, None] + 1e-5).sqrt()
    _close(got.double(), expect, atol=2e-2)  # bf16 output rounding (8 bits) on |values| < 3
    for res in ranks:  # default momentum 0.1 from zero
        _close(res["bf16_running_mean"].double(), 0.1 * mean, atol=1e-6)


# ---------------------------------------------------------------- one process


def _pair(shape: tuple[int, ...], momentum) -> tuple[nn.Module, GlobalBatchNorm]:
    torch_bn = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(shape[1], momentum=momentum)
    with torch.no_grad():
        torch_bn.weight.uniform_(0.5, 1.5)
        torch_bn.bias.uniform_(-0.5, 0.5)
    ours = GlobalBatchNorm(shape[1], momentum=momentum)
    ours.load_state_dict(torch_bn.state_dict())
    return torch_bn, ours


def _assert_same_as_torch_bn() -> None:
    for shape in [(6, 3), (6, 3, 5), (6, 3, 4, 4)]:
        for momentum in (0.1, None):
            torch_bn, ours = _pair(shape, momentum)
            for step in range(2):
                x = torch.randn(shape) * 3 + step
                grads = []
                for bn in (torch_bn, ours):
                    xs = x.clone().requires_grad_(True)
                    bn.zero_grad()
                    y = bn(xs)
                    (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
                    grads.append((y, xs.grad, bn.weight.grad, bn.bias.grad))
                for a, b in zip(*grads, strict=True):
                    assert torch.equal(a, b)
            for a, b in zip(torch_bn.state_dict().values(), ours.state_dict().values(), strict=True):
                assert torch.equal(a, b)
            assert ours.num_batches_tracked == 2
            x = torch.randn(shape)
            assert torch.equal(torch_bn.eval()(x), ours.eval()(x))


def test_without_process_group_equals_torch_batchnorm():
    assert not dist.is_initialized()
    _assert_same_as_torch_bn()


def test_world_size_one_equals_torch_batchnorm():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        _assert_same_as_torch_bn()
    finally:
        dist.destroy_process_group()


def test_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r"\(N, C, \*\), got shape \(3,\)"):
        GlobalBatchNorm(3)(torch.randn(3))
    with pytest.raises(ValueError, match=r"GlobalBatchNorm\(3\) got 5 channels"):
        GlobalBatchNorm(3)(torch.randn(4, 5))


# ---------------------------------------------------------------- convert_sync_batchnorm


def test_convert_resnet18_keeps_weights_buffers_requires_grad_and_outputs():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None)
    n_bn = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n_bn += 1
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    model.bn1.bias.requires_grad_(False)
    model.layer1[0].bn2.weight.requires_grad_(False)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    state = copy.deepcopy(model.state_dict())
    requires_grad = {k: p.requires_grad for k, p in model.named_parameters()}

    converted = convert_sync_batchnorm(model)
    assert n_bn == 20
    assert sum(isinstance(m, GlobalBatchNorm) for m in converted.modules()) == n_bn
    assert all(isinstance(m, GlobalBatchNorm) for m in converted.modules() if isinstance(m, _BatchNorm))
    assert state.keys() == converted.state_dict().keys()
    assert all(torch.equal(v, converted.state_dict()[k]) for k, v in state.items())
    assert requires_grad == {k: p.requires_grad for k, p in converted.named_parameters()}
    assert not converted.training and not converted.bn1.training
    with torch.no_grad():
        assert torch.equal(converted(x), before)


def test_convert_keeps_sync_layers_and_copies_options():
    sync, glob = nn.SyncBatchNorm(3), GlobalBatchNorm(3)
    seq = nn.Sequential(sync, glob, nn.BatchNorm1d(3, eps=1e-3, momentum=None, affine=False,
                                                   track_running_stats=False),
                        nn.BatchNorm3d(2, bias=False)).train()
    out = convert_sync_batchnorm(seq)
    assert out is seq and out[0] is sync and out[1] is glob
    assert isinstance(out[2], GlobalBatchNorm) and isinstance(out[3], GlobalBatchNorm)
    assert (out[2].eps, out[2].momentum, out[2].affine, out[2].track_running_stats) == (1e-3, None, False, False)
    assert out[2].weight is None and out[2].running_mean is None
    assert out[3].bias is None and out[3].weight is not None and out[3].training
    assert out[3](torch.randn(2, 2, 3, 3, 3)).shape == (2, 2, 3, 3, 3)
    assert isinstance(convert_sync_batchnorm(nn.BatchNorm2d(3)), GlobalBatchNorm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_convert_on_cuda_uses_torch_syncbatchnorm():
    bn = nn.BatchNorm2d(3).cuda()
    converted = convert_sync_batchnorm(nn.Sequential(bn))
    assert type(converted[0]) is nn.SyncBatchNorm and converted[0].weight is bn.weight
