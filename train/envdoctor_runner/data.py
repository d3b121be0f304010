"""A style corpus → token chunks: read text files / a folder / jsonl, clean, chunk to sequence_len with
overlap, deduplicate, split into train and validation.

Host memory (a user's corpus of gigabytes on a desktop): the documents are one UTF-8 buffer
(corpus.Texts), read a line at a time and a long one cleaned in pieces; the tokens of the whole corpus
are one int32 buffer (4 bytes a token) and a chunk is a (start, length) window on it, so overlapping
chunks share their tokens; documents are tokenized in batches of about BATCH characters and a long one
in windows of WINDOW bytes (a fast tokenizer holds ~170 bytes a character of its input while it works:
3.4 GB for one 20 MB book); batches are made when asked for. Python lists of ints (36 bytes a token)
exist for one tokenizer call or one batch only. The result is the former code's, token for token
(tests/test_data_memory.py holds that code as its oracle; bench/bench_data_prep.py --prove)."""

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
    return _tidy(text).strip()


def _tidy(text: str) -> str:
    """clean() but the strip."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text)


PIECE = 1 << 20  # UTF-8 bytes of a longer document cleaned at once


def clean_pieces(raw: memoryview) -> Iterator[bytes]:
    """clean() of a document given as UTF-8, as UTF-8, about PIECE bytes at a time (a whole document as
    str takes up to 4 bytes a character, and each step of clean makes another).

    A piece ends after a "\n" whose next character is none of \x00-\x20 and \x7f: every rule of clean then
    sees the same text within a piece as in the whole (NFC composes nothing with "\n"; no "\r\n", run of
    newlines or [ \t]+\n spans the seam; control characters go one by one), so the whole's tidied text
    is the pieces' joined, and its strip is done across pieces: leading whitespace pieces dropped,
    whitespace pieces kept only when text follows them, the last piece with text stripped at its end."""
    held, pending, lo = None, [], 0
    while lo < len(raw):
        hi = _piece_end(raw, lo + PIECE)
        text = _tidy(str(raw[lo:hi], "utf-8"))
        lo = hi
        if held is None:
            text = text.lstrip()
            if text:
                held = text
        elif text.isspace() or not text:
            pending.append(text)
        else:
            yield held.encode("utf-8")
            yield from (p.encode("utf-8") for p in pending)
            held, pending = text, []
    if held is not None:
        yield held.rstrip().encode("utf-8")


def _piece_end(raw: memoryview, at: int) -> int:
    """The first byte after a "\n" at or after `at` whose next byte is not \x00-\x20 or \x7f; len(raw) if none."""
    while at < len(raw):
        part = bytes(raw[at:at + (1 << 16)])
        j = part.find(b"\n")
        while j >= 0:
            k = at + j + 1
            if k >= len(raw):
                return len(raw)
            if raw[k] > 0x20 and raw[k] != 0x7F:
                return k
            j = part.find(b"\n", j + 1)
        at += len(part)
    return len(raw)


def read_documents(paths: list[str], base: Path, warn=None) -> corpus.Texts:
    """The cleaned documents of the dataset entries (relative to `base`, the config's folder), a sequence
    of str held as UTF-8; bad datasets raise corpus.CorpusError with every problem, by file and line.
    Warnings go to `warn`."""
    found = corpus.read_corpus(paths, base)
    for w in found.warnings:
        (warn or (lambda _m: None))(w)
    if found.problems:
        raise corpus.CorpusError(found.problems)
    docs = corpus.Texts()
    for i in range(len(found.documents)):
        if found.documents.size(i) > PIECE:
            with found.documents.utf8(i) as raw:
                docs.append_utf8(clean_pieces(raw))
            if not docs.size(len(docs) - 1):
                docs.truncate(len(docs) - 1)
        else:
            d = clean(found.documents[i])
            if d:
                docs.append(d)
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
WINDOW = 1 << 18   # UTF-8 bytes of a longer document in one tokenizer call (fast tokenizers)
OVERLAP = 1 << 13  # UTF-8 bytes two windows share, where they must agree for the seam to be taken
AGREE = 8          # tokens that must agree on each side of a seam


def tokenize(docs, tokenizer) -> tuple[array, array]:
    """(every document's tokens, each followed by EOS where the tokenizer has one, in one int32 buffer;
    the end of each document in it)."""
    tokens, ends = array("i"), array("q")
    eos = tokenizer.eos_token_id
    for ids in _encoded(docs if isinstance(docs, corpus.Texts) else corpus.Texts(docs), tokenizer):
        tokens.extend(ids)
        if eos is not None:
            tokens.append(eos)
        ends.append(len(tokens))
    return tokens, ends


def _encoded(docs: corpus.Texts, tokenizer) -> Iterator[list[int] | array]:
    """The token ids of each document, in order, as tokenizer(d, add_special_tokens=False) makes them.
    A transformers fast tokenizer takes a batch of documents a call (the same ids as one at a time) and
    a document of more than WINDOW bytes in windows; any other callable (what the runner needs of a
    tokenizer) is called a document at a time."""
    if not getattr(tokenizer, "is_fast", False):
        for d in docs:
            yield tokenizer(d, add_special_tokens=False)["input_ids"]
        return
    batch, size = [], 0
    for i in range(len(docs)):
        if docs.size(i) > WINDOW:
            yield from _batch(tokenizer, batch)
            batch, size = [], 0
            with docs.utf8(i) as raw:
                yield _long(tokenizer, raw)
            continue
        batch.append(docs[i])
        size += len(batch[-1])
        if size >= BATCH:
            yield from _batch(tokenizer, batch)
            batch, size = [], 0
    yield from _batch(tokenizer, batch)


def _batch(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def _long(tokenizer, raw: memoryview) -> array:
    """A long document's ids (given as UTF-8), tokenized in overlapping windows and joined at a seam both
    windows agree on.

    A tokenizer's model (BPE, WordPiece, Unigram) works on each pre-tokenizer word alone, and pre-tokenizers
    split by local rules (regexes, whitespace, digits), so a word that starts at the same character in two
    windows, far from both windows' edges, with the same tokens around it in both, starts there in the whole
    text too: the first window's tokens before it and the second's from it are the whole text's. A window
    pair without such a seam (a tokenizer without a pre-tokenizer, as SentencePiece conversions with
    split=False: one word; OVERLAP bytes within one word) is not guessed at: the document is tokenized
    whole, as before, at the tokenizer's memory cost (~170 bytes a character)."""
    out, taken = array("i"), 0  # taken: cur's tokens before this one are in out
    cur = _window(tokenizer, raw, 0, _char_start(raw, WINDOW), 0)
    while cur.hi < len(raw):
        lo = _char_start(raw, cur.hi - OVERLAP)
        nxt = _window(tokenizer, raw, lo, _char_start(raw, lo + WINDOW), cur.first + len(str(raw[cur.lo:lo], "utf-8")))
        quarter = (cur.last - nxt.first) // 4
        seam = _seam(cur, nxt, nxt.first + quarter, cur.last - quarter)
        if seam is None or seam[0] < taken:
            return array("i", tokenizer(str(raw, "utf-8"), add_special_tokens=False)["input_ids"])
        out.extend(cur.ids[taken:seam[0]])
        cur, taken = nxt, seam[1]
    out.extend(cur.ids[taken:])
    return out


class _Window:
    """The encoding of raw[lo:hi]: ids, each token's first character and word (absolute character
    positions in the document: window `first` .. `last`)."""

    def __init__(self, ids, starts, words, lo: int, hi: int, first: int, last: int):
        self.ids, self.starts, self.words = ids, starts, words
        self.lo, self.hi, self.first, self.last = lo, hi, first, last


def _window(tokenizer, raw: memoryview, lo: int, hi: int, first: int) -> _Window:
    text = str(raw[lo:hi], "utf-8")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False, return_token_type_ids=False)
    return _Window(enc["input_ids"], [first + s for s, _e in enc["offset_mapping"]], enc.word_ids(),
                   lo, hi, first, first + len(text))


def _char_start(raw: memoryview, i: int) -> int:
    """The first character boundary at or after byte i (a UTF-8 continuation byte is 0b10xxxxxx)."""
    i = min(max(i, 0), len(raw))
    while i < len(raw) and 0x80 <= raw[i] < 0xC0:
        i += 1
    return i


def _seam(a: _Window, b: _Window, lo: int, hi: int) -> tuple[int, int] | None:
    """(i, j): token i of window a and token j of window b begin the same word at one character in
    [lo, hi), with AGREE tokens each side equal (ids and starts) in both; None when there is none."""
    where = {}
    for j in range(max(AGREE, bisect_left(b.starts, lo)), min(len(b.ids) - AGREE, bisect_left(b.starts, hi))):
        if None not in (b.words[j], b.words[j - 1]) and b.words[j] != b.words[j - 1]:
            where.setdefault(b.starts[j], j)
    # Starts never decrease along an encoding, so bisect finds the range (were they to, fewer seams are
    # found, never a wrong one: every candidate is checked here).
    for i in range(max(AGREE, bisect_left(a.starts, lo)), min(len(a.ids) - AGREE, bisect_left(a.starts, hi))):
        j = where.get(a.starts[i])
        if j is None or None in (a.words[i], a.words[i - 1]) or a.words[i] == a.words[i - 1]:
            continue
        if a.ids[i - AGREE:i + AGREE] == b.ids[j - AGREE:j + AGREE] and \
                a.starts[i - AGREE:i + AGREE] == b.starts[j - AGREE:j + AGREE]:
            return i, j
    return None


def prepare(docs: Sequence[str], tokenizer, length: int, overlap: int, val: float | int, seed: int,
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
