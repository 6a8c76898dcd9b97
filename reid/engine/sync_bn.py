"""Synchronised BatchNorm for data-parallel training on GPU (NCCL) and CPU (gloo).

Why: a data-parallel re-id step sees a small P x K batch per rank (e.g. 16 identities x 4 images =
64 images per GPU). BatchNorm statistics over 64 images of only 16 identities are noisy and
correlated with those identities, and each rank normalises with different ones. Synchronised
BatchNorm computes the per-channel mean and variance over the batch of *all* ranks, as one
process with the global batch would; fast-reid (``MODEL.BACKBONE.NORM: syncBN``) and torchreid
offer it for multi-GPU training for this reason.

Why not only ``torch.nn.SyncBatchNorm``: on the installed torch (2.15) its ``forward`` raises
``ValueError("SyncBatchNorm expected input tensor to be on GPU or XPU or ...")`` for a CPU input
whenever it trains inside an initialised process group (it uses CUDA/XPU kernels), so it cannot
run in the CPU-only, 2-rank gloo CI. :class:`GlobalBatchNorm` is a device-agnostic version built
from ordinary tensor ops and one differentiable all-reduce; :func:`convert_sync_batchnorm` uses
torch's (faster, fused-kernel) ``SyncBatchNorm`` for modules on an accelerator and
:class:`GlobalBatchNorm` elsewhere.

Gradients: the all-reduce is ``torch.distributed._functional_collectives.all_reduce`` (SUM),
whose registered autograd rule all-reduces the incoming gradient. Each rank's input gradient is
then the gradient of the *sum* of all ranks' losses, as with ``torch.nn.SyncBatchNorm``; after
DDP/DeepSpeed divide the summed parameter gradients by the world size, the parameter gradients
equal those of one process minimising the mean of the ranks' losses over the global batch.
(``torch.distributed.nn.functional.all_reduce`` computes the same, but the installed torch marks
it deprecated and warns on every call, naming the functional collective as its replacement.)
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]

# Device types torch.nn.SyncBatchNorm has kernels for (its forward refuses the others).
_TORCH_SYNC_BN_DEVICES = ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batch of every rank in the process group.

    Drop-in for ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` on any device (CPU with gloo
    included). In training mode, inside an initialised ``torch.distributed`` group of world size
    > 1, the per-channel mean and biased variance are taken over the concatenated batch of all
    ranks (ranks may hold different batch sizes). Each rank's ``(count, mean, M2)`` is computed
    locally in float32 by two passes and the ranks' triples are merged with Chan et al.'s
    parallel-variance formula, ``M2 = sum_r M2_r + n_r (mean_r - mean)^2``, so the variance does not
    suffer the cancellation of ``E[x^2] - E[x]^2`` when ``|mean| >> std``. The triples travel in one
    differentiable all-reduce (SUM) of a ``(world, 3, C)`` float32 tensor where each rank fills its
    own row, so gradients flow to the inputs of every rank. ``running_mean`` / ``running_var``
    (unbiased, with the global count) and ``num_batches_tracked`` follow torch's update rule,
    including ``momentum=None`` (cumulative average), and stay identical on all ranks.

    Everywhere else (eval mode, no process group, world size 1, or this rank outside
    ``process_group``) ``forward`` is exactly ``nn.BatchNorm``'s (``F.batch_norm``).

    Args:
        num_features: ``C``, the number of channels.
        eps: added to the variance before the square root.
        momentum: running-statistics factor; ``None``: cumulative moving average.
        affine: learnable per-channel ``weight`` and ``bias`` (their ``requires_grad`` is honoured,
            e.g. a BNNeck with a frozen zero bias).
        track_running_stats: keep ``running_mean`` / ``running_var`` / ``num_batches_tracked``.
        process_group: the group to synchronise over; ``None``: the default (world) group.
        device, dtype: factory arguments for the parameters and buffers.
        bias: with ``affine``, whether to learn the bias.

    Shape:
        input ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, any float dtype;
        output: same shape and dtype. Synchronised statistics, normalisation and the affine map are
        computed in float32 (bf16/fp16 inputs included) and the output is cast back.

    Raises:
        ValueError: from ``forward``, if the input has fewer than 2 dimensions, its dim 1 is not
            ``num_features``, or (synchronised training) all ranks together hold at most one value
            per channel.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Optional[Any] = None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects input (N, C, *), got shape {tuple(input.shape)}")
        if input.size(1) != self.num_features:
            raise ValueError(f"GlobalBatchNorm({self.num_features}) got {input.size(1)} channels "
                             f"(input shape {tuple(input.shape)})")

    def _sync_group(self) -> Optional[Any]:
        """The process group to synchronise over now, or ``None`` when plain BatchNorm applies."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        # get_world_size is -1 on a rank outside the group: it then normalises locally, like torch's.
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``input`` (N, C, *) per channel; see the class docstring for when it synchronises."""
        self._check_input_dim(input)
        group = self._sync_group()
        if group is None:
            return super().forward(input)

        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

        count, mean, var = _global_moments(input, group)
        if count <= 1:
            raise ValueError(f"GlobalBatchNorm: expected more than 1 value per channel when training, "
                             f"got {count} over all ranks (local input shape {tuple(input.shape)})")
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var.detach() * (count / (count - 1))
                self.running_mean.copy_(factor * mean.detach() + (1 - factor) * self.running_mean.float())
                self.running_var.copy_(factor * unbiased + (1 - factor) * self.running_var.float())

        shape = (1, -1) + (1,) * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        out = (input.float() - mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            out = out + self.bias.float().view(shape)
        return out.to(input.dtype)


def _global_moments(input: torch.Tensor, group: Any) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel count, mean and biased variance of ``input`` over all ranks of ``group``.

    Args:
        input: this rank's (N, C, *) batch, any float dtype; N may be 0 and may differ by rank.
        group: an initialised process group of world size > 1 containing this rank.

    Returns:
        ``(count, mean, var)``: the global number of values per channel, and float32 (C,) tensors
        differentiable with respect to the ``input`` of every rank.
    """
    import torch.distributed._functional_collectives as funcol

    x = input.float()
    dims = [0, *range(2, x.dim())]
    n_local = x.size(0) * math.prod(x.shape[2:])
    local_mean = x.sum(dims) / max(n_local, 1)
    local_m2 = (x - local_mean.view((1, -1) + (1,) * (x.dim() - 2))).square().sum(dims)
    local = torch.stack([torch.full_like(local_mean, float(n_local)), local_mean, local_m2])  # (3, C)

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows = [local if r == rank else torch.zeros_like(local) for r in range(world)]
    gathered = funcol.wait_tensor(funcol.all_reduce(torch.stack(rows), "sum", group))  # (world, 3, C)
    counts, means, m2s = gathered.unbind(1)  # each (world, C)

    total = counts.sum(0)
    mean = (counts * means).sum(0) / total
    m2 = (m2s + counts * (means - mean).square()).sum(0)
    return int(total[0]), mean, m2 / total


def _device_of(module: nn.Module) -> Optional[torch.device]:
    """Device of the first parameter or buffer directly or recursively in ``module``; None if none."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return None


def convert_sync_batchnorm(module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` (recursively) by a synchronised one.

    A BatchNorm whose parameters/buffers live on an accelerator torch's ``SyncBatchNorm`` supports
    (CUDA, XPU, HPU, PrivateUse1) becomes ``torch.nn.SyncBatchNorm`` via
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (fused kernels); one on any other device
    (CPU) becomes :class:`GlobalBatchNorm`. A BatchNorm with neither parameters nor buffers takes
    the device of ``module``. Existing ``SyncBatchNorm`` / ``GlobalBatchNorm`` layers are kept.
    Call it before building the optimizer / DeepSpeed engine.

    The new layer *reuses* the old layer's parameter objects and buffers (as torch's converter
    does), so values, dtype, device and ``requires_grad`` are unchanged; ``eps``, ``momentum``,
    ``affine``, ``track_running_stats``, the training flag and ``qconfig`` are copied. In eval
    mode the converted module therefore computes exactly what the original did.

    Args:
        module: any module; modified in place (children replaced).
        process_group: the group to synchronise over; ``None``: the world group.

    Returns:
        ``module`` itself, or the new layer when ``module`` is itself a BatchNorm.
    """
    return _convert(module, process_group, _device_of(module))


def _convert(module: nn.Module, process_group: Optional[Any], default: Optional[torch.device]) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, GlobalBatchNorm)):
        device = _device_of(module) or default
        if device is not None and device.type in _TORCH_SYNC_BN_DEVICES:
            return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, process_group, bias=module.bias is not None)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.training = module.training
        if hasattr(module, "qconfig"):
            new.qconfig = module.qconfig
        module = new
    for name, child in module.named_children():
        module.add_module(name, _convert(child, process_group, default))
    return module
