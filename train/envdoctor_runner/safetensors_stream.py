"""Safetensors read and written one tensor at a time, with plain file reads (no mmap), so that a
process merging a 16 GB model holds one tensor, not a shard: the format is an 8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw bytes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
# After a tensor is written at its offset, start the kernel's writeback of it (fadvise DONTNEED queues the
# dirty pages without waiting, and drops them from the page cache once clean): the fsync at the end then
# waits for the tail, not for the whole model, and the output does not crowd the page cache.
EARLY_WRITEBACK = hasattr(os, "posix_fadvise")


def header(path: Path) -> tuple[dict, int]:
    """(header without __metadata__, offset where the data starts)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        head = json.loads(fh.read(n))
    head.pop("__metadata__", None)
    return head, 8 + n


def read(path: Path, name: str, head: dict, start: int) -> torch.Tensor:
    info = head[name]
    begin, end = info["data_offsets"]
    out = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
    if end > begin:
        with open(path, "rb", buffering=0) as fh:  # straight into the tensor's memory: no intermediate copy
            fh.seek(start + begin)
            view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
            done = 0
            while done < end - begin:
                got = fh.readinto(view[done:])
                if not got:
                    raise ValueError(f"{path}: {name} is truncated")
                done += got
    return out


def pread_into(fd: int, offset: int, view: memoryview, what: str) -> None:
    """Fill `view` from byte `offset` of an open file: positional, so threads share one descriptor."""
    done = 0
    while done < view.nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            raise ValueError(f"{what} is truncated")
        done += got


def read_at(fd: int, path: Path, name: str, head: dict, start: int) -> torch.Tensor:
    """Like `read`, through an already open descriptor (one byte range, no seek: safe from any thread)."""
    info = head[name]
    begin, end = info["data_offsets"]
    out = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
    if end > begin:
        pread_into(fd, start + begin, memoryview(out.reshape(-1).view(torch.uint8).numpy()), f"{path}: {name}")
    return out


def weight_files(model_dir: Path) -> dict[str, Path]:
    """tensor name → the file holding it, from model.safetensors.index.json or a single file."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return {k: model_dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if single.exists():
        return {k: single for k in header(single)[0]}
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


class ShardWriter:
    """Writes one shard whose tensors (names, dtypes, shapes) are known in advance, tensor by tensor: in
    order (`write`), or each at its own offset from any thread in any order (`write_at`: the header fixes
    every offset, so the file's bytes do not depend on the order)."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, list[int]]]):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        head, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape in specs:
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            head[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(head, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data 8-byte aligned, as the reference writer does
        self.order = [name for name, _, _ in specs]
        self.sizes = {name: head[name]["data_offsets"][1] - head[name]["data_offsets"][0] for name in self.order}
        self.fh = open(self.tmp, "wb")
        self.fh.write(struct.pack("<Q", len(blob)) + blob)
        self.fh.flush()
        self.data_start = 8 + len(blob)
        self.offsets = {name: self.data_start + head[name]["data_offsets"][0] for name in self.order}
        self.next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name != self.order[self.next]:
            raise ValueError(f"expected tensor {self.order[self.next]}, got {name}")
        data = memoryview(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
        if data.nbytes != self.sizes[name]:
            raise ValueError(f"{name}: {data.nbytes} bytes, header says {self.sizes[name]}")
        self.fh.write(data)
        self.next += 1

    def write_at(self, name: str, tensor: torch.Tensor) -> int:
        """Write one tensor at its offset (os.pwrite: thread-safe, no shared file position); its byte count."""
        data = memoryview(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
        if data.nbytes != self.sizes[name]:
            raise ValueError(f"{name}: {data.nbytes} bytes, header says {self.sizes[name]}")
        fd, offset, done = self.fh.fileno(), self.offsets[name], 0
        while done < data.nbytes:
            done += os.pwrite(fd, data[done:], offset + done)
        if EARLY_WRITEBACK:
            os.posix_fadvise(fd, offset, done, os.POSIX_FADV_DONTNEED)
        return done

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def finish(self) -> int:
        """Close and move into place (after `sync`); the file's size."""
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abandon(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> int:
        self.sync()
        return self.finish()
