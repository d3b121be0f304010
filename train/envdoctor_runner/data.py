"""A style corpus → token chunks: read text files / a folder / jsonl, clean, chunk to sequence_len with
overlap, deduplicate, split into train and validation.

Host memory: the tokens of the whole corpus live in one int32 buffer (4 bytes a token) and a chunk is a
(start, length) window on it, so overlapping chunks share their tokens; documents are tokenized in
batches of about BATCH characters and a long document in windows of WINDOW characters (a fast tokenizer
holds ~170 bytes a character of its input while it works: 3.4 GB for one 20 MB book); batches are made
when asked for. Python lists of ints (36 bytes a token) exist for one tokenizer call or one batch only."""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from pathlib import Path

from envdoctor_runner import corpus

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_documents(paths: list[str], base: Path, warn=None) -> corpus.Texts:
    """The cleaned documents of the dataset entries (relative to `base`, the config's folder), a sequence
    of str held as UTF-8; bad datasets raise corpus.CorpusError with every problem, by file and line.
    Warnings go to `warn`."""
    found = corpus.read_corpus(paths, base)
    for w in found.warnings:
        (warn or (lambda _m: None))(w)
    if found.problems:
        raise corpus.CorpusError(found.problems)
    docs = corpus.Texts(d for d in (clean(d) for d in found.documents) if d)
    del found
    if not docs:
        raise corpus.CorpusError(["the datasets hold no text once control characters and blank lines are removed"])
    return docs



def chunk(ids: list[int], length: int, overlap: int) -> list[list[int]]:
    """Windows of `length` tokens, each starting `length - overlap` after the previous; the tail too."""
    return [ids[s:s + n] for s, n in _windows(len(ids), length, overlap)]


def _windows(tokens: int, length: int, overlap: int) -> Iterator[tuple[int, int]]:
    """(start, length) of chunk's windows on `tokens` tokens: those shorter than min(length, 16) dropped."""
    shortest = min(length, 16)
    for s in corpus.chunk_starts(tokens, length, overlap):
        n = min(length, tokens - s)
        if n >= shortest:
            yield s, n


class Chunks(Sequence):
    """Token chunks as (start, length) windows on one int32 token buffer. A chunk reads as a list of ints,
    made when asked for; a slice is Chunks on the same buffer."""

    def __init__(self, tokens: array, starts: array, lengths: array):
        self.tokens, self.starts, self.lengths = tokens, starts, lengths

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Chunks(self.tokens, self.starts[i], self.lengths[i])
        s = self.starts[i]
        return self.tokens[s:s + self.lengths[i]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for s, n in zip(self.starts, self.lengths):
            yield self.tokens[s:s + n].tolist()

    def tolist(self) -> list[list[int]]:
        return list(self)


BATCH = 1 << 16    # characters of documents in one tokenizer call
WINDOW = 1 << 18   # characters of a longer document in one tokenizer call (fast tokenizers)
OVERLAP = 1 << 13  # characters two windows share, where they must agree for the seam to be taken
AGREE = 8          # tokens that must agree on each side of a seam


def tokenize(docs: list[str], tokenizer) -> tuple[array, array]:
    """(every document's tokens, each followed by EOS where the tokenizer has one, in one int32 buffer;
    the end of each document in it)."""
    tokens, ends = array("i"), array("q")
    eos = tokenizer.eos_token_id
    for ids in _encoded(docs, tokenizer):
        tokens.extend(ids)
        if eos is not None:
            tokens.append(eos)
        ends.append(len(tokens))
    return tokens, ends


def _encoded(docs: list[str], tokenizer) -> Iterator[list[int]]:
    """The token ids of each document, in order, as tokenizer(d, add_special_tokens=False) makes them.
    A transformers fast tokenizer takes a batch of documents a call (the same ids as one at a time); any
    other callable is called a document at a time (what the runner needs of a tokenizer)."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    if not fast:
        for d in docs:
            yield tokenizer(d, add_special_tokens=False)["input_ids"]
        return
    batch, size = [], 0
    for d in docs:
        if len(d) > WINDOW:
            yield from _batch(tokenizer, batch)
            batch, size = [], 0
            yield _long(tokenizer, d)
            continue
        batch.append(d)
        size += len(d)
        if size >= BATCH:
            yield from _batch(tokenizer, batch)
            batch, size = [], 0
    yield from _batch(tokenizer, batch)


def _batch(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def _long(tokenizer, text: str) -> array:
    """A long document's ids, tokenized in overlapping windows and joined at a seam both windows agree on.

    A tokenizer's model (BPE, WordPiece, Unigram) works on each pre-tokenizer word alone, and pre-tokenizers
    split by local rules (regexes, whitespace, digits), so a word that starts at the same character in two
    windows, far from both windows' edges, with the same tokens around it in both, starts there in the whole
    text too: the first window's tokens before it and the second's from it are the whole text's. A window
    pair without such a seam (a tokenizer without a pre-tokenizer, as SentencePiece conversions with
    split=False: one word; a stretch of OVERLAP characters of one word) is not guessed at: the document is
    tokenized whole, as before, at the tokenizer's memory cost."""
    out = array("i")
    begin, cur = 0, _window(tokenizer, text, 0)
    taken = 0  # index in cur's tokens from which they are still to be taken
    while begin + WINDOW < len(text):
        nxt_begin = begin + WINDOW - OVERLAP
        nxt = _window(tokenizer, text, nxt_begin)
        seam = _seam(cur, nxt, nxt_begin + OVERLAP // 4, begin + WINDOW - OVERLAP // 4)
        if seam is None:
            return array("i", tokenizer(text, add_special_tokens=False)["input_ids"])
        i, j = seam
        if i < taken:  # a seam before the last one: windows far narrower than OVERLAP; not guessed at
            return array("i", tokenizer(text, add_special_tokens=False)["input_ids"])
        out.extend(cur[0][taken:i])
        begin, cur, taken = nxt_begin, nxt, j
    out.extend(cur[0][taken:])
    return out


def _window(tokenizer, text: str, begin: int) -> tuple[list[int], list[int], list]:
    """(ids, absolute start character of each token, word index of each token) of text[begin:begin + WINDOW]."""
    enc = tokenizer(text[begin:begin + WINDOW], add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"], [begin + s for s, _e in enc["offset_mapping"]], enc.word_ids()


def _seam(a, b, lo: int, hi: int) -> tuple[int, int] | None:
    """(i, j): token i of window a and token j of window b begin the same word at one character in
    [lo, hi), with AGREE tokens each side equal (ids and starts) in both; None when there is none."""
    a_ids, a_at, a_word = a
    b_ids, b_at, b_word = b
    where = {}
    for j in range(max(AGREE, bisect_left(b_at, lo)), min(len(b_ids) - AGREE, bisect_left(b_at, hi))):
        if b_word[j] is not None and b_word[j - 1] is not None and b_word[j] != b_word[j - 1]:
            where.setdefault(b_at[j], j)
    # Starts never decrease along an encoding, so bisect finds the range (were they to, fewer seams are
    # found, never a wrong one: every candidate is checked below).
    for i in range(max(AGREE, bisect_left(a_at, lo)), min(len(a_ids) - AGREE, bisect_left(a_at, hi))):
        j = where.get(a_at[i])
        if j is None or a_word[i] is None or a_word[i - 1] is None or a_word[i] == a_word[i - 1]:
            continue
        if a_ids[i - AGREE:i + AGREE] == b_ids[j - AGREE:j + AGREE] and a_at[i - AGREE:i + AGREE] == b_at[j - AGREE:j + AGREE]:
            return i, j
    return None


def prepare(docs: list[str], tokenizer, length: int, overlap: int, val: float | int, seed: int,
            packing: bool = False):
    """(train chunks, val chunks, stats). With packing, documents are joined (each ended by EOS) into one
    stream before chunking: no padding, at the price of attention across a document boundary."""
    tokens, ends = tokenize(docs, tokenizer)
    streams = [(0, len(tokens))] if packing else zip([0] + ends[:-1].tolist(), ends)
    starts, lengths, seen, dupes = array("q"), array("q"), set(), 0
    view = memoryview(tokens)
    for begin, end in streams:
        for s, n in _windows(end - begin, length, overlap):
            key = hashlib.sha1(view[begin + s:begin + s + n]).digest()  # equal tokens ⇔ equal int32 bytes
            if key in seen:
                dupes += 1
                continue
            seen.add(key)
            starts.append(begin + s)
            lengths.append(n)
    del seen, view
    order = list(range(len(starts)))
    random.Random(seed).shuffle(order)  # the permutation shuffle(chunks) made: it depends on the length alone
    chunks = Chunks(tokens, array("q", (starts[k] for k in order)), array("q", (lengths[k] for k in order)))
    n_train, n_val = corpus.split_sizes(len(chunks), val)
    return chunks[n_val:], chunks[:n_val], {"documents": len(docs), "chunks": len(chunks), "duplicates": dupes,
                                           "train": n_train, "val": n_val}


class Batches(Sequence):
    """One epoch's micro batches, each (ids, mask) as lists of rows padded to the longest, made when asked
    for (the whole epoch as lists took 16 bytes a token more than the chunks themselves)."""

    def __init__(self, chunks: Sequence, size: int, pad_id: int, order: array):
        self.chunks, self.size, self.pad_id, self.order = chunks, size, pad_id, order

    def __len__(self) -> int:
        return -(-len(self.order) // self.size)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        rows = [self.chunks[j] for j in self.order[i * self.size:(i + 1) * self.size]]
        width = max(len(r) for r in rows)
        ids = [r + [self.pad_id] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        return ids, mask

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def batches(chunks: Sequence, size: int, pad_id: int, epoch: int, seed: int) -> Batches:
    """Deterministic per epoch (so a resumed run sees the same order)."""
    order = list(range(len(chunks)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return Batches(chunks, size, pad_id, array("q", order))
