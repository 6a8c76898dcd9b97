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


def _free_port() -> int:
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
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
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
