"""Process-group set-up for DeepSpeed on GPU (NCCL) and on CPU (gloo).

Launched by ``deepspeed --num_gpus N --module pipeline.train`` (or torchrun / srun), the usual
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables are set. A plain
``python -m pipeline.train`` gets a one-process group on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process: global ``rank``, ``world_size``, ``local_rank`` and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the only rank that writes outputs and logs to MLflow."""
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _disable_cpu_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU accelerator from JIT-compiling its shared-memory all-reduce op.

    On CPU, DeepSpeed builds ``deepspeed_shm_comm`` with the host compiler at process-group
    start (tens of seconds, and a compiler on every node). Plain gloo collectives are used
    instead, so no DeepSpeed op compiles at run time.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed() -> DistInfo:
    """Initialise (once) the DeepSpeed/torch.distributed process group and pick the device.

    Returns:
        DistInfo for this process. The device is ``cuda:<local_rank>`` when CUDA is available,
        else ``cpu`` (with the gloo backend).

    Raises:
        RuntimeError: if ``LOCAL_RANK`` names a GPU this host does not have.
    """
    import deepspeed
    import torch.distributed as dist

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        _disable_cpu_shm_comm_op()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def barrier() -> None:
    """Synchronise all ranks (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    """Ranks in the default process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_cat(tensor: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Concatenate ``tensor`` ``(B, ...)`` of every rank along dim 0, in rank order: ``(W*B, ...)``.

    Every rank must pass the same shape. With ``grad=True`` the gather is differentiable
    (``all_gather_tensor_autograd``): the gradient of each rank's slice is the sum
    of the gradients all ranks compute for it, so a loss every rank computes on the gathered batch
    trains like the same loss on one rank's global batch once gradients are averaged across ranks.
    Without a process group (or with one rank) it returns ``tensor``.
    """
    import torch.distributed as dist

    if world_size() == 1:
        return tensor
    if grad:
        import torch.distributed._functional_collectives as funcol

        # backward: reduce-scatter (sum) of the gathered gradient; torch.distributed.nn's
        # all_gather computes the same but is deprecated (warns on every call)
        gathered = funcol.all_gather_tensor_autograd(tensor.contiguous(), 0, dist.group.WORLD)
        return funcol.wait_tensor(gathered)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def comm_device() -> torch.device:
    """Where small collective tensors must live: the current GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (same keys on every rank); unchanged on one rank."""
    import torch.distributed as dist

    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a collective call)."""
    import torch.distributed as dist

    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
