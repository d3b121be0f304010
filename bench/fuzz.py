#!/usr/bin/env python3
"""Feed envdoctor's readers hostile input and count the tracebacks: none may escape.

    PYTHONPATH=src python bench/fuzz.py [--cases 1000] [--seed 0] [--kinds recipe,report,...]

Each kind starts from a valid input and breaks it in seeded ways: values of other types put in place of
any node, truncation at any byte, flipped and inserted bytes, random bytes, deep nesting, non-UTF-8.
An input is fine when it is read or rejected with the reader's own error (a message naming the file);
any other exception is a traceback a user would have seen, and is counted and the first ones shown.
The same generators run as a small slice in tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import tempfile
import traceback
from pathlib import Path

# -- mutation ------------------------------------------------------------------------------------

ODD_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 70, float("nan"), "", "x", "8.", "[N/A]", "\x00", "é",
              [], [1, "a"], {}, {"a": None}, "hf_" + "A" * 30, "../../etc/passwd"]


def odd_value(rng: random.Random):
    v = rng.choice(ODD_VALUES)
    return json.loads(json.dumps(v)) if not isinstance(v, float) or v == v else v


def mutate_tree(rng: random.Random, tree, depth: int = 0):
    """A copy of a JSON-like tree with one random node replaced, dropped, or its container's type changed."""
    if isinstance(tree, dict) and tree and rng.random() < 0.8:
        key = rng.choice(list(tree))
        out = dict(tree)
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[rng.choice([1, "unknown_key", True, None]) if rng.random() < 0.3 else "extra"] = odd_value(rng)
        elif roll < 0.6 and isinstance(out[key], (dict, list)) and out[key]:
            out[key] = mutate_tree(rng, out[key], depth + 1)
        else:
            out[key] = odd_value(rng)
        return out
    if isinstance(tree, list) and tree and rng.random() < 0.8:
        i = rng.randrange(len(tree))
        out = list(tree)
        out[i] = mutate_tree(rng, out[i], depth + 1) if isinstance(out[i], (dict, list)) and rng.random() < 0.6 \
            else odd_value(rng)
        return out
    return odd_value(rng)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    roll = rng.random()
    if not data or roll < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if roll < 0.35:
        return data[:rng.randrange(len(data) + 1)]
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op, i = rng.random(), rng.randrange(len(b) + 1)
        if op < 0.4 and i < len(b):
            b[i] = rng.randrange(256)
        elif op < 0.7:
            b[i:i] = rng.choice([b"\xff", b"\xc3", b"\x00", b",", b"{", b"[", b":", b"\n", b"- ", b"!!", b"&a *a",
                                 b"\"", b"'", b"\xef\xbb\xbf", b"9" * 40])
        elif i < len(b):
            del b[i:i + rng.randrange(1, 8)]
    return bytes(b)


def deep(rng: random.Random, as_yaml: bool) -> bytes:
    n = rng.choice([50, 500, 5000])
    return (b"[" * n + b"]" * n) if not as_yaml or rng.random() < 0.5 else (b"a:\n" + b"- " * n + b"x\n")


def structured(rng: random.Random, seed_tree, dump) -> bytes:
    roll = rng.random()
    if roll < 0.55:
        tree = seed_tree
        for _ in range(rng.randrange(1, 4)):
            tree = mutate_tree(rng, tree)
        return dump(tree)
    if roll < 0.9:
        return mutate_bytes(rng, dump(seed_tree))
    return deep(rng, dump is _yaml)


def _json(tree) -> bytes:
    return json.dumps(tree, allow_nan=True).encode()


def _yaml(tree) -> bytes:
    import yaml
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode()


# -- the inputs ----------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
RECIPE = {"name": "fuzz", "description": "a stack", "python": ">=3.10,<3.14",
          "gpu": {"archs": ["sm_90", "sm_120"], "min_driver": "570.26"},
          "torch": {"version": "2.8.0", "index": "cu128", "companions": ["torchvision==0.23.0"]},
          "packages": ["peft==0.17.1", "transformers==4.56.1"], "build": ["flash-attn==2.8.3"]}
REPORT = {"envdoctor_version": "0.1.0", "node": {"hostname": "n1", "slurm_node": None},
          "facts": {"gpu": {"driver": "580.95.05", "gpus": [{"name": "NVIDIA H200", "cc": [9, 0]}]},
                    "torch": {"installed": True, "version": "2.8.0+cu128", "cuda": "12.8"},
                    "python": {"version_string": "3.11.7", "glibc": "2.39",
                               "distributions": [{"name": "peft", "version": "0.17.1"}]},
                    "toolkit": {"nvccs": [{"version": "12.8.93"}]}},
          "results": [{"id": "gpu.driver", "status": "ok", "message": "driver 580"},
                      {"id": "packages.conflicts", "status": "fail", "message": "peft needs torch"}]}
HEADER = {"__metadata__": {"format": "pt"},
          "w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
INDEX = {"metadata": {"total_size": 16}, "weight_map": {"w": "model.safetensors", "b": "model.safetensors"}}
SMI_ROWS = ["0, NVIDIA H200, GPU-1, 9.0, 143771, 143000, 771, Disabled, 580.95.05",
            "1, NVIDIA H200, GPU-2, 9.0, 143771, 143000, 771, [N/A], 580.95.05"]
NVCC = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.8, V12.8.93\n"
VERSION_JSON = {"cuda": {"name": "CUDA SDK", "version": "12.8.1"}, "cuda_nvcc": {"name": "nvcc", "version": "12.8.93"}}


class Case:
    """Runs one input of a kind; returns None, or the traceback text when an exception escaped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def recipe(self, rng: random.Random) -> None:
        from envdoctor.recipes import validate
        path = self.folder / "fuzz.yaml"
        path.write_bytes(structured(rng, RECIPE, _yaml))
        recipe, errors = validate(path)
        assert (recipe is None) == bool(errors) and all(isinstance(e, str) and str(path) in e for e in errors)

    def report(self, rng: random.Random) -> None:
        from envdoctor import fleet
        from envdoctor.errors import UsageError
        a, b = self.folder / "a.json", self.folder / "b.json"
        data = structured(rng, REPORT, _json)
        if rng.random() < 0.2:  # pdsh lines
            data = b"n1: " + data.replace(b"\n", b"") + b"\nn2: " + _json(REPORT) + b"\n"
        a.write_bytes(data)
        b.write_bytes(_json(REPORT))
        try:
            nodes = fleet.load([str(a), str(b)])
        except UsageError as exc:
            assert str(a) in str(exc)
            return
        fleet.render(nodes, io.StringIO())
        json.dumps(fleet.to_json(nodes))

    def safetensors(self, rng: random.Random) -> None:
        from envdoctor.checks.model_dir import files as files_check
        from envdoctor.context import Context
        from envdoctor.facts.model_dir import probe_model_dir
        from envdoctor.system import System
        d = self.folder / "model"
        d.mkdir(exist_ok=True)
        for p in d.iterdir():
            p.unlink()
        head = structured(rng, HEADER, _json) if rng.random() < 0.8 else _json(HEADER)
        length = len(head) if rng.random() < 0.85 else rng.choice([0, 7, len(head) + 1, 2 ** 63, 2 ** 64 - 1])
        blob = struct.pack("<Q", length) + head + b"\0" * rng.choice([0, 8, 16, 64])
        (d / "model.safetensors").write_bytes(blob if rng.random() < 0.9 else mutate_bytes(rng, blob))
        if rng.random() < 0.5:
            (d / "model.safetensors.index.json").write_bytes(structured(rng, INDEX, _json))
        if rng.random() < 0.3:
            (d / "merge_report.json").write_bytes(b"{}")
            if rng.random() < 0.5:
                (d / "envdoctor-merge.json").write_bytes(structured(rng, {"verified": True, "files": {
                    "model.safetensors": len(blob)}}, _json))
        facts = probe_model_dir(System(), Context(python=sys.executable, python_reason="fuzz", model_dir=str(d)))
        files_check(facts)
        json.dumps(facts.to_dict())

    def nvidia_smi(self, rng: random.Random) -> None:
        from envdoctor.checks.gpu import devices, driver
        from envdoctor.facts.gpu import GpuFacts, cuda_of_driver, parse_smi_csv
        text = mutate_bytes(rng, "\n".join(SMI_ROWS).encode()).decode("utf-8", "replace") \
            if rng.random() < 0.9 else "\n".join(rng.choice(SMI_ROWS).replace(", ", ",") for _ in range(3))
        drv, gpus, bad = parse_smi_csv(text)
        facts = GpuFacts("nvidia-smi" if gpus else None, drv, cuda_of_driver(drv), gpus,
                         unreadable=bad, signals=["fuzz"] if rng.random() < 0.5 else [])
        driver(facts), devices(facts)

    def nvcc(self, rng: random.Random) -> None:
        from envdoctor.facts.toolkit import parse_nvcc_version, parse_version_json
        from envdoctor.gpu_compat import major_minor
        v = parse_version_json(structured(rng, VERSION_JSON, _json).decode("utf-8", "replace"))
        major_minor(v)
        w = parse_nvcc_version(mutate_bytes(rng, NVCC.encode()).decode("utf-8", "replace"))
        major_minor(w)

    def train_config(self, rng: random.Random) -> None:
        import yaml

        from envdoctor.training.config import load
        seed = yaml.safe_load((REPO / "train" / "configs" / "demo.yaml").read_text())
        path = self.folder / "config.yaml"
        path.write_bytes(structured(rng, seed, _yaml))
        cfg = load(path)
        assert all(isinstance(e, str) for e in cfg.errors)


KINDS = ("recipe", "report", "safetensors", "nvidia_smi", "nvcc", "train_config")


def run(kinds, cases: int, seed: int, show: int = 2, out=sys.stdout) -> dict[str, int]:
    """{kind: tracebacks} over `cases` inputs of each kind."""
    counts = {}
    with tempfile.TemporaryDirectory(prefix="envdoctor-fuzz-") as tmp:
        case = Case(Path(tmp))
        for kind in kinds:
            fn, bad, shown = getattr(case, kind), 0, 0
            for i in range(cases):
                rng = random.Random(f"{seed}:{kind}:{i}")
                try:
                    fn(rng)
                except Exception:  # noqa: BLE001 - that is what we count
                    bad += 1
                    if shown < show:
                        shown += 1
                        out.write(f"--- {kind} case {i} (seed {seed}):\n{traceback.format_exc(limit=-4)}\n")
            counts[kind] = bad
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="inputs per kind (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown kinds {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
    counts = run(kinds, args.cases, args.seed)
    print(f"{'kind':<14}{'cases':>7}{'tracebacks':>12}")
    for kind, bad in counts.items():
        print(f"{kind:<14}{args.cases:>7}{bad:>12}")
    print(f"total tracebacks: {sum(counts.values())}")
    return 1 if any(counts.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
