"""modules_to_save trained in place (envdoctor_runner/saved_modules.py) and the decoder under bf16 autocast
(envdoctor_runner/loss.py), on real tiny Llama models: what trains, what is stored once, that training
matches peft's copy-based path, that the adapter saves and reloads, and where the copies must stay."""

import sys

import pytest

from envdoctor.assets import asset

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
sys.path.insert(0, str(asset("train")))
from envdoctor_runner.loss import CausalLMLoss  # noqa: E402
from envdoctor_runner.modeling import attach_lora  # noqa: E402
from envdoctor_runner.saved_modules import adopted  # noqa: E402

VOCAB = 97


def tiny(tied=False, dtype=torch.float32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).to(dtype)


def run_cfg(**kw):
    cfg = dict(gradient_checkpointing=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_linear=True,
               lora_target_modules=None, lora_modules_to_save=["embed_tokens", "lm_head"],
               optimizer="adamw_torch")
    cfg.update(kw)
    return cfg


def storages(model):
    """Distinct parameter storages → bytes: what the model holds."""
    seen = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


def train(model, steps=3, dtype=None, seed=0):
    wrapped = CausalLMLoss(model, chunk=16, dtype=dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 24), generator=g)
        loss = wrapped(ids, torch.ones_like(ids), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_an_untied_model_trains_its_saved_modules_in_place_and_stores_each_weight_once():
    plain = tiny()
    base_bytes = storages(plain)
    model = attach_lora(plain, run_cfg(), torch.float32)
    shared = adopted(model)
    assert len(shared) == 2  # embed_tokens and lm_head: the trained copy IS the original's parameter
    assert all(p.requires_grad and p.dtype == torch.float32 for p in shared)
    lora = sum(p.numel() * 4 for n, p in model.named_parameters() if "lora_" in n)
    assert storages(model) == base_bytes + lora  # no second embedding / lm_head anywhere
    embed = model.get_base_model().model.embed_tokens
    before = embed.modules_to_save["default"].weight.detach().clone()
    train(model)
    assert not torch.equal(before, embed.modules_to_save["default"].weight.detach())


def test_training_in_place_matches_peft_copies_step_for_step():
    """fsdp=True keeps peft's copies (fp32, beside frozen originals): the same losses to fp32 rounding."""
    a = attach_lora(tiny(), run_cfg(), torch.float32)
    b = attach_lora(tiny(), run_cfg(), torch.float32, fsdp=True)
    assert adopted(a) and not adopted(b)
    assert train(a, steps=4) == pytest.approx(train(b, steps=4), rel=1e-5)


def test_a_tied_lm_head_keeps_its_frozen_weight_so_nothing_is_adopted():
    model = attach_lora(tiny(tied=True), run_cfg(lora_modules_to_save=["embed_tokens"]), torch.float32)
    assert adopted(model) == []
    head = model.get_base_model().lm_head.weight
    before = head.detach().clone()
    train(model)
    assert torch.equal(before, head.detach())  # lm_head reads the frozen original: untouched


def test_bf16_weights_are_adopted_only_with_an_8bit_optimizer_on_a_gpu():
    """torch's AdamW keeps bf16 moments for bf16 parameters: there the copies stay fp32 (cpu: no bnb)."""
    model = attach_lora(tiny(dtype=torch.bfloat16), run_cfg(optimizer="paged_adamw_8bit"), torch.bfloat16)
    assert adopted(model) == []
    copies = [p for n, p in model.named_parameters() if "modules_to_save" in n]
    assert copies and all(p.dtype == torch.float32 for p in copies)
    from envdoctor_runner.saved_modules import adopt_originals
    fresh = tiny(dtype=torch.bfloat16)
    from peft import get_peft_model
    from envdoctor_runner.modeling import _lora_config
    peft_model = get_peft_model(fresh, _lora_config(run_cfg(), None))
    names = adopt_originals(peft_model, bf16_ok=True)
    assert sorted(n.rsplit(".", 1)[-1] for n in names) == ["embed_tokens", "lm_head"]
    assert all(p.dtype == torch.bfloat16 and p.requires_grad for p in adopted(peft_model))


def test_the_adapter_of_an_in_place_run_saves_and_loads_with_peft(tmp_path):
    model = attach_lora(tiny(), run_cfg(), torch.float32)
    train(model)
    model.save_pretrained(tmp_path / "adapter")  # safetensors refuses tensors stored twice: one each
    from peft import PeftModel
    again = PeftModel.from_pretrained(tiny(), tmp_path / "adapter")
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)


def test_the_decoder_runs_under_bf16_autocast_and_lora_keeps_bf16_inputs():
    """dtype bf16: LoRA's fp32 weights multiply in bf16 (autocast), peft no longer casts the input to fp32;
    the loss is within bf16 rounding of the same model without autocast, gradients arrive in fp32."""
    model = attach_lora(tiny(dtype=torch.bfloat16), run_cfg(lora_modules_to_save=[]), torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    plain = CausalLMLoss(model, chunk=16)(ids, torch.ones_like(ids), ids)
    seen = []
    lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
    hook = lora_a.register_forward_hook(lambda _m, i, out: seen.append((i[0].dtype, out.dtype)))
    wrapped = CausalLMLoss(model, chunk=16, dtype=torch.bfloat16)
    loss = wrapped(ids, torch.ones_like(ids), ids)
    loss.backward()
    hook.remove()
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}  # forward and checkpoint recompute
    assert abs(loss.item() - plain.item()) <= 0.01 * plain.item()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_a_lora_lm_head_trains_beside_the_autocast_decoder():
    """`lora_target_modules` may name lm_head: it runs in the chunked loss, outside the decoder's autocast,
    so its LoRA layer must keep peft's input cast (a bf16 hidden state into fp32 LoRA weights)."""
    cfg = run_cfg(lora_target_linear=False, lora_target_modules=["q_proj", "v_proj", "lm_head"],
                  lora_modules_to_save=[])
    model = attach_lora(tiny(dtype=torch.bfloat16), cfg, torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    plain = CausalLMLoss(model, chunk=16)(ids, torch.ones_like(ids), ids)
    loss = CausalLMLoss(model, chunk=16, dtype=torch.bfloat16)(ids, torch.ones_like(ids), ids)
    loss.backward()
    assert abs(loss.item() - plain.item()) <= 0.01 * plain.item()
    head_grads = [p.grad for n, p in model.named_parameters() if "lm_head.lora_" in n]
    assert len(head_grads) == 2 and all(g is not None and g.dtype == torch.float32 for g in head_grads)


def test_a_run_resumed_from_a_checkpoint_continues_as_if_uninterrupted(tmp_path):
    """checkpoint.save / restore_weights / restore_training with modules_to_save in place: the adapter file
    fills the shared parameter, the optimizer state reloads onto it, the losses are the uninterrupted run's."""
    from envdoctor_runner import checkpoint
    from envdoctor_runner.modeling import build_optimizer
    cfg = run_cfg(learning_rate=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, (2, 24), generator=g) for _ in range(6)]

    def fresh():
        model = attach_lora(tiny(), cfg, torch.float32)
        opt = build_optimizer(cfg, model, "cpu", [])
        return model, CausalLMLoss(model, chunk=16), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))

    def steps(wrapped, opt, sched, ids_list):
        out = []
        for ids in ids_list:
            loss = wrapped(ids, torch.ones_like(ids), ids)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            out.append(loss.item())
        return out

    model, wrapped, opt, sched = fresh()
    whole = steps(wrapped, opt, sched, batches)
    model, wrapped, opt, sched = fresh()
    first = steps(wrapped, opt, sched, batches[:3])
    saved = checkpoint.save(tmp_path, "step-3", model, opt, sched, {"step": 3})
    base = tiny()  # the same base (the runner rebuilds it from the seed or reads it again) ...
    torch.manual_seed(99)  # ... other LoRA weights: what trained must come from the files
    model = attach_lora(base, cfg, torch.float32)
    checkpoint.restore_weights(saved, model)
    assert len(adopted(model)) == 2
    opt = build_optimizer(cfg, model, "cpu", [])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    checkpoint.restore_training(saved, opt, sched)
    assert first + steps(CausalLMLoss(model, chunk=16), opt, sched, batches[3:]) == pytest.approx(whole, rel=1e-6)
