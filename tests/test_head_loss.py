"""The runner's one-pass lm_head + cross-entropy (train/envdoctor_runner/head_loss.py) against torch's own
cross-entropy on full logits and against the checkpointed chunks it replaces: loss, both gradients, their
dtypes, the incoming gradient's scale, accumulation into .grad, and which heads take it."""

import sys

import pytest

from envdoctor.assets import asset

torch = pytest.importorskip("torch")
sys.path.insert(0, str(asset("train")))
from envdoctor_runner.head_loss import HeadCrossEntropy, head_cross_entropy, plain_head  # noqa: E402
from envdoctor_runner.loss import checkpointed_cross_entropy, chunked_cross_entropy  # noqa: E402

V, H = 101, 32


def data(n=41, seed=0, dtype=torch.float32, ignored=(5, 6, 30)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g).to(dtype).requires_grad_(True)
    labels = torch.randint(0, V, (n,), generator=g)
    labels[list(ignored)] = -100
    return hidden, labels


@pytest.mark.parametrize("chunk", [1, 4, 13, 41, 1000])
def test_loss_and_gradients_equal_torchs_cross_entropy_on_the_full_logits(chunk):
    head = torch.nn.Linear(H, V, bias=False)
    hidden, labels = data()
    want = torch.nn.functional.cross_entropy(head(hidden), labels, ignore_index=-100)
    want.backward()
    want_h, want_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    got = head_cross_entropy(hidden, labels, head, chunk)
    got.backward()
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(hidden.grad, want_h, atol=1e-6)
    assert torch.allclose(head.weight.grad, want_w, atol=1e-6)


def test_every_label_ignored_gives_zero_loss_and_zero_gradients_not_nan():
    head = torch.nn.Linear(H, V, bias=False)
    hidden, labels = data(n=9, ignored=range(9))
    got = head_cross_entropy(hidden, labels, head, 4)
    got.backward()
    assert got.item() == 0.0
    assert not hidden.grad.any() and not head.weight.grad.any()


def test_the_incoming_gradient_scales_both_gradients_and_accumulates_into_grad():
    head = torch.nn.Linear(H, V, bias=False)
    hidden, labels = data()
    (head_cross_entropy(hidden, labels, head, 8) * 0.25).backward()
    quarter_h, quarter_w = hidden.grad.clone(), head.weight.grad.clone()
    head_cross_entropy(hidden, labels, head, 8).backward()  # a second micro batch adds to .grad
    hidden.grad, head.weight.grad = None, None
    head_cross_entropy(hidden, labels, head, 8).backward()
    one_h, one_w = hidden.grad.clone(), head.weight.grad.clone()
    assert torch.allclose(quarter_h * 4, one_h, atol=1e-6) and torch.allclose(quarter_w * 4, one_w, atol=1e-6)
    assert not torch.allclose(quarter_w, one_w)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_on_a_bf16_stream_it_matches_the_checkpointed_chunks_and_keeps_each_gradients_dtype(weight_dtype):
    """An fp32 head (a modules_to_save copy) multiplies in bf16 as autocast does and gets an fp32 gradient; a
    bf16 head trained in place gets a bf16 one; the hidden states' gradient is bf16 either way."""
    results = []
    for fn in (head_cross_entropy, checkpointed_cross_entropy):
        torch.manual_seed(3)
        head = torch.nn.Linear(H, V, bias=False).to(weight_dtype)
        hidden, labels = data(n=57, seed=2, dtype=torch.bfloat16)
        loss = fn(hidden, labels, head, 16)
        loss.backward()
        results.append((loss.detach(), hidden.grad, head.weight.grad))
    (loss, gh, gw), (ref_loss, ref_h, ref_w) = results
    assert gh.dtype == torch.bfloat16 and gw.dtype == weight_dtype
    assert abs(loss.item() - ref_loss.item()) <= 1e-3 * ref_loss.item()
    assert torch.allclose(gh.float(), ref_h.float(), rtol=0.02, atol=2e-4)
    assert torch.allclose(gw.float(), ref_w.float(), rtol=0.02, atol=2e-4)


def test_a_second_backward_through_the_same_loss_is_refused_not_silently_wrong():
    head = torch.nn.Linear(H, V, bias=False)
    hidden, labels = data()
    loss = head_cross_entropy(hidden, labels, head, 8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_a_frozen_head_gets_no_gradient_and_makes_none():
    head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    hidden, labels = data()
    head_cross_entropy(hidden, labels, head, 8).backward()
    assert head.weight.grad is None and hidden.grad is not None


def test_plain_head_takes_a_plain_linear_or_a_modules_to_save_copy_and_nothing_else():
    from peft import LoraConfig, get_peft_model

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(H, H, bias=False)
            self.lm_head = torch.nn.Linear(H, V, bias=False)

        def forward(self, x):
            return self.lm_head(self.body(x))

    plain = torch.nn.Linear(H, V, bias=False)
    assert plain_head(plain) is plain
    assert plain_head(torch.nn.Linear(H, V)) is None  # a bias
    hooked = torch.nn.Linear(H, V, bias=False)
    hooked.register_forward_pre_hook(lambda *a: None)  # what FSDP's gathers look like
    assert plain_head(hooked) is None

    saved = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["body"], modules_to_save=["lm_head"]))
    wrapper = saved.base_model.model.lm_head
    assert plain_head(wrapper) is wrapper.modules_to_save["default"]
    with saved.disable_adapter():
        assert plain_head(wrapper) is wrapper.original_module
    lora_head = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["body", "lm_head"]))
    assert plain_head(lora_head.base_model.model.lm_head) is None


def test_the_loss_module_takes_the_one_pass_path_in_training_and_the_plain_chunks_without_gradients():
    head = torch.nn.Linear(H, V, bias=False)
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 11, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (2, 11), generator=g)
    calls = []
    apply = HeadCrossEntropy.apply
    try:
        HeadCrossEntropy.apply = lambda *a: calls.append(a) or apply(*a)
        loss = chunked_cross_entropy(hidden, labels, head, chunk=5)
        with torch.no_grad():
            evaluated = chunked_cross_entropy(hidden, labels, head, chunk=5)
    finally:
        HeadCrossEntropy.apply = apply
    assert len(calls) == 1
    assert torch.allclose(loss.detach(), evaluated, atol=1e-6)
