"""The datasets of a config, read strictly: which files are read, and every reason one cannot be, by
file and line. Standard library only: the runner imports it in the target interpreter, and envdoctor's
preflight loads this same file (by path) so that both sides apply one set of rules.

Rules:
  * a dataset path is relative to the folder of the config file (absolute paths stay as they are);
  * .txt, .md and files without a suffix are plain text; .jsonl is one JSON object a line with a
    "text" (or "content") string;
  * every file must be UTF-8 text (a UTF-8 BOM is allowed): a NUL byte or an invalid UTF-8 sequence is
    an error with its byte offset and line, whatever the suffix;
  * a file named in the config with another suffix is an error (it was meant to be read); in a folder,
    other suffixes are skipped with a warning naming them (folders carry READMEs' images, licences,
    notebooks: refusing them would force users to reorganise a corpus, skipping them silently hid
    .json/.csv/.parquet data); hidden entries (.git, .DS_Store) are tooling, skipped without a word.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PLAIN = (".txt", ".md", "")
JSONL = ".jsonl"
TEXT_FIELDS = ("text", "content")
READS = '.txt, .md, files without a suffix (plain text) and .jsonl (one JSON object a line with a "text" field)'
PER_FILE = 5  # problems listed per file before "and N more": one bad export repeats the same fault per line


class CorpusError(Exception):
    """Bad datasets: `problems` are the error lines, each naming its file (and line)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Texts(Sequence):
    """Documents held as one UTF-8 buffer, each decoded when read: a corpus takes its size on disk (or
    less). As Python strings it took up to 4 bytes a character (one emoji makes a whole str 4 bytes a
    character) plus 50 bytes each; as one file's str and its lines, several times that again."""

    def __init__(self, texts: Iterable[str] = ()):
        self._buf, self._ends = bytearray(), array("q")
        for t in texts:
            self.append(t)

    def append(self, text: str) -> None:
        self.append_utf8((text.encode("utf-8"),))

    def append_utf8(self, parts: Iterable[bytes]) -> None:
        """One document made of these pieces of UTF-8 (a truncate removes what an unfinished one added)."""
        for raw in parts:
            self._buf += raw
        self._ends.append(len(self._buf))

    def utf8(self, i: int) -> memoryview:
        """Document i's UTF-8 bytes, not copied (release it before appending)."""
        return memoryview(self._buf)[self._ends[i - 1] if i else 0:self._ends[i]]

    def truncate(self, n: int) -> None:
        """Keep the first n documents."""
        del self._buf[self._ends[n - 1] if n else 0:]
        del self._ends[n:]

    def size(self, i: int) -> int:
        """UTF-8 bytes of document i."""
        return self._ends[i] - (self._ends[i - 1] if i else 0)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._buf[self._ends[i - 1] if i else 0:self._ends[i]].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return isinstance(other, (Sequence, Texts)) and not isinstance(other, str) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Texts({len(self)} documents, {len(self._buf)} bytes)"


@dataclass
class Corpus:
    documents: Texts = field(default_factory=Texts)         # raw text, one a file or a jsonl row
    doc_bytes: array = field(default_factory=lambda: array("q"))  # UTF-8 size of each document
    files: list[Path] = field(default_factory=list)        # files read
    problems: list[str] = field(default_factory=list)      # errors: the run cannot use these datasets
    warnings: list[str] = field(default_factory=list)


def dataset_path(entry: str, config_dir: str | Path) -> Path:
    """The one rule: relative to the config file's folder; `~` expanded."""
    p = Path(entry).expanduser()
    return p if p.is_absolute() else (Path(config_dir) / p).resolve()


BOM = b"\xef\xbb\xbf"


def decode(raw: bytes, name: str) -> str:
    """UTF-8 text, or ValueError saying where it is not (byte offset and line)."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(_binary(name, nul, _line(raw, nul)))
    bom = 3 if raw.startswith(BOM) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + bom
        raise ValueError(_not_utf8(name, raw[at], at, _line(raw, at), exc.reason)) from None


def _binary(name: str, offset: int, line: int) -> str:
    return (f"{name}: binary data, not UTF-8 text (a NUL byte at offset {offset}, line {line}); UTF-16 text "
            "reads like this too: save it as UTF-8")


def _not_utf8(name: str, byte: int, offset: int, line: int, reason: str) -> str:
    return (f"{name}: not UTF-8 text: byte 0x{byte:02x} at offset {offset} (line {line}): {reason}; save the file "
            "as UTF-8")


def _line(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def pieces(fh, name: str) -> Iterator[tuple[bytes, str]]:
    """(UTF-8, its text) of each "\n"-ended piece of a binary file object (the BOM left out), what
    decode(whole file) reads, a piece at a time (a whole file's str and its lines took several times the
    file). The same ValueError as decode, after the last piece, when the file is not UTF-8 text: a caller
    keeps nothing it made of the pieces before."""
    offset, nul, bad = 0, None, None
    for n, piece in enumerate(fh, 1):  # binary files split after b"\n" only, as _line counts
        if nul is None and b"\x00" in piece:
            nul = (offset + piece.index(b"\x00"), n)
        start = 3 if offset == 0 and piece.startswith(BOM) else 0
        if nul is None and bad is None:
            try:
                # With its "\n", an invalid sequence fails for the reason it failed in the whole file.
                yield piece[start:] if start else piece, piece[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                at = start + exc.start
                bad = (piece[at], offset + at, n, exc.reason)
        offset += len(piece)
    if nul is not None:
        raise ValueError(_binary(name, *nul))
    if bad is not None:
        raise ValueError(_not_utf8(name, *bad))


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """str.splitlines() but at "\n", "\r\n" and "\r" only: U+2028, U+2029 and U+0085 (NEL) are valid raw
    inside a JSON string (json.dumps(..., ensure_ascii=False) writes them so) and do not end a JSON line."""
    lines = _LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def text_lines(fh, name: str) -> Iterator[str]:
    """The lines of a binary file object, as split_lines(decode(whole file)) has them: a piece ends with
    "\n", so it splits as it did within the whole text ("\r\n" never spans two pieces)."""
    for _raw, text in pieces(fh, name):
        yield from split_lines(text)


def jsonl_rows(text: str, name: str) -> tuple[list[str], list[str]]:
    """(texts, problems) of a .jsonl file; a blank line is allowed, anything else must be a row."""
    texts, problems = [], []
    for n, line in enumerate(split_lines(text), 1):
        row_text, problem = _row(line, n, name)
        if problem:
            problems.append(problem)
        elif row_text is not None:
            texts.append(row_text)
    return texts, problems


def _row(line: str, n: int, name: str) -> tuple[str | None, str | None]:
    """(the text of jsonl line n, None), (None, what is wrong with it) or (None, None) for a blank line."""
    if not line.strip():
        return None, None
    try:
        row = json.loads(line)
    except ValueError as exc:
        return None, (f"{name}:{n}: not valid JSON ({getattr(exc, 'msg', exc)} at column "
                      f"{getattr(exc, 'colno', '?')})")
    if not isinstance(row, dict):
        return None, f"{name}:{n}: expected a JSON object with a \"text\" field, got {type(row).__name__}"
    key = next((k for k in TEXT_FIELDS if k in row), None)
    if key is None:
        keys = ", ".join(sorted(map(str, row))[:8]) or "none"
        return None, (f"{name}:{n}: no \"text\" (or \"content\") field; its keys: {keys}"
                      + (" (chat rows are not read: this runner trains on plain text)"
                         if "messages" in row or "conversations" in row else ""))
    if not isinstance(row[key], str):
        return None, f"{name}:{n}: \"{key}\" must be a string, got {type(row[key]).__name__}"
    return row[key], None


def _cap(problems: list[str]) -> list[str]:
    extra = len(problems) - PER_FILE
    return problems[:PER_FILE] + ([f"  … and {extra} more like these in the same file"] if extra > 0 else [])


def _files_of(folder: Path, corpus: Corpus) -> list[Path]:
    found, skipped = [], []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        (found if f.suffix.lower() in PLAIN + (JSONL,) else skipped).append(f)
    if skipped:
        names = [str(f) for f in skipped[:10]] + ([f"and {len(skipped) - 10} more"] if len(skipped) > 10 else [])
        corpus.warnings.append(f"{folder}: {len(skipped)} file(s) skipped, not a suffix the runner reads "
                               f"({READS}): {', '.join(names)}")
    if not found:
        corpus.problems.append(f"{folder}: no files to read in this folder; the runner reads {READS}")
    return found


def _read_file(f: Path, named: bool, corpus: Corpus) -> None:
    """The file's documents appended to corpus.documents, or its problems to corpus.problems (and none
    of its documents kept)."""
    before = len(corpus.documents)
    try:
        with f.open("rb") as fh:
            if f.suffix.lower() == JSONL:
                problems = _read_jsonl(fh, str(f), corpus.documents)
            else:
                problems = []
                if not _read_plain(fh, str(f), corpus.documents):
                    corpus.documents.truncate(before)
    except OSError as exc:
        problems = [f"{f}: cannot read: {exc.strerror}"]
    except ValueError as exc:
        problems = [str(exc)]
    if problems:
        corpus.documents.truncate(before)
        corpus.problems.extend(_cap(problems))
        return
    if len(corpus.documents) == before:
        (corpus.problems if named else corpus.warnings).append(f"{f}: empty (no text)" + ("" if named else ", skipped"))
        return
    corpus.files.append(f)
    corpus.doc_bytes.extend(corpus.documents.size(i) for i in range(before, len(corpus.documents)))


def _read_plain(fh, name: str, into: Texts) -> bool:
    """A plain-text file appended to `into` as one document, its bytes kept as they are (they are its
    text's UTF-8), a piece at a time; whether it holds more than whitespace."""
    solid = False

    def kept() -> Iterator[bytes]:
        nonlocal solid
        for raw, text in pieces(fh, name):
            solid = solid or bool(text.strip())
            yield raw
    into.append_utf8(kept())
    return solid


def _read_jsonl(fh, name: str, into: Texts) -> list[str]:
    """The texts of a .jsonl file appended to `into` (blank ones left out), a line at a time; the file's
    problems (rows stop being kept at the first)."""
    problems = []
    for n, line in enumerate(text_lines(fh, name), 1):
        text, problem = _row(line, n, name)
        if problem:
            problems.append(problem)
        elif text is not None and text.strip() and not problems:
            into.append(text)
    return problems


def read_corpus(entries: list[str], config_dir: str | Path) -> Corpus:
    """Every dataset entry, read; bad input goes to .problems (never an exception)."""
    corpus = Corpus()
    for entry in entries:
        p = dataset_path(entry, config_dir)
        if p.is_dir():
            for f in _files_of(p, corpus):
                _read_file(f, False, corpus)
        elif p.is_file():
            if p.suffix.lower() not in PLAIN + (JSONL,):
                hint = " (convert it to .jsonl, one {\"text\": …} object a line)" \
                    if p.suffix.lower() in (".json", ".csv", ".tsv", ".parquet", ".arrow") else ""
                corpus.problems.append(f"{p}: {p.suffix} files are not read{hint}; the runner reads {READS}")
            else:
                _read_file(p, True, corpus)
        else:
            corpus.problems.append(f"{p}: does not exist ({entry!r}, relative to the config's folder {config_dir})")
    if not corpus.problems and not corpus.documents:
        corpus.problems.append("the datasets hold no text")
    return corpus


# Chunk arithmetic, shared by data.prepare (exact, on tokens) and the preflight (a bound, on bytes).

def chunk_starts(tokens: int, length: int, overlap: int) -> range:
    return range(0, max(1, tokens - overlap), max(1, length - overlap))


def chunk_count(tokens: int, length: int, overlap: int) -> int:
    """How many chunks data.chunk makes of `tokens` tokens (windows shorter than min(length, 16) dropped)."""
    shortest = min(length, 16)
    return sum(1 for s in chunk_starts(tokens, length, overlap) if min(length, tokens - s) >= shortest)


def split_sizes(chunks: int, val: float | int) -> tuple[int, int]:
    """(train, validation) chunk counts: val_set_size as a fraction (< 1) or a count; at least one
    validation chunk when asked for and there are two or more chunks; never a negative count."""
    if chunks <= 0:
        return 0, 0
    n_val = int(round(chunks * val)) if isinstance(val, float) and val < 1 else int(val)
    n_val = min(max(n_val, 1 if chunks > 1 and val else 0), chunks - 1)
    return chunks - n_val, n_val


def needed_chunks(micro_batch_size: int, gradient_accumulation_steps: int) -> int:
    """Training chunks for one full optimizer step. The same with any number of processes: data parallel
    deals one process's step over the ranks (schedule.py), and a rank without a micro batch takes part
    with a zero-weight pass."""
    return micro_batch_size * gradient_accumulation_steps


def max_train_chunks(doc_bytes: list[int], length: int, overlap: int, val: float | int, packing: bool) -> int:
    """An upper bound on data.prepare's training chunks without a tokenizer: at most one token a byte of
    text (byte-level BPE and SentencePiece with byte fallback never make a token of less than a byte)
    plus two a document (a SentencePiece word-start piece and EOS). Cleaning and deduplication only
    remove tokens, and more tokens never make fewer chunks, so fewer than needed here is certain."""
    tokens = [b + 2 for b in doc_bytes]
    chunks = chunk_count(sum(tokens), length, overlap) if packing else \
        sum(chunk_count(t, length, overlap) for t in tokens)
    return split_sizes(chunks, val)[0]
