"""Data-parallel training when launched by torchrun (or accelerate launch): the launcher sets RANK,
WORLD_SIZE and LOCAL_RANK; this module only reads them. One process per GPU, gloo on the CPU; several
nodes through torchrun's rendezvous (RANK is then global, LOCAL_RANK picks the GPU on this node).

A collective that one rank never joins would wait forever: every collective has a timeout
(ENVDOCTOR_COLLECTIVE_TIMEOUT_S, default 300 s), and a watchdog thread stops a rank whose training has made
no progress for that long, naming the rank and the step it was in."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from array import array
from dataclasses import dataclass
from datetime import timedelta

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


def timeout_s() -> float:
    raw = os.environ.get("ENVDOCTOR_COLLECTIVE_TIMEOUT_S", "300")
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise SystemExit(f"error: ENVDOCTOR_COLLECTIVE_TIMEOUT_S={raw!r}: expected a number of seconds > 0")
    return value


def init() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        if torch.cuda.is_available():
            limit_gpu_memory(0)
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    # The collectives' own timeout is the watchdog's plus a margin: a hang in training is reported by the
    # Watchdog (which names the step); a hang outside it (start-up, DDP's first broadcast) still ends.
    limit = timedelta(seconds=timeout_s() + 15)
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        limit_gpu_memory(world.local_rank)
        dist.init_process_group("nccl", timeout=limit)
    else:
        dist.init_process_group("gloo", timeout=limit)
    return world


def limit_gpu_memory(index: int) -> None:
    """A test aid: ENVDOCTOR_GPU_MEMORY_FRACTION=0.06 lets this process use only that fraction of its GPU
    (torch.cuda.set_per_process_memory_fraction; more raises out-of-memory), so a large GPU stands in for a
    small one: bench/h200x2_fsdp4.sh emulates two 8 GiB cards on two H200s."""
    raw = os.environ.get("ENVDOCTOR_GPU_MEMORY_FRACTION")
    if not raw:
        return
    try:
        fraction = float(raw)
    except ValueError:
        fraction = 0
    if not 0 < fraction <= 1:
        raise SystemExit(f"error: ENVDOCTOR_GPU_MEMORY_FRACTION={raw!r}: expected a fraction > 0 and ≤ 1")
    torch.cuda.set_per_process_memory_fraction(fraction, index)


def peak_memory_per_rank(world: World, device_name: str) -> dict:
    """Each rank's peak host RSS (resource.getrusage: the whole run, model loading included) and, on a GPU,
    peak allocated / reserved memory, in GiB, listed by rank (a collective: every rank calls it)."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB
    cuda = device_name.startswith("cuda")
    mine = [rss, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
            torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0]
    table = [0.0] * (3 * world.size)
    table[3 * world.rank:3 * world.rank + 3] = mine
    table = totals(table, world)
    rows = [table[3 * r:3 * r + 3] for r in range(world.size)]
    result = {"peak_host_rss_gib_per_rank": [round(r[0], 3) for r in rows]}
    if cuda:
        result["peak_gpu_allocated_gib_per_rank"] = [round(r[1], 3) for r in rows]
        result["peak_gpu_reserved_gib_per_rank"] = [round(r[2], 3) for r in rows]
    return result


class Watchdog:
    """Stops this process when training makes no progress for `seconds` (a collective another rank never
    joined, a wedged GPU), naming the rank and where it was. `at(where)` marks progress and arms it; `idle()`
    disarms it (model loading and the final writes are not watched: their length depends on the disk).
    Marks happen before each step's collectives and the collectives time out 15 s later than this, so this
    fires first: neither gloo's exception nor NCCL's watchdog (which names only a sequence number) does."""

    def __init__(self, world: World, seconds: float | None = None):
        self.world, self.seconds = world, seconds if seconds is not None else timeout_s()
        self.where, self.since = None, time.monotonic()
        if world.distributed:
            threading.Thread(target=self._watch, daemon=True, name="envdoctor-watchdog").start()

    def at(self, where: str) -> None:
        self.where, self.since = where, time.monotonic()

    def idle(self) -> None:
        self.where = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.seconds / 10))
            where = self.where
            if where is not None and time.monotonic() - self.since > self.seconds:
                sys.stderr.write(f"error: rank {self.world.rank}: no progress for {self.seconds:.0f} s in {where} "
                                 "(waiting in a collective another rank never joined?); stopping this process "
                                 "(ENVDOCTOR_COLLECTIVE_TIMEOUT_S sets the limit)\n")
                sys.stderr.flush()
                os._exit(3)


def device(world: World) -> str:
    return f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"


def wrap(module: torch.nn.Module, world: World, device_name: str, fsdp: bool = False) -> torch.nn.Module:
    """DDP (every process holds the model), or with fsdp FSDP2's fully_shard: each decoder layer, then the
    whole, sharded over the processes (parameters, gradients and optimizer state split N ways)."""
    if fsdp:
        from torch.distributed.fsdp import FSDPModule
        shard = sharder(world, device_name)
        # Each decoder layer is one group (gathered for its forward and backward, then freed), and so is
        # the input embedding (used once per pass). The rest (final norm, lm_head) is the root's: the root
        # stays gathered through the step (FSDP2's choice), and lm_head is called once per loss chunk.
        # fully_shard moves a group to the GPU when it shards it: a model built on the host (a 4-bit base
        # under FSDP, modeling.build_model) reaches the GPU a layer at a time.
        # A module already sharded while the model was built (modeling.build_4bit_streamed) is left as it is.
        for sub in module.modules():
            if type(sub).__name__.endswith("DecoderLayer") and not isinstance(sub, FSDPModule):
                shard(sub)
        embed = _input_embedding(module)
        if embed is not None and not isinstance(embed, FSDPModule):
            shard(embed)
        shard(module)
        return module
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel
    ids = [world.local_rank] if device_name.startswith("cuda") else None
    # No buffer broadcast before every forward: the model's only buffers (rotary frequencies) are constants,
    # equal on every rank; the broadcast would be one more collective per pass.
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def sharder(world: World, device_name: str):
    """A function that shards a module over all processes with FSDP2's fully_shard (on a GPU it moves the
    module there). Starts a one-process group when there is none: one process is sharded "over one", so
    the same code path runs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    if device_name not in _MESHES:  # one mesh for the whole model: the layers sharded while it was built too
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_name.startswith("cuda") else "gloo", rank=0, world_size=1,
                                    store=dist.HashStore())
        _MESHES[device_name] = init_device_mesh("cuda" if device_name.startswith("cuda") else "cpu", (world.size,))
    mesh = _MESHES[device_name]
    return lambda module: fully_shard(module, mesh=mesh)


_MESHES: dict = {}


def _input_embedding(module: torch.nn.Module):
    peft_model = getattr(module, "peft_model", None)
    if peft_model is None:
        return None
    embed = peft_model.get_base_model().get_input_embeddings()
    # with modules_to_save the embedding is peft's wrapper (the frozen original and the trained copy)
    for name, sub in peft_model.named_modules():
        if name.endswith("embed_tokens") and any(m is embed for m in sub.modules()):
            return sub
    return embed


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


def totals(values: list[float], world: World) -> list[float]:
    """Element-wise sums over all ranks, in one collective."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=f"cuda:{world.local_rank}" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def same_data(chunk_lists: list[list[list[int]]], world: World) -> bool:
    """Whether every rank prepared the same token chunks (a digest is compared: its min and max over ranks).
    Nodes that read different files, or tokenize differently, would otherwise train on mismatched batches."""
    if not world.distributed:
        return True
    h = hashlib.sha256()
    for chunks in chunk_lists:
        for c in chunks:
            h.update(array("q", c).tobytes())
            h.update(b"|")
        h.update(b"#")
    digest = int.from_bytes(h.digest()[:7], "big")
    dev = f"cuda:{world.local_rank}" if dist.get_backend() == "nccl" else "cpu"
    lo, hi = torch.tensor([digest], dtype=torch.int64, device=dev), torch.tensor([-digest], dtype=torch.int64, device=dev)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MIN)
    return int(lo) == digest == -int(hi)


def shared_output_problem(out, world: World) -> str | None:
    """Several nodes: rank 0 alone writes checkpoints and the adapter, and every rank reads the checkpoint
    on --resume, so the output folder must be one shared folder. Rank 0 writes a token there; a rank that
    cannot read it back is on a node that does not share it. None when fine (every rank gets the answer)."""
    if not world.distributed:
        return None
    token = out / ".envdoctor-shared-check"
    nonce = f"{os.getpid()}-{time.time_ns()}"
    if world.main:
        token.write_text(nonce)
    nonce = _broadcast_text(nonce, world)
    try:
        seen = token.read_text()
    except OSError:
        seen = ""
    ok = totals([0.0 if seen == nonce else 1.0], world)[0] == 0
    barrier(world)
    if world.main:
        token.unlink(missing_ok=True)
    if ok:
        return None
    return (f"output_dir {out} is not one shared folder for every rank (a rank could not read rank 0's file in it): "
            "with several nodes put it on a shared filesystem (NFS, Lustre...) mounted at the same path everywhere")


def _broadcast_text(text: str, world: World) -> str:
    box = [text]
    dist.broadcast_object_list(box, src=0, device=f"cuda:{world.local_rank}" if dist.get_backend() == "nccl" else None)
    return box[0]


def mean(value: float, world: World) -> float:
    return total(value, world) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def finish(world: World) -> None:
    """Wait until every rank is done; `leave` then ends the process. A rank that tore its gloo group down
    (or ran C++ static destructors at exit) while another still worked was seen to abort ("terminate called
    without an active exception", SIGABRT) about one run in ten on a loaded 2-core box, with a barrier
    before destroy_process_group too: so the group is never destroyed, the process leaves with os._exit."""
    if dist.is_initialized() and world.distributed:
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to wait for
            pass


def leave(code: int) -> None:
    """End this process with `code`. In a process group: flush and os._exit (see finish): every file the
    run writes is closed by then, and the group's threads die with the process instead of being joined."""
    if dist.is_available() and dist.is_initialized():
        from envdoctor_runner.stopping import exit_now
        exit_now(code)
    raise SystemExit(code)
