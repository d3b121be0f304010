"""A safetensors file's header, read without any ML library: 8-byte little-endian length, then JSON."""

from __future__ import annotations

import json
import struct

MAX_HEADER = 100 * 2**20


class HeaderError(ValueError):
    pass


def header_length(prefix: bytes) -> int:
    """How many bytes to read for the whole header (the 8-byte length plus the JSON)."""
    if len(prefix) < 8:
        return 8
    return 8 + min(struct.unpack("<Q", prefix[:8])[0], MAX_HEADER)


def read_header(data_prefix: bytes, file_size: int) -> dict:
    """The tensor entries ({name: {dtype, shape, data_offsets}}) of a file of `file_size` bytes whose
    first bytes are `data_prefix`; raises HeaderError on a truncated or corrupt file."""
    if len(data_prefix) < 8:
        raise HeaderError("shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data_prefix[:8])
    if n > MAX_HEADER or 8 + n > file_size:
        raise HeaderError(f"header length {n} does not fit a file of {file_size} bytes")
    if len(data_prefix) < 8 + n:
        raise HeaderError("header cut short")
    try:
        head = json.loads(data_prefix[8:8 + n])
    except ValueError as exc:
        raise HeaderError(f"header is not JSON ({exc})") from None
    head.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in head.values()), default=0)
    if 8 + n + end > file_size:
        raise HeaderError(f"truncated: tensors need {8 + n + end} bytes, the file has {file_size}")
    return head
