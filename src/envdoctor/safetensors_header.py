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
    except (ValueError, RecursionError) as exc:
        raise HeaderError(f"header is not JSON ({exc})") from None
    if not isinstance(head, dict):
        raise HeaderError(f"header: expected a JSON object of tensors, got {type(head).__name__}")
    head.pop("__metadata__", None)
    for name, entry in head.items():
        _check_entry(name, entry)
    end = max((t["data_offsets"][1] for t in head.values()), default=0)
    if 8 + n + end > file_size:
        raise HeaderError(f"truncated: tensors need {8 + n + end} bytes, the file has {file_size}")
    return head


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_entry(name: str, entry) -> None:
    """One tensor entry as the format defines it; HeaderError naming the tensor and the key otherwise."""
    if not isinstance(entry, dict):
        raise HeaderError(f"tensor {name!r}: expected an object with dtype, shape, data_offsets, "
                          f"got {type(entry).__name__}")
    if not isinstance(entry.get("dtype"), str):
        raise HeaderError(f"tensor {name!r}: dtype: expected a string like 'BF16', got {entry.get('dtype')!r:.40}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise HeaderError(f"tensor {name!r}: shape: expected a list of non-negative integers, got {shape!r:.40}")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise HeaderError(f"tensor {name!r}: data_offsets: expected [begin, end] with 0 <= begin <= end, "
                          f"got {offsets!r:.40}")
