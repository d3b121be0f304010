"""Datasets and base models, checked before a run: the runner's own reader (train/envdoctor_runner/
corpus.py, basemodel.py) on every bad input outside testers found, and the same rules in envdoctor's
preflight (config.datasets, config.base_model) through `envdoctor train --dry-run`. Each bad input is an
error naming its file (and line, offset or key) with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from envdoctor.assets import asset
from envdoctor.context import Context
from envdoctor.facts.train_config import probe_train_config
from envdoctor.facts.train_inputs import probe_base_model
from envdoctor.checks.train_inputs import base_model as base_model_check
from envdoctor.system import System
from envdoctor.training.runner_modules import absolute_inputs, runner_module

sys.path.insert(0, str(asset("train")))
from envdoctor_runner import basemodel, corpus, data  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "HF_HUB_OFFLINE")}
ENV["NO_COLOR"] = "1"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"


def read(tmp_path, *entries):
    return corpus.read_corpus(list(entries), tmp_path)


# --- the runner's reader --------------------------------------------------------------------------------

def test_an_empty_folder_or_file_is_an_error_and_the_split_never_goes_negative(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text(" \n\n")
    assert read(tmp_path, "empty").problems == [
        f"{tmp_path / 'empty'}: no files to read in this folder; the runner reads {corpus.READS}"]
    assert read(tmp_path, "blank.txt").problems == [f"{tmp_path / 'blank.txt'}: empty (no text)"]
    with pytest.raises(corpus.CorpusError):
        data.read_documents(["empty"], tmp_path)
    # "1 train, -1 val" came from this arithmetic with no chunks at all.
    assert corpus.split_sizes(0, 0.1) == (0, 0) and corpus.split_sizes(1, 0.1) == (1, 0)
    assert corpus.split_sizes(10, 0.1) == (9, 1) and corpus.split_sizes(10, 3) == (7, 3)


def test_binary_and_non_utf8_files_are_errors_with_offset_and_line_whatever_the_suffix(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(PNG)
    (tmp_path / "b.txt").write_bytes("first line\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (tmp_path / "README").write_bytes(b"text\nmore\n\x00\x01\x02")
    (tmp_path / "c.md").write_bytes("\ufeffa BOM is fine: d\u00e9j\u00e0 vu".encode("utf-8"))
    got = read(tmp_path, "a.jsonl", "b.txt", "README", "c.md")
    assert got.problems == [
        f"{tmp_path / 'a.jsonl'}: binary data, not UTF-8 text (a NUL byte at offset 8, line 3); UTF-16 text reads "
        "like this too: save it as UTF-8",
        f"{tmp_path / 'b.txt'}: not UTF-8 text: byte 0xe9 at offset 14 (line 2): invalid continuation byte; save "
        "the file as UTF-8",
        f"{tmp_path / 'README'}: binary data, not UTF-8 text (a NUL byte at offset 10, line 3); UTF-16 text reads "
        "like this too: save it as UTF-8"]
    assert got.documents == ["a BOM is fine: d\u00e9j\u00e0 vu"]


def test_unsupported_suffixes_named_are_errors_and_in_a_folder_warnings_naming_them(tmp_path):
    for name in ("rows.json", "rows.csv", "rows.parquet"):
        (tmp_path / name).write_text("[]")
    got = read(tmp_path, "rows.json", "rows.csv", "rows.parquet")
    assert got.problems == [f"{tmp_path / n}: {Path(n).suffix} files are not read (convert it to .jsonl, one "
                            f"{{\"text\": …}} object a line); the runner reads {corpus.READS}"
                            for n in ("rows.json", "rows.csv", "rows.parquet")]
    folder = tmp_path / "corpus"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "index").write_bytes(PNG)  # tooling, not text: skipped without a word
    (folder / "notes.txt").write_text("some prose to learn from")
    (folder / "data.csv").write_text("text\nhello\n")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4")
    got = read(tmp_path, "corpus")
    assert got.problems == [] and got.documents == ["some prose to learn from"]
    assert got.warnings == [f"{folder}: 2 file(s) skipped, not a suffix the runner reads ({corpus.READS}): "
                            f"{folder / 'data.csv'}, {folder / 'scan.pdf'}"]


def test_jsonl_rows_that_are_not_objects_lack_text_or_are_not_json_are_errors_with_file_and_line(tmp_path):
    rows = ['{"text": "good"}', '', '["a", "list"]', '{"body": "x", "id": 1}', '{"text": ', '{"text": 42}',
            '{"messages": [{"role": "user", "content": "hi"}]}']
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    f = tmp_path / "d.jsonl"
    assert read(tmp_path, "d.jsonl").problems == [
        f"{f}:3: expected a JSON object with a \"text\" field, got list",
        f"{f}:4: no \"text\" (or \"content\") field; its keys: body, id",
        f"{f}:5: not valid JSON (Expecting value at column 10)",
        f"{f}:6: \"text\" must be a string, got int",
        f"{f}:7: no \"text\" (or \"content\") field; its keys: messages (chat rows are not read: this runner "
        "trains on plain text)"]
    (tmp_path / "many.jsonl").write_text("[1]\n" * 9)
    got = read(tmp_path, "many.jsonl").problems
    assert len(got) == 6 and got[-1] == "  … and 4 more like these in the same file"


def test_a_dataset_path_is_relative_to_the_config_folder_never_to_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "project" / "corpus").mkdir(parents=True)
    (tmp_path / "project" / "corpus" / "a.txt").write_text("hello")
    (tmp_path / "elsewhere" / "corpus").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert corpus.dataset_path("corpus", tmp_path / "project") == tmp_path / "project" / "corpus"
    assert corpus.dataset_path(str(tmp_path / "x"), "/nowhere") == tmp_path / "x"
    missing = read(tmp_path / "elsewhere" / "sub", "corpus").problems[0]
    assert missing == (f"{tmp_path / 'elsewhere' / 'sub' / 'corpus'}: does not exist ('corpus', relative to the "
                       f"config's folder {tmp_path / 'elsewhere' / 'sub'})")
    assert absolute_inputs({"datasets": [{"path": "corpus", "type": "text"}], "base_model": "org/name"},
                           tmp_path / "project") == {"datasets": [{"path": str(tmp_path / "project" / "corpus"),
                                                                   "type": "text"}]}


class ByteTokenizer:
    """One token a UTF-8 byte, EOS = 256: the most tokens a byte-level tokenizer can make of a text."""
    eos_token_id = 256

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode("utf-8"))}


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=8),
       length=st.integers(8, 80), overlap=st.integers(0, 20), val=st.sampled_from([0, 0.1, 0.5, 2]),
       packing=st.booleans())
def test_the_preflight_bound_is_never_below_what_prepare_makes(docs, length, overlap, val, packing):
    overlap = min(overlap, length - 1)
    docs = [d for d in (data.clean(d) for d in docs) if d]
    train, _, stats = data.prepare(docs, ByteTokenizer(), length, overlap, val, 0, packing=packing)
    assert stats["train"] == len(train) >= 0
    bound = corpus.max_train_chunks([len(d.encode()) for d in docs], length, overlap, val, packing)
    assert len(train) <= bound
    for n in (0, 1, 15, 16, 17, length, length + 1, 3 * length + 5):
        assert corpus.chunk_count(n, length, overlap) == len(data.chunk(list(range(n)), length, overlap))


def test_runner_modules_need_only_the_standard_library():
    # -I -S: no site-packages, no user paths: an import of anything else fails here.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import corpus, basemodel; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'huggingface_hub')))")
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(asset("train", "envdoctor_runner"))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr
    assert runner_module("corpus").READS == corpus.READS  # the preflight reads the same file


# --- base models ----------------------------------------------------------------------------------------

def cached_model(cache: Path, name: str, files: dict[str, bytes], dangling: tuple[str, ...] = ()) -> Path:
    """huggingface_hub's cache layout: blobs by hash, a snapshot of symlinks, refs/main naming it."""
    repo = cache / f"models--{name.replace('/', '--')}"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for i, (fname, content) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{i}"
        if fname not in dangling:  # a blob deleted (or never finished): the link dangles
            blob.write_bytes(content)
        (snap / fname).symlink_to(os.path.relpath(blob, snap))
    return snap


def base_facts(tmp_path, cfg: dict, env: dict, download: bool = False):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    ctx = Context("/x", "t", train_config=str(p), train_download=download)
    return probe_base_model(System(env=env), ctx, probe_train_config(System(env=env), ctx))


def test_a_hub_id_is_found_in_the_cache_and_missing_shards_or_tokenizer_files_are_named(tmp_path):
    cache = tmp_path / "hub"
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    snap = cached_model(cache, "org/tiny", {"config.json": b"{}", "model.safetensors.index.json":
                                            json.dumps(index).encode(), "model-00001-of-00002.safetensors": b"x",
                                            "model-00002-of-00002.safetensors": b"x", "tokenizer.json": b"{}",
                                            "tokenizer_config.json": b"{}"},
                        dangling=("model-00002-of-00002.safetensors",))
    facts = base_facts(tmp_path, {"base_model": "org/tiny"}, {"HF_HOME": str(tmp_path / "nothere"),
                                                               "HF_HUB_CACHE": str(cache)})
    assert facts.kind == "cache" and facts.path == str(snap)
    assert facts.problems == [f"base_model: {snap} lacks 1 of the 2 shards model.safetensors.index.json lists: "
                              "model-00002-of-00002.safetensors (an interrupted download?). hf download org/tiny "
                              "(again: it completes what is missing)"]
    (cache / "models--org--tiny" / "blobs" / "blob3").write_bytes(b"x")  # the download completed
    facts = base_facts(tmp_path, {"base_model": "org/tiny"}, {"HF_HOME": str(tmp_path)})  # HF_HOME/hub
    assert facts.kind == "cache" and facts.problems == [] and base_model_check(facts).status.value == "ok"
    facts = base_facts(tmp_path, {"base_model": "org/tiny"}, {"HF_HOME": str(tmp_path / "nothere")})
    assert facts.kind == "not cached"
    assert facts.path == str(tmp_path / "nothere" / "hub" / "models--org--tiny" / "snapshots")


def test_an_uncached_hub_id_says_how_to_get_it_and_download_lets_the_run_fetch_it(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    facts = base_facts(tmp_path, {"base_model": "meta-llama/Llama-3.1-8B"}, env)
    result = base_model_check(facts)
    assert result.status.value == "fail" and "hf download meta-llama/Llama-3.1-8B" in result.details[0]
    assert "hf auth login" in result.details[0] and "--download" in result.details[0]
    snapshots = tmp_path / "empty-cache" / "models--meta-llama--Llama-3.1-8B" / "snapshots"
    assert f"looked in {snapshots}" in result.details[0]
    assert "huggingface-cli download" not in result.details[0]
    result = base_model_check(base_facts(tmp_path, {"base_model": "meta-llama/Llama-3.1-8B"}, env, download=True))
    assert result.status.value == "warn" and "the run will download it" in result.message


def test_a_local_folder_with_only_config_json_names_the_missing_tokenizer_and_weight_files(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    facts = base_facts(tmp_path, {"base_model": "models/mine"}, {})
    folder = tmp_path / "models" / "mine"
    assert facts.kind == "folder" and facts.problems == [
        f"base_model: {folder} lacks weights: none of model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json; tokenizer: none of tokenizer.json, tokenizer.model, "
        "vocab.json + merges.txt, vocab.txt; tokenizer_config.json (it names the special tokens, eos and pad, that "
        "the runner needs). copy them from the model's source folder or its Hugging Face repository"]
    facts = base_facts(tmp_path, {"base_model": "./models/other"}, {})
    assert facts.kind == "no folder" and facts.problems[0].startswith(
        f"base_model: {tmp_path / 'models' / 'other'}: no such folder")
    # model_config + tokenizer: train-bpe (the demo) reads nothing; model_config alone still needs a tokenizer.
    demo = {"base_model": "x", "model_config": {"hidden_size": 8}, "tokenizer": "train-bpe"}
    assert base_model_check(base_facts(tmp_path, demo, {})).status.value == "skip"
    assert basemodel.missing_files(folder, weights=False, tokenizer=True)[0].startswith("tokenizer: none of")


def test_merge_hint_names_the_current_hub_cli(tmp_path):
    from envdoctor.commands.merge import resolve_base
    from envdoctor.errors import UsageError
    with pytest.raises(UsageError, match=r"hf download org/gone; gated models: hf auth login first"):
        resolve_base(tmp_path, {"base_model": "org/gone"}, None, System(env={"HF_HUB_CACHE": str(tmp_path)}))


# --- through `envdoctor train` (the preflight) and train/qlora.py (the runner) --------------------------

def demo_config(tmp_path, drop=(), **changes) -> Path:
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"), **changes)
    for key in drop:
        del cfg[key]
    p = tmp_path / "cfg" / "demo.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(cfg))
    return p


def train(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, "--dry-run",
                           *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env or ENV,
                          timeout=300)


@pytest.mark.parametrize("setup, expect", [
    (lambda d: (d / "data").mkdir(), "data: no files to read in this folder"),
    (lambda d: (d / "data").write_bytes(PNG), "data: binary data, not UTF-8 text (a NUL byte at offset 8, line 3)"),
    (lambda d: (d / "data.jsonl").write_text('{"text": "a"}\n[1, 2]\n'), "data.jsonl:2: expected a JSON object"),
    (lambda d: (d / "data.parquet").write_bytes(b"PAR1"), "data.parquet: .parquet files are not read"),
])
def test_the_preflight_refuses_bad_datasets_naming_file_and_line(tmp_path, setup, expect):
    config = demo_config(tmp_path, datasets=[{"path": "PLACEHOLDER"}])
    setup(config.parent)
    name = next(p.name for p in config.parent.iterdir() if p.name.startswith("data"))
    config.write_text(config.read_text().replace("PLACEHOLDER", name))
    res = train(tmp_path, config)
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    assert res.returncode == 1 and "config.datasets fail" in res.stdout and expect in res.stdout, out
    assert not (tmp_path / "run" / "config.resolved.json").exists()


def test_the_preflight_refuses_too_little_text_for_one_step(tmp_path):
    config = demo_config(tmp_path, datasets=[{"path": "one.txt"}], micro_batch_size=4, gradient_accumulation_steps=2)
    (config.parent / "one.txt").write_text("only a few words of text here")
    res = train(tmp_path, config)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "too little text for one optimizer step: 1 file(s), 1 document(s), 29 bytes of text" in res.stdout
    assert ("at most 1 training chunk(s) of ≤64 tokens, even counting a token a byte; one optimizer step needs 8 "
            "(micro_batch_size × gradient_accumulation_steps)") in res.stdout


def test_the_preflight_refuses_an_uncached_base_model_without_a_traceback(tmp_path):
    config = demo_config(tmp_path, datasets=[{"path": str(asset("train", "demo_corpus"))}],
                         base_model="meta-llama/Llama-3.1-8B", drop=("tokenizer", "model_config"))
    res = train(tmp_path, config, env={**ENV, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "config.base_model fail" in res.stdout and "hf download meta-llama/Llama-3.1-8B" in res.stdout


def run_runner(tmp_path, config: Path, *extra):
    """envdoctor train --dry-run --force: past the preflight, so the runner's own checks answer."""
    return train(tmp_path, config, "--force", *extra)


def test_the_runner_refuses_bad_datasets_itself_and_resolves_paths_against_the_config(tmp_path):
    pytest.importorskip("transformers")
    config = demo_config(tmp_path, datasets=[{"path": "rows.jsonl"}])
    (config.parent / "rows.jsonl").write_text('{"text": "fine"}\n{"body": 1}\n')
    res = run_runner(tmp_path, config)
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert f"error: the datasets cannot be used:\n  {config.parent / 'rows.jsonl'}:2: no \"text\"" in res.stdout
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert resolved["datasets"] == [{"path": str(config.parent / "rows.jsonl")}]


def test_the_runner_counts_chunks_exactly_and_refuses_too_few_for_one_step(tmp_path):
    pytest.importorskip("transformers")
    # The demo corpus makes 31 training chunks of 64 tokens: enough by the preflight's byte bound for 4 × 8,
    # not once tokenized.
    config = demo_config(tmp_path, datasets=[{"path": "../corpus"}], gradient_accumulation_steps=8)
    (tmp_path / "corpus").symlink_to(asset("train", "demo_corpus"))
    res = train(tmp_path, config)
    assert "config.datasets ok" in res.stdout, res.stdout
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert ("error: the datasets make 34 chunk(s) of ≤64 tokens from 8 document(s): 31 to train on and 3 for "
            "validation; one optimizer step needs 32 (micro_batch_size 4 × gradient_accumulation_steps 8)"
            ) in res.stdout


def test_the_runner_names_missing_tokenizer_files_of_a_local_base_folder(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "cfg" / "base").mkdir(parents=True)
    (tmp_path / "cfg" / "base" / "config.json").write_text('{"model_type": "llama"}')
    config = demo_config(tmp_path, datasets=[{"path": str(asset("train", "demo_corpus"))}], base_model="base",
                         drop=("tokenizer",))
    res = run_runner(tmp_path, config)
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert (f"error: base_model: {tmp_path / 'cfg' / 'base'} lacks tokenizer: none of tokenizer.json, "
            "tokenizer.model, vocab.json + merges.txt, vocab.txt; tokenizer_config.json") in res.stdout
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert resolved["base_model"] == str(tmp_path / "cfg" / "base")


def test_runs_are_offline_unless_download_is_asked_for(tmp_path):
    """A stand-in interpreter: the real one for the preflight's probes, a recorder for the runner."""
    record = tmp_path / "runner-env"
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\ncase \"$*\" in\n  *qlora.py*) echo \"${{HF_HUB_OFFLINE-unset}}\" >> {record}; exit 0;;\n"
                  f"esac\nexec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    config = demo_config(tmp_path, datasets=[{"path": str(asset("train", "demo_corpus"))}])
    for extra in ((), ("--download",)):
        res = subprocess.run([sys.executable, "-m", "envdoctor", "train", "--python", str(py), str(config), *extra],
                             capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    assert record.read_text().split() == ["1", "unset"]
