#!/usr/bin/env python3
"""Peak host memory of the runner's data preparation, before and after (another checkout's runner, read
by PYTHONPATH, against this one), on a generated jsonl corpus; and whether both made the same tokens.

    python bench/bench_data_prep.py [--mb 50] [--old /work/main] [--seq 64] [--overlap 0] [--packing]

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
    peak = status_bytes("VmHWM")
    h = hashlib.sha256()
    tokens = 0
    for part in (train, val):
        for c in part:
            c = list(c)
            tokens += len(c)
            h.update(json.dumps(c).encode())
        h.update(b"#")
    for i in range(min(len(batches), 50)):
        h.update(json.dumps(batches[i]).encode())
    print(json.dumps({"base": base, "peak": peak, "chunk_tokens": tokens, "digest": h.hexdigest()[:16],
                      **{k: stats[k] for k in ("documents", "chunks", "duplicates", "train", "val")}}))


def make_corpus(path: Path, mb: float, seed: int = 0) -> int:
    """jsonl rows of sentences made of the demo corpus's words, with some unicode, empty and long rows."""
    words = " ".join(f.read_text() for f in sorted((ROOT / "train" / "demo_corpus").iterdir())).split()
    extra = ["café", "naïve", "Œuvre", "日本語", "emoji🙂", "Ελληνικά", "“quoted”", "—"]
    rng, size = random.Random(seed), 0
    with path.open("w", encoding="utf-8") as fh:
        while size < mb * 1e6:
            n = rng.choice((5, 40, 120, 300, 800))
            text = " ".join(rng.choice(words) if rng.random() > 0.02 else rng.choice(extra) for _ in range(n))
            line = json.dumps({"text": text}, ensure_ascii=rng.random() < 0.5) + "\n"
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


def run_side(train_dir: Path, args, corpus: Path, tok: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(train_dir), "TOKENIZERS_PARALLELISM": "true"}
    cmd = [sys.executable, __file__, "--worker", "--corpus", str(corpus), "--tokenizer", str(tok),
           "--seq", str(args.seq), "--overlap", str(args.overlap), "--val", str(args.val)] + \
        (["--packing"] if args.packing else [])
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
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        size = make_corpus(corpus, args.mb)
        demo_tokenizer(tmp / "tok")
        sides = [("before", Path(args.old) / "train"), ("after", ROOT / "train")]
        sides = [s for s in sides if args.only is None or s[0] == {"old": "before", "new": "after"}[args.only]]
        print(f"corpus: {size / 1e6:.1f} MB jsonl, sequence_len {args.seq}, overlap {args.overlap}, "
              f"val {args.val}, packing {args.packing}")
        got = {}
        for name, where in sides:
            r = got[name] = run_side(where, args, corpus, tmp / "tok")
            if "error" in r:
                print(f"{name:<7} failed (rc {r['rc']}): {r['error']}")
                continue
            growth = r["peak"] - r["base"]
            print(f"{name:<7} {where}: {r['documents']} docs, {r['chunk_tokens']:,} tokens in {r['chunks']:,} chunks "
                  f"({r['train']:,} train, {r['val']:,} val); peak RSS {r['peak'] / 2**20:,.0f} MiB, "
                  f"growth {growth / 2**20:,.0f} MiB = {growth / size:.1f}× the corpus "
                  f"(peak {r['peak'] / size:.1f}×); digest {r['digest']}")
        ok = [r for r in got.values() if "error" not in r]
        if len(ok) == 2:
            print("same tokens, chunks, split and order:", "yes" if ok[0]["digest"] == ok[1]["digest"] else "NO")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
