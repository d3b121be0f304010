"""The runner's data preparation in bounded memory makes what the list-of-lists one made: the same
documents from the same files (and the same errors), the same cleaned text, the same tokens (real fast
tokenizers, batched and in windows), the same chunks, split, order and batches. The oracles below are
the former code, kept here as the definition of the result."""

from __future__ import annotations

import hashlib
import json
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envdoctor.assets import asset

sys.path.insert(0, str(asset("train")))
from envdoctor_runner import corpus, data  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- the former code, as oracles -----------------------------------------------------------------------

def old_read(f, named: bool):
    """(documents, problems, warnings) as the former _read_file made them (whole file decoded)."""
    try:
        text = corpus.decode(f.read_bytes(), str(f))
    except ValueError as exc:
        return [], [str(exc)], []
    if f.suffix == ".jsonl":
        texts, problems = corpus.jsonl_rows(text, str(f))
        if problems:
            return [], corpus._cap(problems), []
    else:
        texts = [text]
    texts = [t for t in texts if t.strip()]
    if not texts:
        return [], *([[f"{f}: empty (no text)"], []] if named else [[], [f"{f}: empty (no text), skipped"]])
    return texts, [], []


def old_prepare(docs, tokenizer, length, overlap, val, seed, packing=False):
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
        stride = max(1, length - overlap)
        out = [ids[i:i + length] for i in range(0, max(1, len(ids) - overlap), stride)]
        for c in (c for c in out if len(c) >= min(length, 16)):
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


def old_batches(chunks, size, pad_id, epoch, seed):
    order = list(range(len(chunks)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for i in range(0, len(order), size):
        rows = [chunks[j] for j in order[i:i + size]]
        width = max(len(r) for r in rows)
        yield [r + [pad_id] * (width - len(r)) for r in rows], [[1] * len(r) + [0] * (width - len(r)) for r in rows]


# --- tokenizers ------------------------------------------------------------------------------------------

class SmallVocab:
    """Few distinct words, so that chunks repeat (deduplication) — one id a word, EOS = 0."""
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + len(w) % 5 for w in text.split()]}


SAMPLE = ("The soil is still cold under the first inch, but the rhubarb has pushed up its red fists anyway. "
          "Café crème, naïve Œuvre — 日本語のテキスト、émoji 🙂🙂 and Ελληνικά.\n\n  indented\tline\r\n" * 20)


def fast(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    if kind == "bytelevel-bpe":  # GPT-2 / Llama-3 style: the demo's
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "wordpiece":  # BERT style: a normalizer, whitespace and punctuation words
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "<pad>", "</s>"],
                                            show_progress=False)
    elif kind == "metaspace-unigram":  # SentencePiece style, a prefix "▁" on the first word only
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                          unk_token="<unk>", show_progress=False)
    else:  # one word a document (no pre-tokenizer): no seam can be found, the document is tokenized whole
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
    tok.train_from_iterator([SAMPLE], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


TEXT = st.text(st.sampled_from(list("ab c\n\n\t  .,!é日🙂\u0301\r")) | st.characters(codec="utf-8"), max_size=400)


# --- reading ------------------------------------------------------------------------------------------------

@SETTINGS
@given(lines=st.lists(st.one_of(TEXT.map(lambda t: '{"text": ' + __import__("json").dumps(t) + "}"), TEXT,
                                st.sampled_from(["", "  ", "{\"content\": \"x\u2028y\"}", "[1]", "{\"text\": 3}"])),
                      max_size=12),
       raw=st.binary(max_size=40), where=st.integers(0, 400), bom=st.booleans(),
       suffix=st.sampled_from([".jsonl", ".txt"]))
def test_files_read_a_piece_at_a_time_give_the_documents_and_errors_the_whole_file_gave(tmp_path, lines, raw, where,
                                                                                       bom, suffix):
    body = "\n".join(lines).encode("utf-8")
    body = body[:where] + raw + body[where:]  # NULs, invalid UTF-8, stray \r and blank lines anywhere
    f = tmp_path / f"d{suffix}"
    f.write_bytes((corpus.BOM if bom else b"") + body)
    for named in (True, False):
        got = corpus.Corpus()
        corpus._read_file(f, named, got)
        docs, problems, warnings = old_read(f, named)
        assert (list(got.documents), got.problems, got.warnings) == (docs, problems, warnings)
        assert list(got.doc_bytes) == [len(d.encode()) for d in docs]


SEAMS = ["a\n \n\nb", "a\n\t\nb", "a\n\r\n\nb", "a\n\x00\n\nb", "a\n\u0301b", "\n\u00a0x\n\u3000\n",
         "a \n\x7f\n\nb", " \n\n x \n y\n \n", "e\n\u0301\n\u0327\n"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT | st.sampled_from(SEAMS), piece=st.integers(1, 64))
def test_a_long_document_cleaned_in_pieces_is_the_whole_cleaned(text, piece, monkeypatch):
    monkeypatch.setattr(data, "PIECE", piece)
    for t in (text, text * 3):
        assert b"".join(data.clean_pieces(memoryview(t.encode()))).decode() == data.clean(t)


@pytest.mark.parametrize("text", SEAMS)
def test_seams_where_a_rule_of_clean_could_span_two_pieces(text, monkeypatch):
    for piece in range(1, len(text.encode()) + 1):
        monkeypatch.setattr(data, "PIECE", piece)
        assert b"".join(data.clean_pieces(memoryview(text.encode()))).decode() == data.clean(text), piece


def test_read_documents_cleans_long_documents_in_pieces_to_the_same_text(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("\n\n  " + SAMPLE + " \n\n\n\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text(" \n\x00\n\t\n".replace("\x00", "\x01") * 50, encoding="utf-8")  # all blank
    (tmp_path / "c.jsonl").write_text('{"text": "short one"}\n', encoding="utf-8")
    monkeypatch.setattr(data, "PIECE", 1 << 30)
    whole = list(data.read_documents(["."], tmp_path))
    monkeypatch.setattr(data, "PIECE", 37)
    assert list(data.read_documents(["."], tmp_path)) == whole and len(whole) == 2


# --- tokens, chunks, order -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bytelevel-bpe", "wordpiece", "metaspace-unigram", "one-word"])
def test_fast_tokenizers_give_the_same_ids_batched_and_in_windows_as_a_document_at_a_time(kind, monkeypatch):
    tok = fast(kind)
    rng = random.Random(kind)
    words = SAMPLE.split(" ") + ["   ", "\n\n", "\t", " " * 300, "x" * 700]
    docs = [" ".join(rng.choice(words) for _ in range(rng.choice((1, 5, 60, 900)))).strip() or "x"
            for _ in range(30)]
    want = array_of([tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs])
    for window, overlap, batch in ((1 << 18, 1 << 13, 1 << 16), (512, 128, 300), (2048, 256, 1), (300, 120, 5000)):
        monkeypatch.setattr(data, "WINDOW", window)
        monkeypatch.setattr(data, "OVERLAP", overlap)
        monkeypatch.setattr(data, "BATCH", batch)
        tokens, ends = data.tokenize(docs, tok)
        assert (tokens.tolist(), ends.tolist()) == want, (kind, window)


def test_a_long_document_is_joined_at_seams_not_tokenized_whole(monkeypatch):
    tok, calls = fast("bytelevel-bpe"), []
    monkeypatch.setattr(data, "WINDOW", 512)
    monkeypatch.setattr(data, "OVERLAP", 128)
    call = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__",
                        lambda self, text, **kw: (calls.append(len(text)), call(self, text, **kw))[1])
    tokens, _ends = data.tokenize([SAMPLE * 3], tok)
    assert len(calls) > 10 and max(calls) <= 512  # windows only: the document was never tokenized whole
    assert tokens.tolist() == call(tok, SAMPLE * 3, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def array_of(lists):
    tokens, ends = [], []
    for ids in lists:
        tokens += ids
        ends.append(len(tokens))
    return tokens, ends


@SETTINGS
@given(docs=st.lists(st.text(" abcdefgh", min_size=0, max_size=200), min_size=1, max_size=10),
       length=st.integers(1, 40), overlap=st.integers(0, 39), val=st.sampled_from([0, 0.1, 0.5, 3]),
       seed=st.integers(0, 5), packing=st.booleans(), size=st.integers(1, 5))
def test_chunks_split_order_and_batches_are_the_former_ones(docs, length, overlap, val, seed, packing, size):
    overlap = min(overlap, length - 1)
    tok = SmallVocab()
    train, valid, stats = data.prepare(docs, tok, length, overlap, val, seed, packing=packing)
    o_train, o_valid, o_stats = old_prepare(docs, tok, length, overlap, val, seed, packing=packing)
    assert (list(train), list(valid), stats) == (o_train, o_valid, o_stats)
    assert train[:3].tolist() == o_train[:3] and bool(valid) == bool(o_valid)
    if train:
        got = data.batches(train, size, 99, 2, seed)
        assert len(got) == -(-len(o_train) // size) and list(got) == list(old_batches(o_train, size, 99, 2, seed))
        assert got[len(got) - 1] == got[-1]


def test_the_demo_tokenizer_on_a_corpus_of_every_shape_makes_the_former_chunks(tmp_path, monkeypatch):
    """Odd sizes, blank rows, unicode, a row longer than a chunk and one longer than a window."""
    tok = fast("bytelevel-bpe")
    rows = ["", "a", SAMPLE[:17], SAMPLE, "é" * 333, "🙂 " * 100, SAMPLE * 4]
    monkeypatch.setattr(data, "WINDOW", 1024)
    monkeypatch.setattr(data, "OVERLAP", 256)
    docs = [data.clean(r) for r in rows if data.clean(r)]
    for length, overlap, packing in ((16, 0, False), (64, 8, True), (7, 3, False), (4096, 0, True)):
        got = data.prepare(docs, tok, length, overlap, 0.2, 7, packing=packing)
        want = old_prepare(docs, tok, length, overlap, 0.2, 7, packing=packing)
        assert (list(got[0]), list(got[1]), got[2]) == want


def test_jsonl_rows_with_unicode_line_separators_inside_strings_are_read(tmp_path):
    """JSON Lines are separated by "\\n" ("\\r\\n"): U+2028, U+2029 and U+0085 (NEL) are valid raw inside a
    JSON string (json.dumps(..., ensure_ascii=False) writes them so) and must not split a row, as
    str.splitlines did: a valid file was refused as "not valid JSON" at lines it does not have."""
    rows = ["first\u2028second", "café \x85 NEL", "para\u2029graph", "plain"]
    f = tmp_path / "rows.jsonl"
    f.write_bytes(("\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in rows) + "\r\n\n").encode())
    found = corpus.read_corpus([str(f)], tmp_path)
    assert found.problems == [] and list(found.documents) == rows
    assert corpus.jsonl_rows(f.read_text(encoding="utf-8"), str(f)) == (rows, [])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes('{"text": "a"}\r{"text": "b\u2028c"}\n[1]\n'.encode())  # a lone "\r" still ends a line
    found = corpus.read_corpus([str(bad)], tmp_path)
    assert found.problems == [f"{bad}:3: expected a JSON object with a \"text\" field, got list"], found.problems
