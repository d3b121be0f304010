#!/usr/bin/env python3
"""Peak host memory of the runner's data preparation, before and after (another checkout's runner, read
by PYTHONPATH, against this one), on a generated jsonl corpus; and whether both made the same tokens.

    python bench/bench_data_prep.py [--mb 50] [--format jsonl|txt] [--old /work/main] [--seq 64] [--overlap 0]
                                    [--packing] [--val 0.1]
    python bench/bench_data_prep.py --prove [--old /work/main]

--format txt writes the same text as one plain-text file: one document (a book), which the old runner
tokenized in one call. --prove runs both sides on small corpora of every shape (odd sizes, blank rows,
unicode, CRLF and BOM files, a row longer than a chunk, a row and a book longer than a tokenizer window,
duplicates; plain and packed, with overlap) and compares every chunk and every batch of two epochs, and the
runner's own error for a corpus of fewer tokens than one chunk (`envdoctor train --dry-run --force`).

Each side runs in a fresh process that does only what train/qlora.py does with the data before step 1:
data.read_documents → data.prepare → the first epoch's batches, with the demo's tokenizer (a byte-level BPE
learned from train/demo_corpus, as `tokenizer: train-bpe` makes it; learned once, here, and loaded by both
sides so that they tokenize alike). Peak RSS is the process's VmHWM; "growth" is that peak less the RSS
after the imports and the tokenizer load (what the data itself costs), and the ratio is growth / corpus bytes.
The digest covers every training and validation chunk, in order, and the first epoch's batches: equal
digests are equal tensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (the peak) of this process. Not ru_maxrss: a child started by fork + exec
    inherits its parent's, so a small worker of a big bench would report the bench's peak."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))


def worker(args) -> None:
    from transformers import PreTrainedTokenizerFast
    from envdoctor_runner import data
    tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    base = status_bytes("VmRSS")
    docs = data.read_documents([args.corpus], Path(args.corpus).parent)
    train, val, stats = data.prepare(docs, tok, args.seq, args.overlap, args.val, 7, packing=args.packing)
    del docs  # qlora.py keeps no corpus text past prepare (the old one kept it: its peak is counted anyway)
    batches = data.batches(train, 4, tok.pad_token_id, 0, 7)
    batches = batches if hasattr(batches, "__len__") else list(batches)  # what each side's qlora.py holds
    epochs = [batches] + ([list(data.batches(train, 3, tok.pad_token_id, 1, 7))] if args.all_batches else [])
    peak = status_bytes("VmHWM")
    h = hashlib.sha256()
    tokens = 0
    for part in (train, val):
        for c in part:
            c = list(c)
            tokens += len(c)
            h.update(json.dumps(c).encode())
        h.update(b"#")
    for b in epochs:
        for i in range(len(b) if args.all_batches else min(len(b), 50)):
            h.update(json.dumps(b[i]).encode())
    print(json.dumps({"base": base, "peak": peak, "chunk_tokens": tokens, "digest": h.hexdigest()[:16],
                      **{k: stats[k] for k in ("documents", "chunks", "duplicates", "train", "val")}}))


def make_corpus(path: Path, mb: float, seed: int = 0, fmt: str = "jsonl") -> int:
    """jsonl rows of sentences made of the demo corpus's words, with some unicode, empty and long rows."""
    words = " ".join(f.read_text() for f in sorted((ROOT / "train" / "demo_corpus").iterdir())).split()
    extra = ["café", "naïve", "Œuvre", "日本語", "emoji🙂", "Ελληνικά", "“quoted”", "—"]
    rng, size = random.Random(seed), 0
    with path.open("w", encoding="utf-8") as fh:
        while size < mb * 1e6:
            n = rng.choice((5, 40, 120, 300, 800))
            text = " ".join(rng.choice(words) if rng.random() > 0.02 else rng.choice(extra) for _ in range(n))
            ascii_only = rng.random() < 0.5
            line = json.dumps({"text": text}, ensure_ascii=ascii_only) + "\n" if fmt == "jsonl" else text + "\n\n"
            if rng.random() < 0.01:
                line += "\n"  # blank lines are allowed between rows
            fh.write(line)
            size += len(line.encode())
    return path.stat().st_size


def demo_tokenizer(where: Path) -> None:
    sys.path.insert(0, str(ROOT / "train"))
    from envdoctor_runner import data
    from envdoctor_runner.modeling import build_tokenizer
    docs = data.read_documents(["demo_corpus"], ROOT / "train")
    build_tokenizer({"tokenizer": "train-bpe", "model_config": {"vocab_size": 512}}, docs).save_pretrained(where)


def run_side(train_dir: Path, args, corpus: Path, tok: Path, extra=()) -> dict:
    env = {**os.environ, "PYTHONPATH": str(train_dir), "TOKENIZERS_PARALLELISM": "true"}
    cmd = [sys.executable, __file__, "--worker", "--corpus", str(corpus), "--tokenizer", str(tok),
           "--seq", str(args.seq), "--overlap", str(args.overlap), "--val", str(args.val)] + \
        (["--packing"] if args.packing else []) + list(extra)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        return {"error": (res.stderr.strip().splitlines() or ["killed"])[-1], "rc": res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--corpus")
    ap.add_argument("--tokenizer")
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--old", default="/work/main", help="the checkout whose runner is 'before' (read only)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--overlap", type=int, default=0)
    ap.add_argument("--val", type=float, default=0.1)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--only", choices=("old", "new"))
    ap.add_argument("--format", choices=("jsonl", "txt"), default="jsonl")
    ap.add_argument("--prove", action="store_true")
    ap.add_argument("--all-batches", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.prove:
        return prove(args)
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / f"corpus.{args.format}"
        size = make_corpus(corpus, args.mb, fmt=args.format)
        demo_tokenizer(tmp / "tok")
        sides = [("before", Path(args.old) / "train"), ("after", ROOT / "train")]
        sides = [s for s in sides if args.only is None or s[0] == {"old": "before", "new": "after"}[args.only]]
        print(f"corpus: {size / 1e6:.1f} MB {args.format}, sequence_len {args.seq}, overlap {args.overlap}, "
              f"val {args.val}, packing {args.packing}")
        got = {}
        for name, where in sides:
            r = got[name] = run_side(where, args, corpus, tmp / "tok")
            if "error" in r:
                print(f"{name:<7} failed (rc {r['rc']}): {r['error']}")
                continue
            growth = r["peak"] - r["base"]
            print(f"{name:<7} {where}: {r['documents']} docs, {r['chunk_tokens']:,} tokens in {r['chunks']:,} chunks "
                  f"({r['train']:,} train, {r['val']:,} val, {r['duplicates']} duplicates); "
                  f"peak RSS {r['peak'] / 2**20:,.0f} MiB, "
                  f"growth {growth / 2**20:,.0f} MiB = {growth / size:.1f}× the corpus "
                  f"(peak {r['peak'] / size:.1f}×); digest {r['digest']}")
        ok = [r for r in got.values() if "error" not in r]
        if len(ok) == 2:
            print("same tokens, chunks, split and order:", "yes" if ok[0]["digest"] == ok[1]["digest"] else "NO")
    return 0


def edge_corpora(root: Path) -> list[Path]:
    """Small corpora of every shape the reader takes, each a folder."""
    rows = ["", "a", "é", "Ωmega 🙂 日本語", "x" * 17, "word " * 40, "A row longer than a chunk. " * 30,
            "  spaces  \t\n\n\n\nand blank lines  ", "dup row, kept once as a chunk " * 5]
    rng, made = random.Random(3), []
    sample = (ROOT / "train" / "demo_corpus" / "harbour-notes.txt").read_text()
    for name in ("odd", "plain", "long"):
        d = root / name
        d.mkdir()
        made.append(d)
    with (root / "odd" / "rows.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(301):
            fh.write(json.dumps({"text": rng.choice(rows) + (" " + str(i)) * (i % 3)}, ensure_ascii=i % 2 == 0) + "\n")
            fh.write("\n" if i % 7 == 0 else "")
        fh.write(json.dumps({"content": "dup row, kept once as a chunk " * 5}) + "\n")
    (root / "plain" / "crlf.txt").write_bytes(sample.replace("\n", "\r\n").encode())
    (root / "plain" / "bom.md").write_bytes(b"\xef\xbb\xbf" + sample.encode())
    (root / "plain" / "README").write_text("\n\n  " + sample[:333] + "\x01\x02  \n\n\n\n", encoding="utf-8")
    with (root / "long" / "rows.jsonl").open("w", encoding="utf-8") as fh:  # a row of > 256 KiB: windows
        fh.write(json.dumps({"text": " ".join(sample for _ in range(300))}) + "\n")
        fh.write(json.dumps({"text": "and a short one"}) + "\n")
    book = "\n\n".join(sample + " 🙂" * (i % 5) for i in range(1500))
    (root / "long" / "book.txt").write_text(book, encoding="utf-8")
    return made


def prove(args) -> int:
    sides = [Path(args.old) / "train", ROOT / "train"]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        tmp = Path(tmp)
        demo_tokenizer(tmp / "tok")
        for corpus in edge_corpora(tmp):
            for seq, overlap, packing, val in ((64, 0, False, 0.1), (16, 5, True, 3.0), (7, 0, False, 0.0),
                                               (512, 100, False, 0.5)):
                args.seq, args.overlap, args.packing, args.val = seq, overlap, packing, val
                got = [run_side(s, args, corpus, tmp / "tok", ["--all-batches"]) for s in sides]
                same = got[0] == {**got[1], "base": got[0].get("base"), "peak": got[0].get("peak")}
                bad += not same
                print(f"{corpus.name:<6} seq {seq:>3} overlap {overlap:>3} packing {packing!s:<5} val {val:<4}: "
                      f"{got[1].get('chunks')} chunks, {got[1].get('chunk_tokens')} tokens, digest "
                      f"{got[1].get('digest')}: {'same' if same else 'DIFFERENT ' + repr(got)}")
        tiny = tmp / "tiny"
        tiny.mkdir()
        (tiny / "a.jsonl").write_text('{"text": "Just a few words here."}\n')
        cfg = (ROOT / "train" / "configs" / "demo.yaml").read_text().replace("../demo_corpus", str(tiny))
        outs = []
        for side in sides:
            (tmp / "tiny.yaml").write_text(cfg.replace("./envdoctor-demo-run", str(tmp / f"run-{len(outs)}")))
            res = subprocess.run([sys.executable, "-m", "envdoctor", "train", str(tmp / "tiny.yaml"), "--dry-run",
                                  "--force", "--python", sys.executable], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(side.parent / "src")})
            outs.append([x for x in res.stdout.splitlines() if x.startswith("error: the datasets")])
        same = outs[0] == outs[1] and len(outs[0]) == 1
        bad += not same
        print(f"fewer tokens than one chunk: {'the same error' if same else 'DIFFERENT'}: {outs[1]}")
    print("all the same" if not bad else f"{bad} DIFFERENT")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
