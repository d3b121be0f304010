"""`envdoctor train/merge --backend axolotl` against a real axolotl, on the CPU: opt-in, because axolotl with
its dependencies is a 3.4 GB install (4.3 GB with the CPU torch; about 2 minutes from PyPI). Point
ENVDOCTOR_AXOLOTL_PYTHON at the python of an environment made with
    python -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install --constraint <(echo torch==2.13.0) axolotl
The base model is a tiny random Llama with a BPE learned from the demo corpus, built in that environment:
nothing is downloaded, and axolotl's telemetry is off."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envdoctor.assets import asset

pytestmark = pytest.mark.slow
TARGET = os.environ.get("ENVDOCTOR_AXOLOTL_PYTHON")
if not TARGET:
    pytest.skip("set ENVDOCTOR_AXOLOTL_PYTHON to a python with axolotl installed", allow_module_level=True)

BUILD_BASE = """
import sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
texts = [p.read_text() for p in sorted(corpus.iterdir()) if p.is_file()]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
fast.save_pretrained(out)
LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, vocab_size=len(fast),
                             pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
                             eos_token_id=fast.eos_token_id)).save_pretrained(out)
"""


def corpus_jsonl(path: Path) -> None:
    """The demo corpus as axolotl's completion records: one {"text": …} a paragraph."""
    corpus = asset("train", "demo_corpus")
    rows = [json.loads(line) for line in (corpus / "garden-diary.jsonl").read_text().splitlines() if line.strip()]
    for name in ("harbour-notes.txt", "workshop-letters.txt"):
        rows += [{"text": p} for p in (corpus / name).read_text().split("\n\n") if p.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def envdoctor(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "envdoctor", *args, "--backend", "axolotl", "--python", TARGET],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_real_axolotl_refuses_its_cuda_kernels_on_a_cpu_then_trains_and_merges_without_them(tmp_path):
    env = {**os.environ, "NO_COLOR": "1", "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "TRITON_CACHE_DIR": str(tmp_path / "triton"),
           "TMPDIR": str(tmp_path / "tmp")}  # accelerate launch leaves a torchelastic_* folder in the temp folder
    env.pop("VIRTUAL_ENV", None)
    (tmp_path / "tmp").mkdir()
    subprocess.run([TARGET, "-c", BUILD_BASE, str(asset("train", "demo_corpus")), str(tmp_path / "tiny-llama")],
                   check=True, env=env, capture_output=True, timeout=300)
    corpus_jsonl(tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    cfg = {"base_model": str(tmp_path / "tiny-llama"), "output_dir": str(out),
           "datasets": [{"path": str(tmp_path / "corpus.jsonl"), "ds_type": "json", "type": "completion"}],
           "dataset_prepared_path": str(tmp_path / "prepared"), "sequence_len": 64, "val_set_size": 0.0,
           "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
           "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "learning_rate": 0.003, "num_epochs": 1, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
           "optimizer": "adamw_torch", "bf16": False, "fp16": False, "seed": 7}
    config = tmp_path / "axolotl.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # Measured: axolotl turns its Triton LoRA kernels on, fails with "Torch not compiled with CUDA enabled",
    # then hangs. The preflight must stop it first.
    res = envdoctor("train", str(config), cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[✗] config.axolotl_device" in res.stdout and not out.exists()

    config.write_text(yaml.safe_dump(dict(cfg, lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,
                                          lora_embedding_kernel=False)))
    res = envdoctor("train", str(config), cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "config.axolotl_device ok" in res.stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()

    res = envdoctor("merge", str(config), cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "config.json").is_file()
