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


@dataclass
class Corpus:
    documents: list[str] = field(default_factory=list)    # raw text, one a file or a jsonl row
    doc_bytes: list[int] = field(default_factory=list)     # UTF-8 size of each document
    files: list[Path] = field(default_factory=list)        # files read
    problems: list[str] = field(default_factory=list)      # errors: the run cannot use these datasets
    warnings: list[str] = field(default_factory=list)


def dataset_path(entry: str, config_dir: str | Path) -> Path:
    """The one rule: relative to the config file's folder; `~` expanded."""
    p = Path(entry).expanduser()
    return p if p.is_absolute() else (Path(config_dir) / p).resolve()


def decode(raw: bytes, name: str) -> str:
    """UTF-8 text, or ValueError saying where it is not (byte offset and line)."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{name}: binary data, not UTF-8 text (a NUL byte at offset {nul}, line "
                         f"{_line(raw, nul)}); UTF-16 text reads like this too: save it as UTF-8")
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + bom
        raise ValueError(f"{name}: not UTF-8 text: byte 0x{raw[at]:02x} at offset {at} (line "
                         f"{_line(raw, at)}): {exc.reason}; save the file as UTF-8") from None


def _line(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def jsonl_rows(text: str, name: str) -> tuple[list[str], list[str]]:
    """(texts, problems) of a .jsonl file; a blank line is allowed, anything else must be a row."""
    texts, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append(f"{name}:{n}: not valid JSON ({getattr(exc, 'msg', exc)} at column "
                            f"{getattr(exc, 'colno', '?')})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{name}:{n}: expected a JSON object with a \"text\" field, got {type(row).__name__}")
            continue
        key = next((k for k in TEXT_FIELDS if k in row), None)
        if key is None:
            keys = ", ".join(sorted(map(str, row))[:8]) or "none"
            problems.append(f"{name}:{n}: no \"text\" (or \"content\") field; its keys: {keys}"
                            + (" (chat rows are not read: this runner trains on plain text)"
                               if "messages" in row or "conversations" in row else ""))
        elif not isinstance(row[key], str):
            problems.append(f"{name}:{n}: \"{key}\" must be a string, got {type(row[key]).__name__}")
        else:
            texts.append(row[key])
    return texts, problems


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
    try:
        raw = f.read_bytes()
    except OSError as exc:
        corpus.problems.append(f"{f}: cannot read: {exc.strerror}")
        return
    try:
        text = decode(raw, str(f))
    except ValueError as exc:
        corpus.problems.append(str(exc))
        return
    if f.suffix.lower() == JSONL:
        texts, problems = jsonl_rows(text, str(f))
        corpus.problems.extend(_cap(problems))
        if problems:
            return
    else:
        texts = [text]
    texts = [t for t in texts if t.strip()]
    if not texts:
        (corpus.problems if named else corpus.warnings).append(f"{f}: empty (no text)" + ("" if named else ", skipped"))
        return
    corpus.files.append(f)
    corpus.documents.extend(texts)
    corpus.doc_bytes.extend(len(t.encode("utf-8")) for t in texts)


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
