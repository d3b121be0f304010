"""A style corpus → token chunks: read text files / a folder / jsonl, clean, chunk to sequence_len with
overlap, deduplicate, split into train and validation."""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from pathlib import Path

from envdoctor_runner import corpus

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_documents(paths: list[str], base: Path, warn=None) -> list[str]:
    """The cleaned documents of the dataset entries (relative to `base`, the config's folder); bad
    datasets raise corpus.CorpusError with every problem, by file and line. Warnings go to `warn`."""
    found = corpus.read_corpus(paths, base)
    for w in found.warnings:
        (warn or (lambda _m: None))(w)
    if found.problems:
        raise corpus.CorpusError(found.problems)
    docs = [d for d in (clean(d) for d in found.documents) if d]
    if not docs:
        raise corpus.CorpusError(["the datasets hold no text once control characters and blank lines are removed"])
    return docs


def chunk(ids: list[int], length: int, overlap: int) -> list[list[int]]:
    """Windows of `length` tokens, each starting `length - overlap` after the previous; the tail too."""
    stride = max(1, length - overlap)
    out = [ids[i:i + length] for i in range(0, max(1, len(ids) - overlap), stride)]
    return [c for c in out if len(c) >= min(length, 16)]


def prepare(docs: list[str], tokenizer, length: int, overlap: int, val: float | int, seed: int,
            packing: bool = False):
    """(train chunks, val chunks, stats). With packing, documents are joined (each ended by EOS) into one
    stream before chunking: no padding, at the price of attention across a document boundary."""
    streams = []
    for d in docs:
        ids = tokenizer(d, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        streams.append(ids)
    if packing:
        streams = [[t for ids in streams for t in ids]]
    chunks, seen, dupes = [], set(), 0
    for ids in streams:
        for c in chunk(ids, length, overlap):
            key = hashlib.sha1(str(c).encode()).hexdigest()
            if key in seen:
                dupes += 1
                continue
            seen.add(key)
            chunks.append(c)
    random.Random(seed).shuffle(chunks)
    n_train, n_val = corpus.split_sizes(len(chunks), val)
    return chunks[n_val:], chunks[:n_val], {"documents": len(docs), "chunks": len(chunks), "duplicates": dupes,
                                           "train": n_train, "val": n_val}


def batches(chunks: list[list[int]], size: int, pad_id: int, epoch: int, seed: int):
    """Deterministic per epoch (so a resumed run sees the same order)."""
    order = list(range(len(chunks)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for i in range(0, len(order), size):
        rows = [chunks[j] for j in order[i:i + size]]
        width = max(len(r) for r in rows)
        ids = [r + [pad_id] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        yield ids, mask
