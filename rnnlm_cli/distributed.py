"""Data-parallel training on PyTorch's own stack: processes started by ``torchrun``, DistributedDataParallel,
gloo on CPUs and NCCL on CUDA GPUs. Nothing here launches processes or invents a protocol.

torchrun tells each process who it is through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
and ``MASTER_ADDR`` / ``MASTER_PORT`` for the rendezvous); a process started any other way is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rnnlm_cli.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes on this machine: which GPU it takes

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and progress."""
        return self.rank == 0


def world_from_env() -> World:
    """The world torchrun described in the environment (a world of one without torchrun). Torch-free."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK {rank} is outside a WORLD_SIZE of {size}")
    return World(rank, size, local_rank)


def is_main_process() -> bool:
    return world_from_env().is_main


def start(world: World, device_type: str) -> None:
    """Join the process group (a no-op for a world of one): NCCL between CUDA GPUs, gloo otherwise."""
    import torch.distributed as dist

    if world.active and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: list[float], op: str, device: Any) -> list[float]:
    """``values`` summed (``op="sum"``) or maximised (``"max"``) element-wise over every process."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable plain data or CPU tensors), in rank order, on every process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
