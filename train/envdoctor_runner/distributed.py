"""Data-parallel training when launched by torchrun (or accelerate launch): the launcher sets RANK,
WORLD_SIZE and LOCAL_RANK; this module only reads them. One process per GPU, gloo on the CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return world


def device(world: World) -> str:
    return f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"


def wrap(module: torch.nn.Module, world: World, device_name: str, fsdp: bool = False) -> torch.nn.Module:
    """DDP (every process holds the model), or with fsdp FSDP2's fully_shard: each decoder layer, then the
    whole, sharded over the processes (parameters, gradients and optimizer state split N ways)."""
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        if not dist.is_initialized():  # one process: still sharded "over one", so the same code path runs
            dist.init_process_group("nccl" if device_name.startswith("cuda") else "gloo", rank=0, world_size=1,
                                    store=dist.HashStore())
        mesh = init_device_mesh("cuda" if device_name.startswith("cuda") else "cpu", (world.size,))
        for sub in module.modules():
            if type(sub).__name__.endswith("DecoderLayer"):
                fully_shard(sub, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel
    ids = [world.local_rank] if device_name.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids)


def gradient_sync(module: torch.nn.Module, world: World, sync: bool):
    """A context for one micro batch: gradients are averaged across processes only on the last one."""
    import contextlib
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if world.distributed and not sync:
        return module.no_sync()
    return contextlib.nullcontext()


def total(value: float, world: World) -> float:
    """The sum of `value` over all ranks (every rank gets it)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64,
                     device=f"cuda:{world.local_rank}" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t)


def mean(value: float, world: World) -> float:
    return total(value, world) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def finish(world: World) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
