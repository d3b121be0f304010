"""The memory calibration's own guards (bench/calibrate_memory.py, bench/hf_loop.py, bench/fit_memory.py), on a
CPU with a tiny random Llama quantized by bitsandbytes: a reused base is put back as it was loaded after each
point (peft's unload() does not), nothing of a point stays alive, checkpointing is what the point asks for, and
contaminated points are flagged where they are measured and refused where they are fitted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")

sys.path.insert(0, str(BENCH))
import calibrate_memory as C  # noqa: E402
import fit_memory as F  # noqa: E402
import hf_loop  # noqa: E402

# Small enough for a few seconds a point on a busy 2-core CPU.
TINY_GRID = [(32, 1, 8, False, True, "fit"), (32, 1, 4, True, False, "holdout")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return hf_loop.save_random_model("tiny", tmp_path_factory.mktemp("models") / "tiny", "cpu")


def _cfg(seq, r, mts, ckpt):
    return C.point_config(dict(seq=seq, micro=1, r=r, modules_to_save=mts, gradient_checkpointing=ckpt))


def test_peft_unload_leaves_the_trained_modules_to_save_copies_on_the_base(tiny_folder):
    """The cause, pinned: after a modules_to_save point peft's unload() returns a base whose embed_tokens and
    lm_head are the trained copies (trainable), not the modules that were loaded; and transformers' Trainer
    registers every Embedding with bitsandbytes' process-wide GlobalOptimManager, which keeps it for ever."""
    from bitsandbytes.optim import GlobalOptimManager
    base = hf_loop.load_base(tiny_folder, "hf", _cfg(32, 8, True, True), "cpu")
    embed, head = base.get_input_embeddings(), base.lm_head
    cfg = _cfg(32, 8, True, True)
    t = hf_loop.build_peft_model(base, cfg, "hf-trainer")
    hf_loop.run_trainer(t, cfg, 1, "cpu", 512)
    assert GlobalOptimManager.get_instance().module_weight_config_triple  # the Embeddings, kept alive there
    unloaded = t.model.unload()
    assert unloaded.get_input_embeddings() is not embed and unloaded.lm_head is not head
    assert unloaded.lm_head.weight.requires_grad
    hf_loop.clear_bnb_overrides()
    assert not GlobalOptimManager.get_instance().module_weight_config_triple


@pytest.mark.parametrize("family,engines", [("hf", ["hf-loop", "hf-trainer"]), ("runner", ["runner"])])
def test_release_puts_the_reused_base_back_and_frees_every_point(tiny_folder, family, engines):
    """Checkpointing on, off, on again with and without modules_to_save on one base: at each build the decoder
    layers checkpoint exactly when the point asks; after each release the base is the one loaded (same
    modules and parameters, dtypes, requires_grad, hooks) and the live tensors are the base's, byte for byte."""
    base = hf_loop.load_base(tiny_folder, family, _cfg(32, 8, False, True), "cpu")
    snapshot = hf_loop.BaseSnapshot(base)
    hf_loop._reset("cpu")
    live = hf_loop.live_tensors()
    repaired = []
    for ckpt, mts in [(True, False), (False, True), (True, True)]:
        for engine in engines:
            cfg = _cfg(32, 4, mts, ckpt)
            t = hf_loop.build_peft_model(base, cfg, engine)
            assert hf_loop.checkpointing_on(t.model) is ckpt, (engine, ckpt, mts)
            run = hf_loop.run_trainer if engine == "hf-trainer" else hf_loop.run_steps
            run(t, cfg, 1, "cpu", 512)
            assert hf_loop.checkpointing_on(t.model) is ckpt, (engine, ckpt, mts)
            base = hf_loop.release(t, engine, snapshot)
            repaired += t.repairs
            assert snapshot.differences(base) == []
            hf_loop._reset("cpu")
            assert hf_loop.live_tensors() == live, (engine, ckpt, mts)
    assert any("lm_head: the original module put back" in r for r in repaired)


def test_a_failed_runner_point_with_modules_to_save_in_place_leaves_no_gradient_on_the_base(tiny_folder,
                                                                                          monkeypatch):
    """On a GPU (8-bit AdamW) the runner trains the bf16 base's embed_tokens and lm_head in place: their
    gradients are the reused BASE's parameters' .grad, not a copy's freed with the point. A point that fails
    after a backward (out of memory in the optimizer step or a later micro batch: the grid has such points)
    must not leave them there: 2 GiB for an 8B shape, and every later point of the block refused by its
    baseline."""
    from envdoctor_runner import modeling
    from envdoctor_runner.saved_modules import adopted
    monkeypatch.setattr(modeling, "eight_bit_optimizer", lambda cfg, device: True)  # in place, as on a GPU
    base = hf_loop.load_base(tiny_folder, "runner", _cfg(32, 8, True, True), "cpu")
    snapshot = hf_loop.BaseSnapshot(base)
    hf_loop._reset("cpu")
    live = hf_loop.live_tensors()
    t = hf_loop.build_peft_model(base, _cfg(32, 4, True, True), "runner")
    assert len(adopted(t.model)) == 2
    t.loss(torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))).backward()
    base = C._recover(t, base, snapshot, "cpu")  # what measure() does when the step then fails
    assert base is not None and snapshot.differences(base) == []
    # a .grad has no Python object until it is read: live_tensors() (gc's objects) does not see it
    assert [n for n, p in base.named_parameters() if p.grad is not None] == []
    assert hf_loop.live_tensors() == live


def _run(tmp_path, tiny_folder, monkeypatch, *extra):
    monkeypatch.setitem(C.GRID, "tiny", TINY_GRID)
    out = tmp_path / "cal.jsonl"
    code = C.main(["--device", "cpu", "--shapes", "tiny", "--out", str(out), "--model-dir", str(tiny_folder.parent),
                   "--steps", "1", *extra])
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_clean_run_records_the_guards_and_a_clean_verdict_per_block(tmp_path, tiny_folder, monkeypatch):
    lines = _run(tmp_path, tiny_folder, monkeypatch, "--engines", "hf-loop,runner")
    header, builds = lines[0], [x for x in lines if x["kind"] == "build"]
    assert header["baseline_tolerance"] == 0.01 and header["repeat_tolerance"] == 0.02
    points = [x for x in lines if x["kind"] == "point"]
    assert len(points) == 2 * (len(TINY_GRID) + 1)
    for p in points:
        assert p["contaminated"] == [] and not p.get("error")
        assert p["allocated_before"] == p["base_allocated"]
        assert p["checkpointing_on"] is p["gradient_checkpointing"] is p["checkpointing_at_build"]
    assert {b["family"] for b in builds} == {"hf", "runner"}
    repeats = [p for p in points if p["role"] == "repeat"]
    assert [p["repeat_of"] for p in repeats] == ["tiny/hf-loop/32x1/r8/no-mts/ckpt", "tiny/runner/32x1/r8/no-mts/ckpt"]
    blocks = [x for x in lines if x["kind"] == "block"]
    assert [(b["engine"], b["contaminated"]) for b in blocks] == [("hf-loop", False), ("runner", False)]


def test_a_leak_is_refused_and_its_block_marked_and_not_fitted(tmp_path, tiny_folder, monkeypatch, capsys):
    """A release that keeps something of its point alive (what the 2026-11-30 H200 run did): the next
    point's baseline is above the built base's, so it is refused, the block stops and is contaminated, and
    fit_memory leaves its lines out, saying why."""
    kept = []
    real = hf_loop.release

    def leaky(t, engine, snapshot=None):
        kept.append(torch.ones(4096))  # 16 KiB of a "graph" still referenced: > 1 % of the tiny base
        return real(t, engine, snapshot)
    monkeypatch.setattr(hf_loop, "release", leaky)
    lines = _run(tmp_path, tiny_folder, monkeypatch, "--engines", "hf-loop")
    points = [x for x in lines if x["kind"] == "point"]
    assert points[0]["contaminated"] == []
    assert points[1]["refused"] and "above the built base's" in points[1]["contaminated"][0]
    assert len(points) == 2  # the block stopped; its repeat is not measured on a dirty base
    (block,) = [x for x in lines if x["kind"] == "block"]
    assert block["contaminated"] and "stopped" in block
    ignored = []
    # CPU peaks are 0: give the lines peaks as a GPU would, to go through fit_memory's filter
    data = tmp_path / "gpu-like.jsonl"
    data.write_text("\n".join(json.dumps(dict(x, peak_allocated=1e9, peak_reserved=1.1e9) if x["kind"] == "point"
                                         else x) for x in lines) + "\n")
    assert F.load_rows([str(data)], ignored=ignored) == []
    assert any("contaminated: baseline" in w for w in ignored)
    assert any("block tiny/hf-loop contaminated: no repeat" in w for w in ignored)


def test_checkpointing_not_as_asked_is_flagged(tmp_path, tiny_folder, monkeypatch):
    """The state a reused base can carry over: a point that asks for no checkpointing and gets it anyway (or
    the other way round) is flagged with what was observed on the decoder layers."""
    real = hf_loop.build_peft_model

    def sticky(base, cfg, engine, reentrant=False):
        t = real(base, cfg, engine, reentrant)
        for m in hf_loop.decoder_layers(t.model):
            m.gradient_checkpointing = True
        return t
    monkeypatch.setattr(hf_loop, "build_peft_model", sticky)
    lines = _run(tmp_path, tiny_folder, monkeypatch, "--engines", "runner")
    (off,) = [x for x in lines if x["kind"] == "point" and not x["gradient_checkpointing"]]
    assert off["checkpointing_on"] is True
    assert "checkpointing_at_build observed True, the point asks for False" in off["contaminated"][0]


def _line(**kw):
    return json.dumps(dict(kind="point", family="hf", micro=1, r=64, modules_to_save=False,
                           gradient_checkpointing=True, peak_allocated=2e10, peak_reserved=2.2e10,
                           allocated_before=7.8e9, base_allocated=7.8e9, contaminated=[], **kw))


def test_fit_memory_takes_only_clean_blocks_and_says_why(tmp_path, capsys):
    lines = [json.dumps(dict(kind="header", device="cuda", **C.guards_header()))]
    for engine in ("hf-loop", "hf-trainer", "runner"):
        lines += [_line(id=f"{engine}/a", shape="llama-3.1-8b", engine=engine, seq=2048, role="holdout"),
                  _line(id=f"{engine}/b", shape="llama-3.1-8b", engine=engine, seq=1024, role="fit")]
    lines[1] = lines[1].replace('"contaminated": []', '"contaminated": ["checkpointing_on observed False"]')
    lines.append(_line(id="hf-loop/a/repeat", shape="llama-3.1-8b", engine="hf-loop", seq=2048, role="repeat",
                       repeat_of="hf-loop/a"))
    lines.append(json.dumps(dict(kind="block", shape="llama-3.1-8b", engine="hf-loop", contaminated=False, reasons=[])))
    lines.append(json.dumps(dict(kind="block", shape="llama-3.1-8b", engine="hf-trainer", contaminated=True,
                                 reasons=["repeat peak_allocated 2.1e10 B vs first 2e10 B (+5.0%; allowed ±2%)"])))
    data = tmp_path / "cal.jsonl"
    data.write_text("\n".join(lines) + "\n")
    ignored = []
    rows = F.load_rows([str(data)], ignored=ignored)
    assert [r["id"] for r in rows] == ["hf-loop/b"]  # the runner's block has no verdict: no repeat ran
    text = "\n".join(ignored)
    assert "hf-loop/a: contaminated: checkpointing_on observed False" in text
    assert "block llama-3.1-8b/hf-trainer contaminated: repeat peak_allocated" in text
    assert "runner/a: its block has no verdict" in text
    F.main([str(data), "--no-fit"])
    out = capsys.readouterr().out
    assert out.startswith("ignored 5 measured point(s):")


def test_the_unusable_h200_lines_are_refused_whole():
    files = sorted((BENCH / "results" / "2026-11-30-h200-calibration-unusable").glob("*.jsonl"))
    assert files
    ignored = []
    assert F.load_rows([str(f) for f in files], ignored=ignored) == []
    assert len(ignored) == 71 and all("measured without the guards" in w for w in ignored)


def test_a_random_model_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """Two processes building the same shape at once (two GPUs of one box) must never load each other's
    half-written folder: save_pretrained writes config.json first, which is what a reader checks. On
    2026-11-30 one of two calibration blocks failed so. A save that dies midway leaves no folder under the
    model's name; one that ends puts the whole folder there and nothing beside it."""
    from transformers import LlamaForCausalLM
    real = LlamaForCausalLM.save_pretrained

    def dies_midway(self, folder, **kw):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "config.json").write_text("{}")
        raise OSError("killed while writing the shards")
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", dies_midway)
    with pytest.raises(OSError):
        hf_loop.save_random_model("tiny", tmp_path / "tiny", "cpu")
    assert list(tmp_path.iterdir()) == []  # neither the model's name nor the attempt's staging folder
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", real)
    folder = hf_loop.save_random_model("tiny", tmp_path / "tiny", "cpu")
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_a_capped_point_without_an_estimate_is_an_error_not_an_uncapped_run(tmp_path, tiny_folder, monkeypatch):
    """--cap-at-estimate: a point the estimator cannot estimate must not run uncapped and be recorded as a
    capped run that fitted (its cap_bytes null): it is that point's error."""
    monkeypatch.setattr(C, "predict", lambda *a: dict(estimate_error="KeyError: 'vocab_size'"))
    lines = _run(tmp_path, tiny_folder, monkeypatch, "--engines", "hf-loop", "--cap-at-estimate")
    points = [x for x in lines if x["kind"] == "point"]
    assert points and all(p["role"] == "capped" for p in points)
    assert all((p.get("error") or "").startswith("RuntimeError: no estimate to cap at") for p in points), points


def test_grids_joined_by_commas_measure_a_shared_point_once_with_the_first_grids_role():
    """--grid 8,8rest (GRID8_REST is GRID8's 8B points but the first): one list per shape, each point once; an
    unknown name is refused by argparse with the names it knows."""
    import argparse
    both = C.joined("8,8rest")
    assert both["llama-3.1-8b"] == C.GRID8["llama-3.1-8b"] and both["tiny"] == C.GRID8["tiny"]
    fits = C.joined("1,2")
    assert len(fits["llama-3.1-8b"]) == len(C.GRID["llama-3.1-8b"]) + len(
        [g for g in C.GRID2["llama-3.1-8b"] if g[:5] not in {p[:5] for p in C.GRID["llama-3.1-8b"]}])
    assert C.grid_names("1,6b,accum") == "1,6b,accum"
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown grid\(s\) \['12'\]"):
        C.grid_names("11,12")
